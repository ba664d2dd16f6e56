-- A cancelled order whose units were already sold (CONFIRMED) gets them back: the reservation
-- becomes RESTOCKED and a 'restock' movement adds the units to the total again.
ALTER TABLE reservations
    DROP CONSTRAINT reservations_state_check,
    ADD CONSTRAINT reservations_state_check
        CHECK (state IN ('RESERVED', 'CONFIRMED', 'RELEASED', 'RESTOCKED'));

ALTER TABLE movements
    DROP CONSTRAINT movements_kind_check,
    ADD CONSTRAINT movements_kind_check
        CHECK (kind IN ('add', 'adjust', 'reserve', 'confirm', 'release', 'restock'));
