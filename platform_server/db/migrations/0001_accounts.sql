-- Accounts: users, revocable browser logins, API tokens, login throttling, shared secrets.

CREATE TABLE platform_secrets (
    name text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username text NOT NULL CHECK (username ~ '^[a-z0-9_.-]{3,32}$'),
    email text CHECK (email IS NULL OR length(email) <= 254),
    password_hash text NOT NULL,
    is_admin boolean NOT NULL DEFAULT false,
    disabled boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Usernames are stored lower-case; the index keeps them unique even if that ever changes.
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));

-- One row per browser login; the cookie carries a random secret whose SHA-256 is stored here.
CREATE TABLE logins (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    remote_ip text,
    user_agent text
);
CREATE INDEX logins_user_id_idx ON logins (user_id);

CREATE TABLE api_tokens (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    token_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at timestamptz
);
CREATE INDEX api_tokens_user_id_idx ON api_tokens (user_id);

-- Failed logins per key ('user:<name>' or 'addr:<ip>'), shared by every replica.
CREATE TABLE login_failures (
    key text PRIMARY KEY,
    failures integer NOT NULL,
    window_started_at timestamptz NOT NULL,
    blocked_until timestamptz
);
