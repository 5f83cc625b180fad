-- The quota counts what a workspace stores: the parts of every content its files, checkpoints
-- and uploads in progress refer to, each content once however many rows share it. Each part
-- records its workspace (content ids never cross workspaces), and the triggers below keep
-- workspaces.bytes_used equal to the sum of its parts' lengths, in the transaction that writes
-- or releases them. (Before, bytes_used summed file sizes only: a checkpoint keeping an old
-- version stored bytes that no quota saw.)

ALTER TABLE content_parts ADD COLUMN workspace_id uuid;
UPDATE content_parts p SET workspace_id = r.workspace_id
FROM (SELECT content_id, workspace_id FROM workspace_items WHERE content_id IS NOT NULL
      UNION SELECT content_id, workspace_id FROM checkpoints
      UNION SELECT content_id, workspace_id FROM uploads) r
WHERE r.content_id = p.content_id;
-- Parts of no workspace are parts nothing refers to (release_content leaves none).
DELETE FROM content_parts WHERE workspace_id IS NULL;
ALTER TABLE content_parts ALTER COLUMN workspace_id SET NOT NULL;

UPDATE workspaces w SET bytes_used = coalesce(
    (SELECT sum(octet_length(data)) FROM content_parts WHERE workspace_id = w.id), 0);

-- Statement-level, with transition tables: one update per workspace per statement, however
-- many parts it wrote or deleted. octet_length of a stored bytea reads its length, not its data.
CREATE FUNCTION count_parts_added() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE workspaces w SET bytes_used = w.bytes_used + d.bytes
    FROM (SELECT workspace_id, sum(octet_length(data)) AS bytes
          FROM added_parts GROUP BY workspace_id) d
    WHERE w.id = d.workspace_id AND d.bytes <> 0;
    RETURN NULL;
END
$$;

CREATE FUNCTION count_parts_removed() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE workspaces w SET bytes_used = w.bytes_used - d.bytes
    FROM (SELECT workspace_id, sum(octet_length(data)) AS bytes
          FROM removed_parts GROUP BY workspace_id) d
    WHERE w.id = d.workspace_id AND d.bytes <> 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER content_parts_count_insert
    AFTER INSERT ON content_parts REFERENCING NEW TABLE AS added_parts
    FOR EACH STATEMENT EXECUTE FUNCTION count_parts_added();
CREATE TRIGGER content_parts_count_update_new
    AFTER UPDATE ON content_parts REFERENCING NEW TABLE AS added_parts
    FOR EACH STATEMENT EXECUTE FUNCTION count_parts_added();
CREATE TRIGGER content_parts_count_update_old
    AFTER UPDATE ON content_parts REFERENCING OLD TABLE AS removed_parts
    FOR EACH STATEMENT EXECUTE FUNCTION count_parts_removed();
CREATE TRIGGER content_parts_count_delete
    AFTER DELETE ON content_parts REFERENCING OLD TABLE AS removed_parts
    FOR EACH STATEMENT EXECUTE FUNCTION count_parts_removed();
