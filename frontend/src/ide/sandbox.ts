// The workspace's sandbox as the status bar shows it: its state, and start-up progress from
// the server-sent events of /api/workspaces/<uuid>/sandbox/progress.
import { api, describeError } from '../common/api';
import { platformUrl } from '../common/config';
import { h } from '../common/dom';
import { toastError } from '../common/toast';

export type SandboxState = 'stopped' | 'starting' | 'running' | 'unresponsive' | 'stopping' | 'failed';

export interface SandboxModel {
  state: SandboxState;
  reason?: string | null;
  progress?: number | null;
  message?: string | null;
}

interface ProgressEvent {
  progress: number | null;
  message: string | null;
  ready: boolean;
  failed: boolean;
  reason: string | null;
}

const WORDS: Record<SandboxState, string> = {
  stopped: 'Sandbox stopped',
  starting: 'Sandbox starting',
  running: 'Sandbox running',
  unresponsive: 'Sandbox not responding',
  stopping: 'Sandbox stopping',
  failed: 'Sandbox failed',
};

export class SandboxStatus {
  readonly element: HTMLElement;
  private readonly badge: HTMLElement;
  private readonly bar: HTMLProgressElement;
  private readonly note: HTMLElement;
  private readonly progressBox: HTMLElement;
  private source: EventSource | null = null;
  private readonly stateListeners: ((state: SandboxState) => void)[] = [];
  model: SandboxModel = { state: 'stopped' };

  constructor(private readonly workspace: string) {
    this.badge = h('span', { class: 'badge', id: 'sandbox-state', 'data-state': 'unknown' }, 'Sandbox …');
    this.bar = h('progress', { max: 100, value: 0, id: 'sandbox-progress-bar' });
    this.note = h('span', { class: 'progress-note', id: 'sandbox-progress-note' });
    this.progressBox = h('span', { class: 'sandbox-progress', id: 'sandbox-progress', hidden: true }, this.bar, this.note);
    this.element = h('span', { class: 'status-item sandbox' }, this.badge, this.progressBox);
  }

  /** Call ``listener`` with the new state each time it changes. */
  onStateChange(listener: (state: SandboxState) => void): void {
    this.stateListeners.push(listener);
  }

  /** Read the state from the server. */
  async refresh(): Promise<void> {
    try {
      this.apply(await api<SandboxModel>('GET', `/api/workspaces/${this.workspace}/sandbox`));
    } catch (error) {
      this.badge.title = `Could not read the sandbox state: ${describeError(error)}`;
    }
  }

  /** Show the state (from the API, an events message, or progress). */
  apply(model: SandboxModel): void {
    const before = this.model.state;
    this.model = { ...this.model, ...model };
    const { state } = this.model;
    this.badge.className = `badge state-${state}`;
    this.badge.dataset.state = state;
    this.badge.textContent = WORDS[state];
    this.badge.title = (state === 'failed' || state === 'unresponsive') && this.model.reason ? this.model.reason : '';
    const starting = state === 'starting';
    this.progressBox.hidden = !starting;
    if (starting) {
      this.bar.value = this.model.progress ?? 0;
      this.note.textContent = this.model.message ?? 'Starting…';
    }
    if (state === 'failed' && before !== 'failed' && this.model.reason) {
      toastError(`The sandbox failed: ${this.model.reason}`);
    }
    if (state === 'starting' && before !== 'starting') this.watchProgress();
    if (state !== before) {
      for (const listener of this.stateListeners) listener(state);
    }
  }

  /** A start was requested (a terminal is being opened): show it at once. (An unresponsive
   * sandbox is not replaced by a request: the server answers 504 until it recovers or is
   * stopped.) */
  expectStart(): void {
    const { state } = this.model;
    if (state === 'running' || state === 'starting' || state === 'unresponsive') return;
    this.apply({ state: 'starting', progress: 0, message: 'Starting the sandbox…', reason: null });
  }

  /** Follow start-up progress until the sandbox runs or fails. */
  watchProgress(): void {
    if (this.source !== null) return;
    const source = new EventSource(platformUrl(`api/workspaces/${this.workspace}/sandbox/progress`));
    this.source = source;
    source.onmessage = (event: MessageEvent<string>) => {
      let data: ProgressEvent;
      try {
        data = JSON.parse(event.data) as ProgressEvent;
      } catch {
        return;
      }
      if (data.ready) {
        this.apply({ state: 'running', progress: 100, message: data.message, reason: null });
        this.stopWatching();
      } else if (data.failed) {
        this.apply({ state: 'failed', reason: data.reason, progress: null, message: data.message });
        this.stopWatching();
      } else if (data.progress !== null || this.model.state === 'starting') {
        this.apply({ state: 'starting', progress: data.progress, message: data.message });
      }
    };
    source.onerror = () => {
      // The stream ends once the sandbox runs or fails (or the server gave up waiting):
      // never let EventSource reconnect by itself; read the state once instead.
      this.stopWatching();
      void this.refresh();
    };
  }

  private stopWatching(): void {
    this.source?.close();
    this.source = null;
  }
}
