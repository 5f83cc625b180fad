// Drives one workspace with JupyterLab's own ContentsManager, as its file browser does,
// and prints what it saw as JSON for the Python test to check.
import { ContentsManager, ServerConnection } from '@jupyterlab/services';

const serverSettings = ServerConnection.makeSettings({
  baseUrl: process.env.BASE_URL,
  token: process.env.TOKEN,
  appendToken: false,
});
const contents = new ContentsManager({ serverSettings });
const seen = {};

const saved = await contents.save('hello.txt', {
  type: 'file',
  format: 'text',
  content: 'hello from jupyterlab',
});
seen.saved = { path: saved.path, type: saved.type, hasDate: Boolean(saved.last_modified) };
seen.read = (await contents.get('hello.txt')).content;

const untitledDir = await contents.newUntitled({ type: 'directory' });
seen.untitledDir = untitledDir.path;
const untitledFile = await contents.newUntitled({ path: untitledDir.path, type: 'file', ext: '.py' });
seen.untitledFile = untitledFile.path;
const dir = await contents.rename(untitledDir.path, 'src');
seen.renamedDir = dir.path;
seen.listing = (await contents.get('src')).content.map((m) => m.path);

const copy = await contents.copy('hello.txt', 'src');
seen.copy = copy.path;

const notebook = await contents.newUntitled({ type: 'notebook' });
seen.notebook = notebook.path;
const nb = await contents.get(notebook.path);
seen.notebookFormat = nb.content.nbformat;
nb.content.cells.push({
  id: 'answer',
  cell_type: 'code',
  source: 'print(6 * 7)',
  metadata: {},
  outputs: [],
  execution_count: null,
});
await contents.save(notebook.path, { type: 'notebook', format: 'json', content: nb.content });
seen.notebookCells = (await contents.get(notebook.path)).content.cells.length;

const checkpoint = await contents.createCheckpoint('hello.txt');
await contents.save('hello.txt', { type: 'file', format: 'text', content: 'changed' });
seen.checkpoints = (await contents.listCheckpoints('hello.txt')).length;
await contents.restoreCheckpoint('hello.txt', checkpoint.id);
seen.restored = (await contents.get('hello.txt')).content;
await contents.deleteCheckpoint('hello.txt', checkpoint.id);
seen.checkpointsAfterDelete = (await contents.listCheckpoints('hello.txt')).length;

await contents.delete('src');
seen.root = (await contents.get('')).content.map((m) => m.name).sort();
try {
  await contents.get('src/hello.txt');
  seen.deletedGone = false;
} catch (error) {
  seen.deletedGone = error.response?.status === 404;
}

console.log(JSON.stringify(seen));
