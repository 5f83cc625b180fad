// Find in files (Ctrl+Shift+F) and replace in files, as VS Code's search view: a query with
// case / whole word / regex toggles and include / exclude globs, results grouped by file with
// the match highlighted, and a replace preview whose files and lines can be left out.
import { describeError } from '../common/api';
import { confirmDialog } from '../common/dialog';
import { h, replaceChildren } from '../common/dom';
import { icon } from '../common/icons';
import { toast } from '../common/toast';
import { baseName, parentOf, type WorkspaceFiles } from './files';
import { applyReplacements } from './replace';
import type { FileMatches, SearchClient, SearchMatch, SearchQuery, SearchResult } from './searchapi';
import './search.css';

/** Wait this long (ms) after typing before searching, so a word is searched once. */
const TYPING_PAUSE = 300;

/** What the panel needs from the rest of the IDE. */
export interface SearchHost {
  /** Open a file with a match selected. */
  openMatch(path: string, match: SearchMatch): void;
  /** Whether the file is open in an editor with unsaved edits (replace leaves it alone). */
  hasUnsavedEdits(path: string): boolean;
  /** A file was rewritten by Replace all (open editors reload it). */
  replaced(path: string, lastModified: string): void;
  /** The panel closed: the focus goes back to the editor. */
  closed(): void;
}

interface Toggle {
  button: HTMLButtonElement;
  on(): boolean;
}

function toggle(id: string, label: string, title: string, changed: () => void): Toggle {
  const button = h('button', { type: 'button', class: 'search-toggle', id, title, 'aria-label': title, 'aria-pressed': 'false' }, label);
  button.addEventListener('click', () => {
    button.setAttribute('aria-pressed', String(button.getAttribute('aria-pressed') !== 'true'));
    changed();
  });
  return { button, on: () => button.getAttribute('aria-pressed') === 'true' };
}

/** "1 file", "2 files". */
function counted(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

export class SearchPanel {
  readonly element: HTMLElement;
  private readonly query: HTMLInputElement;
  private readonly replaceInput: HTMLInputElement;
  private readonly include: HTMLInputElement;
  private readonly exclude: HTMLInputElement;
  private readonly matchCase: Toggle;
  private readonly wholeWord: Toggle;
  private readonly regex: Toggle;
  private readonly replaceAllButton: HTMLButtonElement;
  private readonly status: HTMLElement;
  private readonly results: HTMLElement;
  private timer: number | undefined;
  private request: AbortController | null = null;
  private result: SearchResult | null = null;
  /** Files and matches left out of Replace all ("path" and "path:index"). */
  private excluded = new Set<string>();

  constructor(private readonly client: SearchClient, private readonly files: WorkspaceFiles, private readonly host: SearchHost) {
    const changed = (): void => this.schedule(0);
    this.query = h('input', { type: 'text', id: 'search-input', class: 'search-input', placeholder: 'Search', 'aria-label': 'Search', spellcheck: 'false', autocomplete: 'off' });
    this.replaceInput = h('input', { type: 'text', id: 'search-replace', class: 'search-input', placeholder: 'Replace', 'aria-label': 'Replace', spellcheck: 'false', autocomplete: 'off' });
    this.include = h('input', { type: 'text', id: 'search-include', class: 'search-input', placeholder: 'e.g. *.py, src/**', 'aria-label': 'Files to include', spellcheck: 'false' });
    this.exclude = h('input', { type: 'text', id: 'search-exclude', class: 'search-input', placeholder: 'e.g. tests/**', 'aria-label': 'Files to exclude', spellcheck: 'false' });
    this.matchCase = toggle('search-case', 'Aa', 'Match case', changed);
    this.wholeWord = toggle('search-word', 'ab', 'Match whole word', changed);
    this.regex = toggle('search-regex', '.*', 'Use regular expression (PostgreSQL syntax)', changed);
    this.replaceAllButton = h('button', {
      type: 'button', class: 'button small', id: 'search-replace-all', disabled: true,
      title: 'Replace the checked matches and save the files', onclick: () => void this.replaceAll(),
    }, 'Replace all');
    this.status = h('p', { class: 'search-status', id: 'search-status', role: 'status', 'aria-live': 'polite' });
    this.results = h('div', { class: 'search-results', id: 'search-results' });
    const close = h('button', {
      type: 'button', class: 'icon-button', id: 'search-close', title: 'Close the search', 'aria-label': 'Close the search',
      onclick: () => this.close(),
    }, icon('close'));
    this.element = h('section', { class: 'search-panel sidebar', id: 'search-panel', 'aria-label': 'Search in files', hidden: true },
      h('header', { class: 'pane-header' }, h('span', { class: 'pane-title' }, 'Search'), close),
      h('div', { class: 'search-form' },
        h('div', { class: 'search-row' }, this.query, this.matchCase.button, this.wholeWord.button, this.regex.button),
        h('div', { class: 'search-row' }, this.replaceInput, this.replaceAllButton),
        h('label', { class: 'search-label' }, 'Files to include', this.include),
        h('label', { class: 'search-label' }, 'Files to exclude', this.exclude)),
      this.status, this.results);
    for (const input of [this.query, this.replaceInput, this.include, this.exclude]) {
      input.addEventListener('input', () => this.schedule(TYPING_PAUSE));
      input.addEventListener('keydown', (event) => {
        if (event.key === 'Enter') {
          event.preventDefault();
          this.schedule(0);
        }
      });
    }
    this.element.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && !event.defaultPrevented) {
        event.preventDefault();
        this.close();
      }
    });
  }

  /** Show the panel with the search box focused (and ``text`` in it, when given). */
  show(text?: string): void {
    this.element.hidden = false;
    if (text) {
      this.query.value = text;
      this.schedule(0);
    }
    this.query.focus();
    this.query.select();
  }

  close(): void {
    if (this.element.hidden) return;
    this.element.hidden = true;
    this.request?.abort();
    this.host.closed();
  }

  private schedule(delay: number): void {
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => void this.run(), delay);
  }

  private currentQuery(): SearchQuery {
    const replace = this.replaceInput.value;
    return {
      q: this.query.value, regex: this.regex.on(), case: this.matchCase.on(), word: this.wholeWord.on(),
      include: this.include.value, exclude: this.exclude.value, ...(replace ? { replace } : {}),
    };
  }

  private say(text: string, error = false): void {
    this.status.textContent = text;
    this.status.classList.toggle('error', error);
  }

  /** Search now (a search in flight is dropped). */
  private async run(): Promise<void> {
    this.request?.abort();
    const query = this.currentQuery();
    if (!query.q) {
      this.request = null;
      this.render(null);
      this.say('');
      return;
    }
    const request = new AbortController();
    this.request = request;
    this.element.setAttribute('aria-busy', 'true');
    this.say('Searching…');
    try {
      const result = await this.client.find(query, request.signal);
      if (request.signal.aborted) return;
      this.excluded.clear();
      this.render(result);
    } catch (error) {
      if (request.signal.aborted) return;
      this.render(null);
      this.say(describeError(error), true);
    } finally {
      if (this.request === request) {
        this.request = null;
        this.element.removeAttribute('aria-busy');
      }
    }
  }

  private render(result: SearchResult | null): void {
    this.result = result;
    if (result === null) {
      replaceChildren(this.results);
      this.replaceAllButton.disabled = true;
      return;
    }
    const count = result.files.reduce((n, file) => n + file.matches.length, 0);
    if (count === 0) {
      this.say(`No results in ${counted(result.searched_files, 'file', 'files')}.`);
    } else {
      const shown = `${counted(count, 'match', 'matches')} in ${counted(result.files.length, 'file', 'files')}`;
      this.say(result.truncated ? `${shown} (the first only: narrow the search to see the others).` : `${shown}.`);
    }
    replaceChildren(this.results, ...result.files.map((file) => this.fileElement(file)));
    this.updateReplaceButton();
  }

  private get replacing(): boolean {
    return this.result?.files.some((f) => f.matches.some((m) => m.replacement !== undefined)) ?? false;
  }

  private fileElement(file: FileMatches): HTMLElement {
    const replacing = this.replacing;
    const fileCheck = h('input', { type: 'checkbox', class: 'search-file-check', checked: true, 'aria-label': `Replace in ${file.path}` });
    fileCheck.addEventListener('change', () => {
      if (fileCheck.checked) this.excluded.delete(file.path);
      else this.excluded.add(file.path);
      element.classList.toggle('excluded', !fileCheck.checked);
      this.updateReplaceButton();
    });
    const folder = parentOf(file.path);
    const element = h('div', { class: 'search-file', 'data-path': file.path },
      h('div', { class: 'search-file-header', title: file.path },
        replacing && fileCheck, icon('file'), h('span', { class: 'search-file-name' }, baseName(file.path)),
        folder && h('span', { class: 'search-file-folder' }, folder), h('span', { class: 'search-count' }, String(file.matches.length))),
      h('ul', { class: 'search-matches' }, ...file.matches.map((match, i) => this.matchElement(file.path, match, i))));
    return element;
  }

  private matchElement(path: string, match: SearchMatch, index: number): HTMLElement {
    const key = `${path}:${index}`;
    const { before, after } = match.preview;
    const text = match.replacement === undefined
      ? [before, h('mark', {}, match.preview.match), after]
      : [before, h('del', {}, match.preview.match), h('ins', {}, match.replacement), after];
    const open = h('button', {
      type: 'button', class: 'search-match-open', title: `${path}, line ${match.line}`,
      'data-line': match.line, 'data-column': match.column,
    }, h('span', { class: 'search-line-number' }, String(match.line)), h('span', { class: 'search-preview' }, ...text));
    open.addEventListener('click', () => this.host.openMatch(path, match));
    const item = h('li', { class: 'search-match' });
    if (match.replacement !== undefined) {
      const check = h('input', { type: 'checkbox', class: 'search-match-check', checked: true, 'aria-label': `Replace on line ${match.line}` });
      check.addEventListener('change', () => {
        if (check.checked) this.excluded.delete(key);
        else this.excluded.add(key);
        item.classList.toggle('excluded', !check.checked);
        this.updateReplaceButton();
      });
      item.append(check);
    }
    item.append(open);
    return item;
  }

  /** Each file's checked matches. */
  private chosen(): FileMatches[] {
    if (!this.result) return [];
    return this.result.files
      .filter((file) => !this.excluded.has(file.path))
      .map((file) => ({ path: file.path, matches: file.matches.filter((m, i) => m.replacement !== undefined && !this.excluded.has(`${file.path}:${i}`)) }))
      .filter((file) => file.matches.length > 0);
  }

  private updateReplaceButton(): void {
    this.replaceAllButton.disabled = this.chosen().length === 0;
  }

  /**
   * Apply the checked replacements through the contents API (a PUT per file, so versions,
   * events and the sandbox see it). Files open with unsaved edits are skipped, and so are files
   * that changed since the search; both are named.
   */
  private async replaceAll(): Promise<void> {
    const files = this.chosen();
    const count = files.reduce((n, file) => n + file.matches.length, 0);
    if (!count) return;
    const sure = await confirmDialog('Replace all',
      `Replace ${counted(count, 'match', 'matches')} in ${counted(files.length, 'file', 'files')}? The files are saved.`, 'Replace');
    if (!sure) return;
    this.replaceAllButton.disabled = true;
    const unsaved: string[] = [];
    const changed: string[] = [];
    const failed: string[] = [];
    let done = 0;
    for (const file of files) {
      if (this.host.hasUnsavedEdits(file.path)) {
        unsaved.push(file.path);
        continue;
      }
      try {
        const model = await this.files.read(file.path);
        const text = model.format === 'text' && typeof model.content === 'string' ? applyReplacements(model.content, file.matches) : null;
        if (text === null) {
          changed.push(file.path);
          continue;
        }
        const saved = await this.files.saveText(file.path, text);
        this.host.replaced(file.path, saved.last_modified);
        done += 1;
      } catch (error) {
        failed.push(`${file.path} (${describeError(error)})`);
      }
    }
    const notes = [
      unsaved.length ? `Skipped, as they have unsaved changes (save or revert them first): ${unsaved.join(', ')}.` : '',
      changed.length ? `Skipped, as they changed since the search: ${changed.join(', ')}.` : '',
      failed.length ? `Could not save: ${failed.join(', ')}.` : '',
    ].filter(Boolean);
    const summary = `Replaced in ${counted(done, 'file', 'files')}.`;
    toast(notes.length ? `${summary} ${notes.join(' ')}` : summary, notes.length ? 'error' : 'success');
    await this.run();
    if (notes.length) this.say(`${summary} ${notes.join(' ')}`, true);
  }
}
