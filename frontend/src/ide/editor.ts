// Editor tabs over one Monaco editor: a model per open file, dirty markers, save with a
// "changed on disk" check, silent reload of clean tabs, guards against losing edits. Notebooks
// open in a read-only rendered view instead (or as text, on request).
import type { Contents } from '@jupyterlab/services';
import { describeError } from '../common/api';
import { choose } from '../common/dialog';
import { h, replaceChildren } from '../common/dom';
import { icon } from '../common/icons';
import { isDark, onThemeChange } from '../common/theme';
import { timestamp } from '../common/time';
import { toastError } from '../common/toast';
import { type Collaboration, PresenceBar, saveLabel, type SharedText } from './collab';
import { baseName, isWithin, parentOf, type WorkspaceFiles } from './files';
import { HistoryPanel } from './history';
import { languageFor, monaco } from './monaco';
import { NotebookView } from './notebook';

interface Tab {
  path: string;
  /** Null while loading, and for files that are not text or shown as a notebook. */
  model: monaco.editor.ITextModel | null;
  /** The URI of the tab's model, known before the model exists (language services ask). */
  uri: string | null;
  /** The rendered view of a notebook (null for every other tab). */
  notebook: NotebookView | null;
  /** A notebook the person chose to see as text (its JSON in Monaco). */
  asText: boolean;
  binary: boolean;
  tooLarge?: boolean;
  /** Monaco's alternative version id of the text last saved or loaded. */
  savedVersion: number;
  /** last_modified (ms) of the version on disk this tab is based on. */
  diskModified: number;
  viewState: monaco.editor.ICodeEditorViewState | null;
  element: HTMLElement;
  conflict: 'changed' | 'deleted' | null;
  /** The save in flight, if any (change notices wait for it). */
  saving: Promise<unknown> | null;
  /** The file's shared document, when the workspace's tabs are shared (the server saves). */
  collab: SharedText | null;
  loaded: Promise<void>;
}

export interface EditorCallbacks {
  /** The open tabs or the active one changed (to remember them). */
  tabsChanged(open: string[], active: string | null): void;
  /** Cursor moved or active file changed: for the status bar. */
  cursor(info: { line: number; column: number; language: string } | null): void;
  /** Reveal a file in the tree. */
  reveal(path: string): void;
  /** Shift+Enter in a Python file: run the selection or the current line in the console. */
  runSelection(): void;
  /** A text tab's file has a new path (language services reopen it under that name). */
  documentMoved(model: monaco.editor.ITextModel): void;
}

/** What is known on disk about a path: metadata, null (gone), undefined (unknown). */
export type Lookup = (path: string) => Contents.IModel | null | undefined;

/** Larger files are offered as downloads instead of being loaded into the editor. */
const MAX_EDITABLE_BYTES = 10 * 1024 * 1024;

function isNotebook(path: string): boolean {
  return path.toLowerCase().endsWith('.ipynb');
}

/** Lines without the indentation they all share (a selection from inside a block runs). */
function dedent(text: string): string {
  const lines = text.split('\n');
  const indents = lines.filter((line) => line.trim()).map((line) => /^[ \t]*/.exec(line)?.[0].length ?? 0);
  const common = Math.min(...indents);
  return common > 0 && Number.isFinite(common) ? lines.map((line) => line.slice(common)).join('\n') : text;
}

let modelCounter = 0;

function modelUri(path: string): monaco.Uri {
  // Unique per model (renames and reopenings never clash) through its query; the path is the
  // file's, so that language services see the extension and a reference list shows the folder.
  modelCounter += 1;
  return monaco.Uri.from({ scheme: 'file', path: `/${path}`, query: String(modelCounter) });
}

export class EditorArea {
  readonly element: HTMLElement;
  private readonly tabsBar: HTMLElement;
  private readonly banner: HTMLElement;
  private readonly host: HTMLElement;
  private readonly placeholder: HTMLElement;
  private readonly stack: HTMLElement;
  readonly editor: monaco.editor.IStandaloneCodeEditor;
  private readonly history: HistoryPanel;
  private readonly presence = new PresenceBar();
  /** Set when the workspace's text tabs are shared (collab.ts). */
  collaboration: Collaboration | null = null;
  private tabs: Tab[] = [];
  private active: Tab | null = null;
  /** The page title after the file name ("workspace · Platform"). */
  titleSuffix = document.title;

  constructor(
    private readonly files: WorkspaceFiles,
    private readonly callbacks: EditorCallbacks,
    private readonly lookup: Lookup = () => undefined,
  ) {
    this.tabsBar = h('div', { class: 'tabs', role: 'tablist', id: 'editor-tabs', 'aria-label': 'Open files' });
    this.banner = h('div', { class: 'editor-banner', id: 'editor-banner', role: 'alert', hidden: true });
    this.host = h('div', { class: 'editor-host', id: 'editor' });
    this.placeholder = h('div', { class: 'editor-placeholder', id: 'editor-placeholder' });
    this.history = new HistoryPanel(files);
    this.stack = h('div', { class: 'editor-stack' }, this.host, this.placeholder, this.history.element);
    this.element = h('section', { class: 'editor-area', 'aria-label': 'Editor' }, this.tabsBar, this.presence.element, this.banner, this.stack);
    this.editor = monaco.editor.create(this.host, {
      model: null,
      automaticLayout: true,
      theme: isDark() ? 'vs-dark' : 'vs',
      fontSize: 14,
      scrollBeyondLastLine: false,
      renderWhitespace: 'selection',
      tabSize: 4,
      detectIndentation: true,
      fixedOverflowWidgets: true,
    });
    onThemeChange((dark) => monaco.editor.setTheme(dark ? 'vs-dark' : 'vs'));
    this.editor.onDidChangeCursorPosition(() => this.reportCursor());
    this.editor.addCommand(monaco.KeyMod.Shift | monaco.KeyCode.Enter, () => callbacks.runSelection(), 'editorLangId == python');
    // Format Document is Shift+Alt+F on every system (Monaco's default on Linux: Ctrl+Shift+I).
    monaco.editor.addKeybindingRule({
      keybinding: monaco.KeyMod.Shift | monaco.KeyMod.Alt | monaco.KeyCode.KeyF,
      command: 'editor.action.formatDocument',
      when: 'editorHasDocumentFormattingProvider && editorTextFocus && !editorReadonly',
    });
    this.tabsBar.addEventListener('auxclick', (event) => {
      const path = this.tabPath(event.target);
      if (event.button === 1 && path !== null) void this.close(path);
    });
    this.showPlaceholder();
  }

  /** Set for a viewer: Monaco refuses typing with this message, and nothing is saved. */
  private viewOnly: string | null = null;

  /** Make the editor a viewer's: files open and show changes, but cannot be edited or saved. */
  setViewOnly(message: string): void {
    this.viewOnly = message;
    this.editor.updateOptions({ readOnly: true, readOnlyMessage: { value: message } });
  }

  // --- tabs ---------------------------------------------------------------------------------

  private find(path: string): Tab | undefined {
    return this.tabs.find((t) => t.path === path);
  }

  private tabPath(target: EventTarget | null): string | null {
    const tab = target instanceof Element ? target.closest<HTMLElement>('.tab') : null;
    return tab?.dataset.path ?? null;
  }

  get activePath(): string | null {
    return this.active?.path ?? null;
  }

  get openPaths(): string[] {
    return this.tabs.map((t) => t.path);
  }

  /** The path of the tab a model belongs to (null for other models: a diff's, a copy's). */
  pathOf(model: monaco.editor.ITextModel): string | null {
    const uri = model.uri.toString();
    return this.tabs.find((t) => t.uri === uri)?.path ?? null;
  }

  /** The model of the tab a file is open in as text, or null. */
  modelOf(path: string): monaco.editor.ITextModel | null {
    return this.find(path)?.model ?? null;
  }

  /** Open a file's tab with the cursor at a position or a selection (go to definition). */
  async openAt(path: string, where?: monaco.IRange | monaco.IPosition): Promise<void> {
    await this.open(path);
    const model = this.find(path)?.model;
    if (!where || !model || this.editor.getModel() !== model) return;
    if ('startLineNumber' in where) {
      this.editor.setSelection(where);
      this.editor.revealRangeInCenterIfOutsideViewport(where);
    } else {
      this.editor.setPosition(where);
      this.editor.revealPositionInCenterIfOutsideViewport(where);
    }
    this.editor.focus();
  }

  isDirty(tab: Tab): boolean {
    return tab.collab === null && tab.model !== null && tab.model.getAlternativeVersionId() !== tab.savedVersion;
  }

  anyDirty(): boolean {
    return this.tabs.some((t) => this.isDirty(t));
  }

  private tabElement(path: string): HTMLElement {
    const close = h('button', { type: 'button', class: 'tab-close', 'aria-label': `Close ${baseName(path)}`, title: 'Close' }, icon('close'));
    const element = h('div', { class: 'tab', role: 'tab', 'data-path': path, title: path, tabindex: 0 },
      icon('file'), h('span', { class: 'tab-name' }, baseName(path)), h('span', { class: 'tab-dirty', 'aria-hidden': 'true' }),
      h('span', { class: 'tab-save' }), close);
    element.addEventListener('click', (event) => {
      if (close.contains(event.target as Node)) return;
      const tab = this.find(element.dataset.path ?? '');
      if (tab) this.activate(tab);
    });
    element.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' || event.key === ' ') {
        const tab = this.find(element.dataset.path ?? '');
        if (tab) this.activate(tab);
      }
    });
    close.addEventListener('click', () => void this.close(element.dataset.path ?? ''));
    return element;
  }

  private updateTab(tab: Tab): void {
    const dirty = this.isDirty(tab);
    tab.element.dataset.path = tab.path;
    tab.element.title = tab.path + (tab.conflict === 'deleted' ? ' (deleted on disk)' : '');
    const name = tab.element.querySelector('.tab-name');
    if (name) name.textContent = baseName(tab.path);
    tab.element.classList.toggle('dirty', dirty);
    const save = tab.element.querySelector('.tab-save');
    if (save) save.textContent = saveLabel(tab.collab);
    tab.element.classList.toggle('deleted', tab.conflict === 'deleted');
    tab.element.classList.toggle('conflict', tab.conflict === 'changed');
    tab.element.classList.toggle('active', tab === this.active);
    tab.element.setAttribute('aria-selected', String(tab === this.active));
    if (tab === this.active) {
      document.title = `${dirty ? '● ' : ''}${baseName(tab.path)} · ${this.titleSuffix}`;
      this.renderBanner();
      this.presence.show(tab.collab);
    }
  }

  private notifyTabs(): void {
    this.callbacks.tabsChanged(this.openPaths, this.activePath);
  }

  /** Open a file in a tab (or switch to its tab). */
  async open(path: string, focus = true): Promise<void> {
    const existing = this.find(path);
    if (existing) {
      this.activate(existing, focus);
      return existing.loaded;
    }
    const tab: Tab = {
      path, model: null, uri: null, notebook: null, asText: false, binary: false, savedVersion: 0, diskModified: 0, viewState: null,
      element: this.tabElement(path), conflict: null, saving: null, collab: null, loaded: Promise.resolve(),
    };
    this.tabs.push(tab);
    this.tabsBar.append(tab.element);
    tab.loaded = this.load(tab).catch((error: unknown) => {
      toastError(`Could not open “${path}”: ${describeError(error)}`);
      this.discard(tab);
    });
    this.activate(tab, focus);
    this.notifyTabs();
    return tab.loaded;
  }

  private async load(tab: Tab): Promise<void> {
    const known = this.lookup(tab.path) ?? (await this.files.stat(tab.path));
    if ((known?.size ?? 0) > MAX_EDITABLE_BYTES) {
      tab.binary = true;
      tab.tooLarge = true;
      if (this.active === tab) this.show(tab);
      this.updateTab(tab);
      return;
    }
    if (isNotebook(tab.path) && !tab.asText) {
      await this.loadNotebook(tab);
      return;
    }
    const file = await this.files.read(tab.path);
    tab.diskModified = timestamp(file.last_modified);
    if (file.format !== 'text' || typeof file.content !== 'string') {
      tab.binary = true;
    } else {
      const uri = modelUri(tab.path);
      tab.uri = uri.toString();
      const model = monaco.editor.createModel(file.content, languageFor(tab.path), uri);
      tab.model = model;
      tab.collab = await this.collaboration?.share(tab.path, model, this.editor, () => this.updateTab(tab)) ?? null;
      if (!this.tabs.includes(tab)) tab.collab?.destroy();
      tab.savedVersion = model.getAlternativeVersionId();
      model.onDidChangeContent(() => this.updateTab(tab));
    }
    if (this.active === tab) this.show(tab);
    this.updateTab(tab);
  }

  private async loadNotebook(tab: Tab): Promise<void> {
    const file = await this.files.readNotebook(tab.path);
    tab.diskModified = timestamp(file.last_modified);
    if (tab.notebook === null) {
      tab.notebook = new NotebookView(() => void this.openAsText(tab));
      this.stack.append(tab.notebook.element);
    }
    tab.notebook.render(file.content);
    if (this.active === tab) this.show(tab);
    this.updateTab(tab);
  }

  /** Replace a notebook's rendered view by its JSON in the editor. */
  private async openAsText(tab: Tab): Promise<void> {
    tab.notebook?.element.remove();
    tab.notebook = null;
    tab.asText = true;
    tab.loaded = this.load(tab).catch((error: unknown) => {
      toastError(`Could not open “${tab.path}” as text: ${describeError(error)}`);
    });
    this.show(tab);
    await tab.loaded;
  }

  activate(tab: Tab, focus = true): void {
    if (this.active && this.active !== tab && this.active.model) {
      this.active.viewState = this.editor.saveViewState();
    }
    const previous = this.active;
    this.active = tab;
    if (previous) this.updateTab(previous);
    this.show(tab);
    this.updateTab(tab);
    tab.element.scrollIntoView({ block: 'nearest', inline: 'nearest' });
    if (focus && tab.model) this.editor.focus();
    this.notifyTabs();
  }

  private show(tab: Tab): void {
    if (this.history.path !== null && this.history.path !== tab.path) this.history.close();
    for (const other of this.tabs) {
      if (other.notebook) other.notebook.element.hidden = other !== tab;
    }
    if (tab.notebook) {
      this.editor.setModel(null);
      this.host.hidden = true;
      this.placeholder.hidden = true;
    } else if (tab.model) {
      this.placeholder.hidden = true;
      this.host.hidden = false;
      if (this.editor.getModel() !== tab.model) {
        this.editor.setModel(tab.model);
        if (tab.viewState) this.editor.restoreViewState(tab.viewState);
      }
    } else if (tab.binary) {
      this.showPlaceholder(h('div', {},
        h('p', {}, tab.tooLarge
          ? `“${baseName(tab.path)}” is too large to edit here (over ${MAX_EDITABLE_BYTES / 1024 / 1024} MB).`
          : `“${baseName(tab.path)}” is not a text file.`),
        h('a', { class: 'button', href: this.files.downloadUrl(tab.path), download: baseName(tab.path) }, icon('download'), 'Download')));
    } else {
      this.showPlaceholder(h('p', {}, 'Loading…'));
    }
    this.renderBanner();
    this.reportCursor();
  }

  private showPlaceholder(content?: HTMLElement): void {
    this.editor.setModel(null);
    this.host.hidden = true;
    this.placeholder.hidden = false;
    replaceChildren(this.placeholder, content ?? h('div', { class: 'welcome' },
      h('p', {}, 'Open a file from the tree on the left.'),
      h('p', { class: 'muted' }, 'Ctrl/Cmd+S saves · F5 runs the Python file in a terminal · Shift+F5 runs it in the console'),
      h('p', { class: 'muted' }, 'Shift+Enter runs the selection, or the current line, in the console'),
      h('p', { class: 'muted' }, 'Alt+H shows the saved versions of the file, to compare or restore one')));
  }

  private reportCursor(): void {
    const model = this.active?.model;
    const position = this.editor.getPosition();
    if (!model || !position) {
      this.callbacks.cursor(null);
      return;
    }
    this.callbacks.cursor({ line: position.lineNumber, column: position.column, language: model.getLanguageId() });
  }

  /** Close a tab; a dirty one asks first. Resolves false if the person cancelled. */
  async close(path: string): Promise<boolean> {
    const tab = this.find(path);
    if (!tab) return true;
    if (this.isDirty(tab)) {
      this.activate(tab, false);
      const choice = await choose('Unsaved changes', `Save the changes to “${baseName(path)}” before closing?`, [
        { label: 'Cancel', value: 'cancel', kind: 'plain' },
        { label: "Don't save", value: 'discard', kind: 'danger' },
        { label: 'Save', value: 'save', kind: 'primary' },
      ], 'cancel');
      if (choice === 'cancel') return false;
      if (choice === 'save' && !(await this.save(path))) return false;
    }
    this.discard(tab);
    return true;
  }

  /** Close without asking (the file is gone, or the person chose so). */
  private discard(tab: Tab): void {
    const index = this.tabs.indexOf(tab);
    if (index < 0) return;
    this.tabs.splice(index, 1);
    tab.element.remove();
    tab.notebook?.element.remove();
    if (this.active === tab) {
      this.active = null;
      const next = this.tabs[Math.min(index, this.tabs.length - 1)];
      if (next) this.activate(next, false);
      else {
        this.history.close();
        this.showPlaceholder();
        this.banner.hidden = true;
        document.title = this.titleSuffix;
        this.reportCursor();
      }
    }
    tab.collab?.destroy();
    tab.model?.dispose();
    this.notifyTabs();
  }

  // --- saving -------------------------------------------------------------------------------

  /**
   * Save a tab (the active one by default); resolves true once the bytes are committed
   * (or, with ``onlyIfDirty``, when there was nothing to save).
   */
  async save(path?: string, onlyIfDirty = false): Promise<boolean> {
    if (this.viewOnly !== null) {
      toastError(this.viewOnly);
      return false;
    }
    const tab = path === undefined ? this.active : this.find(path);
    if (!tab) return false;
    await tab.loaded;
    const model = tab.model;
    if (!model) return !tab.binary;
    if (tab.collab) return tab.collab.saveNow();
    if (onlyIfDirty && !this.isDirty(tab) && tab.conflict !== 'deleted') return true;
    if (tab.saving) await tab.saving.catch(() => undefined);
    try {
      if (tab.conflict === 'changed' || (await this.changedOnDisk(tab))) {
        const choice = await choose('File changed on disk',
          `“${baseName(tab.path)}” changed on disk since you opened it. Overwrite it with your version, or reload it and lose your changes?`, [
            { label: 'Cancel', value: 'cancel', kind: 'plain' },
            { label: 'Reload', value: 'reload', kind: 'plain' },
            { label: 'Overwrite', value: 'overwrite', kind: 'danger' },
          ], 'cancel');
        if (choice === 'cancel') return false;
        if (choice === 'reload') {
          await this.reload(tab);
          return false;
        }
      }
      const version = model.getAlternativeVersionId();
      const saving = this.files.saveText(tab.path, model.getValue());
      tab.saving = saving;
      const saved = await saving;
      tab.savedVersion = version;
      tab.diskModified = timestamp(saved.last_modified);
      tab.conflict = null;
      this.updateTab(tab);
      return true;
    } catch (error) {
      toastError(`Could not save “${tab.path}”: ${describeError(error)}`);
      return false;
    } finally {
      tab.saving = null;
    }
  }

  private async changedOnDisk(tab: Tab): Promise<boolean> {
    const stat = await this.files.stat(tab.path);
    return stat !== null && timestamp(stat.last_modified) > tab.diskModified;
  }

  /** Replace a tab's text with what is on disk, keeping the cursor where it was. */
  private async reload(tab: Tab): Promise<void> {
    if (tab.collab) return; // the server merges the file's change into the shared text
    const file = await this.files.read(tab.path);
    const model = tab.model;
    if (!model || typeof file.content !== 'string' || file.format !== 'text') return;
    const view = this.active === tab ? this.editor.saveViewState() : null;
    if (model.getValue() !== file.content) {
      model.pushEditOperations([], [{ range: model.getFullModelRange(), text: file.content }], () => null);
    }
    if (view) this.editor.restoreViewState(view);
    tab.savedVersion = model.getAlternativeVersionId();
    tab.diskModified = timestamp(file.last_modified);
    tab.conflict = null;
    this.updateTab(tab);
  }

  // --- changes from elsewhere ---------------------------------------------------------------

  /** The file changed on disk (an event, or polling noticed a newer last_modified). */
  async externalChange(path: string, lastModified: string | null | undefined): Promise<void> {
    const tab = this.find(path);
    if (!tab) return;
    await tab.loaded;
    if (tab.saving) await tab.saving.catch(() => undefined);
    const when = timestamp(lastModified);
    if (tab.notebook) {
      if (tab.conflict === 'deleted' || when === 0 || when > tab.diskModified) await this.reloadNotebook(tab);
      return;
    }
    if (!tab.model || tab.collab) return;
    if (tab.conflict !== 'deleted' && when !== 0 && when <= tab.diskModified) return;
    if (this.isDirty(tab)) {
      if (tab.conflict === 'changed') return;
      tab.conflict = 'changed';
      this.updateTab(tab);
      return;
    }
    try {
      await this.reload(tab);
    } catch (error) {
      toastError(`Could not reload “${path}”: ${describeError(error)}`);
    }
  }

  private async reloadNotebook(tab: Tab): Promise<void> {
    try {
      tab.conflict = null;
      await this.loadNotebook(tab);
    } catch (error) {
      toastError(`Could not reload “${tab.path}”: ${describeError(error)}`);
    }
  }

  /** The file (or a folder holding it) was deleted by another side. */
  deletedOnDisk(path: string): void {
    for (const tab of this.tabs) {
      if (isWithin(tab.path, path) && tab.conflict !== 'deleted') {
        // The file's room closed: saving is this tab's again (it would create the file).
        tab.collab?.destroy();
        tab.collab = null;
        tab.conflict = 'deleted';
        this.updateTab(tab);
      }
    }
  }

  /** Forget every unsaved edit (the person chose to leave without saving). */
  discardAll(): void {
    for (const tab of this.tabs) {
      if (tab.model) tab.savedVersion = tab.model.getAlternativeVersionId();
    }
  }

  /** This IDE deleted the path: its tabs close. */
  deleted(path: string): void {
    for (const tab of [...this.tabs]) {
      if (isWithin(tab.path, path)) this.discard(tab);
    }
  }

  /** A file or folder moved: tabs follow it (and change language if the extension did). */
  moved(from: string, to: string): void {
    if (this.history.path !== null && isWithin(this.history.path, from)) this.history.close();
    for (const tab of this.tabs) {
      if (!isWithin(tab.path, from)) continue;
      tab.path = to + tab.path.slice(from.length);
      if (tab.conflict === 'deleted') tab.conflict = null;
      if (tab.model) {
        monaco.editor.setModelLanguage(tab.model, languageFor(tab.path));
        this.callbacks.documentMoved(tab.model);
      }
      if (tab.collab) void this.reshare(tab);
      this.updateTab(tab);
    }
    this.reportCursor();
    this.notifyTabs();
  }

  /** A shared tab's file moved (its old room closed): the tab joins the new path's. */
  private async reshare(tab: Tab): Promise<void> {
    tab.collab?.destroy();
    tab.collab = null;
    if (tab.model && this.collaboration) {
      tab.collab = await this.collaboration.share(tab.path, tab.model, this.editor, () => this.updateTab(tab));
    }
    this.updateTab(tab);
  }

  /** Polling: compare each open file with what the server says now. */
  async check(lookup: Lookup): Promise<void> {
    await Promise.all(this.tabs.map(async (tab) => {
      let entry = lookup(tab.path);
      if (entry === undefined) entry = await this.files.stat(tab.path);
      if (entry === null) this.deletedOnDisk(tab.path);
      else await this.externalChange(tab.path, entry.last_modified);
    }));
  }

  private renderBanner(): void {
    const tab = this.active;
    if (!tab?.conflict) {
      this.banner.hidden = true;
      return;
    }
    const name = baseName(tab.path);
    const button = (label: string, action: () => void, kind = ''): HTMLElement =>
      h('button', { type: 'button', class: `button small ${kind}`, onclick: action }, label);
    if (tab.conflict === 'changed') {
      replaceChildren(this.banner,
        h('span', {}, `“${name}” changed on disk. Your unsaved version differs.`),
        button('Reload from disk', () => void this.reload(tab).catch((e: unknown) => toastError(describeError(e)))),
        button('Keep mine', () => {
          tab.conflict = null;
          void this.files.stat(tab.path).then((stat) => {
            if (stat) tab.diskModified = timestamp(stat.last_modified);
          });
          this.updateTab(tab);
        }));
    } else if (tab.model) {
      replaceChildren(this.banner,
        h('span', {}, `“${name}” was deleted on disk. Saving will create it again.`),
        button('Close tab', () => this.discard(tab)),
        button('Save', () => void this.save(tab.path), 'primary'));
    } else {
      replaceChildren(this.banner,
        h('span', {}, `“${name}” was deleted on disk.`),
        button('Close tab', () => this.discard(tab), 'primary'));
    }
    this.banner.hidden = false;
  }

  /**
   * The code Shift+Enter runs: the selection (without its shared indentation) or, with none,
   * the current line, after which the cursor moves to the next line, as in VS Code. Null when
   * the editor does not show a file or the line is blank.
   */
  selectionOrLine(): string | null {
    const model = this.editor.getModel();
    const selection = this.editor.getSelection();
    if (!model || !selection || model !== this.active?.model) return null;
    if (!selection.isEmpty()) return dedent(model.getValueInRange(selection));
    const line = selection.positionLineNumber;
    const next = Math.min(line + 1, model.getLineCount());
    this.editor.setPosition({ lineNumber: next, column: model.getLineFirstNonWhitespaceColumn(next) || 1 });
    this.editor.revealLine(next);
    const text = model.getLineContent(line);
    return text.trim() ? text.trim() : null;
  }

  /** Open the active text file's history (its saved versions); Alt+H. */
  async showHistory(): Promise<void> {
    const tab = this.active;
    if (!tab) {
      toastError('Open a file to see its history.');
      return;
    }
    await tab.loaded;
    const model = tab.model;
    if (!model || this.active !== tab) {
      if (this.active === tab) toastError(`History compares text: “${baseName(tab.path)}” is not open as text.`);
      return;
    }
    await this.history.open({
      path: tab.path,
      model,
      dirty: () => this.isDirty(tab),
      reload: () => this.reload(tab),
      closed: () => {
        if (this.active === tab) this.editor.focus();
      },
    });
  }

  /** Reveal the active file in the tree. */
  revealActive(): void {
    if (this.active) this.callbacks.reveal(this.active.path);
  }

  /** The folder of the active file, for commands that need a place. */
  activeFolder(): string {
    return this.active ? parentOf(this.active.path) : '';
  }
}
