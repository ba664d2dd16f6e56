//! Reference commerce system, events crate: not yet implemented (see the project issues).
