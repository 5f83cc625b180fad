// A read-only view of a Jupyter notebook (nbformat 4, as the Contents API returns it with
// type=notebook): Markdown cells rendered safely, code cells with their stored outputs.
import { h } from '../common/dom';
import { icon } from '../common/icons';
import { cellInput } from './cell';
import { renderMarkdown } from './markdown';
import { joinText, OutputArea, parseOutput } from './outputs';

interface Cell {
  cell_type?: unknown;
  source?: unknown;
  outputs?: unknown;
  execution_count?: unknown;
}

function codeCell(cell: Cell, language: string): HTMLElement {
  const count = typeof cell.execution_count === 'number' ? String(cell.execution_count) : ' ';
  const outputs = new OutputArea();
  for (const value of Array.isArray(cell.outputs) ? cell.outputs : []) {
    const output = parseOutput(value);
    if (output) outputs.add(output);
  }
  return h('div', { class: 'cell code-cell' }, cellInput(`[${count}]:`, joinText(cell.source), language).element, outputs.element);
}

function cellElement(cell: Cell, language: string): HTMLElement {
  switch (cell.cell_type) {
    case 'markdown':
      return h('div', { class: 'cell markdown-cell' }, renderMarkdown(joinText(cell.source)));
    case 'code':
      return codeCell(cell, language);
    default:
      return h('div', { class: 'cell raw-cell' }, h('pre', { class: 'cell-source' }, joinText(cell.source)));
  }
}

/** The language of a notebook's code cells, for colouring (Python unless it says otherwise). */
function languageOf(metadata: unknown): string {
  const info = (metadata as { language_info?: { name?: unknown } } | null)?.language_info;
  return typeof info?.name === 'string' ? info.name.toLowerCase() : 'python';
}

export class NotebookView {
  readonly element: HTMLElement;
  private readonly cells: HTMLElement;

  constructor(openAsText: () => void) {
    this.cells = h('div', { class: 'notebook-cells' });
    this.element = h('div', { class: 'notebook-view', role: 'document' },
      h('div', { class: 'notebook-toolbar' },
        h('span', { class: 'muted' }, 'Read-only view of the notebook and its saved outputs'),
        h('button', { type: 'button', class: 'button small notebook-open-text', onclick: openAsText },
          icon('file'), 'Open as text')),
      this.cells);
  }

  /** Show a notebook (the ``content`` of a notebook model). */
  render(notebook: unknown): void {
    const { cells, metadata } = (notebook ?? {}) as { cells?: unknown; metadata?: unknown };
    if (!Array.isArray(cells)) {
      this.cells.replaceChildren(h('p', { class: 'notebook-problem' }, 'This file has no notebook cells: open it as text to see what it holds.'));
      return;
    }
    const language = languageOf(metadata);
    this.cells.replaceChildren(...cells.map((cell) => cellElement(cell as Cell, language)));
    if (cells.length === 0) this.cells.append(h('p', { class: 'muted' }, 'This notebook has no cells.'));
  }
}
