// A file's history, as VS Code's Timeline: its checkpoints newest first, a read-only diff of one
// against the editor's current text (unsaved edits included), restore, and "save a version now".
import type { Contents } from '@jupyterlab/services';
import { describeError } from '../common/api';
import { confirmDialog } from '../common/dialog';
import { h, replaceChildren } from '../common/dom';
import { icon } from '../common/icons';
import { isDark } from '../common/theme';
import { exactTime, timeAgo } from '../common/time';
import { toast } from '../common/toast';
import { baseName, type WorkspaceFiles } from './files';
import { monaco } from './monaco';

/** The open file the panel is about, as the editor area lends it. */
export interface HistoryTarget {
  path: string;
  /** The editor's model: the diff's modified side, so unsaved edits show. */
  model: monaco.editor.ITextModel;
  dirty(): boolean;
  /** Replace the editor's text with what is on disk. */
  reload(): Promise<void>;
  /** The panel closed: focus goes back to the editor. */
  closed(): void;
}

export const EMPTY_HISTORY =
  'No saved versions yet: Save a version now, or they are made when a notebook is first saved (saving other files makes none).';

export class HistoryPanel {
  readonly element: HTMLElement;
  private readonly title: HTMLElement;
  private readonly list: HTMLElement;
  private readonly message: HTMLElement;
  private readonly diffHost: HTMLElement;
  private readonly restoreButton: HTMLButtonElement;
  private readonly saveButton: HTMLButtonElement;
  private target: HistoryTarget | null = null;
  private selected: string | null = null;
  private diff: monaco.editor.IStandaloneDiffEditor | null = null;
  private original: monaco.editor.ITextModel | null = null;

  constructor(private readonly files: WorkspaceFiles) {
    this.title = h('h2', { class: 'history-title', id: 'history-title' });
    this.saveButton = h('button', { type: 'button', class: 'button small', id: 'history-save',
      title: 'Keep the file as last saved as a version', onclick: () => void this.saveVersion() }, 'Save a version now');
    this.restoreButton = h('button', {
      type: 'button', class: 'button small primary', id: 'history-restore', disabled: true, onclick: () => void this.restore(),
    }, 'Restore this version');
    const close = h('button', {
      type: 'button', class: 'icon-button', id: 'history-close', title: 'Close the history (Escape)', 'aria-label': 'Close the history',
      onclick: () => this.close(),
    }, icon('close'));
    this.list = h('ol', { class: 'history-list', id: 'history-list', 'aria-label': 'Saved versions, newest first' });
    this.message = h('p', { class: 'history-message', id: 'history-message', role: 'status' });
    this.diffHost = h('div', { class: 'history-diff', id: 'history-diff' });
    this.element = h('section', { class: 'history-panel', id: 'history', 'aria-labelledby': 'history-title', hidden: true },
      h('header', { class: 'history-header' }, icon('history'), this.title, h('span', { class: 'spacer' }), this.saveButton, this.restoreButton, close),
      h('div', { class: 'history-body' }, h('div', { class: 'history-side' }, this.message, this.list), this.diffHost));
    const onEscape = (event: KeyboardEvent): void => {
      if (event.key !== 'Escape' || event.defaultPrevented || !this.target) return;
      event.preventDefault();
      event.stopPropagation();
      this.close();
    };
    // Inside the panel, before Monaco's diff editor sees the key; on the page, when a click
    // on a button that became disabled left the focus nowhere.
    this.element.addEventListener('keydown', onEscape, true);
    document.addEventListener('keydown', (event) => {
      if (document.activeElement === document.body) onEscape(event);
    });
  }

  /** The path the open panel is about (null when closed). */
  get path(): string | null {
    return this.target?.path ?? null;
  }

  /** Show the history of a file. */
  async open(target: HistoryTarget): Promise<void> {
    if (this.target?.path !== target.path) this.closeDiff();
    this.target = target;
    this.title.textContent = `History of “${baseName(target.path)}”`;
    this.title.title = target.path;
    this.element.hidden = false;
    this.saveButton.focus();
    await this.refresh();
  }

  /** Close the panel and its diff, back to the editor. */
  close(): void {
    if (!this.target) return;
    const target = this.target;
    this.closeDiff();
    this.target = null;
    this.element.hidden = true;
    target.closed();
  }

  private closeDiff(): void {
    this.diff?.dispose();
    this.original?.dispose();
    this.diff = null;
    this.original = null;
    this.selected = null;
    this.restoreButton.disabled = true;
  }

  private say(text: string, error = false): void {
    this.message.textContent = text;
    this.message.classList.toggle('error', error);
    this.message.hidden = !text;
  }

  /** List the checkpoints again (keeping the selection when it is still there). */
  private async refresh(): Promise<void> {
    const target = this.target;
    if (!target) return;
    let checkpoints: Contents.ICheckpointModel[];
    try {
      checkpoints = await this.files.checkpoints(target.path);
    } catch (error) {
      this.say(`Could not list the saved versions: ${describeError(error)}`, true);
      return;
    }
    if (this.target !== target) return;
    this.say(checkpoints.length ? '' : EMPTY_HISTORY);
    const now = Date.now();
    replaceChildren(this.list, ...checkpoints.map((checkpoint) => {
      const entry = h('button', {
        type: 'button', class: 'history-entry', 'data-id': checkpoint.id, title: exactTime(checkpoint.last_modified),
        'aria-pressed': String(checkpoint.id === this.selected), onclick: () => void this.select(checkpoint.id),
      }, icon('history'), h('span', { class: 'history-time' }, timeAgo(checkpoint.last_modified, now)));
      return h('li', {}, entry);
    }));
    if (this.selected !== null && !checkpoints.some((c) => c.id === this.selected)) this.closeDiff();
  }

  /** Show a checkpoint against the editor's current text. */
  private async select(id: string): Promise<void> {
    const target = this.target;
    if (!target) return;
    let text: string | null;
    try {
      text = await this.files.checkpointText(target.path, id);
    } catch (error) {
      this.say(`Could not read this version: ${describeError(error)}`, true);
      return;
    }
    if (this.target !== target) return;
    if (text === null) {
      this.say('This version is not text: it cannot be compared here.', true);
      return;
    }
    this.say('');
    this.selected = id;
    for (const entry of this.list.querySelectorAll<HTMLElement>('.history-entry')) {
      entry.setAttribute('aria-pressed', String(entry.dataset.id === id));
    }
    this.diff ??= monaco.editor.createDiffEditor(this.diffHost, {
      readOnly: true,
      originalEditable: false,
      automaticLayout: true,
      renderSideBySide: true,
      useInlineViewWhenSpaceIsLimited: false,
      theme: isDark() ? 'vs-dark' : 'vs',
      scrollBeyondLastLine: false,
    });
    const previous = this.original;
    this.original = monaco.editor.createModel(text, target.model.getLanguageId());
    this.diff.setModel({ original: this.original, modified: target.model });
    previous?.dispose();
    this.restoreButton.disabled = false;
  }

  private async restore(): Promise<void> {
    const target = this.target;
    const id = this.selected;
    if (!target || id === null) return;
    if (target.dirty()) {
      const discard = await confirmDialog('Unsaved changes',
        `Restoring this version of “${baseName(target.path)}” replaces your unsaved changes. Restore it?`, 'Restore', true);
      if (!discard) return;
    }
    this.restoreButton.disabled = true;
    try {
      await this.files.restoreCheckpoint(target.path, id);
      await target.reload();
      toast(`Restored a saved version of “${baseName(target.path)}”.`, 'success');
      this.close();
    } catch (error) {
      this.say(`Could not restore this version: ${describeError(error)}`, true);
      this.restoreButton.disabled = this.selected === null;
    }
  }

  private async saveVersion(): Promise<void> {
    const target = this.target;
    if (!target) return;
    this.saveButton.disabled = true;
    try {
      await this.files.createCheckpoint(target.path);
      await this.refresh();
    } catch (error) {
      this.say(`Could not save a version: ${describeError(error)}`, true);
    } finally {
      this.saveButton.disabled = false;
    }
  }
}
