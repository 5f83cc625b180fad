// The workspace list: create, rename, delete (after confirmation), open.
import '../common/base.css';
import './workspaces.css';
import { api, describeError, logout } from '../common/api';
import { pageData, platformUrl, type WorkspaceModel } from '../common/config';
import { confirmDialog } from '../common/dialog';
import { h, replaceChildren } from '../common/dom';
import { icon } from '../common/icons';
import { exactTime, timeAgo } from '../common/time';
import { toastError } from '../common/toast';
import { sharingOf } from '../ide/members';

interface SandboxModel {
  state: 'stopped' | 'starting' | 'running' | 'unresponsive' | 'stopping' | 'failed';
  reason: string | null;
  progress: number | null;
  message: string | null;
}

/** An entry of GET /api/sandboxes: a workspace without one has no sandbox (stopped). */
interface SandboxListEntry extends SandboxModel {
  workspace: string;
}

const STOPPED: SandboxModel = { state: 'stopped', reason: null, progress: null, message: null };

const STATE_WORDS: Record<SandboxModel['state'], string> = {
  stopped: 'Stopped',
  starting: 'Starting',
  running: 'Running',
  unresponsive: 'Not responding',
  stopping: 'Stopping',
  failed: 'Failed',
};

const data = pageData();
const tbody = h('tbody', { id: 'workspace-rows' });
const emptyNote = h('p', { class: 'empty', id: 'no-workspaces', hidden: true }, 'No workspaces yet: create one above.');
const nameInput = h('input', { id: 'new-workspace-name', placeholder: 'New workspace name', maxlength: 100, 'aria-label': 'New workspace name' });
const createButton = h('button', { type: 'submit', class: 'button primary', id: 'create-workspace' }, icon('plus'), 'Create');
const createError = h('div', { class: 'form-error create-error', role: 'alert', id: 'create-error' });
let workspaces: WorkspaceModel[] = [];
/** The sandbox of each workspace by uuid; null when they could not be read. */
let sandboxes: Map<string, SandboxModel> | null = new Map();

function workspaceUrl(ws: WorkspaceModel): string {
  return platformUrl(`w/${ws.uuid}/`);
}

function stateBadge(model: SandboxModel | null): HTMLElement {
  if (model === null) return h('span', { class: 'muted' }, 'unknown');
  const badge = h('span', { class: `badge state-${model.state}` }, STATE_WORDS[model.state]);
  if ((model.state === 'failed' || model.state === 'unresponsive') && model.reason) badge.title = model.reason;
  if (model.state === 'starting' && model.message) badge.title = model.message;
  return badge;
}

/** "shared by <owner> · <role>" for a workspace shared with this user; "shared" for one of
 * theirs that they shared. */
function sharingNote(ws: WorkspaceModel): HTMLElement | null {
  const sharing = sharingOf(ws, data.user?.username ?? '');
  if (sharing.role !== 'owner') {
    return h('span', { class: 'sharing-note muted', 'data-role': sharing.role }, `shared by ${sharing.owner} · ${sharing.role}`);
  }
  return sharing.shared ? h('span', { class: 'sharing-note muted', 'data-role': 'owner' }, 'shared') : null;
}

function row(ws: WorkspaceModel): HTMLTableRowElement {
  const role = sharingOf(ws, data.user?.username ?? '').role;
  const stateCell = h('td', { class: 'state' }, stateBadge(sandboxes && (sandboxes.get(ws.uuid) ?? STOPPED)));
  const nameCell = h('td', { class: 'name' }, h('a', { href: workspaceUrl(ws) }, ws.name), ' ', sharingNote(ws));
  const tr = h('tr', { 'data-uuid': ws.uuid, 'data-role': role },
    nameCell,
    h('td', { class: 'activity muted', title: exactTime(ws.last_activity) }, timeAgo(ws.last_activity)),
    stateCell,
    h('td', { class: 'actions' },
      h('a', { class: 'button small primary', href: workspaceUrl(ws) }, 'Open'),
      role !== 'viewer' && h('button', { class: 'button small', type: 'button', onclick: () => startRename(ws, nameCell) }, icon('rename'), 'Rename'),
      role === 'owner' && h('button', { class: 'button small', type: 'button', onclick: () => void remove(ws) }, icon('trash'), 'Delete')));
  return tr;
}

function render(): void {
  replaceChildren(tbody, ...workspaces.map(row));
  emptyNote.hidden = workspaces.length > 0;
}

async function load(): Promise<void> {
  try {
    const [list, states] = await Promise.all([
      api<WorkspaceModel[]>('GET', '/api/workspaces'),
      api<SandboxListEntry[]>('GET', '/api/sandboxes').catch(() => null),
    ]);
    workspaces = list;
    sandboxes = states && new Map(states.map((entry) => [entry.workspace, entry]));
    render();
  } catch (error) {
    toastError(`Could not load your workspaces: ${describeError(error)}`);
  }
}

function startRename(ws: WorkspaceModel, cell: HTMLElement): void {
  const input = h('input', { value: ws.name, maxlength: 100, 'aria-label': 'Workspace name', class: 'rename-input' });
  const error = h('div', { class: 'field-error', role: 'alert' });
  const form = h('form', { class: 'rename-form' }, input,
    h('button', { type: 'submit', class: 'button small primary' }, 'Save'),
    h('button', { type: 'button', class: 'button small', onclick: () => render() }, 'Cancel'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const name = input.value.trim();
    if (!name) {
      error.textContent = 'Enter a name.';
      return;
    }
    api<WorkspaceModel>('PATCH', `/api/workspaces/${ws.uuid}`, { name })
      .then((updated) => {
        workspaces = workspaces.map((w) => (w.uuid === ws.uuid ? updated : w));
        render();
      })
      .catch((e: unknown) => (error.textContent = describeError(e)));
  });
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') render();
  });
  replaceChildren(cell, form, error);
  input.select();
}

async function remove(ws: WorkspaceModel): Promise<void> {
  const ok = await confirmDialog('Delete workspace',
    `Delete “${ws.name}” and all its files? Its sandbox is stopped. This cannot be undone.`, 'Delete', true);
  if (!ok) return;
  try {
    await api('DELETE', `/api/workspaces/${ws.uuid}`);
    workspaces = workspaces.filter((w) => w.uuid !== ws.uuid);
    render();
  } catch (error) {
    toastError(`Could not delete “${ws.name}”: ${describeError(error)}`);
  }
}

function create(event: Event): void {
  event.preventDefault();
  createError.textContent = '';
  const name = nameInput.value.trim();
  if (!name) {
    createError.textContent = 'Enter a name for the new workspace.';
    nameInput.focus();
    return;
  }
  createButton.disabled = true;
  api<WorkspaceModel>('POST', '/api/workspaces', { name })
    .then((ws) => {
      nameInput.value = '';
      workspaces = [ws, ...workspaces];
      render();
    })
    .catch((error: unknown) => {
      createError.textContent = describeError(error);
    })
    .finally(() => (createButton.disabled = false));
}

document.title = 'Workspaces · Platform';
document.body.append(
  h('header', { class: 'topbar' },
    h('a', { class: 'brand', href: platformUrl('workspaces') }, 'Code execution platform'),
    h('span', { class: 'spacer' }),
    h('span', { class: 'who', id: 'username' }, data.user?.username ?? ''),
    h('button', { class: 'button small', type: 'button', id: 'logout', onclick: () => void logout() }, icon('logout'), 'Log out')),
  h('main', { class: 'workspaces' },
    h('h1', {}, 'Workspaces'),
    h('form', { class: 'create', onsubmit: create }, nameInput, createButton),
    createError,
    h('table', { class: 'list', id: 'workspaces' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Last activity'), h('th', {}, 'Sandbox'), h('th', {}))),
      tbody),
    emptyNote),
);
nameInput.focus();
void load();
