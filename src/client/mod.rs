//! The RACS protocol, free of GStreamer types: command text, frames, one connection in
//! lock-step, and the plugin-global connection pool.

pub mod command;
pub mod error;
pub mod frame;
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
