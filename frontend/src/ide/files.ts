// The workspace's files through @jupyterlab/services' ContentsManager (the Jupyter Contents API
// at /w/<uuid>/api/contents), plus JupyterLab's chunked upload for large files.
import { ContentsManager, ServerConnection, type Contents } from '@jupyterlab/services';
import { errorStatus } from '../common/api';

/** Files larger than this are uploaded in chunks, as JupyterLab does. */
export const LARGE_FILE_SIZE = 15 * 1024 * 1024;
export const CHUNK_SIZE = 1024 * 1024;

export function parentOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : path.slice(0, i);
}

export function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

export function joinPath(dir: string, name: string): string {
  return dir ? `${dir}/${name}` : name;
}

/** Whether ``path`` is ``ancestor`` or inside it. */
export function isWithin(path: string, ancestor: string): boolean {
  return ancestor === '' || path === ancestor || path.startsWith(`${ancestor}/`);
}

function hasControlCharacter(text: string): boolean {
  for (let i = 0; i < text.length; i += 1) {
    const code = text.charCodeAt(i);
    if (code < 32 || code === 127) return true;
  }
  return false;
}

/** Why a name cannot be a file name, or null when it can. */
export function invalidName(name: string): string | null {
  if (!name.trim()) return 'Enter a name.';
  if (name.includes('/') || name.includes('\\')) return 'A name cannot contain “/” or “\\”.';
  if (name === '.' || name === '..') return 'That name is reserved.';
  if (hasControlCharacter(name)) return 'A name cannot contain control characters.';
  return null;
}

function blobToBase64(blob: Blob): Promise<string> {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const url = typeof reader.result === 'string' ? reader.result : '';
      resolve(url.slice(url.indexOf(',') + 1));
    };
    reader.onerror = () => reject(reader.error ?? new Error('The file could not be read.'));
    reader.readAsDataURL(blob);
  });
}

export class WorkspaceFiles {
  readonly contents: ContentsManager;

  constructor(readonly settings: ServerConnection.ISettings) {
    this.contents = new ContentsManager({ serverSettings: settings });
  }

  /** A folder's entries. */
  async list(dir: string): Promise<Contents.IModel[]> {
    const model = await this.contents.get(dir, { type: 'directory', content: true });
    return (model.content as Contents.IModel[] | null) ?? [];
  }

  /** A file with its content (text, or base64 for bytes that are not UTF-8). */
  read(path: string): Promise<Contents.IModel> {
    return this.contents.get(path, { type: 'file', content: true });
  }

  /** A notebook, parsed by the server (``content`` is the nbformat 4 JSON). */
  readNotebook(path: string): Promise<Contents.IModel> {
    return this.contents.get(path, { type: 'notebook', content: true });
  }

  /** A file or folder's metadata, or null when it does not exist. */
  async stat(path: string): Promise<Contents.IModel | null> {
    try {
      return await this.contents.get(path, { content: false });
    } catch (error) {
      if (errorStatus(error) === 404) return null;
      throw error;
    }
  }

  saveText(path: string, text: string): Promise<Contents.IModel> {
    return this.contents.save(path, { type: 'file', format: 'text', content: text });
  }

  async createFile(path: string): Promise<Contents.IModel> {
    if (await this.stat(path)) throw new Error(`“${path}” already exists.`);
    return this.saveText(path, '');
  }

  async createFolder(path: string): Promise<Contents.IModel> {
    if (await this.stat(path)) throw new Error(`“${path}” already exists.`);
    return this.contents.save(path, { type: 'directory' });
  }

  async rename(from: string, to: string): Promise<Contents.IModel> {
    if (from === to) throw new Error('The name did not change.');
    if (await this.stat(to)) throw new Error(`“${to}” already exists.`);
    return this.contents.rename(from, to);
  }

  remove(path: string): Promise<void> {
    return this.contents.delete(path);
  }

  /** A file's checkpoints (its saved versions), newest first. */
  async checkpoints(path: string): Promise<Contents.ICheckpointModel[]> {
    return (await this.contents.listCheckpoints(path)).reverse();
  }

  /** Keep the file's current bytes as a checkpoint (the newest one, if it holds the same). */
  createCheckpoint(path: string): Promise<Contents.ICheckpointModel> {
    return this.contents.createCheckpoint(path);
  }

  /** Write a checkpoint back to the file. */
  restoreCheckpoint(path: string, id: string): Promise<void> {
    return this.contents.restoreCheckpoint(path, id);
  }

  /** A checkpoint's text, or null when it is not UTF-8 text. */
  async checkpointText(path: string, id: string): Promise<string | null> {
    const encoded = path.split('/').map(encodeURIComponent).join('/');
    const url = `${this.settings.baseUrl}api/contents/${encoded}/checkpoints/${encodeURIComponent(id)}`;
    const response = await ServerConnection.makeRequest(url, {}, this.settings);
    if (!response.ok) throw await ServerConnection.ResponseError.create(response);
    const model = (await response.json()) as { content: string; format: string };
    return model.format === 'text' ? model.content : null;
  }

  /** ``/w/<uuid>/files/<path>?download=1``: the raw bytes as an attachment. */
  downloadUrl(path: string): string {
    const encoded = path.split('/').map(encodeURIComponent).join('/');
    return `${this.settings.baseUrl}files/${encoded}?download=1`;
  }

  /**
   * Upload a file; large ones go in 1 MiB chunks numbered 1..N with -1 for the last, as
   * JupyterLab sends them. ``progress`` gets the fraction sent so far.
   */
  async upload(path: string, file: File, progress: (fraction: number) => void): Promise<Contents.IModel> {
    progress(0);
    if (file.size <= LARGE_FILE_SIZE) {
      const content = await blobToBase64(file);
      const model = await this.contents.save(path, { type: 'file', format: 'base64', content });
      progress(1);
      return model;
    }
    let model: Contents.IModel | null = null;
    for (let start = 0; start < file.size; start += CHUNK_SIZE) {
      const end = Math.min(start + CHUNK_SIZE, file.size);
      const last = end >= file.size;
      const content = await blobToBase64(file.slice(start, end));
      model = await this.contents.save(path, {
        type: 'file', format: 'base64', content, chunk: last ? -1 : start / CHUNK_SIZE + 1,
      });
      progress(end / file.size);
    }
    if (model === null) throw new Error('Nothing was uploaded.');
    return model;
  }
}
