-- One row per order: the primary key is what makes a second charge for the same order impossible,
-- whichever event (or redelivery) asks for it.
CREATE TABLE payments (
    order_id     uuid PRIMARY KEY,
    payment_id   uuid NOT NULL UNIQUE,
    customer_id  text NOT NULL,
    amount_cents bigint NOT NULL,
    status       text NOT NULL CHECK (status IN ('PENDING', 'APPROVED', 'DECLINED', 'REFUNDED')),
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Orders the order service cancelled: never charged afterwards, even if their StockReserved
-- arrives late.
CREATE TABLE cancelled_orders (
    order_id uuid PRIMARY KEY,
    reason   text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
