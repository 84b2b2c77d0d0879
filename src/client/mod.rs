// SPDX-License-Identifier: MPL-2.0
//! The RACS protocol, free of GStreamer types: command text, frames, one connection in
//! lock-step, and the plugin-global connection pool.

pub mod command;
pub mod error;
pub mod frame;
pub mod pcm;
pub mod pool;
pub mod reader;
pub mod rotation;
pub mod timeline;
pub mod wire;
pub mod writer;

pub use command::{validate_stream_id, Command, InfoAttr};
pub use error::{Error, Result};
pub use frame::{stream_hash, SessionId, StreamFormat};
pub use pool::{block_on, runtime, Canceller, Pool, PooledConnection};
pub use wire::{Connection, Reply, StreamInfo, Value};

/// `host:port` for a socket address, with an IPv6 host in brackets (`[::1]:6381`): the one
/// formatter of server addresses, for connections, URIs and messages.
pub fn host_port(host: &str, port: impl std::fmt::Display) -> String {
    format!("{}:{port}", bracket_host(host))
}

/// A host as it appears in a URI or an address: an IPv6 literal in brackets.
pub fn bracket_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}
