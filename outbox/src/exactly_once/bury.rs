//! Dead-lettering after an aborted transaction: the events refused for good, and those whose own
//! transactions kept failing.

use std::collections::HashMap;

use leases::NamedLease;

use super::shard::Shared;
use crate::publisher::{Event, PublishError};
use crate::table::dead_letters::{Burial, bury_in_shard};

impl Shared {
    /// After an aborted transaction: dead-letters the events refused for good, and those whose
    /// transactions failed [`Backoff::max_attempts`](crate::Backoff::max_attempts) times.
    /// Returns how many it moved.
    pub(super) async fn bury_failed(
        &self,
        lease: &NamedLease,
        batch: &[Event],
        failed: &[(usize, PublishError)],
        attempts: &mut HashMap<i64, u32>,
    ) -> crate::Result<u64> {
        let mut buried = 0;
        for (index, error) in failed {
            let event = &batch[*index];
            let tried = attempts.entry(event.seq).or_default();
            *tried += 1;
            let reason = if !error.is_retriable() {
                "permanent publish failure".to_owned()
            } else if *tried >= self.config.backoff.max_attempts() {
                format!("attempts exhausted ({tried})")
            } else {
                tracing::warn!(event_id = %event.id, attempts = *tried, %error, "outbox: transaction aborted; retrying");
                continue;
            };
            tracing::error!(event_id = %event.id, %reason, %error, "outbox: dead-lettering event");
            let burial = Burial {
                attempts: i32::try_from(*tried).unwrap_or(i32::MAX),
                reason: &reason,
                last_error: &error.to_string(),
            };
            buried += bury_in_shard(&self.pool, &self.named, lease, event.seq, burial).await?;
            attempts.remove(&event.seq);
        }
        self.count("outbox_dead_lettered_total", buried as usize);
        Ok(buried)
    }
}
