// Kernel help at the console's prompt, as in JupyterLab's console: Tab completes the name before
// the caret (complete_request), Shift+Tab shows its documentation (inspect_request). Both ask
// only a kernel running none of the console's code (it would answer after that code); a missing
// one is not started for this.
import type { Kernel } from '@jupyterlab/services';
import { h } from '../common/dom';
import { ansiToNodes } from './ansi';

/** How long a completion or documentation request may take before it is given up, in ms (the
 * kernel's first completions, jedi's, can take seconds on a loaded machine). */
const REPLY_TIMEOUT = 30000;
const NO_ANSWER = 'The kernel did not answer in time: try again.';

/** The most matches the list shows. */
const MAX_MATCHES = 200;

/** The caret follows a name or an attribute dot: Tab completes there (else it keeps its job). */
const COMPLETES = /[\p{L}\p{N}_.]$/u;

/** Either an idle kernel to ask, or why there is none, in words. */
export type KernelOrReason = Kernel.IKernelConnection | string;

/** A JavaScript string index as a count of code points (what the Jupyter protocol counts). */
function codePoints(text: string, index: number): number {
  return Array.from(text.slice(0, index)).length;
}

/** A count of code points from the protocol as an index into ``text``. */
function stringIndex(text: string, points: number): number {
  return Array.from(text).slice(0, points).join('').length;
}

function withTimeout<T>(promise: Promise<T>): Promise<T | null> {
  const timeout = new Promise<null>((resolve) => setTimeout(() => resolve(null), REPLY_TIMEOUT));
  return Promise.race([promise, timeout]);
}

/** The open list: what it replaces (from ``start`` to the caret, plus ``tail`` characters). */
interface Completion {
  start: number;
  tail: number;
  matches: string[];
  shown: string[];
  selected: number;
}

export class PromptHelp {
  /** The documentation (or why there is none) under the prompt. */
  readonly tooltip: HTMLElement;
  private readonly list: HTMLElement;
  private completion: Completion | null = null;
  /** Counts requests: a reply to an older one, or to changed text, is dropped. */
  private generation = 0;

  constructor(
    private readonly input: HTMLTextAreaElement,
    private readonly kernel: () => KernelOrReason,
  ) {
    this.tooltip = h('div', { class: 'console-tooltip', id: 'console-tooltip', role: 'status', hidden: true });
    this.list = h('ul', { class: 'console-completions', id: 'console-completions', role: 'listbox', 'aria-label': 'Completions', hidden: true });
    // The list takes no focus: a click accepts, and typing goes on in the prompt.
    this.list.addEventListener('mousedown', (event) => event.preventDefault());
    input.addEventListener('input', () => this.onInput());
    input.addEventListener('blur', () => this.closeList());
  }

  /** Where the list goes (it is placed over the page, next to the caret). */
  get listElement(): HTMLElement {
    return this.list;
  }

  /** Handle a key at the prompt; true if it was this one's (its default is then prevented). */
  onKey(event: KeyboardEvent): boolean {
    if (event.altKey || event.ctrlKey || event.metaKey) return false;
    const handled = this.completion !== null ? this.onListKey(event) : this.onPromptKey(event);
    if (handled) event.preventDefault();
    return handled;
  }

  /** Close the list and the documentation (the code was run, or taken away). */
  close(): void {
    this.generation += 1;
    this.closeList();
    this.closeTooltip();
  }

  private onListKey(event: KeyboardEvent): boolean {
    const completion = this.completion;
    if (completion === null) return false;
    if (event.key === 'ArrowDown' || event.key === 'ArrowUp') {
      const step = event.key === 'ArrowDown' ? 1 : -1;
      completion.selected = (completion.selected + step + completion.shown.length) % completion.shown.length;
      this.renderList();
    } else if (event.key === 'Enter' || (event.key === 'Tab' && !event.shiftKey)) {
      this.accept(completion.shown[completion.selected] ?? '');
    } else if (event.key === 'Escape') {
      this.closeList();
    } else {
      return false;
    }
    return true;
  }

  private onPromptKey(event: KeyboardEvent): boolean {
    if (event.key === 'Escape' && !this.tooltip.hidden) {
      this.closeTooltip();
      return true;
    }
    if (event.key !== 'Tab') return false;
    const { value, selectionStart, selectionEnd } = this.input;
    if (event.shiftKey) {
      if (!value.trim()) return false;
      void this.inspect(value, selectionStart);
      return true;
    }
    if (selectionStart !== selectionEnd || !COMPLETES.test(value.slice(0, selectionStart))) return false;
    void this.complete(value, selectionStart);
    return true;
  }

  /** The kernel to ask now, or null once the reason there is none is shown. */
  private idleKernel(): Kernel.IKernelConnection | null {
    const kernel = this.kernel();
    if (typeof kernel !== 'string') return kernel;
    this.showTooltip([document.createTextNode(kernel)], true);
    return null;
  }

  private async complete(code: string, caret: number): Promise<void> {
    this.closeTooltip();
    const kernel = this.idleKernel();
    if (kernel === null) return;
    const generation = ++this.generation;
    let reply;
    try {
      reply = await withTimeout(kernel.requestComplete({ code, cursor_pos: codePoints(code, caret) }));
    } catch {
      return; // The kernel went away meanwhile: nothing to offer.
    }
    if (generation !== this.generation || this.input.value !== code || this.input.selectionStart !== caret) return;
    if (reply === null) {
      this.showTooltip([document.createTextNode(NO_ANSWER)], true);
      return;
    }
    if (reply.content.status !== 'ok') return;
    const content = reply.content;
    const matches = [...new Set(content.matches)].slice(0, MAX_MATCHES);
    const start = stringIndex(code, content.cursor_start);
    const end = Math.max(caret, stringIndex(code, content.cursor_end));
    if (matches.length === 0) {
      this.showTooltip([document.createTextNode('No completions.')], true);
      return;
    }
    this.completion = { start, tail: end - caret, matches, shown: matches, selected: 0 };
    if (matches.length === 1) this.accept(matches[0] ?? '');
    else this.renderList();
  }

  private async inspect(code: string, caret: number): Promise<void> {
    this.closeList();
    const kernel = this.idleKernel();
    if (kernel === null) return;
    const generation = ++this.generation;
    let reply;
    try {
      reply = await withTimeout(kernel.requestInspect({ code, cursor_pos: codePoints(code, caret), detail_level: 0 }));
    } catch {
      return;
    }
    if (generation !== this.generation || this.input.value !== code) return;
    if (reply === null) {
      this.showTooltip([document.createTextNode(NO_ANSWER)], true);
      return;
    }
    if (reply.content.status !== 'ok') return;
    const text = reply.content.found ? reply.content.data['text/plain'] : undefined;
    if (typeof text === 'string' && text.trim()) this.showTooltip(ansiToNodes(text), false);
    else this.showTooltip([document.createTextNode('No documentation for this.')], true);
  }

  /** Typing filters the list by what is now between its start and the caret, or closes it. */
  private onInput(): void {
    this.generation += 1;
    this.closeTooltip();
    const completion = this.completion;
    if (completion === null) return;
    const caret = this.input.selectionStart;
    const typed = caret >= completion.start ? this.input.value.slice(completion.start, caret) : null;
    const shown = typed === null ? [] : completion.matches.filter((match) => match.startsWith(typed));
    if (shown.length === 0 || (shown.length === 1 && shown[0] === typed)) {
      this.closeList();
      return;
    }
    completion.shown = shown;
    completion.selected = 0;
    this.renderList();
  }

  private accept(match: string): void {
    const completion = this.completion;
    this.closeList();
    if (completion === null || !match) return;
    const caret = this.input.selectionStart;
    this.input.setRangeText(match, completion.start, caret + completion.tail, 'end');
    this.input.dispatchEvent(new Event('input'));
  }

  private renderList(): void {
    const completion = this.completion;
    if (completion === null) return;
    this.list.replaceChildren(...completion.shown.map((match, index) => {
      const selected = index === completion.selected;
      return h('li', {
        class: selected ? 'selected' : null, role: 'option', 'aria-selected': String(selected),
        onclick: () => this.accept(match),
      }, match);
    }));
    this.list.hidden = false;
    this.placeList();
    this.list.querySelector('.selected')?.scrollIntoView({ block: 'nearest' });
  }

  /** Under the caret (the prompt's font is monospaced), or above it if the page ends first. */
  private placeList(): void {
    const style = getComputedStyle(this.input);
    const before = this.input.value.slice(0, this.completion?.start ?? this.input.selectionStart);
    const lines = before.split('\n');
    const column = lines.at(-1)?.length ?? 0;
    const context = document.createElement('canvas').getContext('2d');
    if (context) context.font = style.font;
    const charWidth = context?.measureText('M').width ?? 8;
    const lineHeight = parseFloat(style.lineHeight) || 19;
    const box = this.input.getBoundingClientRect();
    const left = box.left + parseFloat(style.borderLeftWidth) + parseFloat(style.paddingLeft) + column * charWidth - this.input.scrollLeft;
    const lineTop = box.top + parseFloat(style.borderTopWidth) + parseFloat(style.paddingTop) + (lines.length - 1) * lineHeight - this.input.scrollTop;
    const height = this.list.offsetHeight;
    const below = lineTop + lineHeight;
    this.list.style.left = `${Math.max(0, Math.min(left, window.innerWidth - this.list.offsetWidth))}px`;
    this.list.style.top = `${below + height > window.innerHeight ? Math.max(0, lineTop - height) : below}px`;
  }

  private closeList(): void {
    this.completion = null;
    this.list.hidden = true;
    this.list.replaceChildren();
  }

  private showTooltip(nodes: Node[], note: boolean): void {
    this.tooltip.replaceChildren(h('pre', { class: note ? 'muted' : null }, ...nodes));
    this.tooltip.hidden = false;
  }

  private closeTooltip(): void {
    this.tooltip.hidden = true;
    this.tooltip.replaceChildren();
  }
}
