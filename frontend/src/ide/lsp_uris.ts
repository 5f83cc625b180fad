// Document URIs between the editor and the sandbox's language server: the server names a
// workspace file file:///workspace/<path>; the editor's models have URIs of their own.
import { monaco } from './monaco';

const ROOT = '/workspace/';

/** The language server's URI of a workspace file. */
export function serverUri(path: string): string {
  return monaco.Uri.file(ROOT + path).toString();
}

/** The workspace path a server URI names, or null for a file outside the workspace. */
export function workspacePath(uri: string): string | null {
  const parsed = monaco.Uri.parse(uri);
  if (parsed.scheme !== 'file' || !parsed.path.startsWith(ROOT)) return null;
  const path = parsed.path.slice(ROOT.length);
  return path === '' || path.split('/').includes('..') ? null : path;
}

/** What ``mapUris`` returns for a value that names a file the editor cannot show. */
export const DROPPED = Symbol('dropped');

/** Keys whose values the server reads back as it wrote them (never rewritten). */
const OPAQUE_KEYS = new Set(['data', 'command', 'arguments']);
const URI_KEYS = new Set(['uri', 'targetUri']);

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * A copy of a message's ``result`` or ``params`` with every document URI replaced by
 * ``map(uri)``: the values of ``uri`` and ``targetUri`` keys and the keys of a WorkspaceEdit's
 * ``changes``. An object whose URI maps to null is dropped, and so is whatever holds it (an
 * array leaves it out instead), so that a location in a file the editor cannot show never
 * reaches it: the whole value is ``DROPPED`` when nothing is left to hold it.
 */
export function mapUris(value: unknown, map: (uri: string) => string | null): unknown {
  if (Array.isArray(value)) {
    return value.map((item) => mapUris(item, map)).filter((item) => item !== DROPPED);
  }
  if (!isRecord(value)) return value;
  const copy: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) {
    if (OPAQUE_KEYS.has(key)) {
      copy[key] = item;
    } else if (URI_KEYS.has(key) && typeof item === 'string') {
      const mapped = map(item);
      if (mapped === null) return DROPPED;
      copy[key] = mapped;
    } else if (key === 'changes' && isRecord(item)) {
      const changes: Record<string, unknown> = {};
      for (const [uri, edits] of Object.entries(item)) {
        const mapped = map(uri);
        if (mapped !== null) changes[mapped] = edits;
      }
      copy[key] = changes;
    } else {
      const mapped = mapUris(item, map);
      if (mapped === DROPPED) return DROPPED;
      copy[key] = mapped;
    }
  }
  return copy;
}

/** The workspace paths of the documents a value names (as ``mapUris`` finds them). */
export function namedPaths(value: unknown): Set<string> {
  const paths = new Set<string>();
  mapUris(value, (uri) => {
    const path = workspacePath(uri);
    if (path !== null) paths.add(path);
    return uri;
  });
  return paths;
}
