// The platform's own REST API (/api/accounts, /api/workspaces), through @jupyterlab/services'
// ServerConnection so that cookie logins send the _xsrf cookie as X-XSRFToken like JupyterLab.
import { ServerConnection } from '@jupyterlab/services';
import { platformUrl } from './config';

/** An error answer ({message, reason}) or an unreachable server (status 0). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly reason: string | null = null,
    /** Seconds from Retry-After (429, 503), if sent. */
    readonly retryAfter: number | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

let settings: ServerConnection.ISettings | null = null;

/** Settings of the platform's root (not a workspace's). */
export function platformSettings(): ServerConnection.ISettings {
  settings ??= ServerConnection.makeSettings({
    baseUrl: new URL(platformUrl(), location.href).href,
    wsUrl: new URL(platformUrl(), location.href).href.replace(/^http/, 'ws'),
  });
  return settings;
}

export const UNREACHABLE = 'The server cannot be reached: check your connection and try again.';

/** Turn an error answer into an ApiError that says what happened in words. */
export async function responseError(response: Response): Promise<ApiError> {
  let message = `${response.status} ${response.statusText}`.trim();
  let reason: string | null = null;
  try {
    const body = (await response.json()) as { message?: unknown; reason?: unknown };
    if (typeof body.message === 'string' && body.message) message = body.message;
    if (typeof body.reason === 'string') reason = body.reason;
  } catch {
    // Not JSON (a proxy's error page): the status line is all there is.
  }
  const retry = Number(response.headers.get('Retry-After'));
  return new ApiError(response.status, message, reason, Number.isFinite(retry) && retry > 0 ? retry : null);
}

/** Call the platform API; resolves with the JSON answer (undefined for 204). */
export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const s = platformSettings();
  const init: RequestInit = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'Content-Type': 'application/json' };
  }
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(s.baseUrl + path.replace(/^\//, ''), init, s);
  } catch {
    throw new ApiError(0, UNREACHABLE);
  }
  if (!response.ok) throw await responseError(response);
  if (response.status === 204) return undefined as T;
  return (await response.json()) as T;
}

/** What to tell a person about any error. */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) return error.message;
  if (error instanceof ServerConnection.NetworkError) return UNREACHABLE;
  if (error instanceof ServerConnection.ResponseError) {
    const status = error.response.status;
    // jupyter_server's errors carry the message; fall back to the status line.
    const text = error.message || `${status} ${error.response.statusText}`;
    return text.replace(/^Invalid response: \d+ [^:]*:?\s*/, '') || `Error ${status}`;
  }
  if (error instanceof Error) return error.message;
  return String(error);
}

export function errorStatus(error: unknown): number | null {
  if (error instanceof ApiError) return error.status;
  if (error instanceof ServerConnection.ResponseError) return error.response.status;
  return null;
}

export async function logout(): Promise<void> {
  try {
    await api('POST', '/api/accounts/logout');
  } finally {
    location.assign(platformUrl('login'));
  }
}
