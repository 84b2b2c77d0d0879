// SPDX-License-Identifier: MPL-2.0
//! The server every test suite runs against: an in-process racs-lite by default, or a fresh real
//! RACS v0.1.0 process per test when `RACS_BIN=/path/to/racs` is set.
//!
//! Both kinds get their own port and their own temporary data directory, and both can be killed
//! (`kill -9`), shut down with the `SHUTDOWN` command and restarted on the same port and data
//! directory, so crash and restart tests run unchanged against either. Cases that need a hook only
//! racs-lite has (a configurable flush window, a connection limit, a clean stop that keeps data)
//! call [`AnyServer::needs_lite`], which prints `skipped: needs racs-lite` against a real server.
//!
//! ```no_run
//! let mut srv = racs_lite::harness::AnyServer::start_with(|c| c.entries = 8);
//! let addr = srv.addr();
//! srv.kill();
//! srv.restart();
//! ```

use std::fs;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::client::{show, RawClient};
use crate::{Config, Server};

/// The environment variable naming a real RACS server binary.
pub const RACS_BIN: &str = "RACS_BIN";

/// Which kind of server the suites run against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// racs-lite in this process.
    Lite,
    /// A real RACS server binary, one process per test.
    Real(PathBuf),
}

impl Backend {
    /// `Real` when `RACS_BIN` names a file, `Lite` when it is unset or empty.
    ///
    /// Panics with a clear message when `RACS_BIN` is set to something that is not a file, so a
    /// typo never silently runs the suites on racs-lite.
    pub fn from_env() -> Backend {
        match std::env::var_os(RACS_BIN) {
            Some(p) if !p.is_empty() => {
                let p = PathBuf::from(p);
                assert!(
                    p.is_file(),
                    "RACS_BIN={} is not a file: build the real server's `racs` target and point \
                     RACS_BIN at the binary, or unset RACS_BIN to test on racs-lite",
                    p.display()
                );
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    eprintln!(
                        "test server: a fresh real RACS server per test ({})",
                        p.display()
                    )
                });
                Backend::Real(p)
            }
            _ => Backend::Lite,
        }
    }

    pub fn is_real(&self) -> bool {
        matches!(self, Backend::Real(_))
    }

    /// `"racs-lite"` or `"real RACS"`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Lite => "racs-lite",
            Backend::Real(_) => "real RACS",
        }
    }
}

/// A real server process with its config file and log.
struct RealProcess {
    child: Child,
}

impl RealProcess {
    fn start(bin: &Path, dir: &Path, port: u16, config: &Config) -> io::Result<RealProcess> {
        let conf = dir.join("conf.yaml");
        // The server's own conf.yaml, with the test's port, directories and table size. Data
        // lives in `data/.racs`; the log (`racs.log`) beside it. `memtable.tables` has no
        // effect on v0.1.0 (one table is ever live) but each one costs memory and start-up
        // time (1024: ~175 MB, ~110 ms), so the tests ask for one.
        let data = dir.join("data");
        fs::create_dir_all(&data)?;
        fs::write(
            &conf,
            format!(
                "port: {port}\ndata_dir: \"{data}\"\nlog_dir: \"{dir}\"\nmemtable:\n  tables: 1\n  \
                 entries: {entries}\ncache:\n  entries: {cache}\n",
                data = data.display(),
                dir = dir.display(),
                entries = config.entries,
                cache = config.cache_entries,
            ),
        )?;
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("racs.out"))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&conf)
            .current_dir(dir)
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(RealProcess { child })
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL and reap.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait up to `d` for the process to end by itself (after SHUTDOWN).
    fn wait_exit(&mut self, d: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + d;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

enum Running {
    Lite(Server),
    Real(RealProcess),
}

/// A server for one test: racs-lite or a real RACS process, on 127.0.0.1 with its own port and
/// temporary directory (removed on drop, after the server has stopped).
pub struct AnyServer {
    backend: Backend,
    running: Option<Running>,
    addr: SocketAddr,
    config: Config,
    dir: tempfile::TempDir,
}

/// A port that was free a moment ago (the real server binds `::` with SO_REUSEADDR).
fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// How many times the real server in `dir` logged that it listens on `port` (its log,
/// `racs.log` in the log directory, is appended to across restarts).
fn listening_lines(dir: &Path, port: u16) -> usize {
    let needle = format!("Listening on port {port} ");
    fs::read_to_string(dir.join("racs.log"))
        .map(|s| s.matches(&needle).count())
        .unwrap_or(0)
}

/// True once `addr` answers PING.
fn answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut c) = RawClient::connect_timeout(addr, Duration::from_millis(500)) else {
        return false;
    };
    matches!(c.command("PING"), Ok(r) if show(&r) == r#"["string", "PONG"]"#)
}

impl AnyServer {
    /// Start with default options on the backend chosen by `RACS_BIN`.
    pub fn start() -> AnyServer {
        Self::start_with(|_| {})
    }

    /// Start after letting `config_fn` adjust the options (its `data_dir` is ignored). On a real
    /// server only `entries` and `cache_entries` apply (they go into its conf.yaml); the other
    /// options are racs-lite's own.
    pub fn start_with(config_fn: impl FnOnce(&mut Config)) -> AnyServer {
        Self::start_on(Backend::from_env(), config_fn)
    }

    /// Start on a given backend.
    pub fn start_on(backend: Backend, config_fn: impl FnOnce(&mut Config)) -> AnyServer {
        let dir = tempfile::Builder::new()
            .prefix("racs-test-")
            .tempdir()
            .expect("test server: cannot create a temporary directory");
        let mut config = Config::new(dir.path().join("data"));
        config_fn(&mut config);
        config.data_dir = dir.path().join("data");
        let mut srv = AnyServer {
            backend,
            running: None,
            addr: "127.0.0.1:0".parse().expect("literal address"),
            config,
            dir,
        };
        srv.launch(Duration::from_secs(20));
        srv
    }

    fn launch(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            match self.try_launch() {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    // Port taken between probe and bind, or the old process still holds it.
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!(
                    "test server ({}): cannot start on {}: {e}{}",
                    self.backend.name(),
                    self.addr,
                    self.log_tail()
                ),
            }
        }
    }

    fn try_launch(&mut self) -> io::Result<()> {
        match &self.backend {
            Backend::Lite => {
                let s = Server::start(self.addr, self.config.clone())?;
                self.addr = s.local_addr();
                self.running = Some(Running::Lite(s));
                Ok(())
            }
            Backend::Real(bin) => {
                let port = match self.addr.port() {
                    0 => free_port()?,
                    p => p,
                };
                let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
                // The PING must come from this process, not from another test's server that
                // took the port first (then this one fails to bind and exits): wait for its
                // own "Listening on port" line in the log as well.
                let listening = || listening_lines(self.dir.path(), port);
                let before = listening();
                let mut p = RealProcess::start(bin, self.dir.path(), port, &self.config)?;
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    if let Some(st) = p.exited() {
                        return Err(io::Error::other(format!(
                            "the server exited at start: {st}"
                        )));
                    }
                    if listening() > before && answers_ping(addr) {
                        self.addr = addr;
                        self.running = Some(Running::Real(p));
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        p.kill();
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the server did not answer PING within 5 s",
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// The last lines of a real server's output, for failure messages.
    fn log_tail(&self) -> String {
        let mut s = String::new();
        // The server logs to racs.log; its stdout is block-buffered and often empty.
        for name in ["racs.log", "racs.out"] {
            if let Ok(mut f) = fs::File::open(self.dir.path().join(name)) {
                let _ = f.read_to_string(&mut s);
            }
        }
        let lines: Vec<&str> = s.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("\nserver output:\n{tail}")
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn is_real(&self) -> bool {
        self.backend.is_real()
    }

    /// True (and nothing printed) on racs-lite; on a real server prints
    /// `skipped: needs racs-lite (<why>)` and returns false, so a test can `return` early.
    pub fn needs_lite(&self, why: &str) -> bool {
        if self.is_real() {
            eprintln!("skipped: needs racs-lite ({why})");
            false
        } else {
            true
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

    /// The directory holding `.racs` (the server's data).
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The options the server was started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// True while the server process (or racs-lite instance) is up.
    pub fn is_running(&mut self) -> bool {
        match &mut self.running {
            Some(Running::Lite(s)) => !s.is_finished(),
            Some(Running::Real(p)) => p.exited().is_none(),
            None => false,
        }
    }

    /// `kill -9`: the in-memory table and unpersisted metadata are lost. Blocks until the port
    /// is released.
    pub fn kill(&mut self) {
        match self.running.take() {
            Some(Running::Lite(s)) => s.kill(),
            Some(Running::Real(p)) => p.kill(),
            None => {}
        }
    }

    /// Stop the way the server's own stop works: racs-lite's `Server::stop` (which follows
    /// `Config`'s persistence options), and SIGKILL for a real server (it has no signal
    /// handler, so SIGTERM and SIGINT lose exactly what a kill loses).
    pub fn stop(&mut self) {
        match self.running.take() {
            Some(Running::Lite(s)) => {
                s.stop()
                    .unwrap_or_else(|e| panic!("racs-lite: stop failed: {e}"));
            }
            Some(Running::Real(p)) => p.kill(),
            None => {}
        }
    }

    /// Send `SHUTDOWN` from a client and wait (up to 10 s) for the server to end. The real
    /// server persists metadata, loses its in-memory table and then crashes (SIGSEGV).
    pub fn shutdown(&mut self) {
        if let Ok(mut c) = RawClient::connect(self.addr) {
            let mut p = b"SHUTDOWN".to_vec();
            p.push(0);
            let _ = c.send_message(&p);
            // No reply: the connection closes.
            let mut b = [0u8; 1];
            let _ = c.stream.read(&mut b);
        }
        match self.running.take() {
            Some(Running::Lite(s)) => {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !s.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                assert!(s.is_finished(), "racs-lite did not stop after SHUTDOWN");
                // Joins the finished server thread; what it persisted is already on disk.
                let _ = s.stop();
            }
            Some(Running::Real(mut p)) => {
                let ended = p.wait_exit(Duration::from_secs(10)).is_some();
                if !ended {
                    p.kill();
                    panic!("the real server did not end within 10 s of SHUTDOWN");
                }
            }
            None => {}
        }
    }

    /// Start again on the same port and data directory (stopping first if running, the way
    /// [`AnyServer::stop`] does). Retries binding for up to 20 s.
    pub fn restart(&mut self) {
        self.stop();
        self.launch(Duration::from_secs(20));
    }

    /// Start again after a `kill`, `stop` or `shutdown`; panics if the server is running.
    pub fn start_again(&mut self) {
        assert!(self.running.is_none(), "start_again: the server is running");
        self.launch(Duration::from_secs(20));
    }
}

impl Drop for AnyServer {
    fn drop(&mut self) {
        match self.running.take() {
            Some(Running::Lite(s)) => s.kill(),
            Some(Running::Real(p)) => p.kill(),
            None => {}
        }
    }
}
