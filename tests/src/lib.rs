//! End-to-end and fault tests across the workspace crates live in `tests/tests/` as they are written.
