-- Workspaces and their files. PostgreSQL is the single source of truth for every file.

CREATE TABLE workspaces (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100 AND name !~ '[[:cntrl:]]'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_activity timestamptz NOT NULL DEFAULT now(),
    -- Sum of the sizes of the workspace's files, kept in step by every write (the quota).
    bytes_used bigint NOT NULL DEFAULT 0 CHECK (bytes_used >= 0)
);
CREATE INDEX workspaces_owner_activity_idx ON workspaces (owner_id, last_activity DESC);

-- One row per file, notebook or directory. Paths are relative to the workspace root, without
-- leading or trailing '/', NFC-normalised (extensions/workspaces/paths.py makes them); "C"
-- collation makes them compare byte-wise, so a directory's descendants are exactly the range
-- [dir || '/', dir || '0') ('0' follows '/' in ASCII), with no LIKE pattern to escape.
-- A file is a 'notebook' exactly when its name ends in '.ipynb', as Jupyter decides from the name.
CREATE TABLE workspace_items (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    path text COLLATE "C" NOT NULL,
    parent text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    type text NOT NULL CHECK (type IN ('file', 'directory', 'notebook')),
    content bytea,
    size bigint NOT NULL DEFAULT 0 CHECK (size >= 0),
    sha256 bytea,
    -- Files only: mimetypes.guess_type of the path, as Jupyter reports it (NULL if unknown).
    mimetype text CHECK (type = 'file' OR mimetype IS NULL),
    created timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_modified timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (path <> '' AND path !~ '(^/|/$|//)' AND octet_length(path) <= 4096),
    CHECK (path !~ '(^|/)\.\.?(/|$)' AND path !~ '[[:cntrl:]]'),
    CHECK (name <> '' AND position('/' IN name) = 0 AND octet_length(name) <= 255),
    CHECK (path = CASE WHEN parent = '' THEN name ELSE parent || '/' || name END),
    CHECK ((type = 'directory') = (content IS NULL)),
    CHECK ((type = 'directory') = (sha256 IS NULL)),
    CHECK (type = 'directory' OR (type = 'notebook') = (right(name, 6) = '.ipynb')),
    CHECK (size = coalesce(octet_length(content), 0)),
    UNIQUE (workspace_id, path)
);
-- Directory listings: the children of one parent, in name order.
CREATE INDEX workspace_items_parent_idx ON workspace_items (workspace_id, parent, name);

-- Saved versions of files (Jupyter checkpoints), the newest N per path kept. last_modified is
-- the file's own at the time of the checkpoint (as Jupyter's copy of the file keeps its mtime).
CREATE TABLE checkpoints (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    path text COLLATE "C" NOT NULL,
    type text NOT NULL CHECK (type IN ('file', 'notebook')),
    content bytea NOT NULL,
    sha256 bytea NOT NULL,
    last_modified timestamptz NOT NULL,
    created timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX checkpoints_path_idx ON checkpoints (workspace_id, path, id DESC);

-- Chunks of an upload in progress (Jupyter's chunk = 1..N, then -1); assembled on the last.
CREATE TABLE upload_chunks (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    path text COLLATE "C" NOT NULL,
    seq integer NOT NULL CHECK (seq > 0),
    data bytea NOT NULL,
    created timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workspace_id, path, seq)
);

-- pglz, PostgreSQL's default compression, runs at ~100 MB/s and doubled the time of a 10 MB
-- save here; lz4, where the server has it, is several times faster. Without lz4, file content is
-- stored uncompressed. Chunks are transient: never worth compressing.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE workspace_items ALTER COLUMN content SET COMPRESSION lz4;
        ALTER TABLE checkpoints ALTER COLUMN content SET COMPRESSION lz4;
    ELSE
        ALTER TABLE workspace_items ALTER COLUMN content SET STORAGE EXTERNAL;
        ALTER TABLE checkpoints ALTER COLUMN content SET STORAGE EXTERNAL;
    END IF;
END
$$;
ALTER TABLE upload_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
