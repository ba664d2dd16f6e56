//! How every long-running part of this toolkit runs and stops: [`Background`] over tokio-util's
//! [`CancellationToken`]. Not about leases: it lives here because every crate of the toolkit
//! depends on this one (`outbox` re-exports it).

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::DropGuard;

pub use tokio_util::sync::CancellationToken;

/// A task running in the background: a relay, a consumer runner, a lease keeper, a heartbeat, a
/// service's job. Every one stops the same two ways:
///
/// - [`shutdown`](Self::shutdown)`.await` cancels its token and waits for it to finish what it
///   was doing (a batch in flight, a message in hand, a lease to release);
/// - [`abort`](Self::abort) stops it at once, as a crash would: nothing is cleaned up, and what
///   it held is recovered the way a crash is (leases expire, offsets are redelivered).
///
/// Dropping the handle cancels the token too (the task winds down on its own, unawaited), so a
/// forgotten handle never leaves a task running.
///
/// ```
/// use std::time::Duration;
/// use leases::task::Background;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let ticker = Background::spawn(|stop| async move {
///     let mut ticks = 0;
///     while !stop.is_cancelled() {
///         tokio::select! {
///             () = stop.cancelled() => {}
///             () = tokio::time::sleep(Duration::from_millis(1)) => ticks += 1,
///         }
///     }
///     ticks
/// });
/// tokio::time::sleep(Duration::from_millis(20)).await;
/// assert!(ticker.shutdown().await.expect("finished") > 0);
/// # }
/// ```
#[derive(Debug)]
pub struct Background<T = ()> {
    cancel: DropGuard,
    task: JoinHandle<T>,
}

impl<T: Send + 'static> Background<T> {
    /// Spawns `run` on the current tokio runtime with a fresh token; the task should return soon
    /// after the token is cancelled.
    pub fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        Self::spawn_with(CancellationToken::new(), run)
    }

    /// Like [`spawn`](Self::spawn), under `token` (a child of a service's token, say, so one
    /// cancellation reaches every task).
    pub fn spawn_with<F, Fut>(token: CancellationToken, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let task = tokio::spawn(run(token.clone()));
        Self {
            cancel: token.drop_guard(),
            task,
        }
    }
}

impl<T> Background<T> {
    /// Graceful stop: cancels the token and waits for the task. Returns its output, or `None` if
    /// it panicked (logged).
    pub async fn shutdown(self) -> Option<T> {
        drop(self.cancel);
        match self.task.await {
            Ok(output) => Some(output),
            Err(error) => {
                tracing::error!(%error, "background task failed");
                None
            }
        }
    }

    /// Stops the task at once, as a crash would.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Whether the task has finished (returned, panicked or was aborted).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
