//! The one module that knows the outbox's tables, `outbox_events` and `outbox_dead_letters`:
//! every statement on them is written here, so a column change is made once.
//!
//! - [`events`]: enqueue (insert in the caller's transaction) and the retention purge.
//! - [`relay`]: the default relay's statements, all through [`leases::RowLeases`] built from
//!   [`spec`]: claim, complete, and the retry of a failed event.
//! - [`shard`]: the exactly-once relay's statements, fenced by its shard lease through
//!   [`leases::NamedLeases::fenced_query`]: the claim of a shard's batch and the mark of its
//!   published rows.
//! - [`dead_letters`]: moving a failed event to the dead letters (under either relay's lease),
//!   and the operator's list, replay and discard.
//! - [`status`]: the reads that count the backlog, the leases and the dead letters (the relay's
//!   gauges and [`status`](crate::status)).
//!
//! Lease columns are never written here: [`leases::TableSpec::leased_at`] and
//! [`leases::TableSpec::free_at`] say whether a lease is live, and the exactly-once relay (which
//! holds no row lease) finishes kept rows with [`leases::TableSpec::finished`], over [`kept`].

pub(crate) mod dead_letters;
pub(crate) mod events;
pub(crate) mod relay;
pub(crate) mod shard;
pub(crate) mod status;

use leases::{Completion, TableSpec, TableSpecBuilder};

/// `outbox_events` and its lease columns, as every statement on the table's leases names them
/// (the default relay's claims, the gauges' and [`status`](crate::status)' lease counts).
pub(crate) fn spec() -> TableSpecBuilder {
    TableSpec::builder("outbox_events").id_column("seq")
}

/// [`spec`] of a table whose published rows are kept ([`Retention::Keep`](crate::Retention)):
/// finished with `published_at` set.
pub(crate) fn kept() -> TableSpecBuilder {
    spec()
        .completion(Completion::Keep)
        .completed_at_column("published_at")
}
