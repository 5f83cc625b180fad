-- When each sandbox's state was last set: a start, a claim from the warm pool or a stop that
-- has lasted far longer than a start may take was left half done by a replica that died.
-- (created_at cannot tell: a warm-pool sandbox may wait for hours before it is claimed.)

ALTER TABLE sandboxes ADD COLUMN state_since timestamptz NOT NULL DEFAULT now();
