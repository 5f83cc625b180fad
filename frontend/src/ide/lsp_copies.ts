// Editor models of workspace files that are not open in a tab, for what the language server
// answers about them: a definition to jump to, a reference to preview, a rename to apply.
import { describeError } from '../common/api';
import { toastError } from '../common/toast';
import type { WorkspaceFiles } from './files';
import { serverUri } from './lsp_uris';
import { languageFor, monaco } from './monaco';

interface Copy {
  model: monaco.editor.ITextModel;
  /** The text is being replaced by the saved file's: not an edit to save. */
  refreshing: boolean;
  /** Saves one after the other, so that the last text is the one kept. */
  saved: Promise<void>;
}

/**
 * One model per file, named as the server names it (never a tab's URI), read again from the
 * Contents API each time it is asked for, so that it is the saved text. Nobody types into these
 * models: any edit to one comes from a language feature applied across files (a rename, a code
 * action), and is saved at once through the Contents API.
 */
export class FileCopies {
  private readonly copies = new Map<string, Copy>();

  constructor(private readonly files: WorkspaceFiles) {}

  /** A model holding the saved text of ``path`` (null when it is not a text file). */
  async model(path: string): Promise<monaco.editor.ITextModel | null> {
    const file = await this.files.read(path);
    if (file.format !== 'text' || typeof file.content !== 'string') return null;
    const existing = this.copies.get(path);
    if (existing !== undefined) {
      if (existing.model.getValue() !== file.content) {
        existing.refreshing = true;
        try {
          existing.model.setValue(file.content);
        } finally {
          existing.refreshing = false;
        }
      }
      return existing.model;
    }
    const model = monaco.editor.createModel(file.content, languageFor(path), monaco.Uri.parse(serverUri(path)));
    const copy: Copy = { model, refreshing: false, saved: Promise.resolve() };
    this.copies.set(path, copy);
    model.onDidChangeContent(() => {
      if (!copy.refreshing) copy.saved = copy.saved.then(() => this.save(path, model));
    });
    return model;
  }

  private async save(path: string, model: monaco.editor.ITextModel): Promise<void> {
    try {
      await this.files.saveText(path, model.getValue());
    } catch (error) {
      toastError(`Could not save the change to “${path}”: ${describeError(error)}`);
    }
  }
}
