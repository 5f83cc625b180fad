// A cell's input as the console and the notebook view show it: a prompt and coloured source.
import { h } from '../common/dom';
import { monaco } from './monaco';

/**
 * Monaco's colouring writes spaces as no-break spaces; the source is shown with
 * ``white-space: pre``, so plain spaces look the same and copy as code that runs.
 */
function plainSpaces(element: HTMLElement): void {
  const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node !== null; node = walker.nextNode()) {
    const text = node as Text;
    if (text.data.includes('\u00a0')) text.data = text.data.replace(/\u00a0/g, ' ');
  }
}

/** ``[prompt] source``; the prompt element is returned too, for the console to number it. */
export function cellInput(prompt: string, source: string, language: string): { element: HTMLElement; prompt: HTMLElement } {
  const promptElement = h('span', { class: 'prompt' }, prompt);
  const code = h('pre', { class: 'cell-source', 'data-lang': language }, source);
  // Colouring is a nicety: the plain text is already there if it fails.
  monaco.editor.colorizeElement(code, { tabSize: 4 }).then(() => plainSpaces(code), () => undefined);
  return { element: h('div', { class: 'cell-input' }, promptElement, code), prompt: promptElement };
}
