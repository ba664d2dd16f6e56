//! Idempotency-Key tower layer and consumer inbox over PostgreSQL. Not yet implemented: see the project issues.
