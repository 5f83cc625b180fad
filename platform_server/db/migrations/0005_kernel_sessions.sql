-- Jupyter sessions (/w/<uuid>/api/sessions): which kernel a notebook or console uses, so that
-- reopening it (on any replica) reuses the kernel. Kernels themselves live in the sandbox's
-- agent; a session whose kernel is gone is removed when it is next read, as jupyter_server does.

CREATE TABLE kernel_sessions (
    id uuid PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    path text COLLATE "C" NOT NULL CHECK (length(path) <= 4096),
    name text CHECK (length(name) <= 1024),
    type text CHECK (length(type) <= 64),
    kernel_id text NOT NULL CHECK (length(kernel_id) BETWEEN 1 AND 64),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- As jupyter_server's POST: one session per path (a second POST returns the first).
    UNIQUE (workspace_id, path)
);
CREATE INDEX kernel_sessions_kernel_idx ON kernel_sessions (workspace_id, kernel_id);
