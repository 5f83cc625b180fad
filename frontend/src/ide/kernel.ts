// The console's Jupyter kernel, through @jupyterlab/services' SessionManager: one session per
// browser tab of a workspace, started on first use. Its path is kept in sessionStorage, so a
// reload of the page reattaches to the same kernel (the server answers a session request for
// an existing path with that session), while another tab gets a kernel of its own.
import { KernelManager, SessionManager, type Kernel, type KernelMessage, type ServerConnection, type Session } from '@jupyterlab/services';

/** What the console shows of its kernel. */
export type KernelState = 'none' | 'starting' | 'connecting' | 'idle' | 'busy' | 'restarting' | 'disconnected' | 'dead';

export interface KernelEvents {
  /** The state changed. */
  state(state: KernelState): void;
  /** A kernel is being started (the sandbox may start too), and when that is over. */
  starting(done: boolean): void;
  /** IOPub of what another client of the kernel asked for (a member's page, JupyterLab). */
  othersIOPub(message: KernelMessage.IIOPubMessage): void;
}

function stateOf(kernel: Kernel.IKernelConnection): KernelState {
  const status = kernel.status;
  if (status === 'dead' || status === 'terminating') return 'dead';
  if (status === 'restarting' || status === 'autorestarting') return 'restarting';
  if (kernel.connectionStatus === 'disconnected') return 'disconnected';
  if (status === 'starting') return 'starting';
  // Unknown: the kernel runs, but has not answered over this connection yet.
  if (status === 'unknown' || kernel.connectionStatus === 'connecting') return 'connecting';
  return status;
}

export class ConsoleKernel {
  private manager: SessionManager | null = null;
  private session: Session.ISessionConnection | null = null;
  private pending: Promise<Kernel.IKernelConnection> | null = null;
  state: KernelState = 'none';

  constructor(
    private readonly settings: ServerConnection.ISettings,
    private readonly workspace: string,
    private readonly events: KernelEvents,
  ) {}

  private get storageKey(): string {
    return `ide:console:${this.workspace}`;
  }

  /** The session path of this tab's console (``console-<id>``), if it ever had one. */
  private storedPath(): string | null {
    const id = sessionStorage.getItem(this.storageKey);
    return id === null ? null : `console-${id}`;
  }

  /** The session path of this tab's console, made on first use. */
  private sessionPath(): string {
    const stored = this.storedPath();
    if (stored !== null) return stored;
    // getRandomValues, unlike randomUUID, works on plain-HTTP origins too.
    const id = Array.from(crypto.getRandomValues(new Uint8Array(4)), (b) => b.toString(16).padStart(2, '0')).join('');
    sessionStorage.setItem(this.storageKey, id);
    return `console-${id}`;
  }

  /** Made once the console is used: it (and its kernel manager) polls the server every 10 s. */
  private sessions(): SessionManager {
    this.manager ??= new SessionManager({
      kernelManager: new KernelManager({ serverSettings: this.settings }), serverSettings: this.settings,
    });
    return this.manager;
  }

  /** After a reload: connect to this tab's kernel if it still runs (never starts one). */
  async reattach(): Promise<void> {
    const path = this.storedPath();
    if (path === null) return;
    const model = await this.sessions().findByPath(path);
    if (model !== undefined && this.session === null) this.attach(this.sessions().connectTo({ model }));
  }

  /** A viewer's console: follow the workspace's most recent console kernel as it comes and
   * goes (never starting one). */
  async watch(): Promise<void> {
    const manager = this.sessions();
    const follow = (): void => {
      if (this.session !== null) return;
      const model = [...manager.running()].filter((m) => m.path.startsWith('console-')).at(-1);
      if (model !== undefined) this.attach(manager.connectTo({ model }));
    };
    manager.runningChanged.connect(follow);
    await manager.refreshRunning();
    follow();
  }

  /** The running kernel; a new one if there is none or it died (the sandbox stopped). */
  async connection(): Promise<Kernel.IKernelConnection> {
    const kernel = this.session?.kernel;
    if (kernel && this.state !== 'dead') {
      if (kernel.connectionStatus !== 'disconnected') return kernel;
      try {
        await kernel.reconnect();
        return kernel;
      } catch {
        // Gone for good: start another below.
      }
    }
    this.pending ??= this.start().finally(() => {
      this.pending = null;
    });
    return this.pending;
  }

  private async start(): Promise<Kernel.IKernelConnection> {
    this.detach();
    this.setState('starting');
    this.events.starting(false);
    try {
      const session = await this.sessions().startNew({ path: this.sessionPath(), type: 'console', name: 'Console' });
      const kernel = session.kernel;
      if (kernel === null) throw new Error('The server started a session without a kernel.');
      this.attach(session);
      return kernel;
    } catch (error) {
      this.setState('none');
      throw error;
    } finally {
      this.events.starting(true);
    }
  }

  private attach(session: Session.ISessionConnection): void {
    this.session = session;
    const update = (): void => {
      if (this.session === session && session.kernel) this.setState(stateOf(session.kernel));
    };
    session.statusChanged.connect(update);
    session.connectionStatusChanged.connect(update);
    session.iopubMessage.connect((_, message) => {
      const parent = message.parent_header as Partial<KernelMessage.IHeader>;
      const own = session.kernel?.clientId;
      if (this.session === session && parent.session !== undefined && parent.session !== own) this.events.othersIOPub(message);
    });
    // The session manager disposes a session whose kernel is gone from the server.
    session.disposed.connect(() => {
      if (this.session !== session) return;
      this.session = null;
      this.setState('dead');
    });
    update();
  }

  private detach(): void {
    const session = this.session;
    this.session = null;
    if (session && !session.isDisposed) session.dispose();
  }

  private setState(state: KernelState): void {
    if (state === this.state) return;
    this.state = state;
    this.events.state(state);
  }

  /** The kernel if it is idle (it answers at once), else null: nothing is started. */
  get idleKernel(): Kernel.IKernelConnection | null {
    const kernel = this.session?.kernel ?? null;
    return this.state === 'idle' ? kernel : null;
  }

  /** The kernel while it is connected, idle or busy (busy with whatever: a completion
   * request makes it busy too), never starting one. */
  get liveKernel(): Kernel.IKernelConnection | null {
    const kernel = this.session?.kernel ?? null;
    return this.state === 'idle' || this.state === 'busy' ? kernel : null;
  }

  /** Whether there is a kernel to interrupt or restart. */
  get running(): boolean {
    return (this.session?.kernel ?? null) !== null && this.state !== 'dead';
  }

  /** Stop what the kernel is doing (KeyboardInterrupt). */
  async interrupt(): Promise<void> {
    await this.session?.kernel?.interrupt();
  }

  /** A fresh kernel process in place of the current one (every variable is lost). */
  async restart(): Promise<void> {
    await this.session?.kernel?.restart();
  }
}
