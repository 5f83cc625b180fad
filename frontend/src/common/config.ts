// What the page handler put in the page (extensions/ide): where things are and who is here.
// It is JupyterLab's own <script id="jupyter-config-data">, so PageConfig reads it as well.
import { PageConfig } from '@jupyterlab/coreutils';

export interface User {
  username: string;
}

export interface WorkspaceModel {
  uuid: string;
  name: string;
  created_at: string;
  updated_at: string;
  last_activity: string;
  bytes_used: number;
}

export interface PageData {
  page: 'login' | 'register' | 'workspaces' | 'ide';
  /** The platform's base URL ("/" unless served under a prefix). */
  platformBaseUrl: string;
  /** Jupyter's base URL: the workspace's "/w/<uuid>/" on the IDE page. */
  baseUrl: string;
  user?: User;
  workspace?: WorkspaceModel;
  /** Monaco's worker scripts by label (editor, json, css, html, typescript). */
  workers?: Record<string, string>;
  allowRegistration?: boolean;
}

let cached: PageData | null = null;

export function pageData(): PageData {
  if (cached === null) {
    const element = document.getElementById('jupyter-config-data');
    if (!element?.textContent) {
      throw new Error('This page was served without its configuration.');
    }
    cached = JSON.parse(element.textContent) as PageData;
    // What JupyterLab's page config says when the server has terminals.
    PageConfig.setOption('terminalsAvailable', 'true');
  }
  return cached;
}

/** A URL of the platform (``path`` without a leading slash). */
export function platformUrl(path = ''): string {
  return pageData().platformBaseUrl + path.replace(/^\//, '');
}

/** Control characters (browsers drop tabs and newlines from URLs, so "/\t/evil.example" is
 * "//evil.example" to them) and backslashes (read as "/" in http URLs). */
function hasUnsafeCharacter(text: string): boolean {
  for (let i = 0; i < text.length; i += 1) {
    const code = text.charCodeAt(i);
    if (code < 0x20 || (code >= 0x7f && code <= 0x9f) || code === 0x5c) return true;
  }
  return false;
}

/** Only a same-origin path is a safe place to go after logging in. The server applies the
 * same rule (safe_next in extensions/ide/handlers.py): a path that starts with "/", has no
 * control character and no backslash, and that the URL parser resolves to this origin. */
export function safeNext(next: string | null): string | null {
  if (next === null || !next.startsWith('/') || hasUnsafeCharacter(next)) return null;
  let url: URL;
  try {
    url = new URL(next, location.origin);
  } catch {
    return null;
  }
  return url.origin === location.origin ? next : null;
}
