//! Reference commerce system, launcher crate: not yet implemented (see the project issues).
