//! Criterion benchmarks of the workspace crates; see `benches/` and `docs/benchmarks.md`.
