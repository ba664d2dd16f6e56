-- Stock per product. The CHECK is the last line of defence behind the domain arithmetic: no
-- transaction can commit a negative or over-reserved figure.
CREATE TABLE stock (
    product_id uuid PRIMARY KEY,
    total      int NOT NULL,
    reserved   int NOT NULL DEFAULT 0,
    -- Increases with every change of the row; published in StockLevelChanged.
    version    bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stock_never_negative CHECK (reserved >= 0 AND reserved <= total AND total >= 0)
);

-- What each order holds, per product. RESERVED becomes CONFIRMED (payment approved) or
-- RELEASED (payment declined, order cancelled), never anything else.
CREATE TABLE reservations (
    order_id   uuid NOT NULL,
    product_id uuid NOT NULL REFERENCES stock (product_id),
    quantity   int NOT NULL CHECK (quantity > 0),
    state      text NOT NULL CHECK (state IN ('RESERVED', 'CONFIRMED', 'RELEASED')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, product_id)
);

-- Every change of a stock row, in the transaction that makes it.
CREATE TABLE movements (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id     uuid NOT NULL REFERENCES stock (product_id),
    order_id       uuid,
    kind           text NOT NULL CHECK (kind IN ('add', 'adjust', 'reserve', 'confirm', 'release')),
    delta_total    int NOT NULL,
    delta_reserved int NOT NULL,
    at             timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX movements_product ON movements (product_id, id);
CREATE INDEX movements_order ON movements (order_id) WHERE order_id IS NOT NULL;
