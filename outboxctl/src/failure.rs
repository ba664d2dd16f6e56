//! Why a command did not succeed, and the exit code that says so.

use std::process::ExitCode;

/// A command's failure: refused or misused (exit code 2), or failed while running (exit code 1).
#[derive(Debug)]
pub(crate) enum Failure {
    /// The command was refused or its arguments make no sense; nothing was changed.
    Usage(String),
    /// The database (or anything else) failed while the command ran.
    Runtime(anyhow::Error),
}

impl Failure {
    /// A refusal or usage error with `message`.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }

    /// Prints the failure on stderr and returns its exit code.
    pub(crate) fn report(self) -> ExitCode {
        match self {
            Self::Usage(message) => {
                eprintln!("outboxctl: {message}");
                ExitCode::from(2)
            }
            Self::Runtime(error) => {
                eprintln!("outboxctl: error: {error:#}");
                ExitCode::from(1)
            }
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self::Runtime(error)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        Self::Runtime(error.into())
    }
}

impl From<outbox::Error> for Failure {
    fn from(error: outbox::Error) -> Self {
        Self::Runtime(error.into())
    }
}

impl From<idempotency::Error> for Failure {
    fn from(error: idempotency::Error) -> Self {
        Self::Runtime(error.into())
    }
}

impl From<inbox::Error> for Failure {
    fn from(error: inbox::Error) -> Self {
        Self::Runtime(error.into())
    }
}
