// The IDE of one workspace: file tree | editor tabs, Python console / terminals, Run and Run in
// console buttons, a status bar.
import { ServerConnection } from '@jupyterlab/services';
import { describeError, errorStatus, logout } from '../common/api';
import { pageData, platformUrl, type WorkspaceModel } from '../common/config';
import { confirmDialog } from '../common/dialog';
import { h } from '../common/dom';
import { icon } from '../common/icons';
import { toast, toastError } from '../common/toast';
import { Collaboration, collaborationWanted } from './collab';
import { ConsolePanel } from './console';
import { EditorArea } from './editor';
import { baseName, parentOf, WorkspaceFiles } from './files';
import { LayoutStore, splitter } from './layout';
import { PythonLanguageClient } from './lsp';
import { type Sharing, SharingControls, sharingOf, VIEW_ONLY_MESSAGE } from './members';
import { configureWorkers, languageName } from './monaco';
import { SandboxStatus } from './sandbox';
import { installSearch } from './searchui';
import { ChangeFeed, type FileEvent, type SyncMode } from './sync';
import { TerminalPanel } from './terminals';
import { FileTree } from './tree';

/** A path as one shell word. */
export function shellQuote(path: string): string {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${path.replace(/'/g, `'\\''`)}'`;
}

export class Ide {
  private readonly workspace: WorkspaceModel;
  /** The caller's role here, the owner's name, whether shared (members.ts). */
  private readonly sharing: Sharing;
  private readonly sharingControls: SharingControls;
  private readonly files: WorkspaceFiles;
  private readonly layout: LayoutStore;
  private readonly tree: FileTree;
  private readonly editor: EditorArea;
  private readonly terminals: TerminalPanel;
  private readonly console: ConsolePanel;
  private readonly sandbox: SandboxStatus;
  private readonly lsp: PythonLanguageClient;
  private readonly feed: ChangeFeed;
  private readonly runButton: HTMLButtonElement;
  private readonly runConsoleButton: HTMLButtonElement;
  private readonly consoleToggle: HTMLButtonElement;
  private readonly historyButton: HTMLButtonElement;
  private readonly consoleBar: HTMLElement;
  private readonly syncBadge: HTMLElement;
  private readonly cursorInfo: HTMLElement;
  private pollCount = 0;
  private pollFailing = false;
  private reloading = false;

  constructor() {
    const data = pageData();
    if (!data.workspace) throw new Error('This page was served without its workspace.');
    this.workspace = data.workspace;
    this.sharing = sharingOf(this.workspace, data.user?.username ?? '');
    this.sharingControls = new SharingControls(this.workspace.uuid, data.user?.username ?? '', this.sharing, () => this.accessChanged());
    configureWorkers(data.workers ?? {});
    const baseUrl = new URL(data.baseUrl, location.href).href;
    const wsUrl = baseUrl.replace(/^http/, 'ws');
    const settings = ServerConnection.makeSettings({ baseUrl, wsUrl });
    this.files = new WorkspaceFiles(settings);
    this.layout = new LayoutStore(this.workspace.uuid);
    document.title = `${this.workspace.name} · Platform`;

    this.tree = new FileTree(this.files, {
      open: (path) => void this.editor.open(path),
      moved: (from, to) => this.editor.moved(from, to),
      deleted: (path) => this.editor.deleted(path),
      expandedChanged: (expanded) => this.layout.update({ expanded }),
    }, this.layout.value.expanded);
    this.editor = new EditorArea(this.files, {
      tabsChanged: (open, active) => {
        this.layout.update({ open, active });
        this.tree.markActive(active);
      },
      cursor: (info) => {
        this.cursorInfo.textContent = info ? `Ln ${info.line}, Col ${info.column} · ${languageName(info.language)}` : '';
      },
      reveal: (path) => this.tree.reveal(path),
      runSelection: () => this.runSelection(),
      documentMoved: (model) => this.lsp.documentMoved(model),
    }, (path) => this.tree.entry(path));
    this.editor.titleSuffix = document.title;
    if (collaborationWanted(this.workspace)) this.editor.collaboration = new Collaboration(wsUrl, data.user?.username ?? '');
    const sandboxStarting = (done: boolean): void => {
      if (done) void this.sandbox.refresh();
      else this.sandbox.expectStart();
    };
    this.terminals = new TerminalPanel(baseUrl, wsUrl, sandboxStarting);
    this.console = new ConsolePanel(settings, this.workspace.uuid, {
      starting: sandboxStarting,
      visibilityChanged: (open) => this.consoleShown(open),
    });
    this.consoleBar = splitter({
      orientation: 'vertical', pane: this.console.element, paneAfter: true, min: 240,
      max: () => Math.max(260, window.innerWidth - this.layout.value.sidebar - 320), initial: this.layout.value.console,
      label: 'Resize the console', onResize: (width) => this.layout.update({ console: width }),
    });
    this.sandbox = new SandboxStatus(this.workspace.uuid);
    this.lsp = new PythonLanguageClient(`${wsUrl}lsp/ws/pylsp`, this.files, this.editor);
    // A viewer has no language server (its socket is an editor's).
    if (this.sharing.role !== 'viewer') this.sandbox.onStateChange((state) => this.lsp.sandboxChanged(state));
    this.feed = new ChangeFeed(`${wsUrl}api/events`, {
      file: (event) => this.onFileEvent(event),
      sandbox: (event) => this.sandbox.apply(event),
      notice: (event) => toast(event.message, 'error'),
      member: (event) => this.sharingControls.memberChanged(event),
      accessChanged: () => this.accessChanged(),
      poll: () => this.poll(),
      mode: (mode) => this.showSyncMode(mode),
    });

    this.runButton = h('button', { type: 'button', class: 'button primary', id: 'run', title: 'Save and run the current Python file (F5)' }, icon('run'), 'Run');
    this.runButton.addEventListener('click', () => void this.run());
    this.runConsoleButton = h('button', {
      type: 'button', class: 'button', id: 'run-console',
      title: 'Save and run the current Python file in the Python console, keeping its variables (Shift+F5). Shift+Enter in the editor runs the selection, or the current line.',
    }, icon('run'), 'Run in console');
    this.runConsoleButton.addEventListener('click', () => void this.runInConsole());
    this.historyButton = h('button', {
      type: 'button', class: 'button', id: 'history-button',
      title: 'The saved versions of the current file: compare one with your text, restore it (Alt+H)',
      onclick: () => void this.editor.showHistory(),
    }, icon('history'), 'History');
    this.consoleToggle = h('button', {
      type: 'button', class: 'icon-button', id: 'toggle-console', title: 'Show or hide the Python console',
      'aria-label': 'Python console', 'aria-pressed': 'false', onclick: () => this.console.setOpen(!this.console.open),
    }, icon('console'));
    this.syncBadge = h('span', { class: 'status-item', id: 'sync-mode' });
    this.cursorInfo = h('span', { class: 'status-item', id: 'cursor-info' });
    this.terminals.accessChanged = () => this.accessChanged();
    if (this.sharing.role === 'viewer') {
      this.editor.setViewOnly(VIEW_ONLY_MESSAGE);
      this.tree.setViewOnly();
      this.terminals.setViewOnly(VIEW_ONLY_MESSAGE);
      this.console.setViewOnly(VIEW_ONLY_MESSAGE);
      for (const button of [this.runButton, this.runConsoleButton]) {
        button.disabled = true;
        button.title = VIEW_ONLY_MESSAGE;
      }
    } else if (this.sharing.shared || this.sharing.role !== 'owner') {
      this.terminals.followOthers();
    }
    this.build(data.user?.username ?? '');
  }

  /** The owner changed or revoked this user's role: the page starts again with the new one
   * (or says the workspace is not theirs any more). */
  private accessChanged(): void {
    if (this.reloading) return;
    this.reloading = true;
    toast('The owner changed your access to this workspace: reloading.', 'info');
    window.setTimeout(() => location.reload(), 1500);
  }

  private build(username: string): void {
    const center = h('div', { class: 'ide-center' });
    const sidebarBar = splitter({
      orientation: 'vertical', pane: this.tree.element, paneAfter: false, min: 140,
      max: () => Math.max(160, window.innerWidth - 320), initial: this.layout.value.sidebar,
      label: 'Resize the file tree', onResize: (sidebar) => this.layout.update({ sidebar }),
    });
    const panelBar = splitter({
      orientation: 'horizontal', pane: this.terminals.element, paneAfter: true, min: 80,
      max: () => Math.max(100, window.innerHeight - 200), initial: this.layout.value.panel,
      label: 'Resize the terminal panel', onResize: (panel) => {
        this.layout.update({ panel });
        this.terminals.fit();
      },
    });
    const editorRow = h('div', { class: 'ide-editor-row' }, this.editor.element, this.console.element);
    center.append(editorRow, panelBar, this.terminals.element);
    const header = h('header', { class: 'topbar ide-topbar' },
      h('a', { class: 'brand', href: platformUrl('workspaces'), title: 'All workspaces' }, 'Workspaces'),
      h('span', { class: 'crumb-sep' }, '/'),
      h('span', { class: 'workspace-name', id: 'workspace-name' }, this.workspace.name),
      h('span', { class: 'spacer' }),
      this.sharingControls.element,
      this.historyButton, this.runButton, this.runConsoleButton, this.consoleToggle);
    const status = h('footer', { class: 'statusbar', id: 'statusbar' },
      this.sandbox.element, this.syncBadge, this.sharing.role !== 'viewer' && this.lsp.status.element, h('span', { class: 'spacer' }), this.cursorInfo,
      h('span', { class: 'status-item who', id: 'username' }, username),
      h('button', { type: 'button', class: 'status-button', id: 'logout', onclick: () => void this.logout() }, icon('logout'), 'Log out'));
    document.body.append(h('div', { class: 'ide' }, header,
      h('div', { class: 'ide-main' }, this.tree.element, sidebarBar, installSearch(this.files, this.editor), center), status));
  }

  /** Load everything and start following changes. */
  async start(): Promise<void> {
    this.bindKeys();
    window.addEventListener('beforeunload', (event) => {
      this.layout.flush();
      if (this.editor.anyDirty()) {
        event.preventDefault();
      }
    });
    const treeReady = this.tree.start().catch((error: unknown) => toastError(`Could not list the files: ${describeError(error)}`));
    await this.sandbox.refresh();
    this.console.setOpen(this.layout.value.consoleOpen);
    const consoleReady = this.console.start();
    const terminalsReady = this.terminals.start();
    await treeReady;
    const { open, active } = this.layout.value;
    const toOpen = open.length ? open : this.tree.entry('main.py') ? ['main.py'] : [];
    for (const path of toOpen) {
      if (this.tree.entry(path) !== null) void this.editor.open(path, false);
    }
    const focus = active !== null && toOpen.includes(active) ? active : toOpen[0];
    if (focus !== undefined && this.tree.entry(focus) !== null) await this.editor.open(focus);
    this.feed.start();
    await Promise.all([terminalsReady, consoleReady]);
  }

  private bindKeys(): void {
    window.addEventListener('keydown', (event) => {
      const mod = event.ctrlKey || event.metaKey;
      if (mod && !event.altKey && event.key.toLowerCase() === 's') {
        event.preventDefault();
        event.stopPropagation();
        void this.editor.save();
      } else if (event.key === 'F5' && !mod) {
        event.preventDefault();
        event.stopPropagation();
        void (event.shiftKey ? this.runInConsole() : this.run());
      } else if (event.altKey && !mod && !event.shiftKey && event.code === 'KeyH') {
        event.preventDefault();
        event.stopPropagation();
        void this.editor.showHistory();
      }
    }, true);
  }

  private async logout(): Promise<void> {
    if (this.editor.anyDirty()) {
      const leave = await confirmDialog('Unsaved changes', 'Some files have unsaved changes. Log out and lose them?', 'Log out', true);
      if (!leave) return;
      this.editor.discardAll();
    }
    await logout();
  }

  /**
   * The active file's path once it is saved, for the run commands; null (after saying why)
   * when there is no Python file to run or the save failed.
   */
  private async savedPythonFile(action: string): Promise<string | null> {
    const path = this.editor.activePath;
    if (path === null) {
      toastError('Open a Python file to run it.');
      return null;
    }
    if (!path.endsWith('.py')) {
      toastError(`${action} works on Python files: “${baseName(path)}” is not one.`);
      return null;
    }
    return (await this.editor.save(path, true)) ? path : null;
  }

  /** Save the current Python file and run it in a terminal. */
  async run(): Promise<void> {
    if (this.sharing.role === 'viewer') return;
    this.runButton.disabled = true;
    try {
      const path = await this.savedPythonFile('Run');
      if (path !== null) await this.terminals.run(`python ${shellQuote(path)}`);
    } finally {
      this.runButton.disabled = false;
    }
  }

  /** Save the current Python file and run it in the console's kernel (``%run -i``). */
  async runInConsole(): Promise<void> {
    if (this.sharing.role === 'viewer') return;
    this.runConsoleButton.disabled = true;
    let path: string | null;
    try {
      path = await this.savedPythonFile('Run in console');
    } finally {
      this.runConsoleButton.disabled = false;
    }
    // -i: the file runs among the console's variables, and what it defines stays there.
    if (path !== null) await this.console.execute(`%run -i ${shellQuote(path)}`);
  }

  /** Shift+Enter in the editor: the selection, or the current line, runs in the console. */
  private runSelection(): void {
    if (this.sharing.role === 'viewer') return;
    const code = this.editor.selectionOrLine();
    if (code !== null) void this.console.execute(code);
  }

  private consoleShown(open: boolean): void {
    // The bar is in the page only while there is a console to resize.
    if (open) this.console.element.before(this.consoleBar);
    else this.consoleBar.remove();
    this.consoleToggle.setAttribute('aria-pressed', String(open));
    this.layout.update({ consoleOpen: open });
  }

  private onFileEvent(event: FileEvent): void {
    const refresh = (dir: string): void => {
      void this.tree.dirChanged(dir).catch(() => undefined);
    };
    switch (event.type) {
      case 'created':
        refresh(parentOf(event.path));
        void this.editor.externalChange(event.path, event.last_modified);
        break;
      case 'modified':
        void this.editor.externalChange(event.path, event.last_modified);
        break;
      case 'deleted':
        refresh(parentOf(event.path));
        this.editor.deletedOnDisk(event.path);
        break;
      case 'moved':
        if (event.old_path !== undefined) {
          refresh(parentOf(event.old_path));
          this.editor.moved(event.old_path, event.path);
        }
        refresh(parentOf(event.path));
        break;
    }
  }

  /** Compare the tree and the open files with the server (no events socket, or resync). */
  private async poll(): Promise<void> {
    try {
      await this.tree.refreshLoaded();
      await this.editor.check((path) => this.tree.entry(path));
      this.pollCount += 1;
      if (this.pollCount % 5 === 0) await this.sandbox.refresh();
      if (this.pollFailing) toast('Connection to the server restored.', 'success');
      this.pollFailing = false;
    } catch (error) {
      if (errorStatus(error) === 401 && !this.editor.anyDirty()) {
        // The login ended (logged out elsewhere, expired, revoked): log in again, come back.
        location.assign(platformUrl(`login?next=${encodeURIComponent(location.pathname)}`));
        return;
      }
      if (!this.pollFailing) toastError(`Cannot check the workspace for changes: ${describeError(error)}`);
      this.pollFailing = true;
      throw error;
    }
  }

  private showSyncMode(mode: SyncMode): void {
    this.syncBadge.dataset.mode = mode;
    this.syncBadge.textContent = mode === 'live' ? 'Live file updates' : 'Checking files every 2 s';
    this.syncBadge.title = mode === 'live'
      ? 'Changes made in the sandbox appear at once.'
      : 'The live events connection is unavailable; open folders and files are compared every 2 seconds.';
  }
}
