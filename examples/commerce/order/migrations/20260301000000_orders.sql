-- Orders and their lines. `state` follows src/domain.rs; `reason` says why an order was cancelled
-- or failed; `reserved_at` is when its stock was reserved (the expiry job's clock starts there).
CREATE TABLE orders (
    id          uuid PRIMARY KEY,
    customer_id text NOT NULL,
    state       text NOT NULL
                CHECK (state IN ('PENDING', 'RESERVED', 'PAID', 'CONFIRMED', 'CANCELLED', 'FAILED')),
    reason      text,
    total_cents bigint NOT NULL CHECK (total_cents >= 0),
    reserved_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A customer's orders, newest first (ids are UUIDv7: time-ordered).
CREATE INDEX orders_customer ON orders (customer_id, id DESC);
-- The expiry job: reservations waiting for payment, oldest first.
CREATE INDEX orders_reserved ON orders (reserved_at) WHERE state = 'RESERVED';
-- The archiver: finished orders, by when they finished.
CREATE INDEX orders_finished ON orders (updated_at)
    WHERE state IN ('CONFIRMED', 'CANCELLED', 'FAILED');

CREATE TABLE order_lines (
    order_id         uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no          int NOT NULL,
    product_id       uuid NOT NULL,
    quantity         int NOT NULL CHECK (quantity BETWEEN 1 AND 100),
    unit_price_cents bigint NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, line_no),
    UNIQUE (order_id, product_id)
);

-- Finished orders moved out of the hot tables by the archiver, with when they were moved.
CREATE TABLE orders_archive (
    id          uuid PRIMARY KEY,
    customer_id text NOT NULL,
    state       text NOT NULL,
    reason      text,
    total_cents bigint NOT NULL,
    reserved_at timestamptz,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX orders_archive_customer ON orders_archive (customer_id, id DESC);

CREATE TABLE order_lines_archive (
    order_id         uuid NOT NULL REFERENCES orders_archive (id) ON DELETE CASCADE,
    line_no          int NOT NULL,
    product_id       uuid NOT NULL,
    quantity         int NOT NULL,
    unit_price_cents bigint NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

-- What customers read: live and archived orders (one statement sees each order in exactly one).
CREATE VIEW orders_all AS
    SELECT id, customer_id, state, reason, total_cents, created_at, updated_at FROM orders
    UNION ALL
    SELECT id, customer_id, state, reason, total_cents, created_at, updated_at FROM orders_archive;

CREATE VIEW order_lines_all AS
    SELECT order_id, line_no, product_id, quantity, unit_price_cents FROM order_lines
    UNION ALL
    SELECT order_id, line_no, product_id, quantity, unit_price_cents FROM order_lines_archive;
