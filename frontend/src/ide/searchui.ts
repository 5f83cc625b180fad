// Search in the IDE: quick open (Ctrl+P) and the search panel (Ctrl+Shift+F), wired to the
// editor. The IDE's keys win over Monaco's when the editor has the focus, as in VS Code.
import type { EditorArea } from './editor';
import type { WorkspaceFiles } from './files';
import { QuickOpen } from './quickopen';
import { SearchPanel } from './search';
import { SearchClient } from './searchapi';

/** The editor's selection when it is on one line (to search for), else ''. */
function selectedText(editor: EditorArea): string {
  const selection = editor.editor.getSelection();
  const model = editor.editor.getModel();
  if (!selection || !model || selection.isEmpty() || selection.startLineNumber !== selection.endLineNumber) return '';
  return model.getValueInRange(selection);
}

/** Create quick open and the search panel, bind their keys; returns the panel's element. */
export function installSearch(files: WorkspaceFiles, editor: EditorArea): HTMLElement {
  const client = new SearchClient(files.settings);
  const quickOpen = new QuickOpen(client, (path) => void editor.open(path));
  const panel = new SearchPanel(client, files, {
    openMatch: (path, match) => void editor.openAt(path, {
      startLineNumber: match.line, startColumn: match.column,
      endLineNumber: match.line, endColumn: match.column + match.length,
    }),
    // The tab's unsaved-changes marker: what the person sees is what Replace all respects.
    hasUnsavedEdits: (path) => editor.element.querySelector(`.tab.dirty[data-path="${CSS.escape(path)}"]`) !== null,
    replaced: (path, lastModified) => void editor.externalChange(path, lastModified),
    closed: () => editor.editor.focus(),
  });
  window.addEventListener('keydown', (event) => {
    const mod = (event.ctrlKey || event.metaKey) && !event.altKey;
    if (mod && !event.shiftKey && event.code === 'KeyP') {
      event.preventDefault();
      event.stopPropagation();
      quickOpen.show();
    } else if (mod && event.shiftKey && event.code === 'KeyF') {
      event.preventDefault();
      event.stopPropagation();
      quickOpen.close(false);
      panel.show(selectedText(editor));
    }
  }, true);
  return panel.element;
}
