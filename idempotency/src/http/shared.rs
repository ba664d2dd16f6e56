//! [`Shared`]: what every request of one layer shares.

use std::sync::Arc;

use super::config::Config;
use super::mode::Mode;

/// What every request of one layer shares: its store, its settings and its mode.
pub(crate) struct Shared<St> {
    pub(crate) store: Arc<St>,
    pub(crate) config: Config,
    pub(crate) mode: Arc<dyn Mode<St>>,
}
