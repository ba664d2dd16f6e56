-- Charges are made by the charger, outside any transaction: a PENDING payment is due at once
-- (next_attempt_at) and leased while its charge is made (the lease columns of the `leases`
-- crate). A payment remembers the event that asked for it (its saga's correlation id and the
-- StockReserved's event id) and its trace, for the events the charge publishes.
ALTER TABLE payments
    ADD COLUMN lease_owner      text,
    ADD COLUMN lease_token      bigint NOT NULL DEFAULT 0,
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN attempts         int NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at  timestamptz,
    ADD COLUMN cause_event_id   uuid,
    ADD COLUMN correlation_id   uuid,
    ADD COLUMN traceparent      text;

-- Payments left PENDING (no answer) before the charger existed are asked again.
UPDATE payments SET next_attempt_at = now() WHERE status = 'PENDING';

CREATE INDEX payments_due ON payments (next_attempt_at, order_id) WHERE next_attempt_at IS NOT NULL;
