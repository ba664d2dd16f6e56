//! Singleton background jobs: reservation expiry (every second), stuck orders (every minute) and
//! archiving with the archive's retention (hourly).
//!
//! Each runs only in the instance holding its named lease (`order.expiry`, `order.stuck`,
//! `order.archiver`,
//! kept by a [`LeaseKeeper`]); the others wait to take over. The lease saves work, it is not what
//! makes the jobs correct: both lock their rows (`FOR UPDATE SKIP LOCKED`) and re-check the
//! state, so a deposed holder still finishing a chunk cannot cancel or archive an order twice. A
//! run stops mid-way (its open transaction rolls back) when the lease is lost or the service
//! stops.

use std::future::Future;
use std::time::Duration;

use commerce_events::Topics;
use leases::task::{Background, CancellationToken};
use leases::{LeaseKeeper, NamedLeases};
use sqlx::PgPool;

use crate::repo;

/// The expiry job's named lease.
pub const EXPIRY_LEASE: &str = "order.expiry";
/// The stuck-order job's named lease.
pub const STUCK_LEASE: &str = "order.stuck";
/// How often the stuck-order job looks for orders that made no progress.
pub const STUCK_EVERY: Duration = Duration::from_secs(60);
/// The archiver's named lease.
pub const ARCHIVER_LEASE: &str = "order.archiver";
/// How often the expiry job looks for stale reservations.
pub const EXPIRY_EVERY: Duration = Duration::from_secs(1);
/// How often the archiver runs.
pub const ARCHIVE_EVERY: Duration = Duration::from_secs(60 * 60);
/// Orders per transaction for both jobs.
pub const CHUNK: i64 = 100;

const LEASE_TTL: Duration = Duration::from_secs(10);
const LEASE_RENEW: Duration = Duration::from_secs(3);

/// Starts the expiry job: while this instance (`owner`) holds [`EXPIRY_LEASE`], every
/// [`EXPIRY_EVERY`] it cancels `RESERVED` orders older than `timeout` ("payment timeout", with
/// `OrderCancelled`), see [`repo::expire_reservations`]. Shutting it down releases the lease.
pub fn spawn_expiry(
    pool: PgPool,
    topics: Topics,
    timeout: Duration,
    owner: impl Into<String>,
) -> Background {
    spawn_canceller(
        pool,
        EXPIRY_LEASE,
        EXPIRY_EVERY,
        owner.into(),
        move |pool| {
            let topics = topics.clone();
            async move { repo::expire_reservations(&pool, &topics, timeout, CHUNK).await }
        },
    )
}

/// Starts the stuck-order job: while this instance (`owner`) holds [`STUCK_LEASE`], every
/// [`STUCK_EVERY`] it cancels orders that stayed `PENDING` or `PAID` longer than `after`, with
/// every unit and cent given back, see [`repo::cancel_stuck`]. Shutting it down releases the
/// lease.
pub fn spawn_stuck(
    pool: PgPool,
    topics: Topics,
    after: Duration,
    owner: impl Into<String>,
) -> Background {
    spawn_canceller(pool, STUCK_LEASE, STUCK_EVERY, owner.into(), move |pool| {
        let topics = topics.clone();
        async move { repo::cancel_stuck(&pool, &topics, after, CHUNK).await }
    })
}

/// Runs `cancel` (which answers how many orders it cancelled) every `every` while this instance
/// holds the named lease `lease`.
fn spawn_canceller<F, Fut>(
    pool: PgPool,
    lease: &'static str,
    every: Duration,
    owner: String,
    cancel: F,
) -> Background
where
    F: Fn(PgPool) -> Fut + Send + 'static,
    Fut: Future<Output = crate::Result<u64>> + Send + 'static,
{
    let work_pool = pool.clone();
    Background::spawn(move |stop| {
        singleton(pool, lease, owner, every, stop, move || {
            let run = cancel(work_pool.clone());
            async move {
                match run.await {
                    Ok(0) => {}
                    Ok(cancelled) => {
                        tracing::info!(job = lease, cancelled, "job: orders cancelled")
                    }
                    Err(error) => {
                        tracing::warn!(job = lease, %error, "job: run failed; trying again")
                    }
                }
            }
        })
    })
}

/// Starts the archiver: while this instance (`owner`) holds [`ARCHIVER_LEASE`], every
/// [`ARCHIVE_EVERY`] it moves finished orders older than `older_than` to the archive tables (see
/// [`repo::archive_finished`]), then deletes archived orders past `retention` (see
/// [`repo::prune_archive`]). Shutting it down releases the lease.
pub fn spawn_archiver(
    pool: PgPool,
    older_than: Duration,
    retention: Duration,
    owner: impl Into<String>,
) -> Background {
    let (work_pool, owner) = (pool.clone(), owner.into());
    Background::spawn(move |stop| {
        singleton(
            pool,
            ARCHIVER_LEASE,
            owner,
            ARCHIVE_EVERY,
            stop,
            move || {
                let pool = work_pool.clone();
                async move {
                    let run = async {
                        let archived = repo::archive_finished(&pool, older_than, CHUNK).await?;
                        let pruned = repo::prune_archive(&pool, retention, CHUNK).await?;
                        Ok::<_, crate::Error>((archived, pruned))
                    };
                    match run.await {
                        Ok((archived, pruned)) => {
                            tracing::info!(archived, pruned, "archiver: run finished");
                        }
                        Err(error) => {
                            tracing::warn!(%error, "archiver: run failed; trying next time")
                        }
                    }
                }
            },
        )
    })
}

/// Runs `work` every `every` while this instance holds the named lease `name`.
async fn singleton<F, Fut>(
    pool: PgPool,
    name: &'static str,
    owner: String,
    every: Duration,
    stop: CancellationToken,
    mut work: F,
) where
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = ()> + Send,
{
    let keeper = match LeaseKeeper::start(
        NamedLeases::new(),
        pool,
        name,
        owner,
        LEASE_TTL,
        LEASE_RENEW,
    ) {
        Ok(keeper) => keeper,
        Err(error) => {
            tracing::error!(job = name, %error, "job: cannot keep its lease; not running");
            return;
        }
    };
    let mut held = keeper.subscribe();
    loop {
        // Wait to be the holder.
        let holder = tokio::select! {
            biased;
            () = stop.cancelled() => false,
            holder = async { held.wait_for(Option::is_some).await.is_ok() } => holder,
        };
        if !holder {
            break;
        }
        // Work while holding it.
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = async { let _ = held.wait_for(Option::is_none).await; } => {
                tracing::warn!(job = name, "job: lease lost; run abandoned");
                continue;
            }
            () = work() => {}
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    keeper.shutdown().await;
}
