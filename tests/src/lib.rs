//! End-to-end and fault tests across the workspace's crates; they live in `tests/tests/` and run
//! with `scripts/test`. This library holds what the fault tests and their child processes share: an
//! outbox-to-inbox pipeline whose every applied effect is a row, so a test can count them, and a
//! relay in a process of its own with numbered events to check on the wire.

pub mod pipeline;
pub mod relay_process;
