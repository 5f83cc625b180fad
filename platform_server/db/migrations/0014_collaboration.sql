-- Live co-editing of text files (extensions/collaboration): each open document's Y.js updates,
-- shared by the replicas that have its room open, and the state it had at its last save.

-- One row per document being edited together. ``saved_state`` is the document (a Y update
-- from the empty document) at its last save, and ``saved_sha256`` the digest of the text then
-- written: a change to the file made another way is merged as a diff against that state.
-- The row is made exactly once (the primary key), by the replica that seeds the document
-- from the file's text; the others load it.
CREATE TABLE collaboration_documents (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    path text NOT NULL,
    saved_state bytea NOT NULL,
    saved_sha256 bytea NOT NULL,
    PRIMARY KEY (workspace_id, path)
);

-- The document's updates in the order they were stored (writers of one document take its
-- advisory lock, so ``seq`` order is commit order): a replica applies those after the last
-- ``seq`` it has seen when it hears a NOTIFY on the ``collaboration`` channel.
CREATE TABLE collaboration_updates (
    seq bigserial PRIMARY KEY,
    workspace_id uuid NOT NULL,
    path text NOT NULL,
    data bytea NOT NULL,
    FOREIGN KEY (workspace_id, path)
        REFERENCES collaboration_documents (workspace_id, path) ON DELETE CASCADE
);
CREATE INDEX collaboration_updates_document_idx ON collaboration_updates (workspace_id, path, seq);

-- Which replicas have a document's room open: the last to close it deletes the document's
-- rows (after its final save).
CREATE TABLE collaboration_peers (
    workspace_id uuid NOT NULL,
    path text NOT NULL,
    replica uuid NOT NULL,
    opened_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, path, replica),
    FOREIGN KEY (workspace_id, path)
        REFERENCES collaboration_documents (workspace_id, path) ON DELETE CASCADE
);
