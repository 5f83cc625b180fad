// The IDE of one workspace: file tree | editor tabs / terminals, a Run button, a status bar.
import { ServerConnection } from '@jupyterlab/services';
import { describeError, errorStatus, logout } from '../common/api';
import { pageData, platformUrl, type WorkspaceModel } from '../common/config';
import { confirmDialog } from '../common/dialog';
import { h } from '../common/dom';
import { icon } from '../common/icons';
import { toast, toastError } from '../common/toast';
import { EditorArea } from './editor';
import { baseName, parentOf, WorkspaceFiles } from './files';
import { LayoutStore, splitter } from './layout';
import { configureWorkers, languageName } from './monaco';
import { SandboxStatus } from './sandbox';
import { ChangeFeed, type FileEvent, type SyncMode } from './sync';
import { TerminalPanel } from './terminals';
import { FileTree } from './tree';

/** A path as one shell word. */
export function shellQuote(path: string): string {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${path.replace(/'/g, `'\\''`)}'`;
}

export class Ide {
  private readonly workspace: WorkspaceModel;
  private readonly files: WorkspaceFiles;
  private readonly layout: LayoutStore;
  private readonly tree: FileTree;
  private readonly editor: EditorArea;
  private readonly terminals: TerminalPanel;
  private readonly sandbox: SandboxStatus;
  private readonly feed: ChangeFeed;
  private readonly runButton: HTMLButtonElement;
  private readonly syncBadge: HTMLElement;
  private readonly cursorInfo: HTMLElement;
  private pollCount = 0;
  private pollFailing = false;

  constructor() {
    const data = pageData();
    if (!data.workspace) throw new Error('This page was served without its workspace.');
    this.workspace = data.workspace;
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
    }, (path) => this.tree.entry(path));
    this.editor.titleSuffix = document.title;
    this.terminals = new TerminalPanel(baseUrl, wsUrl, (done) => {
      if (done) void this.sandbox.refresh();
      else this.sandbox.expectStart();
    });
    this.sandbox = new SandboxStatus(this.workspace.uuid);
    this.feed = new ChangeFeed(`${wsUrl}api/events`, {
      file: (event) => this.onFileEvent(event),
      sandbox: (event) => this.sandbox.apply(event),
      poll: () => this.poll(),
      mode: (mode) => this.showSyncMode(mode),
    });

    this.runButton = h('button', { type: 'button', class: 'button primary', id: 'run', title: 'Save and run the current Python file (F5)' }, icon('run'), 'Run');
    this.runButton.addEventListener('click', () => void this.run());
    this.syncBadge = h('span', { class: 'status-item', id: 'sync-mode' });
    this.cursorInfo = h('span', { class: 'status-item', id: 'cursor-info' });
    this.build(data.user?.username ?? '');
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
    center.append(this.editor.element, panelBar, this.terminals.element);
    const header = h('header', { class: 'topbar ide-topbar' },
      h('a', { class: 'brand', href: platformUrl('workspaces'), title: 'All workspaces' }, 'Workspaces'),
      h('span', { class: 'crumb-sep' }, '/'),
      h('span', { class: 'workspace-name', id: 'workspace-name' }, this.workspace.name),
      h('span', { class: 'spacer' }),
      this.runButton);
    const status = h('footer', { class: 'statusbar', id: 'statusbar' },
      this.sandbox.element, this.syncBadge, h('span', { class: 'spacer' }), this.cursorInfo,
      h('span', { class: 'status-item who', id: 'username' }, username),
      h('button', { type: 'button', class: 'status-button', id: 'logout', onclick: () => void this.logout() }, icon('logout'), 'Log out'));
    document.body.append(h('div', { class: 'ide' }, header,
      h('div', { class: 'ide-main' }, this.tree.element, sidebarBar, center), status));
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
    await terminalsReady;
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
        void this.run();
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

  /** Save the current Python file and run it in a terminal. */
  async run(): Promise<void> {
    const path = this.editor.activePath;
    if (path === null) {
      toastError('Open a Python file to run it.');
      return;
    }
    if (!path.endsWith('.py')) {
      toastError(`Run works on Python files: “${baseName(path)}” is not one.`);
      return;
    }
    this.runButton.disabled = true;
    try {
      if (!(await this.editor.save(path, true))) return;
      await this.terminals.run(`python ${shellQuote(path)}`);
    } finally {
      this.runButton.disabled = false;
    }
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
