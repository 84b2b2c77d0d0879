// SPDX-License-Identifier: MPL-2.0
use std::fmt;
use std::time::Duration;

/// Everything that can go wrong talking to a RACS server.
///
/// The messages are written for the person running the pipeline: each names the problem and,
/// where there is one, what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The server could not be reached at all.
    Connect { addr: String, reason: String },
    /// An established connection broke in the middle of a request.
    Io { addr: String, reason: String },
    /// The server did not answer in time.
    Timeout {
        addr: String,
        what: String,
        after: Duration,
    },
    /// Every connection of the pool stayed in use for as long as a request may wait.
    PoolBusy {
        addr: String,
        size: usize,
        after: Duration,
    },
    /// The server answered with an error reply; the text is the server's own.
    Server(String),
    /// The reply was not what a RACS server sends.
    Protocol { addr: String, reason: String },
    /// A value given by the user cannot be sent safely.
    InvalidArgument(String),
    /// The wait was cancelled (flushing or a state change).
    Cancelled,
}

impl Error {
    /// Errors after which the connection is unusable and a new one may succeed.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Io { .. }
                | Error::Timeout { .. }
                | Error::PoolBusy { .. }
                | Error::Protocol { .. }
        )
    }

    /// The server's error text, if this is an error reply.
    pub fn server_message(&self) -> Option<&str> {
        match self {
            Error::Server(msg) => Some(msg),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { addr, reason } => write!(
                f,
                "cannot connect to the RACS server at {addr}: {reason}; check that the server is \
                 running and that host and port are right"
            ),
            Error::Io { addr, reason } => {
                write!(f, "connection to the RACS server at {addr} broke: {reason}")
            }
            Error::Timeout { addr, what, after } => write!(
                f,
                "the RACS server at {addr} did not answer {what} within {} ms; it may be stalled or \
                 overloaded (raise the timeout property if it is just slow)",
                after.as_millis()
            ),
            Error::PoolBusy { addr, size, after } => write!(
                f,
                "all {size} pooled connections to the RACS server at {addr} stayed in use for {} \
                 ms; raise pool-size (elements in one process share the pool) or the timeout",
                after.as_millis()
            ),
            Error::Server(msg) => write!(f, "the RACS server replied with an error: {msg}"),
            Error::Protocol { addr, reason } => write!(
                f,
                "the peer at {addr} does not speak the RACS protocol as expected: {reason}"
            ),
            Error::InvalidArgument(msg) => f.write_str(msg),
            Error::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
