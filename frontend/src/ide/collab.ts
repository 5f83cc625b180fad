// Live co-editing of text tabs: a tab's Monaco model bound to its file's shared Y.js document
// (y-websocket to /w/<uuid>/api/collaboration/text/<path>, see docs/collaboration.md), with the
// other people's cursors and selections labelled with their names, who is here, and the
// server's save state in place of the dirty marker.
import { MonacoBinding } from 'y-monaco';
import { WebsocketProvider } from 'y-websocket';
import * as Y from 'yjs';
import { h, replaceChildren } from '../common/dom';
import { toastError } from '../common/toast';
import type { monaco } from './monaco';
import './collab.css';

/** The server's messages beside y-websocket's (extensions/collaboration/protocol.py). */
const SAVE_REQUEST = 100;
const SAVE_STATUS = 101;
/** How long to wait for the document before editing the file alone (ms). */
const SYNC_TIMEOUT = 15_000;
/** How long Ctrl+S waits for the server to say the text is saved (ms). */
const SAVE_TIMEOUT = 15_000;
const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#e377c2', '#8c564b'];

/** "saving": changes not written to the file yet; "offline": not connected (typing waits). */
export type SaveState = 'saved' | 'saving' | 'offline';

export interface Person {
  clientId: number;
  name: string;
  colour: string;
  self: boolean;
}

/** A stable colour for a name. */
export function colourOf(name: string): string {
  let hash = 0;
  for (const char of name) hash = (hash * 31 + (char.codePointAt(0) ?? 0)) >>> 0;
  return PALETTE[hash % PALETTE.length] ?? '#1f77b4';
}

/** Text safe inside a CSS string (another person's awareness state is theirs to write). */
function cssString(text: string): string {
  // eslint-disable-next-line no-control-regex
  return `"${text.slice(0, 40).replace(/[\u0000-\u001f\u007f]/g, '').replace(/["\\]/g, (c) => `\\${c}`)}"`;
}

function cssColour(value: unknown): string {
  return typeof value === 'string' && /^#[0-9a-fA-F]{6}$/.test(value) ? value : '#888888';
}

/** Whether a workspace's text tabs are shared: it has members, or the page was opened with
 * ``?collaborate=1`` (the owner in two browsers). */
export function collaborationWanted(workspace: object): boolean {
  return ('shared' in workspace && workspace.shared === true) || new URLSearchParams(location.search).get('collaborate') === '1';
}

/** The label that replaces a collaborative tab's dirty marker. */
export function saveLabel(shared: SharedText | null): string {
  if (shared === null) return '';
  return { saved: 'Saved', saving: 'Saving…', offline: 'Offline' }[shared.state];
}

/** One text tab's shared document. */
export class SharedText {
  readonly doc = new Y.Doc();
  readonly provider: WebsocketProvider;
  state: SaveState = 'offline';
  private binding: MonacoBinding | null = null;
  private readonly style: HTMLStyleElement;
  private saveWaiters: ((saved: boolean) => void)[] = [];

  constructor(serverUrl: string, path: string, user: { name: string; colour: string }, private readonly changed: () => void) {
    const room = path.split('/').map(encodeURIComponent).join('/');
    // No BroadcastChannel: two tabs of one browser sync through the server too.
    this.provider = new WebsocketProvider(serverUrl, room, this.doc, { disableBc: true });
    this.provider.messageHandlers[SAVE_STATUS] = (_encoder, decoder) => {
      this.saveStatus(decoder.arr.subarray(decoder.pos));
    };
    this.provider.awareness.setLocalStateField('user', user);
    this.provider.on('status', ({ status }) => {
      if (status === 'disconnected') this.setState('offline');
      else if (status === 'connected' && this.state === 'offline') this.setState('saved');
    });
    this.style = h('style', { 'data-collab': path });
    document.head.append(this.style);
    this.provider.awareness.on('change', () => {
      this.renderCursors();
      this.changed();
    });
    this.doc.on('update', (_update: Uint8Array, origin: unknown) => {
      if (origin !== this.provider) this.setState('saving');
    });
  }

  /** Resolves once the server's document arrived; false after ``SYNC_TIMEOUT``. */
  synced(): Promise<boolean> {
    if (this.provider.synced) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), SYNC_TIMEOUT);
      this.provider.once('sync', (synced: boolean) => {
        clearTimeout(timer);
        resolve(synced);
      });
    });
  }

  /** Bind the tab's model (its text becomes the document's) and the editor's cursor. */
  attach(model: monaco.editor.ITextModel, editor: monaco.editor.IStandaloneCodeEditor): void {
    this.binding = new MonacoBinding(this.doc.getText('source'), model, new Set([editor]), this.provider.awareness);
    this.setState('saved');
  }

  /** The people in the document, this page first. */
  people(): Person[] {
    const self = this.doc.clientID;
    const people: Person[] = [];
    this.provider.awareness.getStates().forEach((state, clientId) => {
      const user = (state as { user?: { name?: unknown; colour?: unknown } }).user;
      if (typeof user?.name !== 'string') return;
      people.push({ clientId, name: user.name, colour: cssColour(user.colour), self: clientId === self });
    });
    return people.sort((a, b) => Number(b.self) - Number(a.self) || a.name.localeCompare(b.name));
  }

  /** Ask the server to save now (Ctrl+S, Run); resolves true once it says the text is saved. */
  saveNow(): Promise<boolean> {
    const socket = this.provider.ws;
    if (this.state === 'saved') return Promise.resolve(true);
    if (socket?.readyState !== WebSocket.OPEN) return Promise.resolve(false);
    socket.send(new Uint8Array([SAVE_REQUEST]));
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), SAVE_TIMEOUT);
      this.saveWaiters.push((saved) => {
        clearTimeout(timer);
        resolve(saved);
      });
    });
  }

  destroy(): void {
    this.binding?.destroy();
    this.provider.destroy();
    this.doc.destroy();
    this.style.remove();
    for (const waiter of this.saveWaiters.splice(0)) waiter(false);
  }

  private saveStatus(data: Uint8Array): void {
    let status: { saving?: unknown; saved?: unknown };
    try {
      status = JSON.parse(new TextDecoder().decode(data)) as typeof status;
    } catch {
      return;
    }
    if (status.saving === true) {
      this.setState('saving');
      return;
    }
    const saved = status.saved === true;
    if (saved) this.setState('saved');
    for (const waiter of this.saveWaiters.splice(0)) waiter(saved);
  }

  private setState(state: SaveState): void {
    if (this.state === state) return;
    this.state = state;
    this.changed();
  }

  /** y-monaco marks each remote selection and cursor with classes of its client id; their
   * colours and name labels are rules of this tab's style sheet. */
  private renderCursors(): void {
    this.style.textContent = this.people().filter((p) => !p.self).map(({ clientId, name, colour }) => `
      .yRemoteSelection-${clientId} { background-color: ${colour}40; }
      .yRemoteSelectionHead-${clientId} { border-left: 2px solid ${colour}; }
      .yRemoteSelectionHead-${clientId}::after { content: ${cssString(name)}; background: ${colour}; }`).join('\n');
  }
}

/** Makes the shared documents of one workspace's text tabs. */
export class Collaboration {
  private readonly serverUrl: string;
  private readonly user: { name: string; colour: string };

  /** ``wsUrl``: the workspace's WebSocket base (``ws://host/w/<uuid>/``). */
  constructor(wsUrl: string, username: string) {
    this.serverUrl = `${wsUrl}api/collaboration/text`;
    this.user = { name: username, colour: colourOf(username) };
  }

  /** The shared document of a text tab bound to its model, or null (with a notice) when it
   * cannot be joined: the tab is then edited alone, as an unshared file is. */
  async share(path: string, model: monaco.editor.ITextModel, editor: monaco.editor.IStandaloneCodeEditor, changed: () => void): Promise<SharedText | null> {
    const shared = new SharedText(this.serverUrl, path, this.user, changed);
    if (!(await shared.synced())) {
      shared.destroy();
      toastError(`Could not join the shared document of “${path}”: editing it alone.`);
      return null;
    }
    shared.attach(model, editor);
    return shared;
  }
}

/** Who is here: the people in the active tab's document. */
export class PresenceBar {
  readonly element = h('div', { class: 'collab-presence', id: 'collab-presence', 'aria-label': 'Who is here', hidden: true });

  show(shared: SharedText | null): void {
    const people = shared?.people() ?? [];
    this.element.hidden = people.length === 0;
    replaceChildren(this.element, ...people.map((person) => {
      const dot = h('span', { class: 'collab-dot' });
      dot.style.background = person.colour;
      return h('span', { class: 'collab-person', 'data-name': person.name, title: person.self ? 'You' : person.name },
        dot, person.self ? `${person.name} (you)` : person.name);
    }));
  }
}
