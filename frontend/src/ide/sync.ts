// Changes from the sandbox side: WS /w/<uuid>/api/events when the server has it, and polling
// of the open folders and files every 2 s while that socket is unavailable.
import { ACCESS_CHANGED, type MemberEvent } from './members';
import type { SandboxState } from './sandbox';

export interface FileEvent {
  type: 'created' | 'modified' | 'deleted' | 'moved';
  path: string;
  old_path?: string;
  last_modified?: string;
}

export interface SandboxEvent {
  type: 'sandbox';
  state: SandboxState;
  progress?: number | null;
  message?: string | null;
  reason?: string | null;
}

/** Something about the workspace that people must read (packages a new sandbox could not
 * install again). */
export interface NoticeEvent {
  type: 'packages';
  message: string;
}

export type SyncMode = 'live' | 'polling';

export interface SyncHandlers {
  file(event: FileEvent): void;
  sandbox(event: SandboxEvent): void;
  notice(event: NoticeEvent): void;
  /** The owner shared the workspace, changed a member's role, or a member left or was removed. */
  member(event: MemberEvent): void;
  /** The server closed the feed because the owner changed or revoked this user's role: the
   * feed stops (a new one is checked against the new role). */
  accessChanged(): void;
  /** Compare what is shown with the server (polling, and once after each reconnection). */
  poll(): Promise<void>;
  mode(mode: SyncMode): void;
}

/** Seconds between attempts to open the events socket, at most. */
const MAX_RECONNECT = 60;

function isFileEvent(data: unknown): data is FileEvent {
  if (typeof data !== 'object' || data === null) return false;
  const event = data as Record<string, unknown>;
  return ['created', 'modified', 'deleted', 'moved'].includes(String(event.type)) && typeof event.path === 'string';
}

function isSandboxEvent(data: unknown): data is SandboxEvent {
  if (typeof data !== 'object' || data === null) return false;
  const event = data as Record<string, unknown>;
  return event.type === 'sandbox' && typeof event.state === 'string';
}

function isMemberEvent(data: unknown): data is MemberEvent {
  if (typeof data !== 'object' || data === null) return false;
  const event = data as Record<string, unknown>;
  return event.type === 'member' && typeof event.username === 'string' && (event.role === null || typeof event.role === 'string');
}

function isNoticeEvent(data: unknown): data is NoticeEvent {
  if (typeof data !== 'object' || data === null) return false;
  const event = data as Record<string, unknown>;
  return event.type === 'packages' && typeof event.message === 'string';
}

export class ChangeFeed {
  private socket: WebSocket | null = null;
  private attempt = 0;
  private pollTimer: number | undefined;
  private reconnectTimer: number | undefined;
  private polling = false;
  private stopped = false;

  constructor(
    private readonly url: string,
    private readonly handlers: SyncHandlers,
    private readonly interval = 2000,
  ) {}

  start(): void {
    this.startPolling();
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    this.stopPolling();
    window.clearTimeout(this.reconnectTimer);
    this.socket?.close();
  }

  private connect(): void {
    if (this.stopped) return;
    let socket: WebSocket;
    try {
      socket = new WebSocket(this.url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    let live = false;
    socket.onmessage = (message: MessageEvent<unknown>) => {
      if (!live) {
        // The server's first message (the sandbox's state) proves the feed works: only then
        // stop polling. Whatever changed while it was down was not announced: compare once.
        live = true;
        this.attempt = 0;
        this.stopPolling();
        this.handlers.mode('live');
        void this.handlers.poll().catch(() => undefined);
      }
      if (typeof message.data !== 'string') return;
      let data: unknown;
      try {
        data = JSON.parse(message.data);
      } catch {
        return;
      }
      if (isFileEvent(data)) this.handlers.file(data);
      else if (isSandboxEvent(data)) this.handlers.sandbox(data);
      else if (isNoticeEvent(data)) this.handlers.notice(data);
      else if (isMemberEvent(data)) this.handlers.member(data);
    };
    socket.onclose = (event: CloseEvent) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.stopped) return;
      if (event.code === ACCESS_CHANGED) {
        this.stop();
        this.handlers.accessChanged();
        return;
      }
      this.startPolling();
      this.scheduleReconnect();
    };
  }

  private scheduleReconnect(): void {
    window.clearTimeout(this.reconnectTimer);
    const delay = Math.min(MAX_RECONNECT, 2 ** (this.attempt + 1));
    this.attempt += 1;
    this.reconnectTimer = window.setTimeout(() => this.connect(), delay * 1000);
  }

  private startPolling(): void {
    if (this.polling) return;
    this.polling = true;
    this.handlers.mode('polling');
    const tick = async (): Promise<void> => {
      if (!this.polling) return;
      try {
        await this.handlers.poll();
      } catch {
        // The poll reports its own errors; keep polling.
      }
      if (this.isPolling()) this.pollTimer = window.setTimeout(() => void tick(), this.interval);
    };
    this.pollTimer = window.setTimeout(() => void tick(), this.interval);
  }

  private isPolling(): boolean {
    return this.polling;
  }

  private stopPolling(): void {
    this.polling = false;
    window.clearTimeout(this.pollTimer);
  }
}
