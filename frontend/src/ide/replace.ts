// Replace in files: apply the chosen matches of a search to a file's text, checking that each
// is still where the search found it.
import type { SearchMatch } from './searchapi';

/** The text with the matches replaced, or null when one of them is no longer there. */
export function applyReplacements(text: string, matches: SearchMatch[]): string | null {
  const lines = text.split('\n');
  // From the last match to the first, so earlier columns stay right.
  const ordered = [...matches].sort((a, b) => b.line - a.line || b.column - a.column);
  for (const match of ordered) {
    const index = match.line - 1;
    const line = lines[index];
    if (line === undefined || match.replacement === undefined) return null;
    const start = match.column - 1;
    if (line.slice(start, start + match.length) !== match.preview.match) return null;
    lines[index] = line.slice(0, start) + match.replacement + line.slice(start + match.length);
  }
  return lines.join('\n');
}
