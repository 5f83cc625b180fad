-- Saving a binary file of up to 1 MiB read all its bytes back only to find that they are not
-- text: 0011's store_search_text converts the whole content, and the conversion fails. A NUL
-- byte is never text (PostgreSQL's text cannot hold one), and most binary formats have one
-- near their start: the first 8 KiB of the content's first part are read alone (a slice of a
-- stored value is fetched without the rest of it), and a NUL there ends the check. Any other
-- content is converted as before, by 0011's function under a new name.
ALTER FUNCTION store_search_text(bigint) RENAME TO convert_search_text;

CREATE FUNCTION store_search_text(id bigint) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF EXISTS (SELECT FROM content_parts
               WHERE content_id = id AND seq = 1
                 AND position('\x00'::bytea IN substring(data FROM 1 FOR 8192)) > 0) THEN
        RETURN;  -- a binary file
    END IF;
    PERFORM convert_search_text(id);
END
$$;
