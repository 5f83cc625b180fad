-- A sandbox whose agent stopped answering health checks is 'unresponsive': its processes still
-- run and it may come back. Saves it could not take are noted in pending_mirrors, mirrored
-- into it once it answers again (a new sandbox loads every file and needs none of them).

ALTER TABLE sandboxes DROP CONSTRAINT sandboxes_state_check;
ALTER TABLE sandboxes ADD CONSTRAINT sandboxes_state_check
    CHECK (state IN ('starting', 'running', 'unresponsive', 'stopping', 'stopped', 'failed'));

CREATE TABLE pending_mirrors (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    path text COLLATE "C" NOT NULL,
    noted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workspace_id, path)
);
