-- Search in files (extensions/workspaces/search.py). The text of every UTF-8 file of 1 MiB or
-- less is kept once per content, decoded, in search_texts: contents are stored as bytea parts,
-- which neither regular expressions nor a trigram index can read. A file whose bytes are not
-- UTF-8 (or hold NUL, which PostgreSQL text cannot) is binary: it gets no row and is never
-- searched. Rows are written by the trigger below, in the transaction that gives a file its
-- content, and deleted with the content's last parts.

CREATE TABLE search_texts (
    content_id bigint PRIMARY KEY,
    body text NOT NULL
);

-- As 0006 did for content parts: lz4 where the server has it, otherwise no compression (pglz
-- would double the cost of saving a large file).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE search_texts ALTER COLUMN body SET COMPRESSION lz4;
    ELSE
        ALTER TABLE search_texts ALTER COLUMN body SET STORAGE EXTERNAL;
    END IF;
END
$$;

-- Keep the text of a content if it is UTF-8; nothing if it is not (binary) or already kept.
CREATE FUNCTION store_search_text(id bigint) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF EXISTS (SELECT FROM search_texts WHERE content_id = id) THEN
        RETURN;
    END IF;
    BEGIN
        INSERT INTO search_texts (content_id, body)
        VALUES (id, convert_from(content_bytes(id), 'UTF8'))
        ON CONFLICT (content_id) DO NOTHING;
    EXCEPTION WHEN character_not_in_repertoire OR untranslatable_character THEN
        NULL;  -- not UTF-8 text: a binary file
    END;
END
$$;

CREATE FUNCTION index_item_text() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM store_search_text(NEW.content_id);
    RETURN NULL;
END
$$;

-- 1048576 bytes (1 MiB): the largest file searched (WorkspaceSearch.max_file_size says so).
-- Empty files have no parts and nothing to find.
CREATE TRIGGER workspace_items_search_text
    AFTER INSERT OR UPDATE OF content_id ON workspace_items
    FOR EACH ROW
    WHEN (NEW.type = 'file' AND NEW.size BETWEEN 1 AND 1048576)
    EXECUTE FUNCTION index_item_text();

CREATE FUNCTION drop_search_texts() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    DELETE FROM search_texts WHERE content_id IN (SELECT DISTINCT content_id FROM removed_parts);
    RETURN NULL;
END
$$;

-- release_content (0006) deletes the parts of a content nothing refers to any more.
CREATE TRIGGER content_parts_drop_search_texts
    AFTER DELETE ON content_parts REFERENCING OLD TABLE AS removed_parts
    FOR EACH STATEMENT EXECUTE FUNCTION drop_search_texts();

-- The files stored before this migration.
SELECT store_search_text(content_id)
FROM (SELECT DISTINCT content_id FROM workspace_items
      WHERE type = 'file' AND size BETWEEN 1 AND 1048576) f;

-- A trigram index makes a search read only the files that can match. pg_trgm ships with
-- PostgreSQL's contrib modules (every stock server and image has them; the embedded pgserver
-- build does not), and it is a trusted extension: the database owner may create it. Without
-- it a search reads the text of the workspace's files in scope (found through the workspace's
-- index of items). A server that gains pg_trgm later can add the index with the two
-- statements below (docs/api.md).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        RETURN;
    END IF;
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'search_texts: no trigram index (not allowed to create pg_trgm)';
        RETURN;
    END;
    CREATE INDEX search_texts_body_trgm_idx ON search_texts USING gin (body gin_trgm_ops);
END
$$;
