//! Reference commerce system, inventory crate: not yet implemented (see the project issues).
