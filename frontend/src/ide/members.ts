// Sharing a workspace: the caller's role, and the dialog where the owner adds, re-roles and
// removes members (a member sees who owns it and who else is in, and may leave).
import './members.css';
import { api, describeError } from '../common/api';
import { platformUrl, type WorkspaceModel } from '../common/config';
import { confirmDialog } from '../common/dialog';
import { h, replaceChildren } from '../common/dom';
import { icon } from '../common/icons';
import { exactTime } from '../common/time';

export type Role = 'owner' | 'editor' | 'viewer';
export type MemberRole = Exclude<Role, 'owner'>;

/** What GET /api/workspaces adds to a workspace for the caller. */
export interface Sharing {
  role: Role;
  /** The owner's username. */
  owner: string;
  /** Whether the workspace has at least one member. */
  shared: boolean;
}

/** An event of the events socket: the owner shared the workspace or changed a member's role
 * (``role`` the new one), or a member left or was removed (``role`` null). */
export interface MemberEvent {
  type: 'member';
  username: string;
  role: MemberRole | null;
}

/** The close code of a member's sockets when the owner changed or revoked their role. */
export const ACCESS_CHANGED = 4403;

export interface Member {
  username: string;
  role: Role;
  added_at: string;
}

export const VIEW_ONLY_MESSAGE = 'View only: ask the owner for the editor role to change this workspace.';

const ROLE_WORDS: Record<Role, string> = { owner: 'Owner', editor: 'Editor', viewer: 'Viewer' };

/** The caller's role, the owner and whether shared, as the server described the workspace. */
export function sharingOf(workspace: WorkspaceModel, username: string): Sharing {
  const given = workspace as Partial<Sharing>;
  return { role: given.role ?? 'owner', owner: given.owner ?? username, shared: given.shared ?? false };
}

function membersPath(workspace: string, username?: string): string {
  const base = `/api/workspaces/${workspace}/members`;
  return username === undefined ? base : `${base}/${encodeURIComponent(username)}`;
}

/** A select of the roles an owner gives. */
function roleSelect(value: MemberRole, label: string): HTMLSelectElement {
  const select = h('select', { class: 'role-select', 'aria-label': label },
    h('option', { value: 'viewer' }, 'Viewer: reads and watches'),
    h('option', { value: 'editor' }, 'Editor: changes and runs'));
  select.value = value;
  return select;
}

/**
 * The Share dialog (the owner's) or the member list (a member's). ``changed`` is told when the
 * list changed (the workspace became shared or not); ``left`` when the caller left.
 */
export class MembersDialog {
  private readonly list = h('ul', { class: 'member-list', id: 'member-list' });
  private readonly error = h('div', { class: 'form-error', role: 'alert', id: 'share-error' });
  private backdrop: HTMLElement | null = null;

  constructor(
    private readonly workspace: string,
    private readonly me: string,
    private readonly role: Role,
    private readonly changed: (members: Member[]) => void,
  ) {}

  get isOpen(): boolean {
    return this.backdrop?.isConnected ?? false;
  }

  /** Show the dialog with the current list. */
  async open(): Promise<void> {
    if (this.isOpen) return;
    const owner = this.role === 'owner';
    const panel = h('div', { class: 'dialog members-dialog', role: 'dialog', 'aria-modal': 'true', 'aria-labelledby': 'members-title', id: 'members-dialog' },
      h('h2', { id: 'members-title' }, owner ? 'Share this workspace' : 'People in this workspace'),
      owner ? this.addForm() : null,
      this.error,
      this.list,
      h('div', { class: 'dialog-buttons' },
        h('button', { type: 'button', class: 'button', id: 'members-close', onclick: () => this.close() }, 'Close')));
    const backdrop = h('div', { class: 'backdrop' }, panel);
    backdrop.addEventListener('mousedown', (event) => {
      if (event.target === backdrop) this.close();
    });
    backdrop.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') this.close();
    });
    this.backdrop = backdrop;
    document.body.append(backdrop);
    panel.querySelector<HTMLElement>('input, button')?.focus();
    await this.refresh();
  }

  close(): void {
    this.backdrop?.remove();
    this.backdrop = null;
  }

  /** Read the list again (another client changed it); shown when open. */
  async refresh(): Promise<void> {
    try {
      const members = await api<Member[]>('GET', membersPath(this.workspace));
      this.changed(members);
      replaceChildren(this.list, ...members.map((member) => this.row(member)));
    } catch (error) {
      this.error.textContent = `Could not list the members: ${describeError(error)}`;
    }
  }

  private addForm(): HTMLElement {
    const username = h('input', { id: 'share-username', placeholder: 'Username', 'aria-label': 'Username to share with', autocomplete: 'off', maxlength: 64 });
    const role = roleSelect('viewer', 'Role');
    role.id = 'share-role';
    const add = h('button', { type: 'submit', class: 'button primary', id: 'share-add' }, icon('plus'), 'Share');
    const form = h('form', { class: 'share-form' }, username, role, add);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const name = username.value.trim();
      if (!name) {
        this.error.textContent = 'Enter the username of the person to share with.';
        username.focus();
        return;
      }
      add.disabled = true;
      void this.act(() => api('POST', membersPath(this.workspace), { username: name, role: role.value }))
        .then((ok) => {
          if (ok) username.value = '';
        })
        .finally(() => (add.disabled = false));
    });
    return form;
  }

  private row(member: Member): HTMLElement {
    const you = member.username === this.me ? h('span', { class: 'muted' }, ' (you)') : null;
    const name = h('span', { class: 'member-name', title: `Added ${exactTime(member.added_at)}` }, member.username, you);
    const item = h('li', { class: 'member', 'data-username': member.username, 'data-role': member.role }, name);
    if (member.role === 'owner') {
      item.append(h('span', { class: 'member-role' }, ROLE_WORDS.owner));
    } else if (this.role === 'owner') {
      const select = roleSelect(member.role, `Role of ${member.username}`);
      select.addEventListener('change', () => {
        void this.act(() => api('PATCH', membersPath(this.workspace, member.username), { role: select.value }));
      });
      const remove = h('button', { type: 'button', class: 'button small', 'aria-label': `Remove ${member.username}`, title: 'Remove their access' }, icon('trash'), 'Remove');
      remove.addEventListener('click', () => void this.act(() => api('DELETE', membersPath(this.workspace, member.username))));
      item.append(select, remove);
    } else {
      item.append(h('span', { class: 'member-role' }, ROLE_WORDS[member.role]));
      if (member.username === this.me) {
        item.append(h('button', { type: 'button', class: 'button small', id: 'leave-workspace', onclick: () => void this.leave() }, 'Leave'));
      }
    }
    return item;
  }

  /** Run a change; say why it failed, else show the new list. Resolves whether it worked. */
  private async act(change: () => Promise<unknown>): Promise<boolean> {
    this.error.textContent = '';
    try {
      await change();
    } catch (error) {
      this.error.textContent = describeError(error);
      await this.refresh();
      return false;
    }
    await this.refresh();
    return true;
  }

  private async leave(): Promise<void> {
    const ok = await confirmDialog('Leave workspace', 'Leave this workspace? Only its owner can share it with you again.', 'Leave', true);
    if (!ok) return;
    try {
      await api('DELETE', membersPath(this.workspace, this.me));
      location.assign(platformUrl('workspaces'));
    } catch (error) {
      this.error.textContent = describeError(error);
    }
  }
}

/**
 * The top bar's sharing control: the owner's Share button (saying how many share it), a
 * member's "<owner>'s · <role>" button, and a "View only" badge for a viewer.
 */
export class SharingControls {
  readonly element: HTMLElement;
  readonly dialog: MembersDialog;

  constructor(
    workspace: string,
    private readonly me: string,
    private readonly sharing: Sharing,
    /** Told when this user's own role changed or was revoked. */
    private readonly accessChanged: () => void,
  ) {
    const button = h('button', { type: 'button', class: 'button', id: 'share-button' });
    const describe = (others: number | null): void => {
      if (sharing.role === 'owner') {
        button.textContent = others === null ? (sharing.shared ? 'Shared' : 'Share') : others > 0 ? `Shared with ${others}` : 'Share';
        button.title = 'Share this workspace with other users, change their roles, remove them';
      } else {
        button.textContent = `${sharing.owner}'s · ${ROLE_WORDS[sharing.role]}`;
        button.title = `Shared with you by ${sharing.owner}: see who else is in`;
      }
    };
    describe(null);
    this.dialog = new MembersDialog(workspace, me, sharing.role, (members) => describe(members.length - 1));
    button.addEventListener('click', () => void this.dialog.open());
    this.element = h('span', { class: 'sharing', id: 'sharing' }, button);
    if (sharing.role === 'viewer') {
      this.element.append(h('span', { class: 'badge view-only', id: 'view-only', title: VIEW_ONLY_MESSAGE }, 'View only'));
    }
  }

  /** Someone's role changed: this user's own (the page must start again with the new one), or
   * another's (the list, and the owner's count of members, are read again). */
  memberChanged(event: MemberEvent): void {
    if (event.username !== this.me) void this.dialog.refresh();
    else if (event.role !== this.sharing.role) this.accessChanged();
  }
}
