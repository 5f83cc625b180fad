// Monaco, served by the platform: its workers are bundled module scripts under /assets/.
import * as monaco from 'monaco-editor';

export { monaco };

const WORKER_OF_LABEL: Record<string, string> = {
  json: 'json',
  css: 'css',
  scss: 'css',
  less: 'css',
  html: 'html',
  handlebars: 'html',
  razor: 'html',
  typescript: 'typescript',
  javascript: 'typescript',
};

/** Tell Monaco where its workers are (same origin, so the page's CSP allows them). */
export function configureWorkers(workers: Record<string, string>): void {
  self.MonacoEnvironment = {
    getWorker(_moduleId: string, label: string): Worker {
      const key = WORKER_OF_LABEL[label] ?? 'editor';
      const url = workers[key] ?? workers.editor;
      if (url === undefined) throw new Error(`No worker script for ${label}.`);
      return new Worker(url, { type: 'module', name: label });
    },
  };
}

let byExtension: Map<string, string> | null = null;
let byFilename: Map<string, string> | null = null;

function languageMaps(): [Map<string, string>, Map<string, string>] {
  if (byExtension === null || byFilename === null) {
    byExtension = new Map();
    byFilename = new Map();
    for (const language of monaco.languages.getLanguages()) {
      for (const extension of language.extensions ?? []) {
        if (!byExtension.has(extension.toLowerCase())) byExtension.set(extension.toLowerCase(), language.id);
      }
      for (const filename of language.filenames ?? []) byFilename.set(filename.toLowerCase(), language.id);
    }
  }
  return [byExtension, byFilename];
}

/** Monaco's language for a path, from its file name or extension. */
export function languageFor(path: string): string {
  const [extensions, filenames] = languageMaps();
  const name = path.slice(path.lastIndexOf('/') + 1).toLowerCase();
  const exact = filenames.get(name);
  if (exact !== undefined) return exact;
  // Longest extension first: ".d.ts" before ".ts".
  for (let i = name.indexOf('.'); i >= 0; i = name.indexOf('.', i + 1)) {
    const id = extensions.get(name.slice(i));
    if (id !== undefined) return id;
  }
  return 'plaintext';
}

export function languageName(id: string): string {
  const language = monaco.languages.getLanguages().find((l) => l.id === id);
  return language?.aliases?.[0] ?? id;
}
