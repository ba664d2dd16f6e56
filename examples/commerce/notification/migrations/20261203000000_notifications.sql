-- One row per customer-visible event. The unique event id is the second line of defence after
-- the consumer's inbox: however often an event is delivered, it makes one notification.
CREATE TABLE notifications (
    id          bigserial PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    customer_id text NOT NULL,
    order_id    uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('order_placed', 'order_confirmed', 'order_cancelled',
                                              'order_shipped', 'order_delivered', 'payment_refunded')),
    message     text NOT NULL,
    occurred_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A customer's notifications, oldest first (GET /api/v1/notifications).
CREATE INDEX notifications_customer_occurred ON notifications (customer_id, occurred_at, id);
