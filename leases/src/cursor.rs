//! The claim cursor: where a claim starts its walk of the due index, so that a queue whose head is
//! a long run of deleted rows (kept by a snapshot that vacuum must wait for) is not walked over
//! at every claim.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// Where the next claim starts: at the earliest due time of the last claim when that claim came
/// back full, at the head of the due index otherwise, and at the head at least every `rescan`.
#[derive(Debug)]
pub(crate) struct ClaimCursor {
    rescan: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The earliest due time of the last claim, when it was full.
    from: Option<DateTime<Utc>>,
    /// When a claim last walked from the head.
    from_head: Option<Instant>,
}

impl ClaimCursor {
    pub(crate) fn new(rescan: Duration) -> Self {
        Self {
            rescan,
            state: Mutex::default(),
        }
    }

    /// The due time a claim starts from, or `None` for the head of the index.
    pub(crate) fn start(&self) -> Option<DateTime<Utc>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let recent = state.from_head.is_some_and(|at| at.elapsed() < self.rescan);
        match state.from {
            Some(from) if recent => Some(from),
            _ => {
                state.from_head = Some(Instant::now());
                None
            }
        }
    }

    /// Records a claim's outcome: the earliest due time among its rows when it was full. Rows
    /// before it were deleted, leased or locked by another claimer when it ran.
    pub(crate) fn claimed(&self, full: bool, earliest: Option<DateTime<Utc>>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.from = if full { earliest } else { None };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_claim_moves_the_start_and_a_short_one_goes_back_to_the_head() {
        let cursor = ClaimCursor::new(Duration::from_secs(3600));
        let due = Utc::now();
        assert_eq!(cursor.start(), None, "the first claim walks from the head");
        cursor.claimed(true, Some(due));
        assert_eq!(cursor.start(), Some(due));
        cursor.claimed(false, Some(due));
        assert_eq!(cursor.start(), None);
    }

    #[test]
    fn the_claim_walks_from_the_head_again_once_the_rescan_interval_passed() {
        let cursor = ClaimCursor::new(Duration::ZERO);
        assert_eq!(cursor.start(), None);
        cursor.claimed(true, Some(Utc::now()));
        assert_eq!(
            cursor.start(),
            None,
            "the last walk from the head is already too old"
        );
    }
}
