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

/** Only a same-site path is a safe place to go after logging in. */
export function safeNext(next: string | null): string | null {
  if (next === null || !next.startsWith('/') || next.startsWith('//') || next.includes('\\')) {
    return null;
  }
  return next;
}
