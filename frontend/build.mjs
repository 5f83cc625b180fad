// Bundles the IDE into platform_server/static with content-hashed names and a manifest.json
// that the page handlers read to emit the right <script>/<link> tags (extensions/ide).
import { build, context } from 'esbuild';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';

const here = path.dirname(fileURLToPath(import.meta.url));
const outdir = path.resolve(here, '..', 'platform_server', 'static');
const watch = process.argv.includes('--watch');

// The pages, each an entry; shared code goes into common chunks.
const pages = {
  auth: 'src/pages/auth.ts',
  workspaces: 'src/pages/workspaces.ts',
  ide: 'src/pages/ide.ts',
};

// Monaco's language workers: every language service the IDE offers needs its worker.
const monaco = 'node_modules/monaco-editor/esm/vs';
const workers = {
  editor: `${monaco}/editor/editor.worker.js`,
  json: `${monaco}/language/json/json.worker.js`,
  css: `${monaco}/language/css/css.worker.js`,
  html: `${monaco}/language/html/html.worker.js`,
  typescript: `${monaco}/language/typescript/ts.worker.js`,
};

const common = {
  absWorkingDir: here,
  bundle: true,
  outdir,
  format: 'esm',
  platform: 'browser',
  target: ['es2022'],
  minify: !watch,
  sourcemap: watch ? 'linked' : false,
  metafile: true,
  entryNames: '[name]-[hash]',
  chunkNames: 'chunk-[hash]',
  assetNames: '[name]-[hash]',
  loader: { '.ttf': 'file', '.woff': 'file', '.woff2': 'file' },
  // y-monaco imports Monaco by a path that monaco-editor's exports map no longer offers: the
  // same Monaco module the IDE imports.
  alias: { 'monaco-editor/esm/vs/editor/editor.api.js': 'monaco-editor/editor/editor.api.js' },
  legalComments: 'linked',
  logLevel: 'warning',
};

const pagesOptions = { ...common, entryPoints: pages, splitting: true };
// Workers are self-contained module scripts (no shared chunks: a worker cannot share them).
const workerOptions = {
  ...common,
  entryPoints: Object.fromEntries(Object.entries(workers).map(([k, v]) => [`${k}.worker`, v])),
  splitting: false,
};

/** manifest.json: page → its script, stylesheet and the chunks worth preloading; workers. */
function manifest(pagesMeta, workersMeta) {
  const rel = (file) => path.relative(outdir, path.resolve(here, file)).split(path.sep).join('/');
  const result = { pages: {}, workers: {} };
  for (const [file, output] of Object.entries(pagesMeta.outputs)) {
    if (!output.entryPoint) continue;
    const name = Object.keys(pages).find((k) => path.resolve(here, pages[k]) === path.resolve(here, output.entryPoint));
    if (!name) continue;
    result.pages[name] = {
      js: rel(file),
      css: output.cssBundle ? rel(output.cssBundle) : null,
      preload: output.imports.filter((i) => i.kind === 'import-statement').map((i) => rel(i.path)),
    };
  }
  for (const [file, output] of Object.entries(workersMeta.outputs)) {
    if (!output.entryPoint) continue;
    const label = Object.keys(workers).find((k) => path.resolve(here, workers[k]) === path.resolve(here, output.entryPoint));
    if (label) result.workers[label] = rel(file);
  }
  return result;
}

/** A .gz beside every script, stylesheet and font, for browsers that accept gzip. */
async function precompress(...metas) {
  const gzipAsync = promisify(gzip);
  const files = metas.flatMap((meta) => Object.keys(meta.outputs)).filter((f) => /\.(js|css|ttf|map)$/.test(f));
  await Promise.all(files.map(async (file) => {
    const full = path.resolve(here, file);
    const data = await readFile(full);
    if (data.length < 1024) return;
    await writeFile(`${full}.gz`, await gzipAsync(data, { level: 9 }));
  }));
}

async function writeManifest(pagesMeta, workersMeta) {
  const data = JSON.stringify(manifest(pagesMeta, workersMeta), null, 2);
  await writeFile(path.join(outdir, 'manifest.json'), data + '\n');
}

const started = Date.now();
await rm(outdir, { recursive: true, force: true });
await mkdir(outdir, { recursive: true });
if (watch) {
  let pagesMeta = null;
  const workersResult = await build(workerOptions);
  const plugin = {
    name: 'manifest',
    setup(b) {
      b.onEnd(async (result) => {
        if (result.metafile) {
          pagesMeta = result.metafile;
          await writeManifest(pagesMeta, workersResult.metafile);
          console.log(`rebuilt at ${new Date().toLocaleTimeString()}`);
        }
      });
    },
  };
  const ctx = await context({ ...pagesOptions, plugins: [plugin] });
  await ctx.watch();
  console.log(`watching; output in ${outdir}`);
} else {
  const [pagesResult, workersResult] = await Promise.all([build(pagesOptions), build(workerOptions)]);
  await precompress(pagesResult.metafile, workersResult.metafile);
  await writeManifest(pagesResult.metafile, workersResult.metafile);
  console.log(`built into ${path.relative(process.cwd(), outdir)} in ${Date.now() - started} ms`);
}
