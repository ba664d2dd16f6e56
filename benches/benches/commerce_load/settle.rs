//! How the orders of a run settled, read from the order service's database.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use commerce_platform::Config;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

/// The longest the orders of a run may take to settle once the run is over.
const SETTLE_LIMIT: Duration = Duration::from_secs(600);
/// States an order leaves only by admin action, or never.
const FINAL_STATES: [&str; 4] = ["SHIPPED", "COMPLETED", "CANCELLED", "FAILED"];
/// The reason the order service records for a customer's cancel.
const CANCELLED_BY_CUSTOMER: &str = "cancelled by customer";

/// The order database.
pub(crate) struct Settled(PgPool);

/// The orders of one run, once all of them settled.
pub(crate) struct Outcome {
    /// Orders placed.
    pub(crate) orders: usize,
    /// Orders over the time from the run's start until the last one settled.
    pub(crate) per_second: f64,
    /// Settle time p50, p95, p99 of the orders the customer did not cancel (zero if none).
    pub(crate) settle: [Duration; 3],
    /// How many ended in each final state, as `STATE n, ...`.
    pub(crate) states: String,
}

impl Settled {
    pub(crate) async fn connect(config: &Config) -> Self {
        let options: PgConnectOptions = config.database_url.parse().expect("DATABASE_URL");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.database(&format!("{}_order", config.db_prefix)))
            .await
            .expect("order database");
        Self(pool)
    }

    /// Waits until every order of `placed` (with when its `POST` was sent) is in a final state,
    /// then sums them up; `started_at` is when the run started. Panics if one does not settle
    /// within [`SETTLE_LIMIT`], or settles otherwise than shipped without the customer
    /// cancelling it.
    pub(crate) async fn of(&self, placed: &[(Uuid, f64)], started_at: f64) -> Outcome {
        let ids: Vec<Uuid> = placed.iter().map(|(id, _)| *id).collect();
        let deadline = Instant::now() + SETTLE_LIMIT;
        let rows = loop {
            let rows: Vec<(Uuid, String, Option<String>, f64)> = sqlx::query_as(
                "SELECT id, state, reason, extract(epoch FROM updated_at)::float8
                 FROM orders_all WHERE id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&self.0)
            .await
            .expect("read orders");
            let settled = rows
                .iter()
                .filter(|(_, state, _, _)| FINAL_STATES.contains(&state.as_str()))
                .count();
            if settled == ids.len() {
                break rows;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} orders not settled after {SETTLE_LIMIT:?}",
                ids.len() - settled,
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let last = rows.iter().map(|row| row.3).fold(started_at, f64::max);
        let sent: HashMap<Uuid, f64> = placed.iter().copied().collect();
        let mut states = BTreeMap::<String, usize>::new();
        let mut times = Vec::with_capacity(rows.len());
        for (id, state, reason, settled_at) in rows {
            *states.entry(state.clone()).or_default() += 1;
            if reason.as_deref() == Some(CANCELLED_BY_CUSTOMER) {
                continue;
            }
            assert_eq!(state, "SHIPPED", "order {id} settled {state}: {reason:?}");
            times.push(Duration::from_secs_f64((settled_at - sent[&id]).max(0.0)));
        }
        times.sort_unstable();
        let at = |q: f64| {
            times
                .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Outcome {
            orders: ids.len(),
            per_second: ids.len() as f64 / (last - started_at).max(1e-3),
            settle: [at(0.5), at(0.95), at(0.99)],
            states: states
                .iter()
                .map(|(state, n)| format!("{state} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}
