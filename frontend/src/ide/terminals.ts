// The terminal panel: several terminals (xterm.js) over @jupyterlab/services' TerminalManager,
// fitted to their size (set_size), reconnecting with back-off after a lost connection and
// showing what was missed (the server replays the scrollback on every connection).
import { ServerConnection, TerminalManager, type Terminal as JupyterTerminal } from '@jupyterlab/services';
import { FitAddon } from '@xterm/addon-fit';
import { WebglAddon } from '@xterm/addon-webgl';
import { Terminal, type ITheme } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';
import { describeError, errorStatus } from '../common/api';
import { h } from '../common/dom';
import { icon } from '../common/icons';
import { isDark, onThemeChange } from '../common/theme';
import { toastError } from '../common/toast';

type Connection = JupyterTerminal.ITerminalConnection;

const LIGHT: ITheme = {
  background: '#ffffff', foreground: '#1f2328', cursor: '#1f2328', selectionBackground: '#add6ff',
  black: '#000000', red: '#cd3131', green: '#107c10', yellow: '#949800', blue: '#0451a5',
  magenta: '#bc05bc', cyan: '#0598bc', white: '#555555', brightBlack: '#666666', brightRed: '#cd3131',
  brightGreen: '#14ce14', brightYellow: '#b5ba00', brightBlue: '#0451a5', brightMagenta: '#bc05bc',
  brightCyan: '#0598bc', brightWhite: '#a5a5a5',
};
const DARK: ITheme = {
  background: '#1e1e1e', foreground: '#cccccc', cursor: '#cccccc', selectionBackground: '#264f78',
  black: '#000000', red: '#cd3131', green: '#0dbc79', yellow: '#e5e510', blue: '#2472c8',
  magenta: '#bc3fbc', cyan: '#11a8cd', white: '#e5e5e5', brightBlack: '#666666', brightRed: '#f14c4c',
  brightGreen: '#23d18b', brightYellow: '#f5f543', brightBlue: '#3b8eea', brightMagenta: '#d670d6',
  brightCyan: '#29b8db', brightWhite: '#e5e5e5',
};

/** The longest wait between reconnection attempts, in seconds. */
const MAX_BACKOFF = 30;
/** The close code of a member's socket when the owner changed or revoked their role. */
const ACCESS_CHANGED = 4403;

function webglAllowed(): boolean {
  // A person (or a test reading the DOM) may prefer the DOM renderer.
  if (localStorage.getItem('ide:terminal-renderer') === 'dom') return false;
  try {
    return document.createElement('canvas').getContext('webgl2') !== null;
  } catch {
    return false;
  }
}

function terminalNameOf(url: string): string {
  const path = new URL(url).pathname;
  return decodeURIComponent(path.slice(path.lastIndexOf('/') + 1));
}

interface SocketObserver {
  /** The server closed a terminal's socket (not this page). */
  closed(name: string, code: number): void;
  /** The server said the terminal's process ended. */
  exited(name: string): void;
}

/**
 * A WebSocket that tells the panel what @jupyterlab/services does not: a close by the server
 * with 1000/1001 (after which services would not reconnect), and the "disconnect" message.
 */
function observedWebSocket(observer: SocketObserver): typeof WebSocket {
  return class ObservedWebSocket extends WebSocket {
    private closedHere = false;

    constructor(url: string | URL, protocols?: string | string[]) {
      super(url, protocols);
      const name = terminalNameOf(this.url);
      this.addEventListener('close', (event) => {
        if (!this.closedHere) observer.closed(name, event.code);
      });
      this.addEventListener('message', (event) => {
        if (typeof event.data === 'string' && event.data.startsWith('["disconnect"')) observer.exited(name);
      });
    }

    override close(code?: number, reason?: string): void {
      this.closedHere = true;
      super.close(code, reason);
    }
  };
}

class TerminalView {
  readonly element: HTMLElement;
  readonly tab: HTMLElement;
  readonly xterm: Terminal;
  private readonly fit = new FitAddon();
  private readonly status: HTMLElement;
  private everConnected = false;
  private lastSize = '';
  private attempt = 0;
  private retryTimer: number | undefined;
  private countdown: number | undefined;
  ended = false;
  exited = false;

  constructor(
    private readonly panel: TerminalPanel,
    readonly connection: Connection,
  ) {
    this.status = h('div', { class: 'terminal-status', role: 'status', hidden: true });
    this.element = h('div', { class: 'terminal-view', 'data-name': connection.name }, this.status);
    const close = h('button', { type: 'button', class: 'tab-close', 'aria-label': `Close terminal ${connection.name}`, title: 'Close terminal' }, icon('close'));
    this.tab = h('div', { class: 'tab terminal-tab', role: 'tab', 'data-name': connection.name, tabindex: 0 },
      icon('terminal'), h('span', { class: 'tab-name' }, `Terminal ${connection.name}`), close);
    this.tab.addEventListener('click', (event) => {
      if (!close.contains(event.target as Node)) panel.activate(this, true);
    });
    close.addEventListener('click', () => void panel.closeTerminal(this));
    this.xterm = new Terminal({
      fontFamily: "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace",
      fontSize: 13,
      cursorBlink: true,
      scrollback: 10000,
      theme: isDark() ? DARK : LIGHT,
      allowProposedApi: false,
    });
    this.xterm.loadAddon(this.fit);
    this.xterm.onData((data) => {
      if (!panel.viewOnly) connection.send({ type: 'stdin', content: [data] });
    });
    connection.messageReceived.connect((_, message) => {
      if (message.type === 'stdout') this.xterm.write(String(message.content?.[0] ?? ''));
    });
    connection.connectionStatusChanged.connect((_, status) => this.onStatus(status));
    connection.disposed.connect(() => this.onDisposed());
    new ResizeObserver(() => this.resize()).observe(this.element);
  }

  get name(): string {
    return this.connection.name;
  }

  /** Attach xterm once the element is in the page. */
  mount(): void {
    this.xterm.open(this.element);
    if (webglAllowed()) {
      try {
        const webgl = new WebglAddon();
        webgl.onContextLoss(() => webgl.dispose());
        this.xterm.loadAddon(webgl);
      } catch {
        // The DOM renderer is the fallback.
      }
    }
    this.element.dataset.renderer = this.element.querySelector('canvas') ? 'webgl' : 'dom';
    if (this.connection.connectionStatus === 'connected') this.onStatus('connected');
  }

  setTheme(dark: boolean): void {
    this.xterm.options.theme = dark ? DARK : LIGHT;
  }

  /** Fit to the element and tell the terminal its size (only when it changed). */
  resize(): void {
    if (this.element.offsetParent === null || this.ended) return;
    try {
      this.fit.fit();
    } catch {
      return;
    }
    const size = `${this.xterm.rows}x${this.xterm.cols}`;
    if (size === this.lastSize || this.connection.connectionStatus !== 'connected' || this.panel.viewOnly) return;
    this.lastSize = size;
    this.connection.send({ type: 'set_size', content: [this.xterm.rows, this.xterm.cols] });
  }

  send(text: string): void {
    this.connection.send({ type: 'stdin', content: [text] });
  }

  focus(): void {
    this.xterm.focus();
  }

  private onStatus(status: JupyterTerminal.ConnectionStatus): void {
    this.tab.dataset.status = status;
    if (status === 'connected') {
      window.clearTimeout(this.retryTimer);
      window.clearInterval(this.countdown);
      this.attempt = 0;
      if (this.everConnected) {
        // The server replays the scrollback on every connection: start clean so that the
        // replay shows what was missed without repeating what was already shown.
        this.xterm.reset();
      }
      this.everConnected = true;
      this.lastSize = '';
      this.showStatus(null);
      this.resize();
    } else if (status === 'connecting' && this.everConnected) {
      this.showStatus('Connection lost: reconnecting…');
    } else if (status === 'disconnected') {
      this.scheduleRetry();
    }
  }

  /** The server closed the socket: with 4403 the user's role changed (the page starts again);
   * with 1000/1001, services does not retry, so this panel does. */
  lost(code: number): void {
    if (this.ended || this.connection.isDisposed) return;
    if (code === ACCESS_CHANGED) this.panel.accessChanged();
    if (code === 1000 || code === 1001) this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this.ended) return;
    window.clearTimeout(this.retryTimer);
    window.clearInterval(this.countdown);
    const delay = Math.min(MAX_BACKOFF, 2 ** this.attempt);
    this.attempt += 1;
    let left = delay;
    const say = (): void => this.showStatus(`Disconnected: reconnecting in ${left} s…`, true);
    say();
    this.countdown = window.setInterval(() => {
      left = Math.max(0, left - 1);
      say();
    }, 1000);
    this.retryTimer = window.setTimeout(() => void this.retry(), delay * 1000);
  }

  /** Reconnect now, unless the terminal is gone (its sandbox stopped). */
  async retry(): Promise<void> {
    window.clearTimeout(this.retryTimer);
    window.clearInterval(this.countdown);
    if (this.ended || this.connection.isDisposed) return;
    this.showStatus('Reconnecting…');
    try {
      if (!(await this.panel.exists(this.name))) {
        this.end();
        return;
      }
      await this.connection.reconnect();
    } catch (error) {
      if (errorStatus(error) === 404) {
        this.end();
        return;
      }
      this.scheduleRetry();
    }
  }

  private onDisposed(): void {
    if (this.exited || this.panel.closing.has(this)) {
      this.panel.remove(this);
    } else {
      this.end();
    }
  }

  /** The terminal no longer exists on the server: keep its output, offer a new one. */
  private end(): void {
    if (this.ended) return;
    this.ended = true;
    window.clearTimeout(this.retryTimer);
    window.clearInterval(this.countdown);
    this.tab.classList.add('ended');
    this.status.replaceChildren(
      h('span', {}, 'This terminal has ended (its sandbox stopped or its shell exited).'),
      h('button', { type: 'button', class: 'button small primary', onclick: () => void this.panel.replace(this) }, 'New terminal'),
    );
    this.status.hidden = false;
  }

  private showStatus(message: string | null, offerNow = false): void {
    if (message === null) {
      this.status.hidden = true;
      this.status.replaceChildren();
      return;
    }
    this.status.replaceChildren(h('span', {}, message));
    if (offerNow) {
      this.status.append(h('button', { type: 'button', class: 'button small', onclick: () => void this.retry() }, 'Reconnect now'));
    }
    this.status.hidden = false;
  }

  dispose(): void {
    window.clearTimeout(this.retryTimer);
    window.clearInterval(this.countdown);
    this.xterm.dispose();
    this.element.remove();
    this.tab.remove();
    if (!this.connection.isDisposed) this.connection.dispose();
  }
}

export class TerminalPanel {
  readonly element: HTMLElement;
  private readonly tabs: HTMLElement;
  private readonly body: HTMLElement;
  private readonly empty: HTMLElement;
  private readonly manager: TerminalManager;
  private readonly views: TerminalView[] = [];
  private active: TerminalView | null = null;
  private creating: Promise<TerminalView | null> | null = null;
  /** Views being closed by the person (their disposal removes them). */
  readonly closing = new Set<TerminalView>();
  /** A viewer's panel: terminals show their output, and nothing is sent to them. */
  viewOnly = false;
  /** Told when the owner changed or revoked this user's role (a socket closed with 4403). */
  accessChanged: () => void = () => undefined;

  constructor(
    baseUrl: string,
    wsUrl: string,
    /** Told when a terminal is being opened (it starts the sandbox if needed), and after. */
    private readonly starting: (done: boolean) => void = () => undefined,
  ) {
    const observer: SocketObserver = {
      closed: (name, code) => this.views.find((v) => v.name === name)?.lost(code),
      exited: (name) => {
        const view = this.views.find((v) => v.name === name);
        if (view) view.exited = true;
      },
    };
    const settings = ServerConnection.makeSettings({ baseUrl, wsUrl, WebSocket: observedWebSocket(observer) });
    this.manager = new TerminalManager({ serverSettings: settings });
    this.tabs = h('div', { class: 'tabs terminal-tabs', role: 'tablist', id: 'terminal-tabs', 'aria-label': 'Terminals' });
    this.body = h('div', { class: 'terminal-body', id: 'terminals' });
    this.empty = h('div', { class: 'terminal-empty' },
      h('p', {}, 'No terminal is open.'),
      h('button', { type: 'button', class: 'button', onclick: () => void this.create(true) }, icon('plus'), 'New terminal'));
    this.body.append(this.empty);
    this.element = h('section', { class: 'terminal-panel', 'aria-label': 'Terminals' },
      h('div', { class: 'pane-header' },
        h('span', { class: 'pane-title' }, 'Terminal'),
        this.tabs,
        h('button', { type: 'button', class: 'icon-button', id: 'new-terminal', title: 'New terminal', 'aria-label': 'New terminal', onclick: () => void this.create(true) }, icon('plus'))),
      this.body);
    onThemeChange((dark) => this.views.forEach((v) => v.setTheme(dark)));
  }

  /**
   * A viewer's panel: no keys or sizes are sent, no terminal is opened or closed, and the
   * terminals others open appear as they are opened.
   */
  setViewOnly(message: string): void {
    this.viewOnly = true;
    this.element.classList.add('view-only');
    this.element.title = message;
    this.empty.replaceChildren(h('p', {}, 'No terminal is open: the owner or an editor can open one.'));
    this.followOthers();
  }

  /** Show the terminals that others open in this workspace (a shared one). */
  followOthers(): void {
    this.manager.runningChanged.connect((_, models) => {
      if (this.creating !== null) return;
      for (const model of models) {
        if (!this.views.some((v) => v.name === model.name)) this.add(this.manager.connectTo({ model }), false);
      }
    });
  }

  /** Reattach to the workspace's running terminals, or open the first one. */
  async start(): Promise<void> {
    let running: JupyterTerminal.IModel[] = [];
    try {
      await this.manager.ready;
      await this.manager.refreshRunning();
      running = [...this.manager.running()];
    } catch (error) {
      toastError(`Could not list the terminals: ${describeError(error)}`);
    }
    if (running.length === 0) {
      if (!this.viewOnly) await this.create();
      else this.empty.hidden = false;
      return;
    }
    for (const model of running) this.add(this.manager.connectTo({ model }), false);
  }

  private add(connection: Connection, focus: boolean): TerminalView {
    const view = new TerminalView(this, connection);
    this.views.push(view);
    this.tabs.append(view.tab);
    this.body.append(view.element);
    // Visible before xterm opens in it: xterm measures its characters once, on open.
    this.activate(view, focus);
    view.mount();
    return view;
  }

  /**
   * Open a new terminal (starting the sandbox if it is not running). Only a person's own
   * request moves the keyboard focus into it: never steal it from the editor.
   */
  create(focus = false): Promise<TerminalView | null> {
    this.creating ??= (async () => {
      const pending = h('div', { class: 'tab terminal-tab pending' }, h('span', { class: 'tab-name' }, 'Starting…'));
      this.tabs.append(pending);
      this.empty.hidden = true;
      this.starting(false);
      try {
        return this.add(await this.manager.startNew(), focus);
      } catch (error) {
        toastError(`Could not open a terminal: ${describeError(error)}`);
        this.empty.hidden = this.views.length > 0;
        return null;
      } finally {
        pending.remove();
        this.creating = null;
        this.starting(true);
      }
    })();
    return this.creating;
  }

  activate(view: TerminalView, focus = false): void {
    this.active = view;
    for (const v of this.views) {
      const on = v === view;
      v.element.classList.toggle('active', on);
      v.tab.classList.toggle('active', on);
      v.tab.setAttribute('aria-selected', String(on));
    }
    this.empty.hidden = true;
    requestAnimationFrame(() => {
      view.resize();
      if (focus) view.focus();
    });
  }

  async exists(name: string): Promise<boolean> {
    await this.manager.refreshRunning();
    return [...this.manager.running()].some((m) => m.name === name);
  }

  /** Close a terminal: its shell ends on the server. */
  async closeTerminal(view: TerminalView): Promise<void> {
    this.closing.add(view);
    try {
      if (!view.ended) await this.manager.shutdown(view.name);
    } catch (error) {
      if (errorStatus(error) !== 404) toastError(`Could not close the terminal: ${describeError(error)}`);
    }
    this.remove(view);
  }

  remove(view: TerminalView): void {
    const index = this.views.indexOf(view);
    if (index < 0) return;
    this.views.splice(index, 1);
    this.closing.delete(view);
    view.dispose();
    if (this.active === view) {
      this.active = null;
      const next = this.views[Math.min(index, this.views.length - 1)];
      if (next) this.activate(next, false);
    }
    this.empty.hidden = this.views.length > 0;
  }

  /** Replace an ended terminal by a new one. */
  async replace(view: TerminalView): Promise<void> {
    this.remove(view);
    await this.create(true);
  }

  /** The active terminal, or a new one. */
  async ensure(): Promise<TerminalView | null> {
    if (this.active && !this.active.ended) return this.active;
    const live = this.views.find((v) => !v.ended);
    if (live) {
      this.activate(live, false);
      return live;
    }
    return this.create();
  }

  /** Type a command into a terminal (the active one, or a new one). */
  async run(command: string): Promise<boolean> {
    const view = await this.ensure();
    if (!view) return false;
    this.activate(view, false);
    view.send(`${command}\r`);
    return true;
  }

  /** Refit the visible terminal (after a layout change). */
  fit(): void {
    this.active?.resize();
  }
}
