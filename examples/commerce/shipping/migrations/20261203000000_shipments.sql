-- One row per order: the primary key is what makes a second shipment for the same order
-- impossible, whichever event (or redelivery) asks for it. An order cancelled before it was
-- confirmed gets a CANCELLED row without carrier or tracking number, so that a late (reordered)
-- OrderConfirmed finds it and ships nothing.
CREATE TABLE shipments (
    order_id        uuid PRIMARY KEY,
    shipment_id     uuid NOT NULL UNIQUE,
    customer_id     text NOT NULL,
    state           text NOT NULL CHECK (state IN ('CREATED', 'DELIVERED', 'CANCELLED')),
    carrier         text,
    tracking_number text,
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    -- Only a parcel that was never handed over has no carrier.
    CHECK (state = 'CANCELLED' OR (carrier IS NOT NULL AND tracking_number IS NOT NULL)),
    -- Delivered exactly when it has a delivery time.
    CHECK ((state = 'DELIVERED') = (delivered_at IS NOT NULL))
);
