//! Transactional outbox for PostgreSQL with a lease-based relay to Kafka. Not yet implemented: see the project issues.
