-- Keys are claimed one at a time by key, never in due order: the lease needs no attempt counter
-- and no due time (`leases::TableSpecBuilder::without_schedule`).
ALTER TABLE idempotency_keys DROP COLUMN attempts, DROP COLUMN next_attempt_at;
