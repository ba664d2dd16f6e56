-- Orders go on past CONFIRMED: SHIPPED when the shipping service hands the parcel over,
-- COMPLETED when it is delivered. A CONFIRMED order is no longer finished (it waits for its
-- shipment), so the archiver's index now covers COMPLETED instead.
ALTER TABLE orders
    DROP CONSTRAINT orders_state_check,
    ADD CONSTRAINT orders_state_check CHECK (state IN
        ('PENDING', 'RESERVED', 'PAID', 'CONFIRMED', 'SHIPPED', 'COMPLETED', 'CANCELLED', 'FAILED'));

DROP INDEX orders_finished;
CREATE INDEX orders_finished ON orders (updated_at)
    WHERE state IN ('COMPLETED', 'CANCELLED', 'FAILED');
