-- Workspace members: the users a workspace's owner shared it with, and their role (what each
-- role may do is in extensions/workspaces/roles.py). The owner is never a member row.

CREATE TABLE workspace_members (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('viewer', 'editor')),
    added_by bigint REFERENCES users (id) ON DELETE SET NULL,
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, user_id)
);
-- The workspaces shared with a user (their workspace list, every access check).
CREATE INDEX workspace_members_user_idx ON workspace_members (user_id);
