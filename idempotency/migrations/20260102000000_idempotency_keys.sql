-- Idempotency keys: one row per (scope, route, key). The in-flight lock is a row lease (the lease
-- columns of the `leases` crate); retention (`retain_until`) is separate from it.
CREATE TABLE idempotency_keys (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope            text NOT NULL,
    route            text NOT NULL,
    idempotency_key  text NOT NULL,
    fingerprint      bytea NOT NULL,
    created_at       timestamptz NOT NULL,
    retain_until     timestamptz NOT NULL,
    completed_at     timestamptz,
    status           int,
    header_names     text[],
    header_values    bytea[],
    body             bytea,
    lease_owner      text,
    lease_token      bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    attempts         int NOT NULL DEFAULT 0,
    -- Keys are never claimed in batches; the column exists because released leases set it.
    next_attempt_at  timestamptz,
    UNIQUE (scope, route, idempotency_key)
) WITH (fillfactor = 80); -- room on the page, so completing a key is a HOT update

-- The reaper deletes keys past their retention, oldest first.
CREATE INDEX idempotency_keys_retain_until ON idempotency_keys (retain_until);
