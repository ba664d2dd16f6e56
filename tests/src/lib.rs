//! End-to-end and fault tests of the commerce stack; they live in `tests/tests/` and run with `scripts/test`.
