//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// Bytes did not parse as the protocol they claimed to be.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which protocol element.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A profile file could not be read or is invalid.
    #[error("profile {path}: {detail}")]
    Profile {
        /// The file (or built-in name) that failed.
        path: PathBuf,
        /// What is wrong, with line and column where known.
        detail: String,
    },
    /// No profile with that name exists.
    #[error("no profile named {name:?}; known: {known}")]
    UnknownProfile {
        /// The name asked for.
        name: String,
        /// The built-in names.
        known: String,
    },
    /// Setting up or tearing down the lab network failed.
    #[error("lab network: {step}: {detail}")]
    Net {
        /// What the lab was doing.
        step: String,
        /// The error from the system.
        detail: String,
    },
    /// An IO error with context.
    #[error("{context}: {source}")]
    Io {
        /// What the lab was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Cryptography failed (QUIC Initial decryption).
    #[error("crypto: {0}")]
    Crypto(&'static str),
}

impl LabError {
    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        Self::Malformed {
            what,
            detail: detail.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn net(step: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self::Net {
            step: step.into(),
            detail: detail.to_string(),
        }
    }
}
