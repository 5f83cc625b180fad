// The file tree: browse, open, new file/folder, rename in place, delete, drag to move,
// upload (with progress) and download.
import type { Contents } from '@jupyterlab/services';
import { describeError, errorStatus } from '../common/api';
import { confirmDialog } from '../common/dialog';
import { h, replaceChildren } from '../common/dom';
import { icon } from '../common/icons';
import { toastError } from '../common/toast';
import { baseName, invalidName, isWithin, joinPath, parentOf, type WorkspaceFiles } from './files';

const DRAG_TYPE = 'application/x-workspace-path';

export interface TreeCallbacks {
  /** Open a file in the editor. */
  open(path: string): void;
  /** A file or folder moved (rename or drag), by this tree. */
  moved(from: string, to: string): void;
  /** A file or folder was deleted by this tree. */
  deleted(path: string): void;
  /** The set of expanded folders changed (to remember it). */
  expandedChanged(expanded: string[]): void;
}

type Editing = ({ kind: 'new-file' | 'new-folder'; dir: string } | { kind: 'rename'; path: string }) & {
  /** What is typed so far, kept across re-renders. */
  value: string;
};

interface MenuItem {
  label: string;
  action: () => void;
  danger?: boolean;
}

function sortEntries(entries: Contents.IModel[]): Contents.IModel[] {
  return [...entries].sort((a, b) => {
    const dirA = a.type === 'directory' ? 0 : 1;
    const dirB = b.type === 'directory' ? 0 : 1;
    return dirA - dirB || a.name.localeCompare(b.name, undefined, { numeric: true, sensitivity: 'base' });
  });
}

/** What matters of a listing to know whether it changed. */
function signature(entries: Contents.IModel[]): string {
  return entries.map((e) => `${e.type}:${e.name}:${e.last_modified}`).sort().join('\n');
}

export class FileTree {
  readonly element: HTMLElement;
  private readonly body: HTMLElement;
  private readonly uploads: HTMLElement;
  private readonly fileInput: HTMLInputElement;
  private readonly listings = new Map<string, Contents.IModel[]>();
  private readonly loading = new Map<string, Promise<boolean>>();
  private readonly expanded: Set<string>;
  private selected: string | null = null;
  private activeFile: string | null = null;
  private editing: Editing | null = null;
  private uploadTarget = '';
  private menu: HTMLElement | null = null;
  private dropTarget: string | null = null;
  /** A viewer's tree: browse, open and download; nothing that changes files is offered. */
  private viewOnly = false;
  /** The toolbar's new file, new folder and upload buttons (a viewer has none). */
  private readonly changeTools: HTMLElement[];

  constructor(
    private readonly files: WorkspaceFiles,
    private readonly callbacks: TreeCallbacks,
    expanded: string[],
  ) {
    this.expanded = new Set(expanded);
    this.body = h('div', { class: 'tree', role: 'tree', id: 'file-tree', tabindex: 0, 'aria-label': 'Files' });
    this.uploads = h('div', { class: 'uploads', id: 'uploads', 'aria-live': 'polite' });
    this.fileInput = h('input', { type: 'file', multiple: true, id: 'upload-input', class: 'visually-hidden', tabindex: -1, 'aria-hidden': 'true' });
    this.fileInput.addEventListener('change', () => {
      const chosen = [...(this.fileInput.files ?? [])];
      this.fileInput.value = '';
      void this.uploadFiles(chosen, this.uploadTarget);
    });
    const tool = (id: string, title: string, name: Parameters<typeof icon>[0], action: () => void): HTMLElement =>
      h('button', { type: 'button', class: 'icon-button', id, title, 'aria-label': title, onclick: action }, icon(name));
    this.changeTools = [
      tool('tree-new-file', 'New file', 'newFile', () => this.startNew('new-file', this.targetDir())),
      tool('tree-new-folder', 'New folder', 'newFolder', () => this.startNew('new-folder', this.targetDir())),
      tool('tree-upload', 'Upload files', 'upload', () => this.chooseUpload(this.targetDir())),
    ];
    this.element = h('section', { class: 'sidebar', 'aria-label': 'Explorer' },
      h('div', { class: 'pane-header' },
        h('span', { class: 'pane-title' }, 'Files'),
        ...this.changeTools,
        tool('tree-refresh', 'Refresh', 'refresh', () => void this.refreshLoaded()),
        tool('tree-collapse', 'Collapse folders', 'collapse', () => this.collapseAll())),
      this.body, this.uploads, this.fileInput);
    this.bindEvents();
  }

  /** A viewer's tree: no new, rename, delete, upload or move (by menu, key or drag); the
   * server would refuse them. */
  setViewOnly(): void {
    this.viewOnly = true;
    for (const tool of this.changeTools) tool.remove();
    this.render(true);
  }

  // --- loading ----------------------------------------------------------------------------

  /** Load the root and the remembered expanded folders. */
  async start(): Promise<void> {
    await this.load('');
    const dirs = [...this.expanded].sort((a, b) => a.split('/').length - b.split('/').length);
    for (const dir of dirs) {
      if (this.listings.has(parentOf(dir))) await this.load(dir);
    }
  }

  /** (Re)load one folder's listing; true when it changed. */
  async load(dir: string): Promise<boolean> {
    const pending = this.loading.get(dir);
    if (pending) {
      await pending;
    }
    const task = (async (): Promise<boolean> => {
      try {
        const entries = await this.files.list(dir);
        const before = this.listings.get(dir);
        this.listings.set(dir, entries);
        return before === undefined || signature(before) !== signature(entries);
      } catch (error) {
        if (errorStatus(error) === 404 && dir !== '') return this.forget(dir);
        throw error;
      }
    })();
    this.loading.set(dir, task);
    let changed: boolean;
    try {
      changed = await task;
    } finally {
      this.loading.delete(dir);
    }
    if (changed) this.render();
    return changed;
  }

  private forget(dir: string): boolean {
    let changed = false;
    for (const key of [...this.listings.keys()]) {
      if (isWithin(key, dir) && key !== '') {
        this.listings.delete(key);
        changed = true;
      }
    }
    for (const key of [...this.expanded]) {
      if (isWithin(key, dir)) {
        this.expanded.delete(key);
        changed = true;
      }
    }
    if (changed) this.callbacks.expandedChanged([...this.expanded]);
    return changed;
  }

  /** Reload a folder if it is shown (after a change event in it). */
  async dirChanged(dir: string): Promise<void> {
    if (this.listings.has(dir)) await this.load(dir);
  }

  /** Reload every shown folder (polling, or a manual refresh); returns the listings. */
  async refreshLoaded(): Promise<Map<string, Contents.IModel[]>> {
    const dirs = [...this.listings.keys()];
    const results = await Promise.allSettled(dirs.map((dir) => this.load(dir)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    return new Map(this.listings);
  }

  /** The metadata of a path, from a loaded listing (undefined: its folder is not loaded). */
  entry(path: string): Contents.IModel | null | undefined {
    const listing = this.listings.get(parentOf(path));
    if (listing === undefined) return undefined;
    return listing.find((e) => e.path === path) ?? null;
  }

  // --- rendering ---------------------------------------------------------------------------

  private render(force = false): void {
    // Never rebuild under a name being typed: changes from elsewhere wait until it is done.
    if (!force && this.editing !== null && this.body.querySelector('.tree-input')) {
      return;
    }
    const rows: HTMLElement[] = [];
    this.renderDir('', 1, rows);
    replaceChildren(this.body, ...rows);
    if (this.listings.get('')?.length === 0 && this.editing === null) {
      this.body.append(h('div', { class: 'tree-empty' }, this.viewOnly ? 'No files yet.' : 'No files yet. Create one with the buttons above, or drop files here.'));
    }
    const input = this.body.querySelector<HTMLInputElement>('.tree-input');
    if (input && document.activeElement !== input) {
      input.focus();
      const dot = input.value.lastIndexOf('.');
      input.setSelectionRange(0, dot > 0 ? dot : input.value.length);
    }
  }

  private renderDir(dir: string, depth: number, rows: HTMLElement[]): void {
    const entries = this.listings.get(dir);
    if (entries === undefined) {
      rows.push(h('div', { class: 'tree-row tree-loading', style: `--depth:${depth}` }, 'Loading…'));
      return;
    }
    if (this.editing && this.editing.kind !== 'rename' && this.editing.dir === dir) {
      rows.push(this.inputRow(this.editing.kind === 'new-folder' ? 'directory' : 'file', '', this.editing, depth));
    }
    for (const entry of sortEntries(entries)) {
      if (this.editing?.kind === 'rename' && this.editing.path === entry.path) {
        rows.push(this.inputRow(entry.type, entry.name, this.editing, depth));
      } else {
        rows.push(this.row(entry, depth));
      }
      if (entry.type === 'directory' && this.expanded.has(entry.path)) this.renderDir(entry.path, depth + 1, rows);
    }
  }

  private row(entry: Contents.IModel, depth: number): HTMLElement {
    const isDir = entry.type === 'directory';
    const open = isDir && this.expanded.has(entry.path);
    return h('div', {
      class: `tree-row${this.selected === entry.path ? ' selected' : ''}${this.activeFile === entry.path ? ' active-file' : ''}${this.dropTarget === entry.path ? ' drop-target' : ''}`,
      role: 'treeitem', 'data-path': entry.path, 'data-type': entry.type, 'aria-level': depth,
      'aria-expanded': isDir ? String(open) : null, 'aria-selected': String(this.selected === entry.path),
      draggable: String(!this.viewOnly), tabindex: -1, title: entry.path, style: `--depth:${depth}`,
    },
    h('span', { class: 'twisty' }, isDir ? icon(open ? 'collapse' : 'expand') : null),
    icon(isDir ? (open ? 'folderOpen' : 'folder') : 'file'),
    h('span', { class: 'tree-name' }, entry.name));
  }

  private inputRow(type: string, value: string, editing: Editing, depth: number): HTMLElement {
    const input = h('input', { class: 'tree-input', value: editing.value, 'aria-label': type === 'directory' ? 'Folder name' : 'File name', spellcheck: 'false' });
    const error = h('div', { class: 'tree-input-error', role: 'alert' });
    let done = false;
    const commit = (): void => {
      if (done) return;
      const name = input.value.trim();
      if (!name || (editing.kind === 'rename' && name === value)) {
        done = true;
        this.cancelEditing();
        return;
      }
      const problem = invalidName(name);
      if (problem) {
        error.textContent = problem;
        return;
      }
      done = true;
      input.disabled = true;
      void this.commitEditing(name).then((ok) => {
        if (!ok) {
          done = false;
          input.disabled = false;
          input.focus();
        }
      }, () => undefined);
      error.textContent = '';
    };
    input.addEventListener('keydown', (event) => {
      event.stopPropagation();
      if (event.key === 'Enter') {
        event.preventDefault();
        commit();
      } else if (event.key === 'Escape') {
        event.preventDefault();
        done = true;
        this.cancelEditing();
      }
    });
    input.addEventListener('input', () => {
      error.textContent = '';
      editing.value = input.value;
    });
    input.addEventListener('blur', () => {
      // Clicking elsewhere keeps a valid name (as editors do) and drops an empty one; a blur
      // because the row was rebuilt is not a decision.
      setTimeout(() => {
        if (input.isConnected && !done && !input.disabled) commit();
      });
    });
    this.inputError = error;
    return h('div', { class: 'tree-row editing', style: `--depth:${depth}` },
      h('span', { class: 'twisty' }), icon(type === 'directory' ? 'folder' : 'file'),
      h('div', { class: 'tree-input-wrap' }, input, error));
  }

  private inputError: HTMLElement | null = null;

  // --- editing: new, rename ---------------------------------------------------------------

  /** The folder new things go into: the selected folder, or the selected file's folder. */
  private targetDir(): string {
    if (this.selected === null) return '';
    const entry = this.entry(this.selected);
    if (entry?.type === 'directory') return entry.path;
    return parentOf(this.selected);
  }

  startNew(kind: 'new-file' | 'new-folder', dir: string): void {
    this.closeMenu();
    if (dir !== '') this.expanded.add(dir);
    this.editing = { kind, dir, value: '' };
    if (!this.listings.has(dir)) {
      void this.load(dir).then(() => this.render(true), (e: unknown) => toastError(describeError(e)));
    }
    this.render(true);
  }

  startRename(path: string): void {
    this.closeMenu();
    this.selected = path;
    this.editing = { kind: 'rename', path, value: baseName(path) };
    this.render(true);
  }

  private cancelEditing(): void {
    this.editing = null;
    this.inputError = null;
    this.render(true);
    this.body.focus();
  }

  private async commitEditing(name: string): Promise<boolean> {
    const editing = this.editing;
    if (editing === null) return true;
    try {
      if (editing.kind === 'rename') {
        const to = joinPath(parentOf(editing.path), name);
        await this.files.rename(editing.path, to);
        this.editing = null;
        this.afterMove(editing.path, to);
        await this.load(parentOf(to));
      } else {
        const path = joinPath(editing.dir, name);
        if (editing.kind === 'new-folder') await this.files.createFolder(path);
        else await this.files.createFile(path);
        this.editing = null;
        this.selected = path;
        await this.load(editing.dir);
        if (editing.kind === 'new-file') this.callbacks.open(path);
      }
      this.inputError = null;
      this.render(true);
      return true;
    } catch (error) {
      if (this.inputError) this.inputError.textContent = describeError(error);
      else toastError(describeError(error));
      return false;
    }
  }

  private afterMove(from: string, to: string): void {
    // Expanded folders and the selection follow the move.
    for (const dir of [...this.expanded]) {
      if (isWithin(dir, from)) {
        this.expanded.delete(dir);
        this.expanded.add(to + dir.slice(from.length));
      }
    }
    for (const key of [...this.listings.keys()]) {
      if (key !== '' && isWithin(key, from)) this.listings.delete(key);
    }
    if (this.selected !== null && isWithin(this.selected, from)) this.selected = to + this.selected.slice(from.length);
    this.callbacks.expandedChanged([...this.expanded]);
    this.callbacks.moved(from, to);
  }

  // --- move, delete, upload, download ------------------------------------------------------

  async move(path: string, targetDir: string): Promise<void> {
    if (parentOf(path) === targetDir) return;
    if (isWithin(targetDir, path)) {
      toastError('A folder cannot be moved into itself.');
      return;
    }
    const to = joinPath(targetDir, baseName(path));
    try {
      await this.files.rename(path, to);
    } catch (error) {
      toastError(`Could not move “${baseName(path)}”: ${describeError(error)}`);
      return;
    }
    if (targetDir !== '') this.expanded.add(targetDir);
    this.afterMove(path, to);
    await Promise.all([this.load(parentOf(path)), this.load(targetDir)]).catch((e: unknown) => toastError(describeError(e)));
  }

  async remove(path: string): Promise<void> {
    this.closeMenu();
    const entry = this.entry(path);
    const isDir = entry?.type === 'directory';
    const ok = await confirmDialog(isDir ? 'Delete folder' : 'Delete file',
      isDir ? `Delete the folder “${path}” and everything in it?` : `Delete “${path}”?`, 'Delete', true);
    if (!ok) return;
    try {
      await this.files.remove(path);
    } catch (error) {
      toastError(`Could not delete “${path}”: ${describeError(error)}`);
      return;
    }
    if (this.selected !== null && isWithin(this.selected, path)) this.selected = null;
    this.forget(path);
    this.callbacks.deleted(path);
    await this.load(parentOf(path)).catch((e: unknown) => toastError(describeError(e)));
  }

  chooseUpload(dir: string): void {
    this.closeMenu();
    this.uploadTarget = dir;
    this.fileInput.click();
  }

  async uploadFiles(chosen: File[], dir: string): Promise<void> {
    if (dir !== '') this.expanded.add(dir);
    const existing = new Set((this.listings.get(dir) ?? []).map((e) => e.name));
    for (const file of chosen) {
      const path = joinPath(dir, file.name);
      const problem = invalidName(file.name);
      if (problem) {
        toastError(`Cannot upload “${file.name}”: ${problem}`);
        continue;
      }
      if (existing.has(file.name)) {
        const replace = await confirmDialog('Replace file', `“${path}” already exists. Replace it?`, 'Replace', true);
        if (!replace) continue;
      }
      await this.uploadOne(path, file);
    }
    await this.load(dir).catch((e: unknown) => toastError(describeError(e)));
  }

  private async uploadOne(path: string, file: File): Promise<void> {
    const bar = h('progress', { max: 1, value: 0 });
    const state = h('span', { class: 'upload-state' }, '0%');
    const item = h('div', { class: 'upload', 'data-path': path }, h('span', { class: 'upload-name', title: path }, file.name), bar, state);
    this.uploads.append(item);
    try {
      await this.files.upload(path, file, (fraction) => {
        bar.value = fraction;
        state.textContent = `${Math.floor(fraction * 100)}%`;
      });
      item.classList.add('done');
      state.textContent = 'Done';
      setTimeout(() => item.remove(), 3000);
    } catch (error) {
      item.classList.add('failed');
      state.textContent = 'Failed';
      item.append(h('button', { type: 'button', class: 'icon-button', 'aria-label': 'Dismiss', onclick: () => item.remove() }, icon('close')));
      toastError(`Could not upload “${file.name}”: ${describeError(error)}`);
    }
  }

  download(path: string): void {
    this.closeMenu();
    const link = h('a', { href: this.files.downloadUrl(path), download: baseName(path), class: 'visually-hidden' });
    document.body.append(link);
    link.click();
    link.remove();
  }

  // --- interaction -------------------------------------------------------------------------

  private toggle(path: string): void {
    if (this.expanded.has(path)) {
      this.expanded.delete(path);
      this.render();
    } else {
      this.expanded.add(path);
      if (this.listings.has(path)) this.render();
      else void this.load(path).catch((e: unknown) => toastError(describeError(e)));
      this.render();
    }
    this.callbacks.expandedChanged([...this.expanded]);
  }

  private collapseAll(): void {
    this.expanded.clear();
    this.callbacks.expandedChanged([]);
    this.render();
  }

  /** Mark the file shown in the editor. */
  markActive(path: string | null): void {
    if (path === this.activeFile) return;
    this.activeFile = path;
    for (const element of this.body.querySelectorAll<HTMLElement>('.tree-row[data-path]')) {
      element.classList.toggle('active-file', element.dataset.path === path);
    }
  }

  /** Select and reveal a path (its folders expanded). */
  reveal(path: string): void {
    this.selected = path;
    let dir = parentOf(path);
    const toLoad: string[] = [];
    while (dir !== '') {
      if (!this.expanded.has(dir)) {
        this.expanded.add(dir);
        toLoad.unshift(dir);
      }
      dir = parentOf(dir);
    }
    this.render();
    if (toLoad.length) {
      this.callbacks.expandedChanged([...this.expanded]);
      void (async () => {
        for (const d of toLoad) await this.load(d);
      })().catch(() => undefined);
    }
  }

  private rowOf(target: EventTarget | null): HTMLElement | null {
    return target instanceof Element ? target.closest<HTMLElement>('.tree-row[data-path]') : null;
  }

  private activate(row: HTMLElement): void {
    const path = row.dataset.path ?? '';
    this.selected = path;
    if (row.dataset.type === 'directory') this.toggle(path);
    else {
      this.render();
      this.callbacks.open(path);
    }
  }

  private bindEvents(): void {
    this.body.addEventListener('click', (event) => {
      const row = this.rowOf(event.target);
      if (row) this.activate(row);
      else {
        this.selected = null;
        this.render();
      }
    });
    this.body.addEventListener('contextmenu', (event) => {
      event.preventDefault();
      const row = this.rowOf(event.target);
      const path = row?.dataset.path ?? null;
      if (path !== null) {
        this.selected = path;
        this.render();
      }
      this.openMenu(event.clientX, event.clientY, path, row?.dataset.type === 'directory');
    });
    this.body.addEventListener('keydown', (event) => this.onKey(event));
    // Drag to move (rows) and drop files from the desktop (upload).
    this.body.addEventListener('dragstart', (event) => {
      const row = this.rowOf(event.target);
      if (!row || !event.dataTransfer) return;
      event.dataTransfer.setData(DRAG_TYPE, row.dataset.path ?? '');
      event.dataTransfer.setData('text/plain', row.dataset.path ?? '');
      event.dataTransfer.effectAllowed = 'move';
    });
    this.body.addEventListener('dragover', (event) => {
      const types = event.dataTransfer?.types ?? [];
      // Not accepting the drag (no preventDefault) is what makes the browser refuse the drop.
      if (this.viewOnly || (!types.includes(DRAG_TYPE) && !types.includes('Files'))) return;
      event.preventDefault();
      if (event.dataTransfer) event.dataTransfer.dropEffect = types.includes('Files') ? 'copy' : 'move';
      this.setDropTarget(this.dropDir(event.target));
    });
    this.body.addEventListener('dragleave', (event) => {
      if (!this.body.contains(event.relatedTarget as Node | null)) this.setDropTarget(null);
    });
    this.body.addEventListener('drop', (event) => {
      event.preventDefault();
      const dir = this.dropDir(event.target);
      this.setDropTarget(null);
      const transfer = event.dataTransfer;
      if (!transfer) return;
      const moving = transfer.getData(DRAG_TYPE);
      if (moving) void this.move(moving, dir);
      else if (transfer.files.length) void this.uploadFiles([...transfer.files], dir);
    });
    this.body.addEventListener('dragend', () => this.setDropTarget(null));
    document.addEventListener('mousedown', (event) => {
      if (this.menu && !this.menu.contains(event.target as Node)) this.closeMenu();
    });
    window.addEventListener('blur', () => this.closeMenu());
  }

  /** The folder a drop on ``target`` lands in: a folder row, a file's folder, or the root. */
  private dropDir(target: EventTarget | null): string {
    const row = this.rowOf(target);
    if (!row) return '';
    const path = row.dataset.path ?? '';
    return row.dataset.type === 'directory' ? path : parentOf(path);
  }

  private setDropTarget(dir: string | null): void {
    if (dir === this.dropTarget) return;
    this.dropTarget = dir;
    this.body.classList.toggle('drop-root', dir === '');
    for (const row of this.body.querySelectorAll<HTMLElement>('.tree-row[data-path]')) {
      row.classList.toggle('drop-target', dir !== null && dir !== '' && row.dataset.path === dir);
    }
  }

  private onKey(event: KeyboardEvent): void {
    const rows = [...this.body.querySelectorAll<HTMLElement>('.tree-row[data-path]')];
    const index = rows.findIndex((r) => r.dataset.path === this.selected);
    const current = index >= 0 ? rows[index] : undefined;
    const select = (row: HTMLElement | undefined): void => {
      if (!row) return;
      this.selected = row.dataset.path ?? null;
      this.render();
      this.body.querySelector('.tree-row.selected')?.scrollIntoView({ block: 'nearest' });
    };
    switch (event.key) {
      case 'ArrowDown':
        event.preventDefault();
        select(rows[Math.min(rows.length - 1, index + 1)]);
        break;
      case 'ArrowUp':
        event.preventDefault();
        select(rows[Math.max(0, index - 1)]);
        break;
      case 'Enter':
        if (current) {
          event.preventDefault();
          this.activate(current);
        }
        break;
      case 'F2':
        if (this.selected !== null && !this.viewOnly) {
          event.preventDefault();
          this.startRename(this.selected);
        }
        break;
      case 'Delete':
        if (this.selected !== null && !this.viewOnly) {
          event.preventDefault();
          void this.remove(this.selected);
        }
        break;
      default:
    }
  }

  private openMenu(x: number, y: number, path: string | null, isDir: boolean): void {
    this.closeMenu();
    const dir = path === null ? '' : isDir ? path : parentOf(path);
    const items: MenuItem[] = [];
    if (path !== null && !isDir) items.push({ label: 'Open', action: () => this.callbacks.open(path) });
    if (!this.viewOnly) {
      items.push({ label: 'New file', action: () => this.startNew('new-file', dir) });
      items.push({ label: 'New folder', action: () => this.startNew('new-folder', dir) });
      items.push({ label: 'Upload files…', action: () => this.chooseUpload(dir) });
    }
    if (path !== null && !isDir) items.push({ label: 'Download', action: () => this.download(path) });
    if (path !== null && !this.viewOnly) {
      items.push({ label: 'Rename', action: () => this.startRename(path) });
      items.push({ label: 'Delete', action: () => void this.remove(path), danger: true });
    }
    if (items.length === 0) return;
    const menu = h('div', { class: 'menu', role: 'menu', id: 'tree-menu' });
    for (const item of items) {
      const button = h('button', { type: 'button', role: 'menuitem', class: item.danger ? 'danger' : null }, item.label);
      button.addEventListener('click', () => {
        this.closeMenu();
        item.action();
      });
      menu.append(button);
    }
    document.body.append(menu);
    const rect = menu.getBoundingClientRect();
    menu.style.left = `${Math.min(x, window.innerWidth - rect.width - 4)}px`;
    menu.style.top = `${Math.min(y, window.innerHeight - rect.height - 4)}px`;
    menu.querySelector('button')?.focus();
    menu.addEventListener('keydown', (event) => {
      const buttons = [...menu.querySelectorAll('button')];
      const i = buttons.indexOf(document.activeElement as HTMLButtonElement);
      if (event.key === 'Escape') this.closeMenu();
      else if (event.key === 'ArrowDown') buttons[(i + 1) % buttons.length]?.focus();
      else if (event.key === 'ArrowUp') buttons[(i - 1 + buttons.length) % buttons.length]?.focus();
      else return;
      event.preventDefault();
    });
    this.menu = menu;
  }

  private closeMenu(): void {
    this.menu?.remove();
    this.menu = null;
  }
}
