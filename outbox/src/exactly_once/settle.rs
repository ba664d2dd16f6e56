//! What a shard's new episode does first with what the last one left: the transaction whose
//! commit was resumed ([`Pending`]), and the shard's last committed progress record.

use leases::NamedLease;

use super::progress::{Place, Progress, Verdict};
use super::shard::{Ended, Pending, Shared};

impl Shared {
    /// Marks the events of a transaction whose commit was resumed if its progress record was
    /// committed ([`Place::committed_at`]); otherwise they are published again.
    pub(super) async fn settle_resumed(
        &self,
        shard: u32,
        lease: &NamedLease,
        place: &Place,
        pending: &Pending,
    ) -> Result<(), Ended> {
        let limit = self.config.transaction_timeout;
        let committed = place
            .committed_at(&self.clients, pending.offset, limit)
            .await?;
        let events = pending.progress.seqs.len();
        if committed {
            let (seqs, ids) = (&pending.progress.seqs, &pending.progress.ids);
            let marked = self.mark(lease, seqs, ids).await?;
            tracing::info!(
                shard,
                events,
                marked,
                "outbox: the resumed commit had committed"
            );
        } else {
            tracing::warn!(
                shard,
                events,
                "outbox: the resumed commit had not committed; its events go out again"
            );
        }
        Ok(())
    }

    /// Settles the previous transaction of the shard, as its progress record describes it: marks
    /// its rows when the record provably describes this outbox's events under an earlier lease
    /// ([`Progress::verdict`]), and reports and ignores it otherwise.
    pub(super) async fn settle(
        &self,
        shard: u32,
        lease: &NamedLease,
        previous: &Progress,
    ) -> Result<(), Ended> {
        let verdict = previous.verdict(self.outbox, lease);
        if verdict != Verdict::Settle {
            previous.report_ignored(verdict, self.outbox, lease, shard);
            return Ok(());
        }
        let marked = self.mark(lease, &previous.seqs, &previous.ids).await?;
        if marked > 0 {
            tracing::info!(
                shard,
                events = marked,
                previous_owner = %previous.owner,
                previous_token = previous.token,
                "outbox: marked the events of the previous owner's last transaction, which it \
                 had committed to Kafka but not marked"
            );
        }
        Ok(())
    }
}
