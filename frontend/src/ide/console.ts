// The Python console: code from the editor (or typed at its prompt) runs in this tab's kernel,
// and each run shows its input, then its outputs as they arrive. The kernel's state, with
// Interrupt and Restart, is in the panel's header.
import { KernelMessage, type Kernel, type ServerConnection } from '@jupyterlab/services';
import { describeError } from '../common/api';
import { confirmDialog } from '../common/dialog';
import { h } from '../common/dom';
import { icon } from '../common/icons';
import { toastError } from '../common/toast';
import { cellInput } from './cell';
import { PromptHelp, type KernelOrReason } from './completer';
import { ConsoleKernel, type KernelState } from './kernel';
import { OutputArea, parseOutput } from './outputs';

const WORDS: Record<KernelState, string> = {
  none: 'No kernel',
  starting: 'Kernel starting',
  connecting: 'Connecting',
  idle: 'Kernel idle',
  busy: 'Kernel busy',
  restarting: 'Kernel restarting',
  disconnected: 'Disconnected',
  dead: 'Kernel dead',
};

/** What to do about a state without a working kernel (the badge's tooltip). */
const HINTS: Partial<Record<KernelState, string>> = {
  none: 'Running code starts a kernel.',
  disconnected: 'The connection to the kernel was lost: running code reconnects, or starts a new kernel.',
  dead: 'Running code starts a new kernel.',
};

/** What a long wait is about, shown with a progress bar while the kernel is in that state. */
const WAITS: Partial<Record<KernelState, string>> = {
  starting: 'Starting a Python kernel… The sandbox may have to start first: this can take a few seconds.',
  connecting: 'Connecting to the kernel…',
  restarting: 'Restarting the kernel…',
};

/** Why Tab and Shift+Tab cannot ask the kernel now. */
const NO_HELP: Partial<Record<KernelState, string>> = {
  none: 'No kernel yet: run some code to start one, then Tab completes and Shift+Tab shows documentation.',
  busy: 'The kernel is busy: Tab and Shift+Tab work again once it is idle.',
  dead: 'The kernel stopped: run some code to start a new one.',
  disconnected: 'The connection to the kernel was lost: run some code to reconnect.',
};

/** How long Enter waits for the kernel to say whether the code is complete, in ms. */
const IS_COMPLETE_TIMEOUT = 1000;

/** An error's description as a sentence, to go on with what to do. */
function sentence(text: string): string {
  return /[.!?]$/.test(text) ? text : `${text}.`;
}

/** Whether the last line of ``code`` surely goes on (a block, a continued line, a bracket). */
function endsOpen(code: string): boolean {
  return /[:\\,([{]$/.test(code.trimEnd());
}

/** The indentation of the line after ``line``: the same, one level more after a colon. */
function nextIndent(line: string): string {
  return (/^\s*/.exec(line)?.[0] ?? '') + (line.trimEnd().endsWith(':') ? '    ' : '');
}

export interface ConsoleCallbacks {
  /** A kernel is being started (the sandbox may start too), and when that is over. */
  starting(done: boolean): void;
  /** The panel was shown or hidden. */
  visibilityChanged(open: boolean): void;
}

export class ConsolePanel {
  readonly element: HTMLElement;
  private readonly log: HTMLElement;
  private readonly badge: HTMLElement;
  private readonly progress: HTMLElement;
  private readonly input: HTMLTextAreaElement;
  private readonly help: PromptHelp;
  private readonly interruptButton: HTMLButtonElement;
  private readonly restartButton: HTMLButtonElement;
  private readonly kernel: ConsoleKernel;
  private readonly history: string[] = [];
  /** Where ArrowUp/ArrowDown are in the history (its length: the text being written). */
  private historyIndex = 0;
  /** The console's runs started and not yet finished. */
  private runs = 0;
  private wasAlive = false;
  /** A restart asked for here (any other is the kernel's own, after it died). */
  private restartRequested = false;
  /** The outputs of other clients' runs in progress, by the msg_id of their request. */
  private readonly othersRuns = new Map<string, OutputArea>();
  /** A viewer's console follows the workspace's console kernel instead of starting one. */
  private viewOnly = false;

  constructor(settings: ServerConnection.ISettings, workspace: string, private readonly callbacks: ConsoleCallbacks) {
    this.kernel = new ConsoleKernel(settings, workspace, {
      state: (state) => this.showState(state),
      starting: (done) => callbacks.starting(done),
      othersIOPub: (message) => this.showOthersRun(message),
    });
    const tool = (id: string, title: string, label: string, action: () => void): HTMLButtonElement =>
      h('button', { type: 'button', class: 'button small', id, title, onclick: action }, label);
    this.interruptButton = tool('console-interrupt', 'Stop the code running in the kernel (KeyboardInterrupt)', 'Interrupt', () => void this.interrupt());
    this.restartButton = tool('console-restart', 'Start the kernel again: every variable is lost', 'Restart', () => void this.restart());
    this.badge = h('span', { class: 'badge', id: 'console-status', 'data-state': 'none' });
    this.progress = h('div', { class: 'console-progress', id: 'console-progress', role: 'status', hidden: true });
    this.log = h('div', { class: 'console-log', id: 'console-log', 'aria-live': 'polite' },
      h('p', { class: 'console-hint muted' },
        'Run in console (Shift+F5) runs the current Python file here; Shift+Enter in the editor runs the selection or the current line. Variables stay between runs.'));
    this.input = h('textarea', {
      class: 'console-input', id: 'console-input', rows: 1, spellcheck: 'false', 'aria-label': 'Python code to run',
      placeholder: 'Python code (Enter runs it)',
      title: 'Enter runs the code once it is a complete statement (else it starts a new line); Shift+Enter runs it as it is; ↑ and ↓ recall earlier code; Tab completes; Shift+Tab shows documentation',
    });
    this.help = new PromptHelp(this.input, () => this.helpKernel());
    this.input.addEventListener('keydown', (event) => this.onInputKey(event));
    this.input.addEventListener('input', () => this.fitInput());
    this.element = h('section', { class: 'console-panel', id: 'console', 'aria-label': 'Python console', hidden: true },
      h('div', { class: 'pane-header' },
        h('span', { class: 'pane-title' }, 'Console'),
        this.badge, h('span', { class: 'spacer' }),
        this.interruptButton, this.restartButton,
        h('button', { type: 'button', class: 'icon-button', id: 'console-clear', title: 'Clear the console', 'aria-label': 'Clear the console', onclick: () => this.clear() }, icon('trash')),
        h('button', { type: 'button', class: 'icon-button', id: 'console-close', title: 'Hide the console (its kernel keeps running)', 'aria-label': 'Hide the console', onclick: () => this.setOpen(false) }, icon('close'))),
      this.log, this.progress,
      h('div', { class: 'console-prompt' }, h('span', { class: 'prompt' }, '>>>'), this.input, this.help.listElement),
      this.help.tooltip);
    this.showState('none');
  }

  /** A viewer's console: nothing can be typed, run, interrupted or restarted. */
  setViewOnly(message: string): void {
    this.viewOnly = true;
    this.input.disabled = true;
    this.input.placeholder = message;
    this.interruptButton.disabled = true;
    this.restartButton.disabled = true;
    this.log.querySelector('.console-hint')?.replaceChildren('The console shows the runs of the workspace’s console as they happen.');
  }

  get open(): boolean {
    return !this.element.hidden;
  }

  setOpen(open: boolean): void {
    if (open === this.open) return;
    this.element.hidden = !open;
    this.callbacks.visibilityChanged(open);
  }

  /** Reconnect to this tab's kernel after a reload, if it still runs. */
  async start(): Promise<void> {
    try {
      await (this.viewOnly ? this.kernel.watch() : this.kernel.reattach());
    } catch (error) {
      toastError(`Could not reconnect to the console's kernel: ${sentence(describeError(error))} Running code starts a new one.`);
    }
  }

  /** Run code in the kernel (started if needed) and show its input and outputs. */
  async execute(code: string): Promise<void> {
    this.setOpen(true);
    this.remember(code);
    const input = cellInput('In [*]:', code, 'python');
    const outputs = new OutputArea();
    const note = h('div', { class: 'cell-note', hidden: true });
    const cell = h('div', { class: 'cell console-cell', 'data-state': 'pending' }, input.element, outputs.element, note);
    /** The run ended without running (or finishing): say so, and drop the busy prompt. */
    const say = (state: string, text: string): void => {
      cell.dataset.state = state;
      note.textContent = text;
      note.hidden = false;
      if (input.prompt.textContent === 'In [*]:') input.prompt.textContent = 'In [ ]:';
    };
    this.append(cell);
    let kernel: Kernel.IKernelConnection;
    try {
      kernel = await this.kernel.connection();
    } catch (error) {
      say('failed', 'Not run: no kernel could be started.');
      toastError(`Could not start the console's Python kernel: ${sentence(describeError(error))} Check the sandbox in the status bar, then run the code again.`);
      return;
    }
    cell.dataset.state = 'running';
    this.runs += 1;
    // Each run stands alone, as typed at a prompt: an error does not cancel the runs queued after it.
    const future = kernel.requestExecute({ code, stop_on_error: false, store_history: true, allow_stdin: false });
    future.onIOPub = (message) => {
      const follow = this.atEnd();
      if (KernelMessage.isExecuteInputMsg(message)) {
        input.prompt.textContent = `In [${message.content.execution_count}]:`;
      } else if (KernelMessage.isClearOutputMsg(message)) {
        outputs.clear(message.content.wait);
      } else {
        const output = parseOutput({ ...message.content, output_type: message.header.msg_type });
        if (output) outputs.add(output);
      }
      if (follow) this.scrollToEnd();
    };
    try {
      const reply = await future.done;
      cell.dataset.state = reply.content.status;
      if (reply.content.status === 'aborted') say('aborted', 'Not run: the kernel aborted it.');
    } catch {
      say('cancelled', 'Stopped: the kernel restarted or stopped before this finished.');
    } finally {
      this.runs -= 1;
    }
  }

  /** A run another client of the kernel asked for: its input, then its outputs as they come. */
  private showOthersRun(message: KernelMessage.IIOPubMessage): void {
    const request = (message.parent_header as Partial<KernelMessage.IHeader>).msg_id ?? '';
    const follow = this.atEnd();
    if (KernelMessage.isExecuteInputMsg(message)) {
      const input = cellInput(`In [${message.content.execution_count}]:`, message.content.code, 'python');
      const outputs = new OutputArea();
      this.othersRuns.set(request, outputs);
      this.log.append(h('div', { class: 'cell console-cell', 'data-state': 'others' }, input.element, outputs.element));
    } else {
      const outputs = this.othersRuns.get(request);
      if (outputs === undefined) return;
      if (KernelMessage.isClearOutputMsg(message)) {
        outputs.clear(message.content.wait);
      } else if (KernelMessage.isStatusMsg(message)) {
        if (message.content.execution_state === 'idle') this.othersRuns.delete(request);
      } else {
        const output = parseOutput({ ...message.content, output_type: message.header.msg_type });
        if (output) outputs.add(output);
      }
    }
    if (follow) this.scrollToEnd();
  }

  /** Stop the running code; the console stays usable. */
  private async interrupt(): Promise<void> {
    try {
      await this.kernel.interrupt();
    } catch (error) {
      toastError(`Could not interrupt the kernel: ${sentence(describeError(error))} If it stays busy, restart it.`);
    }
  }

  private async restart(): Promise<void> {
    const sure = await confirmDialog('Restart the kernel?', 'Every variable and import of the console is lost.', 'Restart', true);
    if (!sure) return;
    this.restartRequested = true;
    try {
      await this.kernel.restart();
      this.append(h('p', { class: 'console-event' }, 'Kernel restarted: earlier variables are gone.'));
    } catch (error) {
      toastError(`Could not restart the kernel: ${sentence(describeError(error))} Try again, or reload the page.`);
    } finally {
      this.restartRequested = false;
    }
  }

  private clear(): void {
    this.log.replaceChildren();
    this.input.focus();
  }

  private showState(state: KernelState): void {
    this.badge.dataset.state = state;
    this.badge.className = `badge kernel-${state}`;
    this.badge.textContent = WORDS[state];
    this.badge.title = HINTS[state] ?? '';
    const running = this.kernel.running && !this.viewOnly;
    this.interruptButton.disabled = !running;
    this.restartButton.disabled = !running;
    const wait = WAITS[state];
    this.progress.hidden = wait === undefined;
    if (wait !== undefined) this.progress.replaceChildren(h('progress'), h('span', {}, wait));
    if (state === 'restarting' && !this.restartRequested) {
      this.append(h('p', { class: 'console-event console-event-error' }, 'The kernel stopped unexpectedly and was restarted: earlier variables are gone.'));
    }
    const alive = state === 'idle' || state === 'busy';
    if (state === 'dead' && this.wasAlive) {
      const message = 'The console’s kernel stopped (its sandbox may have stopped while idle). Running code starts a new kernel; earlier variables are gone.';
      this.append(h('p', { class: 'console-event console-event-error' }, message));
      toastError(message);
    }
    if (alive || state === 'dead' || state === 'none') this.wasAlive = alive;
  }

  private append(element: HTMLElement): void {
    this.log.append(element);
    this.scrollToEnd();
  }

  /** Whether the log shows its end (new output then keeps it there). */
  private atEnd(): boolean {
    return this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 40;
  }

  private scrollToEnd(): void {
    this.log.scrollTop = this.log.scrollHeight;
  }

  // --- the prompt -----------------------------------------------------------------------

  private remember(code: string): void {
    if (this.history.at(-1) !== code) this.history.push(code);
    this.historyIndex = this.history.length;
  }

  /** The kernel Tab and Shift+Tab may ask, or why there is none. */
  private helpKernel(): KernelOrReason {
    const state = this.kernel.state;
    // Busy with none of the console's runs: busy answering an earlier Tab, which is no reason
    // to refuse the next one.
    const kernel = this.runs === 0 ? this.kernel.liveKernel : this.kernel.idleKernel;
    return kernel ?? NO_HELP[state] ?? `${WORDS[state]}: Tab and Shift+Tab work once it is idle.`;
  }

  private onInputKey(event: KeyboardEvent): void {
    if (this.help.onKey(event)) return;
    if (event.key === 'Enter' && !event.altKey && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      void this.submit(event.shiftKey);
    } else if ((event.key === 'ArrowUp' || event.key === 'ArrowDown') && !event.shiftKey) {
      const value = this.input.value;
      const caret = this.input.selectionStart;
      const onFirstLine = !value.slice(0, caret).includes('\n');
      const onLastLine = !value.slice(caret).includes('\n');
      if (event.key === 'ArrowUp' && onFirstLine) this.recall(-1, event);
      else if (event.key === 'ArrowDown' && onLastLine) this.recall(1, event);
    }
  }

  private recall(step: number, event: KeyboardEvent): void {
    const index = this.historyIndex + step;
    if (index < 0 || index > this.history.length) return;
    event.preventDefault();
    this.historyIndex = index;
    this.input.value = this.history[index] ?? '';
    this.help.close();
    this.fitInput();
  }

  /**
   * Enter at the end of the code: run it if the kernel says it is complete, else start a new
   * line; anywhere else in it, a new line. Shift+Enter (``force``) always runs it.
   */
  private async submit(force: boolean): Promise<void> {
    const code = this.input.value;
    if (!code.trim()) return;
    if (!force && this.input.selectionEnd < code.length) {
      this.insertNewline();
      return;
    }
    // Taken out at once, so that what is typed while the kernel is asked is not lost.
    this.help.close();
    this.input.value = '';
    this.fitInput();
    if (!force && !(await this.isComplete(code))) {
      const typed = this.input.value;
      this.input.value = `${code}\n${nextIndent(code.slice(code.lastIndexOf('\n') + 1))}${typed}`;
      this.fitInput();
      return;
    }
    await this.execute(code);
  }

  /**
   * Whether ``code`` is a complete statement, as the kernel says when it is idle; while it is
   * busy (it answers only after the running code) or absent, unless the last line opens a block.
   */
  private async isComplete(code: string): Promise<boolean> {
    const guess = !endsOpen(code);
    if (this.kernel.state !== 'idle') return guess;
    try {
      const kernel = await this.kernel.connection();
      const timeout = new Promise<null>((resolve) => setTimeout(() => resolve(null), IS_COMPLETE_TIMEOUT));
      const reply = await Promise.race([kernel.requestIsComplete({ code }), timeout]);
      return reply === null ? guess : reply.content.status !== 'incomplete';
    } catch {
      return guess;
    }
  }

  private insertNewline(): void {
    const { value, selectionStart } = this.input;
    const line = value.slice(value.lastIndexOf('\n', selectionStart - 1) + 1, selectionStart);
    this.input.setRangeText(`\n${nextIndent(line)}`, selectionStart, this.input.selectionEnd, 'end');
    this.fitInput();
  }

  private fitInput(): void {
    this.input.rows = Math.min(10, this.input.value.split('\n').length);
  }
}
