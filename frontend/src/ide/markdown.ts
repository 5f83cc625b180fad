// A small, safe Markdown renderer for notebook cells and Markdown outputs: headings,
// paragraphs, lists, quotes, code blocks, rules, and inline code, emphasis and links. Every
// node is built with textContent: HTML written in the Markdown shows as text, never as markup.
import { h } from '../common/dom';

/** Links go only to web and mail addresses (no javascript:, no data:). */
const SAFE_LINK = /^(https?:|mailto:)/i;

/** Inline constructs, earliest match first: code, image, link, strong, emphasis. */
const INLINE = new RegExp(
  [
    /`([^`]+)`/.source,
    /!\[([^\]]*)\]\([^)]*\)/.source,
    /\[([^\]]+)\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/.source,
    /\*\*(.+?)\*\*|(?<!\w)__(.+?)__(?!\w)/.source,
    /\*([^*\s](?:[^*]*[^*\s])?)\*|(?<!\w)_([^_\s](?:[^_]*[^_\s])?)_(?!\w)/.source,
  ].join('|'),
  'g',
);

/** Inline Markdown as nodes. */
function inline(text: string): Node[] {
  const nodes: Node[] = [];
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) nodes.push(document.createTextNode(text.slice(last, m.index)));
    last = m.index + m[0].length;
    const [, code, alt, label, href, strong1, strong2, em1, em2] = m;
    if (code !== undefined) nodes.push(h('code', {}, code));
    else if (alt !== undefined) nodes.push(h('span', { class: 'md-image' }, `[image${alt ? `: ${alt}` : ''}]`));
    else if (label !== undefined && href !== undefined) {
      nodes.push(SAFE_LINK.test(href)
        ? h('a', { href, target: '_blank', rel: 'noopener noreferrer' }, ...inline(label))
        : document.createTextNode(label));
    } else if (strong1 !== undefined || strong2 !== undefined) {
      nodes.push(h('strong', {}, ...inline(strong1 ?? strong2 ?? '')));
    } else {
      nodes.push(h('em', {}, ...inline(em1 ?? em2 ?? '')));
    }
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

const HEADING = /^(#{1,6})\s+(.*?)\s*#*\s*$/;
const FENCE = /^\s*(```|~~~)/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;

/** Whether a line starts a block of another kind (and so ends a paragraph). */
function startsBlock(line: string): boolean {
  return [HEADING, FENCE, RULE, BULLET, NUMBERED, QUOTE].some((re) => re.test(line));
}

/** Markdown as a fragment of safe DOM nodes. */
export function renderMarkdown(source: string): HTMLElement {
  const root = h('div', { class: 'markdown' });
  const lines = source.replace(/\r\n?/g, '\n').split('\n');
  let i = 0;
  while (i < lines.length) {
    const line = lines[i] ?? '';
    let match: RegExpExecArray | null;
    if (!line.trim()) {
      i += 1;
    } else if ((match = FENCE.exec(line))) {
      const fence = match[1] ?? '```';
      const body: string[] = [];
      for (i += 1; i < lines.length && !(lines[i] ?? '').trim().startsWith(fence); i += 1) body.push(lines[i] ?? '');
      i += 1;
      root.append(h('pre', {}, h('code', {}, body.join('\n'))));
    } else if ((match = HEADING.exec(line))) {
      const level = Math.min(6, match[1]?.length ?? 1);
      root.append(h(`h${level}` as 'h1', {}, ...inline(match[2] ?? '')));
      i += 1;
    } else if (RULE.test(line)) {
      root.append(h('hr'));
      i += 1;
    } else if (BULLET.test(line) || NUMBERED.test(line)) {
      const pattern = BULLET.test(line) ? BULLET : NUMBERED;
      const list = h(pattern === BULLET ? 'ul' : 'ol');
      for (; i < lines.length && (match = pattern.exec(lines[i] ?? '')); i += 1) {
        list.append(h('li', {}, ...inline(match[1] ?? '')));
      }
      root.append(list);
    } else if (QUOTE.test(line)) {
      const quoted: string[] = [];
      for (; i < lines.length && (match = QUOTE.exec(lines[i] ?? '')); i += 1) quoted.push(match[1] ?? '');
      root.append(h('blockquote', {}, ...renderMarkdown(quoted.join('\n')).childNodes));
    } else {
      const paragraph: string[] = [];
      for (; i < lines.length && (lines[i] ?? '').trim() && (paragraph.length === 0 || !startsBlock(lines[i] ?? '')); i += 1) {
        paragraph.push((lines[i] ?? '').trim());
      }
      root.append(h('p', {}, ...inline(paragraph.join(' '))));
    }
  }
  return root;
}
