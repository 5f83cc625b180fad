// Terminal colour codes in kernel output (IPython's coloured tracebacks) as styled text nodes:
// SGR colours and bold become spans with classes; every other escape sequence is dropped.
import { h } from '../common/dom';

const COLOURS = ['black', 'red', 'green', 'yellow', 'blue', 'magenta', 'cyan', 'white'] as const;

/** An escape sequence: CSI (``ESC [ ... letter``), OSC (``ESC ] ... BEL/ST``) or a 2-byte one. */
// eslint-disable-next-line no-control-regex
const ESCAPE = /\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]/g;

interface Style {
  fg: string | null;
  bg: string | null;
  bold: boolean;
}

function colour(code: number): string | null {
  if (code >= 30 && code <= 37) return COLOURS[code - 30] ?? null;
  if (code >= 90 && code <= 97) return `bright-${COLOURS[code - 90] ?? ''}`;
  return null;
}

/** Apply one SGR sequence's parameters to the style. */
function applySgr(style: Style, parameters: string): void {
  const codes = parameters === '' ? [0] : parameters.split(';').map(Number);
  for (let i = 0; i < codes.length; i += 1) {
    const code = codes[i] ?? 0;
    if (code === 0) Object.assign(style, { fg: null, bg: null, bold: false });
    else if (code === 1) style.bold = true;
    else if (code === 22) style.bold = false;
    else if (code === 39) style.fg = null;
    else if (code === 49) style.bg = null;
    else if (code === 38 || code === 48) {
      // 256-colour and RGB forms: skip their arguments, keep the default colour.
      i += codes[i + 1] === 5 ? 2 : codes[i + 1] === 2 ? 4 : 1;
    } else if (colour(code) !== null) style.fg = colour(code);
    else if (colour(code - 10) !== null) style.bg = colour(code - 10);
  }
}

function styled(text: string, style: Style): Node {
  if (style.fg === null && style.bg === null && !style.bold) return document.createTextNode(text);
  const classes = [
    style.fg !== null ? `ansi-${style.fg}` : '',
    style.bg !== null ? `ansi-bg-${style.bg}` : '',
    style.bold ? 'ansi-bold' : '',
  ].filter(Boolean);
  return h('span', { class: classes.join(' ') }, text);
}

/** Text with ANSI escape codes as text nodes and coloured spans (never parsed as HTML). */
export function ansiToNodes(text: string): Node[] {
  const nodes: Node[] = [];
  const style: Style = { fg: null, bg: null, bold: false };
  let last = 0;
  for (const match of text.matchAll(ESCAPE)) {
    if (match.index > last) nodes.push(styled(text.slice(last, match.index), style));
    if (match[2] === 'm') applySgr(style, match[1] ?? '');
    last = match.index + match[0].length;
  }
  if (last < text.length) nodes.push(styled(text.slice(last), style));
  return nodes;
}
