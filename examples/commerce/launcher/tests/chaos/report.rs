//! The table a run prints (Markdown, as docs/chaos.md shows it).

use std::fmt::Write as _;
use std::time::Duration;

use super::books::Outcomes;
use super::load::Ledger;

/// Work in flight at the moment of a kill.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InFlight {
    /// Orders not in a final state, in the order database.
    pub(crate) orders: i64,
    /// Unpublished events in the killed service's outbox.
    pub(crate) outbox: i64,
    /// Client requests sent and not yet answered.
    pub(crate) requests: usize,
}

/// One kill and how the stack recovered from it.
#[derive(Debug)]
pub(crate) struct Kill {
    /// `<service> (<instance id>)`.
    pub(crate) killed: String,
    /// What was in flight.
    pub(crate) in_flight: InFlight,
    /// What recovery means for this kill (the restarted process ready, the peer holding every
    /// partition).
    pub(crate) recovery: &'static str,
    /// How long after the kill that was.
    pub(crate) after: Duration,
}

/// How the run ended.
#[derive(Debug)]
pub(crate) struct Ending<'a> {
    /// What the clients did.
    pub(crate) ledger: &'a Ledger,
    /// Orders per final state.
    pub(crate) outcomes: &'a Outcomes,
    /// Redeliveries the consumers' inboxes skipped.
    pub(crate) duplicates: u64,
    /// From the end of the stream until every client had its last answer.
    pub(crate) answered: Duration,
    /// From the end of the stream until nothing moved.
    pub(crate) settled: Duration,
    /// The whole run, from the first process started.
    pub(crate) run: Duration,
}

/// The table of a run titled `title` on the stack `prefix`.
pub(crate) fn render(title: &str, prefix: &str, kills: &[Kill], ending: &Ending<'_>) -> String {
    let mut out = format!("\n### {title} (stack `{prefix}`)\n\n");
    out.push_str(
        "| # | SIGKILLed | orders not final | its outbox rows | requests open | recovered |\n\
         |--:|---|--:|--:|--:|---|\n",
    );
    for (n, kill) in kills.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} after {:.1} s |",
            n + 1,
            kill.killed,
            kill.in_flight.orders,
            kill.in_flight.outbox,
            kill.in_flight.requests,
            kill.recovery,
            kill.after.as_secs_f64()
        );
    }
    let states: Vec<String> = ending
        .outcomes
        .iter()
        .map(|(state, n)| format!("{state} {n}"))
        .collect();
    let cancels = ending
        .ledger
        .orders
        .iter()
        .filter(|o| o.cancelled.is_some())
        .count();
    let _ = write!(
        out,
        "\nOrders placed: {} ({}), {} cancels sent. Client retries: {}; 201s that were replays \
         (`Idempotent-Replayed`): {}. Redeliveries skipped by the consumers' inboxes: {}. \
         After the stream stopped: every client answered in {:.1} s, everything settled in \
         {:.1} s. Whole run {:.0} s.\n",
        ending.ledger.orders.len(),
        states.join(", "),
        cancels,
        ending.ledger.retries,
        ending.ledger.replayed,
        ending.duplicates,
        ending.answered.as_secs_f64(),
        ending.settled.as_secs_f64(),
        ending.run.as_secs_f64()
    );
    out
}
