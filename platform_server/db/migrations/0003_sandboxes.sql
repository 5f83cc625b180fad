-- Sandboxes: the running environment of a workspace, or an unassigned warm-pool sandbox.
-- Every replica reads and writes these rows; nothing about a sandbox lives only in memory.

CREATE TABLE sandboxes (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- NULL for a warm-pool sandbox that no workspace has claimed yet.
    workspace_id uuid UNIQUE REFERENCES workspaces (id) ON DELETE CASCADE,
    state text NOT NULL
        CHECK (state IN ('starting', 'running', 'stopping', 'stopped', 'failed')),
    reason text,
    progress integer NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    message text NOT NULL DEFAULT '',
    spawner text NOT NULL,
    -- How to reach the agent: {"unix_socket": ...} or {"host": ..., "port": ...}.
    endpoint jsonb,
    -- What the spawner needs to poll or stop it (pid and start time, pod name, ...).
    spawner_state jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    last_activity timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandboxes_state_idx ON sandboxes (state);
