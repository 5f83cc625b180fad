// Jupyter outputs (nbformat's stream, execute_result, display_data and error) as DOM: one
// renderer for the console's live kernel messages and for a notebook's stored outputs.
// Nothing from an output is ever parsed as HTML in the IDE's page: text goes in as text, images
// as data: URLs, and text/html only inside a sandboxed frame (no scripts, no same origin).
import { h } from '../common/dom';
import { ansiToNodes } from './ansi';
import { renderMarkdown } from './markdown';

type Json = Record<string, unknown>;

export type Output =
  | { output_type: 'stream'; name: 'stdout' | 'stderr'; text: string }
  | { output_type: 'execute_result' | 'display_data'; data: Json; metadata: Json }
  | { output_type: 'error'; ename: string; evalue: string; traceback: string[] };

/** Most characters one stream output keeps (the start is dropped past this). */
const MAX_STREAM_CHARS = 200_000;

/** nbformat's multiline strings: one string, or a list of strings to join. */
export function joinText(value: unknown): string {
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) return value.filter((part): part is string => typeof part === 'string').join('');
  return '';
}

function asObject(value: unknown): Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Json) : {};
}

/** An output from a notebook file or a kernel message (content plus output_type), or null. */
export function parseOutput(value: unknown): Output | null {
  const raw = asObject(value);
  switch (raw.output_type) {
    case 'stream':
      return { output_type: 'stream', name: raw.name === 'stderr' ? 'stderr' : 'stdout', text: joinText(raw.text) };
    case 'execute_result':
    case 'display_data':
      return { output_type: raw.output_type, data: asObject(raw.data), metadata: asObject(raw.metadata) };
    case 'error':
      return {
        output_type: 'error', ename: joinText(raw.ename), evalue: joinText(raw.evalue),
        traceback: Array.isArray(raw.traceback) ? raw.traceback.map(joinText) : [],
      };
    default:
      return null;
  }
}

/** What a terminal would leave of text with carriage returns (progress bars rewrite a line). */
function overwriteReturns(text: string): string {
  return text.replace(/\r\n/g, '\n').split('\n').map((line) => {
    const parts = line.split('\r');
    return parts.findLast((part) => part !== '') ?? '';
  }).join('\n');
}

function textBlock(className: string, text: string): HTMLElement {
  return h('pre', { class: `output ${className}` }, ...ansiToNodes(text));
}

/** IPython's default repr (``<IPython.core.display.HTML object>``) says nothing worth showing. */
function isBareRepr(text: string): boolean {
  return /^<[\w.]+ object(?: at 0x[0-9a-f]+)?>$/.test(text.trim());
}

function image(mime: string, data: unknown, metadata: Json): HTMLElement {
  const source = mime === 'image/svg+xml'
    ? `data:image/svg+xml;charset=utf-8,${encodeURIComponent(joinText(data))}`
    : `data:${mime};base64,${joinText(data).replace(/\s+/g, '')}`;
  const size = asObject(metadata[mime]);
  return h('img', {
    class: 'output output-image', src: source, alt: `${mime} output`,
    width: typeof size.width === 'number' ? size.width : null,
    height: typeof size.height === 'number' ? size.height : null,
  });
}

/** HTML in a frame with its own opaque origin and no scripts: it cannot reach the IDE. */
function htmlFrame(html: string): HTMLElement {
  return h('div', { class: 'output output-html' },
    h('iframe', { sandbox: '', srcdoc: html, title: 'HTML output', referrerpolicy: 'no-referrer' }));
}

/** The richest representation of a MIME bundle that can be shown safely. */
function renderBundle(data: Json, metadata: Json): HTMLElement {
  const plain = joinText(data['text/plain']);
  for (const mime of ['image/png', 'image/jpeg', 'image/gif', 'image/svg+xml']) {
    if (mime in data) return image(mime, data[mime], metadata);
  }
  if ('text/markdown' in data) {
    return h('div', { class: 'output output-markdown' }, renderMarkdown(joinText(data['text/markdown'])));
  }
  if ('text/plain' in data && !isBareRepr(plain)) return textBlock('output-text', plain);
  if ('text/html' in data) return htmlFrame(joinText(data['text/html']));
  if ('application/json' in data) return textBlock('output-text', JSON.stringify(data['application/json'], null, 2));
  if ('text/plain' in data) return textBlock('output-text', plain);
  const types = Object.keys(data).join(', ') || 'empty';
  return h('div', { class: 'output output-unsupported' }, `[output of type ${types} not shown]`);
}

function renderOutput(output: Exclude<Output, { output_type: 'stream' }>): HTMLElement {
  if (output.output_type === 'error') {
    const text = output.traceback.length ? output.traceback.join('\n') : `${output.ename}: ${output.evalue}`;
    return textBlock('output-error', text);
  }
  return renderBundle(output.data, output.metadata);
}

/** The outputs of one execution or cell, in order; consecutive stream text shares a block. */
export class OutputArea {
  readonly element = h('div', { class: 'outputs' });
  private stream: { name: string; text: string; element: HTMLElement } | null = null;
  private clearOnNext = false;

  add(output: Output): void {
    if (this.clearOnNext) this.clear();
    if (output.output_type === 'stream') {
      this.addStream(output.name, output.text);
      return;
    }
    this.stream = null;
    this.element.append(renderOutput(output));
  }

  /** Remove the outputs now, or (``wait``, as clear_output(wait=True)) when the next arrives. */
  clear(wait = false): void {
    this.clearOnNext = wait;
    if (wait) return;
    this.element.replaceChildren();
    this.stream = null;
  }

  private addStream(name: string, text: string): void {
    if (this.stream?.name !== name) {
      const element = h('pre', { class: `output output-stream output-${name}` });
      this.stream = { name, text: '', element };
      this.element.append(element);
    }
    const stream = this.stream;
    stream.text += text;
    let shown = overwriteReturns(stream.text);
    if (shown.length > MAX_STREAM_CHARS) {
      stream.text = shown.slice(-MAX_STREAM_CHARS);
      shown = `[… earlier output trimmed …]\n${stream.text}`;
    }
    stream.element.replaceChildren(...ansiToNodes(shown));
  }
}
