// CSS imported from TypeScript is bundled by esbuild into the page's stylesheet.
declare module '*.css';
