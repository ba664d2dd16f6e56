-- What a payment is in and the provider's id of its charge (set once the provider approved it).
ALTER TABLE payments
    ADD COLUMN currency text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    ADD COLUMN provider_payment_id text;
