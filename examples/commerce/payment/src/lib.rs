//! Reference commerce system, payment crate: not yet implemented (see the project issues).
