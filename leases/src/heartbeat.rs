//! Background renewal of row leases held by long work, with a signal when one is lost.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::row::{Lease, LeaseId, RowLeases};
use crate::task::Background;
use crate::{Error, Result};

/// Renews a set of row leases every `every` until stopped, and reports the ones it lost.
///
/// A lease is lost when a renewal finds it no longer held (it expired and another owner claimed
/// it), or when no renewal has succeeded for a whole `ttl` since the last one was sent (the
/// database is unreachable, so the lease must be presumed expired). Work on a lost lease should
/// stop: its outcome will be refused by the fencing check anyway.
///
/// It runs as a [`Background`] task: [`shutdown`](Self::shutdown) stops the renewals and returns
/// the leases still held; [`abort`](Self::abort), or dropping the handle, stops them and lets the
/// leases expire on their own.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool, leases: leases::RowLeases) -> leases::Result<()> {
/// use std::time::Duration;
/// use leases::{Heartbeat, Lease};
///
/// let ttl = Duration::from_secs(30);
/// let claimed: Vec<Lease<i64>> = leases.claim(&pool, 10, ttl).await?;
/// let mut heartbeat = Heartbeat::start(&leases, pool.clone(), claimed, ttl, ttl / 3)?;
/// tokio::select! {
///     lost = heartbeat.lost() => tracing::warn!(?lost, "leases lost; abandoning their work"),
///     () = tokio::time::sleep(Duration::from_secs(90)) => {} // the long work
/// }
/// let still_held = heartbeat.shutdown().await;
/// leases.complete_many(&pool, &still_held).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Heartbeat<I> {
    lost: watch::Receiver<Vec<I>>,
    task: Background<Vec<Lease<I>>>,
}

impl<I: LeaseId> Heartbeat<I> {
    /// Starts renewing `held` through `leases` (same owner and clock) every `every`, each time for
    /// `ttl`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] unless `0 < every < ttl`.
    pub fn start(
        leases: &RowLeases,
        pool: PgPool,
        held: Vec<Lease<I>>,
        ttl: Duration,
        every: Duration,
    ) -> Result<Self> {
        if every.is_zero() || every >= ttl {
            return Err(Error::InvalidConfig(format!(
                "heartbeat interval {every:?} must be greater than zero and shorter than the ttl {ttl:?}"
            )));
        }
        let (lost_tx, lost) = watch::channel(Vec::new());
        let leases = leases.clone();
        let task =
            Background::spawn(move |stop| run(leases, pool, held, ttl, every, lost_tx, stop));
        Ok(Self { lost, task })
    }

    /// Waits until at least one lease is lost and returns every id lost so far. Never resolves if
    /// the heartbeat is stopped without losing any.
    pub async fn lost(&mut self) -> Vec<I> {
        match self.lost.wait_for(|lost| !lost.is_empty()).await {
            Ok(lost) => lost.clone(),
            Err(_) => std::future::pending().await,
        }
    }

    /// The ids lost so far, without waiting.
    pub fn lost_now(&self) -> Vec<I> {
        self.lost.borrow().clone()
    }

    /// Stops renewing and returns the leases still held, with their latest expiry.
    pub async fn shutdown(self) -> Vec<Lease<I>> {
        self.task.shutdown().await.unwrap_or_default()
    }

    /// Stops renewing at once; the leases expire on their own.
    pub fn abort(self) {
        self.task.abort();
    }
}

async fn run<I: LeaseId>(
    leases: RowLeases,
    pool: PgPool,
    mut held: Vec<Lease<I>>,
    ttl: Duration,
    every: Duration,
    lost_tx: watch::Sender<Vec<I>>,
    stop: CancellationToken,
) -> Vec<Lease<I>> {
    let mut last_ok = Instant::now();
    let lose = |leases: Vec<Lease<I>>| {
        lost_tx.send_modify(|lost| lost.extend(leases.into_iter().map(|l| l.id)));
    };
    while !held.is_empty() {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
        let sent = Instant::now();
        let deadline = last_ok + ttl;
        match tokio::time::timeout_at(deadline, leases.renew_many(&pool, &held, ttl)).await {
            Ok(Ok(renewed)) => {
                last_ok = sent;
                let mut gone = Vec::new();
                for mut lease in std::mem::take(&mut held) {
                    match renewed.iter().find(|(id, _)| *id == lease.id) {
                        Some((_, expires_at)) => {
                            lease.expires_at = *expires_at;
                            held.push(lease);
                        }
                        None => gone.push(lease),
                    }
                }
                if !gone.is_empty() {
                    tracing::warn!(lost = gone.len(), "heartbeat: leases lost to another owner");
                    lose(gone);
                }
            }
            Ok(Err(error)) if Instant::now() < deadline => {
                tracing::warn!(%error, "heartbeat: renewal failed; retrying");
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(
                    "heartbeat: no renewal succeeded within the ttl; leases presumed lost"
                );
                lose(std::mem::take(&mut held));
            }
        }
    }
    held
}
