-- Each product's version, announced in ProductChanged: 1 at creation, one more with every change.
ALTER TABLE products ADD COLUMN version bigint NOT NULL DEFAULT 1;
