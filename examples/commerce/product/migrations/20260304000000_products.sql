-- The catalogue.
CREATE TABLE products (
    id          uuid PRIMARY KEY,
    sku         text NOT NULL UNIQUE,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    price_cents bigint NOT NULL CHECK (price_cents > 0),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The durable copy of the stock figures inventory publishes (StockLevelChanged), newest version
-- per product. Redis holds the same figures for reads; this table is the fallback. No foreign key:
-- inventory may publish a level before (or without) the product existing here.
CREATE TABLE stock_levels (
    product_id uuid PRIMARY KEY,
    total      integer NOT NULL,
    reserved   integer NOT NULL,
    available  integer NOT NULL,
    version    bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
