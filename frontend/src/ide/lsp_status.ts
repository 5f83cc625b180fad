// The status bar's word on Python IntelliSense (the sandbox's language server).
import { h } from '../common/dom';

export type LspState = 'waiting' | 'stopped' | 'unresponsive' | 'starting' | 'ready' | 'retrying';

const WORDS: Record<LspState, string> = {
  waiting: 'Python IntelliSense: waiting for the sandbox to start',
  stopped: 'Python IntelliSense unavailable: the sandbox is not running',
  unresponsive: 'Python IntelliSense unavailable: the sandbox is not responding',
  starting: 'Python: starting…',
  ready: 'Python: ready',
  retrying: 'Python IntelliSense unavailable: reconnecting',
};

const TITLES: Record<LspState, string> = {
  waiting: 'The editor works meanwhile; completions, hover and diagnostics come once the sandbox runs.',
  stopped: 'The editor works without completions, hover and diagnostics; they come back when the sandbox runs (open a terminal or the console to start it).',
  unresponsive: 'The editor works without completions, hover and diagnostics until the sandbox answers again.',
  starting: 'Connecting to the Python language server in the sandbox.',
  ready: 'Completions (Ctrl+Space), hover, signature help, go to definition (F12), references (Shift+F12), rename (F2), diagnostics (F8) and formatting (Shift+Alt+F), from the language server in the sandbox.',
  retrying: 'The connection to the language server was lost.',
};

export class LspStatusView {
  readonly element: HTMLElement;

  constructor() {
    this.element = h('span', { class: 'status-item lsp-status', id: 'lsp-status', 'data-state': 'waiting' });
    this.show('waiting');
  }

  /** Show a state; ``retryIn`` (seconds, with 'retrying') says when the next attempt is. */
  show(state: LspState, retryIn?: number): void {
    this.element.dataset.state = state;
    this.element.textContent = retryIn === undefined ? WORDS[state] : `${WORDS[state]} in ${retryIn} s`;
    this.element.title = TITLES[state];
  }
}
