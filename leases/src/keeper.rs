//! A background task that holds a named lease: acquires it when free, renews it while held, and
//! tells the holder the moment it is lost.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::named::{NamedLease, NamedLeases};
use crate::task::Background;
use crate::{Error, Result};

/// Keeps trying to hold the named lease `name` and renews it while held: leader election.
///
/// The current state is a `watch` of `Option<NamedLease>`: `Some` while this keeper holds the lease.
/// The keeper steps down (publishes `None`) when a renewal finds the lease taken, and also when no
/// renewal has succeeded for a whole `ttl` since the last successful one was *sent*: by then the
/// database may have handed the lease to someone else, so a holder cut off from the database stops
/// acting as leader no later than the database lets another one start (assuming the two clocks run
/// at the same rate).
///
/// It runs as a [`Background`] task: [`shutdown`](Self::shutdown) (or dropping the keeper) stops
/// it and releases the lease, so another owner can take it at once; [`abort`](Self::abort) stops
/// it as a crash would, and the lease expires after its ttl.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> leases::Result<()> {
/// use std::time::Duration;
/// use leases::{LeaseKeeper, NamedLeases};
///
/// let mut keeper = LeaseKeeper::start(
///     NamedLeases::new(), pool, "archiver", "worker-1",
///     Duration::from_secs(15), Duration::from_secs(5),
/// )?;
/// let lease = keeper.acquired().await;
/// tokio::select! {
///     () = keeper.lost() => tracing::warn!(token = lease.token, "lost leadership"),
///     () = async { /* run the singleton job, tagging writes with lease.token */ } => {}
/// }
/// keeper.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LeaseKeeper {
    state: watch::Receiver<Option<NamedLease>>,
    task: Background,
}

impl LeaseKeeper {
    /// Starts keeping `name` for `owner`: an attempt at once, then one every `renew_every`, each
    /// for `ttl`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] unless `0 < renew_every < ttl`.
    pub fn start(
        named: NamedLeases,
        pool: PgPool,
        name: impl Into<String>,
        owner: impl Into<String>,
        ttl: Duration,
        renew_every: Duration,
    ) -> Result<Self> {
        if renew_every.is_zero() || renew_every >= ttl {
            return Err(Error::InvalidConfig(format!(
                "renew interval {renew_every:?} must be greater than zero and shorter than the ttl {ttl:?}"
            )));
        }
        let (state_tx, state) = watch::channel(None);
        let job = Job {
            named,
            pool,
            name: name.into(),
            owner: owner.into(),
            ttl,
            renew_every,
            state: state_tx,
        };
        Ok(Self {
            state,
            task: Background::spawn(|stop| job.run(stop)),
        })
    }

    /// The lease if this keeper holds it now.
    pub fn current(&self) -> Option<NamedLease> {
        self.state.borrow().clone()
    }

    /// A receiver of every change of holder state.
    pub fn subscribe(&self) -> watch::Receiver<Option<NamedLease>> {
        self.state.clone()
    }

    /// Waits until this keeper holds the lease, and returns it.
    pub async fn acquired(&mut self) -> NamedLease {
        // (The watch guard is dropped before any other await, so the future is `Send`.)
        let held = self
            .state
            .wait_for(Option::is_some)
            .await
            .map(|l| l.clone());
        match held {
            Ok(Some(lease)) => lease,
            _ => std::future::pending().await,
        }
    }

    /// Waits until this keeper does not hold the lease (returns at once if it does not hold it now).
    pub async fn lost(&mut self) {
        if self.state.wait_for(Option::is_none).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Stops keeping the lease and releases it if held, so another owner can take it at once.
    pub async fn shutdown(self) {
        self.task.shutdown().await;
    }

    /// Stops at once, as a crash would: the lease is not released and expires after its ttl.
    pub fn abort(self) {
        self.task.abort();
    }
}

struct Job {
    named: NamedLeases,
    pool: PgPool,
    name: String,
    owner: String,
    ttl: Duration,
    renew_every: Duration,
    state: watch::Sender<Option<NamedLease>>,
}

impl Job {
    async fn run(self, stop: CancellationToken) {
        let mut held: Option<NamedLease> = None;
        let mut last_ok = Instant::now();
        loop {
            let sent = Instant::now();
            // While held, give up waiting at the local deadline; otherwise after one ttl.
            let deadline = if held.is_some() {
                last_ok + self.ttl
            } else {
                sent + self.ttl
            };
            let attempt = async {
                match &held {
                    Some(lease) => self.named.renew(&self.pool, lease, self.ttl).await,
                    None => {
                        self.named
                            .acquire(&self.pool, &self.name, &self.owner, self.ttl)
                            .await
                    }
                }
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(Some(lease))) => {
                    if held.is_none() {
                        tracing::info!(name = %self.name, owner = %self.owner, token = lease.token, "named lease acquired");
                    }
                    last_ok = sent;
                    held = Some(lease);
                    self.state.send_replace(held.clone());
                }
                Ok(Ok(None)) => {
                    if held.take().is_some() {
                        tracing::warn!(name = %self.name, owner = %self.owner, "named lease lost to another owner");
                        self.state.send_replace(None);
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(name = %self.name, %error, "named lease: attempt failed");
                }
                Err(_) => {}
            }
            let step_down_at = held.as_ref().map(|_| last_ok + self.ttl);
            tokio::select! {
                () = stop.cancelled() => {
                    if let Some(lease) = held.take() {
                        if let Err(error) = self.named.release(&self.pool, &lease).await {
                            tracing::warn!(name = %self.name, %error, "named lease: release failed; it will expire");
                        }
                    }
                    self.state.send_replace(None);
                    return;
                }
                () = tokio::time::sleep(self.renew_every) => {}
                () = sleep_until(step_down_at) => {}
            }
            if step_down_at.is_some_and(|at| Instant::now() >= at) && held.take().is_some() {
                tracing::warn!(name = %self.name, owner = %self.owner, "named lease: no renewal within the ttl; stepping down");
                self.state.send_replace(None);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
