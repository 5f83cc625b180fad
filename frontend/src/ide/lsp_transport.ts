// The message transport of Monaco's LSP client (monaco.lsp.MonacoLspClient) to the sandbox's
// language server: one client for the page's life over successive WebSockets, seeing only the
// workspace's Python files open in tabs, under the names the server knows them by.
import { monaco } from './monaco';
import { DROPPED, mapUris, namedPaths, serverUri, workspacePath } from './lsp_uris';

type Transport = ConstructorParameters<typeof monaco.lsp.MonacoLspClient>[0];
type Message = Parameters<Transport['send']>[0];
type Listener = NonNullable<Parameters<Transport['setListener']>[0]>;
type TextModel = monaco.editor.ITextModel;

/** A JSON-RPC message as it is read here: a request, a notification or a response. */
interface RpcMessage {
  jsonrpc: '2.0';
  id?: number | string | null;
  method?: string;
  params?: unknown;
  result?: unknown;
  error?: unknown;
}

/** Which editor models the language server may see, and where a workspace file is shown. */
export interface LspDocuments {
  /** The workspace path of a Python file open in a tab, null for any other model (the history's
   * diff, a non-Python file, a copy made by ``modelFor``). */
  pathOf(model: TextModel): string | null;
  /** The model showing a workspace file: its tab's, or else a copy of the saved file (null when
   * it cannot be read as text). */
  modelFor(path: string): Promise<TextModel | null>;
}

/** Notifications that carry a document the server must know (the others pass as they are). */
const DOCUMENT_NOTIFICATIONS = new Set(['textDocument/didChange', 'textDocument/didSave', 'textDocument/willSave']);
/** Our own request id for the handshake that starts each connection after the first. */
const REOPEN_ID = 'reconnect-initialize';

function textDocumentUri(params: unknown): string | null {
  if (typeof params !== 'object' || params === null) return null;
  const document = (params as { textDocument?: { uri?: unknown } }).textDocument;
  return typeof document?.uri === 'string' ? document.uri : null;
}

function withDocumentUri(message: RpcMessage, uri: string): RpcMessage {
  const params = message.params as { textDocument: Record<string, unknown> };
  return { ...message, params: { ...params, textDocument: { ...params.textDocument, uri } } };
}

/**
 * Monaco's LSP client syncs every model of the page, answers only one ``initialize``, and never
 * reconnects. This transport makes it fit the IDE:
 * - only documents of ``LspDocuments.pathOf`` reach the server, as file:///workspace/<path>;
 *   a request about any other model is answered here with null (no result), so the history's
 *   diff or a JSON file never reaches it;
 * - URIs in the server's answers become the editor's models (a copy of the file when it is not
 *   open, so that a definition, a reference or a rename in another file can be shown and
 *   applied), and locations outside the workspace are left out;
 * - each new socket repeats the ``initialize`` handshake and reopens the documents open in tabs
 *   with their current text; while there is no socket, requests are answered with null.
 */
export class LspTransport implements Transport {
  readonly state = {
    value: { state: 'open' } as const,
    onChange: () => ({ dispose: () => undefined }),
  };

  private listener: Listener | null = null;
  private readonly unread: Message[] = [];
  private socket: WebSocket | null = null;
  /** The socket has finished its ``initialize`` handshake. */
  private ready = false;
  /** The client's ``initialize``, repeated on each new socket. */
  private initialize: RpcMessage | null = null;
  private initialized = false;
  /** The ids of the client's requests awaiting the server's answer on this socket, by key. */
  private readonly pending = new Map<string, number | string>();
  /** The documents the server has open: model → its server URI. */
  private readonly opened = new Map<TextModel, string>();

  constructor(
    private readonly documents: LspDocuments,
    private readonly readyChanged: (ready: boolean) => void,
  ) {}

  toString(): string {
    return 'sandbox language server';
  }

  setListener(listener: Listener | undefined): void {
    this.listener = listener ?? null;
    while (this.listener !== null && this.unread.length > 0) {
      const message = this.unread.shift();
      if (message !== undefined) this.listener(message);
    }
  }

  /** A new socket is open: start its handshake (the client's first, or our repeat of it). */
  attach(socket: WebSocket): void {
    this.socket = socket;
    socket.onmessage = (event: MessageEvent<unknown>) => {
      if (this.socket !== socket || typeof event.data !== 'string') return;
      let message: unknown;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (typeof message === 'object' && message !== null) void this.fromServer(message as RpcMessage);
    };
    if (this.initialize === null) return; // the client sends it once it exists
    this.write(this.initialized ? { ...this.initialize, id: REOPEN_ID } : this.initialize);
  }

  /** The socket closed: answer what it left unanswered, and wait for the next one. */
  detach(): void {
    this.socket = null;
    this.setReady(false);
    for (const id of this.pending.values()) this.answer(id, null);
    this.pending.clear();
  }

  send(message: Message): Promise<void> {
    this.fromClient(message);
    return Promise.resolve();
  }

  /** A document's path changed: the server closes the old name and opens the new one. */
  moved(model: TextModel): void {
    const before = this.opened.get(model);
    if (before !== undefined) {
      this.opened.delete(model);
      if (this.ready) this.write({ jsonrpc: '2.0', method: 'textDocument/didClose', params: { textDocument: { uri: before } } });
    }
    this.open(model);
  }

  private setReady(ready: boolean): void {
    if (this.ready === ready) return;
    this.ready = ready;
    this.readyChanged(ready);
  }

  private write(message: RpcMessage): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  private dispatch(message: RpcMessage): void {
    if (this.listener !== null && this.unread.length === 0) this.listener(message as Message);
    else this.unread.push(message as Message);
  }

  private answer(id: number | string, result: unknown): void {
    queueMicrotask(() => this.dispatch({ jsonrpc: '2.0', id, result }));
  }

  /** The model a client URI names (Monaco's client lowercases the URIs it sends). A model being
   * disposed (a closed tab) has already left Monaco's list when its ``didClose`` comes. */
  private modelNamed(uri: string): TextModel | null {
    const key = uri.toLowerCase();
    const named = (model: TextModel): boolean => model.uri.toString(true).toLowerCase() === key;
    return [...this.opened.keys()].find(named) ?? monaco.editor.getModels().find(named) ?? null;
  }

  /** Tell the server about a model it may see (a Python file in a tab), once. */
  private open(model: TextModel): void {
    if (this.opened.has(model) || model.isDisposed()) return;
    const path = this.documents.pathOf(model);
    if (path === null) return;
    const uri = serverUri(path);
    this.opened.set(model, uri);
    if (this.ready) this.write(this.didOpen(model, uri));
  }

  private didOpen(model: TextModel, uri: string): RpcMessage {
    return {
      jsonrpc: '2.0',
      method: 'textDocument/didOpen',
      params: { textDocument: { uri, languageId: model.getLanguageId(), version: model.getVersionId(), text: model.getValue() } },
    };
  }

  private fromClient(message: RpcMessage): void {
    if (message.method === undefined) {
      this.write(message); // the client's answer to a request of the server
      return;
    }
    const id = message.id ?? null;
    const isRequest = id !== null;
    if (message.method === 'initialize' && isRequest) {
      this.initialize = message;
      this.write(message);
      return;
    }
    const uri = textDocumentUri(message.params);
    const model = uri === null ? null : this.modelNamed(uri);
    if (message.method === 'textDocument/didOpen') {
      if (model !== null) this.open(model);
      return;
    }
    if (message.method === 'textDocument/didClose') {
      const known = model === null ? undefined : this.opened.get(model);
      if (model !== null && known !== undefined) {
        this.opened.delete(model);
        if (this.ready) this.write(withDocumentUri(message, known));
      }
      return;
    }
    const target = model === null ? undefined : this.opened.get(model);
    const aboutDocument = uri !== null && (isRequest || DOCUMENT_NOTIFICATIONS.has(message.method));
    if (!this.ready || (aboutDocument && target === undefined)) {
      if (id !== null) this.answer(id, null);
      return;
    }
    if (id !== null) this.pending.set(String(id), id);
    this.write(aboutDocument && target !== undefined ? withDocumentUri(message, target) : message);
  }

  private async fromServer(message: RpcMessage): Promise<void> {
    if (message.method !== undefined) {
      if (message.params !== undefined) {
        const params = mapUris(message.params, (uri) => this.openModelUri(uri));
        if (params === DROPPED) return; // diagnostics of a file that is not open here
        message = { ...message, params };
      }
      this.dispatch(message);
      return;
    }
    if (message.id === REOPEN_ID) {
      this.reopened();
      return;
    }
    if (this.initialize !== null && message.id === this.initialize.id && !this.initialized) {
      this.initialized = true;
      this.setReady(true);
      this.dispatch(message);
      return;
    }
    const key = String(message.id);
    if (!this.pending.delete(key)) return; // answered already, when its socket closed
    if (message.result !== undefined && message.result !== null) {
      message = { ...message, result: await this.mapResult(message.result) };
    }
    this.dispatch(message);
  }

  /** The repeated handshake is done: the server learns the documents open in tabs again. */
  private reopened(): void {
    this.write({ jsonrpc: '2.0', method: 'initialized', params: {} });
    for (const [model, uri] of this.opened) {
      if (!model.isDisposed()) this.write(this.didOpen(model, uri));
    }
    this.setReady(true);
  }

  /** A result with its URIs naming editor models (copies made for files not open). */
  private async mapResult(result: unknown): Promise<unknown> {
    const models = new Map<string, TextModel>();
    await Promise.all([...namedPaths(result)].map(async (path) => {
      const model = await this.documents.modelFor(path).catch(() => null);
      if (model !== null) models.set(path, model);
    }));
    const mapped = mapUris(result, (uri) => {
      const path = workspacePath(uri);
      return path === null ? null : models.get(path)?.uri.toString(true) ?? null;
    });
    return mapped === DROPPED ? null : mapped;
  }

  /** The model URI of a document the server has open from here, or null. */
  private openModelUri(uri: string): string | null {
    const path = workspacePath(uri);
    if (path === null) return null;
    const name = serverUri(path); // the server may encode a path otherwise
    for (const [model, known] of this.opened) {
      if (known === name) return model.uri.toString(true);
    }
    return null;
  }
}
