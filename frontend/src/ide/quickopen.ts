// Quick open (Ctrl+P), as VS Code's: type part of a file's name, arrows to choose, Enter to
// open, Escape to close. Names are matched fuzzily by the server (GET api/search/files).
import { describeError } from '../common/api';
import { h, replaceChildren } from '../common/dom';
import { icon } from '../common/icons';
import { baseName, parentOf } from './files';
import type { FileHit, SearchClient } from './searchapi';

/** Wait this long (ms) after a key before asking the server, so fast typing asks once. */
const TYPING_PAUSE = 60;

/** The characters of ``text`` from ``offset`` with the matched ones in <mark>. */
function highlighted(text: string, offset: number, positions: Set<number>): Node[] {
  const nodes: Node[] = [];
  let run = '';
  let marked = false;
  const flush = (): void => {
    if (run) nodes.push(marked ? h('mark', {}, run) : document.createTextNode(run));
    run = '';
  };
  for (let i = 0; i < text.length; i += 1) {
    const isMarked = positions.has(offset + i);
    if (isMarked !== marked) {
      flush();
      marked = isMarked;
    }
    run += text.charAt(i);
  }
  flush();
  return nodes;
}

export class QuickOpen {
  private readonly backdrop: HTMLElement;
  private readonly input: HTMLInputElement;
  private readonly list: HTMLElement;
  private readonly message: HTMLElement;
  private hits: FileHit[] = [];
  private selected = 0;
  private timer: number | undefined;
  private request: AbortController | null = null;
  private previousFocus: HTMLElement | null = null;
  /** The list for the text typed so far (Enter waits for it). */
  private settled: Promise<void> = Promise.resolve();

  constructor(private readonly client: SearchClient, private readonly openFile: (path: string) => void) {
    this.input = h('input', {
      type: 'text', class: 'quick-open-input', id: 'quick-open-input', placeholder: 'Search files by name',
      'aria-label': 'File name', role: 'combobox', 'aria-controls': 'quick-open-list', 'aria-expanded': 'true', autocomplete: 'off', spellcheck: 'false',
    });
    this.list = h('ul', { class: 'quick-open-list', id: 'quick-open-list', role: 'listbox', 'aria-label': 'Matching files' });
    this.message = h('p', { class: 'quick-open-message', id: 'quick-open-message', role: 'status' });
    const panel = h('div', { class: 'quick-open', id: 'quick-open', role: 'dialog', 'aria-label': 'Go to file' }, this.input, this.message, this.list);
    this.backdrop = h('div', { class: 'quick-open-backdrop', hidden: true }, panel);
    this.backdrop.addEventListener('mousedown', (event) => {
      if (event.target === this.backdrop) this.close();
    });
    this.input.addEventListener('input', () => this.schedule());
    this.input.addEventListener('keydown', (event) => this.onKey(event));
    document.body.append(this.backdrop);
  }

  get isOpen(): boolean {
    return !this.backdrop.hidden;
  }

  /** Show the picker, with the text typed last time selected. */
  show(): void {
    if (!this.isOpen) {
      const active = document.activeElement;
      this.previousFocus = active instanceof HTMLElement ? active : null;
    }
    this.backdrop.hidden = false;
    this.input.focus();
    this.input.select();
    this.schedule();
  }

  close(restoreFocus = true): void {
    if (!this.isOpen) return;
    this.backdrop.hidden = true;
    this.request?.abort();
    window.clearTimeout(this.timer);
    if (restoreFocus) this.previousFocus?.focus();
  }

  private onKey(event: KeyboardEvent): void {
    const moves: Record<string, number> = { ArrowDown: 1, ArrowUp: -1, PageDown: 10, PageUp: -10 };
    const move = moves[event.key];
    if (move !== undefined) {
      event.preventDefault();
      this.select(Math.max(0, Math.min(this.hits.length - 1, this.selected + move)));
    } else if (event.key === 'Enter') {
      event.preventDefault();
      void this.settled.then(() => this.choose(this.selected));
    } else if (event.key === 'Escape') {
      event.preventDefault();
      event.stopPropagation();
      this.close();
    }
  }

  private schedule(): void {
    window.clearTimeout(this.timer);
    this.settled = new Promise((resolve) => {
      this.timer = window.setTimeout(() => void this.refresh().finally(resolve), TYPING_PAUSE);
    });
  }

  private async refresh(): Promise<void> {
    this.request?.abort();
    const request = new AbortController();
    this.request = request;
    const query = this.input.value;
    try {
      const result = await this.client.fileNames(query, request.signal);
      if (request.signal.aborted) return;
      this.render(result.files, result.truncated);
    } catch (error) {
      if (request.signal.aborted) return;
      this.hits = [];
      replaceChildren(this.list);
      this.say(`Could not list the files: ${describeError(error)}`, true);
    }
  }

  private say(text: string, error = false): void {
    this.message.textContent = text;
    this.message.classList.toggle('error', error);
    this.message.hidden = !text;
  }

  private render(hits: FileHit[], truncated: boolean): void {
    this.hits = hits;
    this.selected = 0;
    this.say(hits.length ? '' : 'No file name matches.');
    replaceChildren(this.list, ...hits.map((hit, i) => {
      const positions = new Set(hit.positions);
      const name = baseName(hit.path);
      const folder = parentOf(hit.path);
      const item = h('li', {
        class: 'quick-open-item', id: `quick-open-item-${i}`, role: 'option', 'data-path': hit.path, title: hit.path,
        'aria-selected': String(i === 0),
      }, icon('file'),
      h('span', { class: 'quick-open-name' }, ...highlighted(name, hit.path.length - name.length, positions)),
      h('span', { class: 'quick-open-folder' }, ...highlighted(folder, 0, positions)));
      item.addEventListener('mousedown', (event) => event.preventDefault());
      item.addEventListener('click', () => this.choose(i));
      return item;
    }));
    if (truncated && hits.length) {
      this.list.append(h('li', { class: 'quick-open-more', role: 'presentation' }, 'Type more of the name to see other files.'));
    }
    this.select(0);
  }

  private select(index: number): void {
    this.selected = index;
    const items = this.list.querySelectorAll<HTMLElement>('.quick-open-item');
    items.forEach((item, i) => item.setAttribute('aria-selected', String(i === index)));
    const current = items[index];
    if (current) {
      this.input.setAttribute('aria-activedescendant', current.id);
      current.scrollIntoView({ block: 'nearest' });
    }
  }

  private choose(index: number): void {
    const hit = this.hits[index];
    if (!hit) return;
    this.close(false);
    this.openFile(hit.path);
  }
}
