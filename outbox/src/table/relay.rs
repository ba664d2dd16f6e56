//! The default relay's statements on `outbox_events`, all through [`RowLeases`] over
//! [`spec`](super::spec): the claim and the mark are the leases' own statements, the retry a
//! fenced release that also records the error. (The move to the dead letters is in
//! [`dead_letters`](super::dead_letters).)

use std::time::Duration;

use leases::{Lease, RowLeases, Sql};
use sqlx::PgPool;

use crate::{RelayConfig, Result, Retention};

/// The row leases a relay with `config` claims and marks `outbox_events` through: runs of one
/// aggregate when it keeps per-aggregate order, published rows kept with `published_at` under
/// [`Retention::Keep`].
pub(crate) fn leases(config: &RelayConfig) -> Result<RowLeases> {
    let mut spec = match config.retention {
        Retention::Delete => super::spec(),
        Retention::Keep => super::kept(),
    };
    if config.ordered {
        spec = spec.group_columns(&["aggregate_type", "aggregate_id"]);
    }
    let mut leases = RowLeases::new(&spec.build()?, config.owner.clone());
    if let Some(rescan) = config.claim_cursor {
        leases = leases.claim_cursor(rescan);
    }
    Ok(leases)
}

/// Releases a leased event for another attempt after `delay`, recording `last_error`, if the
/// lease is still held. Returns whether it was.
pub(crate) async fn retry(
    pool: &PgPool,
    leases: &RowLeases,
    lease: &Lease<i64>,
    delay: Duration,
    last_error: String,
) -> Result<bool> {
    let released = leases
        .release_query(lease, delay, Sql::new("last_error = $1").bind(last_error))?
        .execute(pool)
        .await?;
    Ok(released.rows_affected() == 1)
}
