-- The order service's copy of the catalogue, kept by the product service's ProductChanged events
-- (newest version per product): orders are priced from it, in their own transaction.
CREATE TABLE catalogue (
    product_id  uuid PRIMARY KEY,
    price_cents bigint NOT NULL,
    active      boolean NOT NULL,
    version     bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
