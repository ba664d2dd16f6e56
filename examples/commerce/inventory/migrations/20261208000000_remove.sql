-- Units taken out of stock by an admin (shipped elsewhere, written off), with the reason.
ALTER TABLE movements
    DROP CONSTRAINT movements_kind_check,
    ADD CONSTRAINT movements_kind_check
        CHECK (kind IN ('add', 'adjust', 'reserve', 'confirm', 'release', 'restock', 'remove')),
    ADD COLUMN reason text;
