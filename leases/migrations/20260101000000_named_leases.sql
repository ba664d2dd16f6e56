-- Named leases: one row per name, for singleton jobs and leader election.
CREATE TABLE IF NOT EXISTS leases_named (
    name        text PRIMARY KEY,
    owner       text,
    token       bigint NOT NULL DEFAULT 0,
    expires_at  timestamptz,
    acquired_at timestamptz
);
