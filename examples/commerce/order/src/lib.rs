//! Reference commerce system, order crate: not yet implemented (see the project issues).
