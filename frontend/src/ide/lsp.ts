// Python IntelliSense in the editor: Monaco's own LSP client (monaco.lsp.MonacoLspClient) talking
// to the language server of the workspace's sandbox over WS /w/<uuid>/lsp/ws/pylsp, connected
// while the sandbox runs and again after every close.
import { FileCopies } from './lsp_copies';
import { LspStatusView } from './lsp_status';
import { LspTransport } from './lsp_transport';
import { workspacePath } from './lsp_uris';
import type { WorkspaceFiles } from './files';
import { monaco } from './monaco';
import type { SandboxState } from './sandbox';

/** Seconds between attempts to connect, at most (the delay doubles from 1 s up to this). */
const MAX_BACKOFF = 30;
/** The close code of the bridge when the language server restarts: reconnect at once. */
const SERVER_RESTARTED = 1012;
/** The owner of the markers Monaco's LSP client sets from the server's diagnostics. */
const DIAGNOSTICS_OWNER = 'lsp';

/** What the client needs from the editor tabs. */
export interface LspEditor {
  /** The path of a Python file open in a tab that a model holds, or null. */
  pathOf(model: monaco.editor.ITextModel): string | null;
  /** The model of the tab a file is open in, or null. */
  modelOf(path: string): monaco.editor.ITextModel | null;
  /** Open (or switch to) a file's tab and put the cursor there. */
  openAt(path: string, where?: monaco.IRange | monaco.IPosition): Promise<void>;
}

/**
 * Completion, hover, signature help, definitions, references, rename, diagnostics and formatting
 * for the workspace's Python files, from the sandbox's language server (pylsp with ruff).
 *
 * One ``MonacoLspClient`` serves the page; ``LspTransport`` carries it over one socket after
 * another. Edits a rename makes to files that are not open in a tab are saved at once through
 * the Contents API (``FileCopies``); files open in tabs get the edits as unsaved changes.
 */
export class PythonLanguageClient {
  readonly status = new LspStatusView();
  private readonly transport: LspTransport;
  private readonly copies: FileCopies;
  private client: monaco.lsp.MonacoLspClient | null = null;
  private socket: WebSocket | null = null;
  private sandbox: SandboxState = 'stopped';
  private attempt = 0;
  private retryTimer: number | undefined;

  constructor(
    private readonly url: string,
    files: WorkspaceFiles,
    private readonly editor: LspEditor,
  ) {
    this.copies = new FileCopies(files);
    this.transport = new LspTransport({
      pathOf: (model) => (model.getLanguageId() === 'python' ? editor.pathOf(model) : null),
      modelFor: async (path) => editor.modelOf(path) ?? (await this.copies.model(path)),
    }, (ready) => this.readyChanged(ready));
    monaco.editor.registerEditorOpener({
      openCodeEditor: (_source, resource, where) => this.openDocument(resource, where),
    });
  }

  /** The sandbox's state changed: connect when it runs, say why not otherwise. */
  sandboxChanged(state: SandboxState): void {
    const before = this.sandbox;
    this.sandbox = state;
    if (state === 'running') {
      if (before !== 'running') this.attempt = 0;
      if (this.socket === null) this.connect();
      return;
    }
    window.clearTimeout(this.retryTimer);
    this.showSandboxState();
  }

  /** A tab's file moved: the server forgets the old name and learns the new one. */
  documentMoved(model: monaco.editor.ITextModel): void {
    this.transport.moved(model);
  }

  private showSandboxState(): void {
    if (this.socket !== null) return;
    if (this.sandbox === 'starting') this.status.show('waiting');
    else if (this.sandbox === 'unresponsive') this.status.show('unresponsive');
    else if (this.sandbox !== 'running') this.status.show('stopped');
  }

  private connect(): void {
    window.clearTimeout(this.retryTimer);
    if (this.socket !== null || this.sandbox !== 'running') return;
    this.status.show('starting');
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket !== socket) return;
      this.transport.attach(socket);
      this.client ??= new monaco.lsp.MonacoLspClient(this.transport);
    };
    socket.onclose = (event: CloseEvent) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.transport.detach();
      // Diagnostics nobody updates any more would mislead: they come back with the server.
      monaco.editor.removeAllMarkers(DIAGNOSTICS_OWNER);
      this.lost(event.code);
    };
  }

  private readyChanged(ready: boolean): void {
    if (ready) {
      this.attempt = 0;
      this.status.show('ready');
    }
  }

  /** The socket closed (or was refused): try again later while the sandbox runs. */
  private lost(code: number): void {
    if (this.sandbox !== 'running') {
      this.showSandboxState();
      return;
    }
    const delay = code === SERVER_RESTARTED ? 1 : Math.min(MAX_BACKOFF, 2 ** this.attempt);
    this.attempt += 1;
    this.status.show('retrying', delay);
    this.retryTimer = window.setTimeout(() => this.connect(), delay * 1000);
  }

  /** Go to a definition or reference in another file: its tab opens there. */
  private async openDocument(resource: monaco.Uri, where: monaco.IRange | monaco.IPosition | undefined): Promise<boolean> {
    const model = monaco.editor.getModel(resource);
    const path = (model === null ? null : this.editor.pathOf(model)) ?? workspacePath(resource.toString());
    if (path === null) return false;
    await this.editor.openAt(path, where);
    return true;
  }
}
