// SPDX-License-Identifier: MPL-2.0
//! racs-lite: a stand-in RACS v0.1.0 server for tests, examples and the quickstart.
//!
//! It speaks the wire protocol described in `racs-protocol.md` (see section 7b there for what is
//! reproduced and what deliberately is not). The API is synchronous: the server runs its own
//! tokio runtime on background threads, so it can be used from plain `#[test]` functions and
//! from inside other tokio runtimes.
//!
//! ```no_run
//! let srv = racs_lite::TestServer::start();
//! let mut c = racs_lite::client::RawClient::connect(srv.addr()).unwrap();
//! assert_eq!(racs_lite::client::show(&c.command("PING").unwrap()), r#"["string", "PONG"]"#);
//! ```

#![forbid(unsafe_code)]

pub mod client;
pub mod exec;
pub mod glob;
pub mod harness;
pub mod lang;
pub mod pack;
mod server;
pub mod storage;
pub mod timefmt;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use storage::stream_hash;

/// Log a line to stderr.
pub(crate) fn log(msg: &str) {
    eprintln!("racs-lite: {msg}");
}

/// Server options.
///
/// By default racs-lite fails like a real RACS v0.1.0 server: a stop (or SIGTERM/SIGINT of the
/// binary) loses what a `kill -9` loses, SHUTDOWN persists metadata but loses the in-memory
/// table, tables being written are hidden from EXTRACT, metadata is persisted only at CREATE,
/// on LRU eviction and at SHUTDOWN, and tables whose names collide overwrite each other. The
/// fields `durable`, `flush_invisible` and `keep_colliding_tables` turn these off.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data is stored under `data_dir/.racs`.
    pub data_dir: PathBuf,
    /// Blocks in the shared in-memory table (the real server's `memtable.entries`, default
    /// 40; clamped to 1..=65535). Up to this many of the latest blocks, across all streams,
    /// are lost by a kill or a (non-durable) stop or SHUTDOWN.
    pub entries: usize,
    /// Simultaneous connections; more are accepted and closed at once (default 190).
    pub max_connections: usize,
    /// Largest request payload; a longer length prefix closes the connection (default 64 MiB).
    pub max_message_bytes: usize,
    /// A connection idle (or stuck mid-message, or not reading its reply) for this long is
    /// closed (default 300 s).
    pub idle_timeout: Duration,
    /// How long a full table stays invisible to EXTRACT after it is handed to the writer
    /// (default 100 ms, and never less than the time its file takes to write). The real
    /// server's flush thread makes the table invisible until its file is renamed into place:
    /// 6-25 ms on an idle fast machine, about 500 ms under load. A table still inside this
    /// window when the server is killed or stopped is lost, as a table whose write was cut
    /// short. Zero turns the quirk off: a table being written is then read from memory and
    /// survives a kill.
    pub flush_invisible: Duration,
    /// Streams whose metadata the server keeps cached (the real server's `cache.entries`,
    /// default 4096; at least 1). Metadata lives in this LRU cache; evicting a stream's entry
    /// persists its `size` and `ref`, like the real server, so a kill falls back to the values
    /// of the last eviction (or CREATE). Goes into a real server's conf.yaml in [`harness`].
    pub cache_entries: usize,
    /// Stop without losing anything (default false): [`Server::stop`], the binary's
    /// SIGTERM/SIGINT and SHUTDOWN flush the in-memory table, finish every table write and
    /// persist all metadata. Without it a stop loses what a kill loses (the real server has no
    /// signal handler), and SHUTDOWN loses the in-memory table after persisting metadata.
    /// [`Server::kill`] always loses.
    pub durable: bool,
    /// Give a table whose first key equals an earlier table's a `.N` suffix instead of
    /// overwriting the earlier file (default false: overwrite, losing the earlier table, as
    /// the real server does when tiny frames share a millisecond).
    pub keep_colliding_tables: bool,
}

impl Config {
    /// Defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            entries: 40,
            max_connections: 190,
            max_message_bytes: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
            flush_invisible: Duration::from_millis(100),
            cache_entries: 4096,
            durable: false,
            keep_colliding_tables: false,
        }
    }

    /// racs-lite as a plain store that keeps its data: `durable`, no flush invisibility, no
    /// table overwrites. For users (and examples) that want racs-lite to keep what it
    /// acknowledged across stops.
    pub fn keeping_data(mut self) -> Self {
        self.durable = true;
        self.flush_invisible = Duration::ZERO;
        self.keep_colliding_tables = true;
        self
    }
}

/// A running racs-lite server.
pub struct Server {
    inner: Option<server::Running>,
    addr: SocketAddr,
}

impl Server {
    /// Bind (port 0 = any free port; SO_REUSEADDR so a restart can re-bind the same port at
    /// once) and serve on background threads. An IPv6 wildcard address is bound dual-stack.
    pub fn start(addr: SocketAddr, config: Config) -> io::Result<Server> {
        let inner = server::Running::start(addr, config)?;
        let addr = inner.addr;
        Ok(Server {
            inner: Some(inner),
            addr,
        })
    }

    /// The bound address (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// True once the server has stopped by itself (a client sent SHUTDOWN).
    pub fn is_finished(&self) -> bool {
        self.inner.as_ref().is_none_or(|i| i.is_finished())
    }

    /// Stop accepting, close connections and stop; blocks until done. With
    /// [`Config::durable`] the in-memory table is flushed and all metadata persisted; without
    /// it (the default) this loses what [`Server::kill`] loses, like stopping a real server
    /// (it has no signal handler).
    pub fn stop(mut self) -> io::Result<()> {
        match self.inner.take() {
            Some(mut i) => i.stop(false),
            None => Ok(()),
        }
    }

    /// Abrupt stop simulating `kill -9`: the in-memory table, the tables still being written
    /// (see [`Config::flush_invisible`]) and any metadata newer than the last persisted
    /// version (at CREATE, LRU eviction, SHUTDOWN or a durable stop) are lost. Blocks until
    /// the port is released.
    pub fn kill(mut self) {
        if let Some(mut i) = self.inner.take() {
            let _ = i.stop(true);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut i) = self.inner.take() {
            if let Err(e) = i.stop(false) {
                log(&format!("error while stopping: {e}"));
            }
        }
    }
}

/// A server on 127.0.0.1 with its own temporary data directory (removed on drop), with
/// stop/kill/restart on the same port and data directory.
pub struct TestServer {
    server: Option<Server>,
    addr: SocketAddr,
    config: Config,
    // Declared last: dropped after the server has stopped.
    dir: tempfile::TempDir,
}

impl TestServer {
    /// Start with default options; panics with a clear message on failure.
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    /// Start after letting `config_fn` adjust the options (its `data_dir` is ignored).
    pub fn start_with(config_fn: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("racs-lite-")
            .tempdir()
            .expect("racs-lite TestServer: cannot create a temporary data directory");
        let mut config = Config::new(dir.path());
        config_fn(&mut config);
        config.data_dir = dir.path().to_path_buf();
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        let server = Server::start(addr, config.clone())
            .unwrap_or_else(|e| panic!("racs-lite TestServer: cannot start on {addr}: {e}"));
        TestServer {
            addr: server.local_addr(),
            server: Some(server),
            config,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stop (see [`Server::stop`]: loses like a kill unless `durable`); the data directory is
    /// kept and the server stays down until `restart`.
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop()
                .unwrap_or_else(|e| panic!("racs-lite TestServer: stop failed: {e}"));
        }
    }

    /// Abrupt stop (like `kill -9`); the data directory is kept.
    pub fn kill(&mut self) {
        if let Some(s) = self.server.take() {
            s.kill();
        }
    }

    /// Start again on the same port and data directory (stopping first if running).
    /// Retries binding for up to 10 s; panics if the port stays busy.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Server::start(self.addr, self.config.clone()) {
                Ok(s) => {
                    self.server = Some(s);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("racs-lite TestServer: cannot restart on {}: {e}", self.addr),
            }
        }
    }

    /// True while the server is running (not stopped, killed or shut down by SHUTDOWN).
    pub fn is_running(&self) -> bool {
        self.server.as_ref().is_some_and(|s| !s.is_finished())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop();
        }
    }
}
