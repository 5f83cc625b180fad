-- Events too large for a NOTIFY payload (PostgreSQL refuses 8000 bytes or more), such as the
-- move of a file whose old and new paths are both near the 4096-byte limit: the event is
-- stored here in the write's transaction, and the notification carries only its id, which
-- each replica's listener reads back. Rows older than a few minutes are deleted by later
-- writers (extensions/workspaces/events.py).

CREATE TABLE large_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload text NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX large_events_created_idx ON large_events (created);
