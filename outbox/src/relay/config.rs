//! How a relay works: [`RelayConfig`] and [`Retention`].

use std::time::Duration;

use leases::retry::Backoff;

/// What happens to a published event's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Retention {
    /// Delete the row once the broker acknowledged it. The default.
    #[default]
    Delete,
    /// Keep the row with `published_at` set; purge later with [`purge_published`](crate::purge_published).
    Keep,
}

/// How a relay works. Every setter documents its default.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub(crate) owner: String,
    pub(crate) name: String,
    pub(crate) batch_size: u32,
    pub(crate) lease_ttl: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) ordered: bool,
    pub(crate) retention: Retention,
    pub(crate) pipeline_depth: u32,
    pub(crate) claim_cursor: Option<Duration>,
    pub(crate) stalled_after: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            owner: format!("relay-{}", uuid::Uuid::now_v7()),
            name: "outbox".to_owned(),
            batch_size: 500,
            lease_ttl: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            backoff: Backoff::default(),
            ordered: true,
            retention: Retention::default(),
            pipeline_depth: 2,
            claim_cursor: None,
            stalled_after: Duration::from_secs(10),
        }
    }
}

impl RelayConfig {
    /// The lease owner name. Default: `relay-<uuidv7>`, unique per relay.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// The name its metrics carry as the label `relay`, so the relays of several services in one
    /// process (or one Prometheus) stay apart; relays over the same outbox share it. Default:
    /// `outbox`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Events claimed per batch. Default: 500.
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n;
        self
    }

    /// How long a batch's leases last: a relay that dies mid-batch holds its events this long
    /// before another relay republishes them. A live relay renews the leases of a batch that
    /// waits for the broker every third of this, so a slow delivery never loses them. Default:
    /// 30 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How often to look for due events when no notification arrives (new events wake the relay
    /// through `LISTEN outbox_events` at once; polling catches retries and missed notifications).
    /// Default: 1 s.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The retry policy. Default: [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Whether to keep per-aggregate order: never publish an event while an older one of its
    /// aggregate is unpublished. The relay then claims an aggregate's backlog in runs of
    /// consecutive events ([`TableSpecBuilder::group_columns`](leases::TableSpecBuilder::group_columns))
    /// and publishes each run in order with [`Publisher::publish_run`](crate::Publisher::publish_run), which never lets a later
    /// event of a run reach the broker after an earlier one failed. Default: `true`.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// What to do with published rows. Default: [`Retention::Delete`].
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// How many batches a running relay keeps in flight: with 2, it claims the next batch while
    /// the broker acknowledges the current one and its rows are marked, so the database, the
    /// relay and the broker work at the same time instead of taking turns. 1 claims a batch only
    /// once the previous one is settled. Per-aggregate order holds at any depth: an event is not
    /// claimable while an older event of its aggregate is leased. (A batch that is one aggregate's
    /// run is not claimed ahead of: nothing else of that aggregate can be claimed until it
    /// settles.) Default: 2.
    pub fn pipeline_depth(mut self, depth: u32) -> Self {
        self.pipeline_depth = depth;
        self
    }

    /// Claims with a claim cursor ([`RowLeases::claim_cursor`](leases::RowLeases::claim_cursor)):
    /// while claims come back full, each starts at the earliest due time of the last one instead
    /// of at the head of the outbox, and from the head again after a short claim and at least
    /// every `rescan`. Turn it on when a long transaction (or a replica's `hot_standby_feedback`)
    /// can hold back vacuum while the relay works through a backlog: the published rows' index
    /// entries then stay, and a claim from the head steps over all of them. Per-aggregate order is
    /// unchanged (an event is never claimed while an older one of its aggregate is unpublished). An
    /// event left behind the cursor waits until a claim comes back short or `rescan` passes: one
    /// whose lease expired, one committed late with an earlier due time, or one that a full claim
    /// stepped over while an older event of its aggregate was in flight. Default: off.
    pub fn claim_cursor(mut self, rescan: Duration) -> Self {
        self.claim_cursor = Some(rescan);
        self
    }

    /// How long a batch may wait for the broker's acknowledgement before the relay's
    /// [`RelayMonitor`](crate::RelayMonitor) reports it stalled. Default: 10 s.
    pub fn stalled_after(mut self, wait: Duration) -> Self {
        self.stalled_after = wait;
        self
    }
}
