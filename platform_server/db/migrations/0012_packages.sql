-- What each workspace installed in its sandbox's venv (what a new sandbox installs again), and
-- every package file sandboxes fetched (the audit trail, and each workspace's daily bytes).

CREATE TABLE workspace_packages (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,198}[a-z0-9])?$'),  -- PEP 503 form
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    version text NOT NULL CHECK (length(version) BETWEEN 1 AND 100),
    source text CHECK (length(source) <= 2000),  -- a URL when not installed from the index
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, name)
);

-- No foreign keys: the trail outlives the workspaces and users it names.
CREATE TABLE package_downloads (
    id bigserial PRIMARY KEY,
    workspace_id uuid NOT NULL,
    user_id bigint NOT NULL,
    project text NOT NULL,
    version text NOT NULL,
    filename text NOT NULL,
    bytes bigint NOT NULL CHECK (bytes >= 0),
    downloaded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX package_downloads_workspace_idx ON package_downloads (workspace_id, downloaded_at);
