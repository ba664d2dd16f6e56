//! Reference commerce system, product crate: not yet implemented (see the project issues).
