-- File sync from sandboxes: which replica consumes each sandbox's changes (a lease), and the
-- files that stay in the sandbox because they are too large or refused.

ALTER TABLE sandboxes
    ADD COLUMN sync_owner uuid,
    ADD COLUMN sync_lease_until timestamptz;

CREATE TABLE unsynced_files (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    path text COLLATE "C" NOT NULL,
    size bigint NOT NULL,
    reason text NOT NULL,
    noted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, path)
);
