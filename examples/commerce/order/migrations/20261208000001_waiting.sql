-- The stuck-order job finds orders waiting too long for their reservation or confirmation.
CREATE INDEX orders_waiting ON orders (updated_at) WHERE state IN ('PENDING', 'PAID');
