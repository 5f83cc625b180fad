-- File content in parts. A file's bytes are the parts of its content, in `seq` order (1 MB
-- each when written by the platform). Files, checkpoints and uploads in progress refer to a
-- content by id, so a copy, a checkpoint, a restore or the last chunk of an upload moves no
-- bytes: each chunk of an upload is written once, as a part. Content ids come from one
-- sequence, so they never cross workspaces; a content that nothing refers to any more is
-- deleted by the triggers below, in the transaction that let go of it.

CREATE SEQUENCE content_ids AS bigint;

CREATE TABLE content_parts (
    content_id bigint NOT NULL,
    seq integer NOT NULL CHECK (seq > 0),
    data bytea NOT NULL,
    PRIMARY KEY (content_id, seq)
);
-- As 0002 did for whole files: lz4 where the server has it, otherwise no compression (pglz
-- halves the write speed).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE content_parts ALTER COLUMN data SET COMPRESSION lz4;
    ELSE
        ALTER TABLE content_parts ALTER COLUMN data SET STORAGE EXTERNAL;
    END IF;
END
$$;

-- The bytes of a content (NULL for NULL: directories have none).
CREATE FUNCTION content_bytes(id bigint) RETURNS bytea
LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$
    SELECT coalesce(string_agg(data, ''::bytea ORDER BY seq), ''::bytea)
    FROM content_parts WHERE content_id = id
$$;

-- Files: content moves to parts.
ALTER TABLE workspace_items ADD COLUMN content_id bigint;
UPDATE workspace_items SET content_id = nextval('content_ids') WHERE content IS NOT NULL;
INSERT INTO content_parts (content_id, seq, data)
    SELECT content_id, 1, content FROM workspace_items WHERE octet_length(content) > 0;
-- Dropping the column drops the checks that mention it (content IS NULL, size = length).
ALTER TABLE workspace_items DROP COLUMN content;
ALTER TABLE workspace_items ADD CHECK ((type = 'directory') = (content_id IS NULL));
CREATE INDEX workspace_items_content_idx ON workspace_items (content_id);

-- Checkpoints: the same, and their size (it was the content's length).
ALTER TABLE checkpoints
    ADD COLUMN content_id bigint,
    ADD COLUMN size bigint NOT NULL DEFAULT 0 CHECK (size >= 0);
UPDATE checkpoints SET content_id = nextval('content_ids'), size = octet_length(content);
INSERT INTO content_parts (content_id, seq, data)
    SELECT content_id, 1, content FROM checkpoints WHERE octet_length(content) > 0;
ALTER TABLE checkpoints DROP COLUMN content;
ALTER TABLE checkpoints ALTER COLUMN content_id SET NOT NULL;
CREATE INDEX checkpoints_content_idx ON checkpoints (content_id);

-- Uploads in progress (Jupyter's chunk = 1..N, then -1): chunk n is part n of the upload's
-- content, which becomes the file's with the last chunk. Uploads in progress when this
-- migration runs are dropped (a client starts them again from chunk 1).
DROP TABLE upload_chunks;
CREATE TABLE uploads (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    path text COLLATE "C" NOT NULL,
    content_id bigint NOT NULL,
    -- Chunks written so far, by any replica (a replica's running digest of the upload is
    -- good only while it has seen them all).
    writes integer NOT NULL DEFAULT 1,
    -- When the last chunk arrived: an upload idle for an hour is abandoned.
    updated timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workspace_id, path)
);
CREATE INDEX uploads_content_idx ON uploads (content_id);

-- Deletes a content's parts when the row letting go of it (by a delete, or by pointing at
-- another content) was the last to refer to it. AFTER triggers run once the statement is done,
-- so a statement deleting several rows that share a content sees all of them gone.
CREATE FUNCTION release_content() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF OLD.content_id IS NOT NULL
       AND (TG_OP = 'DELETE' OR NEW.content_id IS DISTINCT FROM OLD.content_id)
       AND NOT EXISTS (SELECT FROM workspace_items WHERE content_id = OLD.content_id)
       AND NOT EXISTS (SELECT FROM checkpoints WHERE content_id = OLD.content_id)
       AND NOT EXISTS (SELECT FROM uploads WHERE content_id = OLD.content_id) THEN
        DELETE FROM content_parts WHERE content_id = OLD.content_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER workspace_items_release_content
    AFTER UPDATE OF content_id OR DELETE ON workspace_items
    FOR EACH ROW EXECUTE FUNCTION release_content();
CREATE TRIGGER checkpoints_release_content
    AFTER UPDATE OF content_id OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION release_content();
CREATE TRIGGER uploads_release_content
    AFTER UPDATE OF content_id OR DELETE ON uploads
    FOR EACH ROW EXECUTE FUNCTION release_content();
