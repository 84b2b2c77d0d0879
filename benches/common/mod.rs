// SPDX-License-Identifier: MPL-2.0
//! The server a benchmark runs against, chosen from the environment:
//! - nothing set: racs-lite in this process, a fresh one per run;
//! - `RACS_BIN=/path/to/racs`: a fresh real RACS process per run, started here with the
//!   server's usual `conf.yaml` (memtable 1024 tables of 40 entries, cache of 4096 entries), its
//!   data and log in a temporary directory under `TMPDIR` (the benchmarks point that at tmpfs);
//! - `RACS_ADDR=host:port`: a server you started yourself, for every run.
//!
//! A real server is used only once this process has seen that the listening socket on its port
//! belongs to the process it started: on a machine where other suites start servers on "free"
//! ports too, a PING alone could be answered by someone else's server.

#![allow(dead_code)]

pub mod process;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the benchmark's server comes from.
#[derive(Clone, Debug)]
pub enum Target {
    Lite,
    Real(PathBuf),
    Given(String),
}

/// A running server for one run; stopped (and its data removed) on drop.
pub struct Server {
    pub host: String,
    pub port: u16,
    _lite: Option<racs_lite::TestServer>,
    _real: Option<RealServer>,
}

impl Server {
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl Target {
    pub fn from_env() -> Target {
        if let Some(addr) = std::env::var("RACS_ADDR").ok().filter(|a| !a.is_empty()) {
            return Target::Given(addr);
        }
        match std::env::var_os("RACS_BIN").filter(|b| !b.is_empty()) {
            Some(bin) => {
                let bin = PathBuf::from(bin);
                assert!(
                    bin.is_file(),
                    "RACS_BIN={} is not a file: point it at the real server's `racs` binary",
                    bin.display()
                );
                Target::Real(bin)
            }
            None => Target::Lite,
        }
    }

    pub fn is_lite(&self) -> bool {
        matches!(self, Target::Lite)
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Lite => "racs-lite in this process, a fresh one per run".into(),
            Target::Real(bin) => format!(
                "a fresh real RACS process per run ({}; memtable 1024 x 40, cache 4096)",
                bin.display()
            ),
            Target::Given(addr) => format!("the server at {addr} (RACS_ADDR) for every run"),
        }
    }

    /// A server for one run.
    pub fn start(&self) -> Server {
        match self {
            Target::Lite => {
                let srv = racs_lite::TestServer::start();
                Server {
                    host: srv.addr().ip().to_string(),
                    port: srv.addr().port(),
                    _lite: Some(srv),
                    _real: None,
                }
            }
            Target::Real(bin) => {
                let real = RealServer::start(bin);
                Server {
                    host: "127.0.0.1".into(),
                    port: real.port,
                    _lite: None,
                    _real: Some(real),
                }
            }
            Target::Given(addr) => {
                let sock: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
                    .ok()
                    .and_then(|mut a| a.next())
                    .unwrap_or_else(|| panic!("RACS_ADDR={addr}: not a host:port"));
                Server {
                    host: sock.ip().to_string(),
                    port: sock.port(),
                    _lite: None,
                    _real: None,
                }
            }
        }
    }
}

/// A real RACS process with its own port and directory.
pub struct RealServer {
    child: Child,
    pub port: u16,
    // Declared last: removed after the process is gone.
    dir: tempfile::TempDir,
}

impl RealServer {
    pub fn start(bin: &Path) -> RealServer {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(bin) {
                Ok(srv) => return srv,
                Err(e) => last = e,
            }
        }
        panic!("cannot start the real server {}: {last}", bin.display());
    }

    fn try_start(bin: &Path) -> Result<RealServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("racs-bench-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let conf = dir.path().join("conf.yaml");
        std::fs::write(
            &conf,
            format!(
                "port: {port}\ndata_dir: \"{}\"\nlog_dir: \"{}\"\nmemtable:\n  tables: 1024\n  \
                 entries: 40\ncache:\n  entries: 4096\n",
                data.display(),
                dir.path().display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let out = std::fs::File::create(dir.path().join("racs.out")).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&conf)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let mut srv = RealServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = srv.child.try_wait() {
                return Err(format!("it exited at start ({status}): {}", srv.output()));
            }
            if srv.listens() && answers_ping(port) {
                // Load within a few tens of milliseconds of its start has crashed the server
                // (glibc: "corrupted size vs. prev_size"); a second's rest avoids that.
                std::thread::sleep(Duration::from_secs(1));
                if let Ok(Some(status)) = srv.child.try_wait() {
                    return Err(format!(
                        "it exited after start ({status}): {}",
                        srv.output()
                    ));
                }
                return Ok(srv);
            }
            if Instant::now() > deadline {
                return Err(format!("port {port} not listened on by it within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the listening socket on `port` is one of the child's descriptors.
    fn listens(&self) -> bool {
        let mut inodes = Vec::new();
        for table in ["/proc/net/tcp6", "/proc/net/tcp"] {
            for line in std::fs::read_to_string(table)
                .unwrap_or_default()
                .lines()
                .skip(1)
            {
                let f: Vec<&str> = line.split_whitespace().collect();
                let local_port = f
                    .get(1)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                if local_port == Some(self.port) && f.get(3) == Some(&"0A") {
                    if let Some(inode) = f.get(9) {
                        inodes.push(format!("socket:[{inode}]"));
                    }
                }
            }
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", self.child.id())) else {
            return false;
        };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .map(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
                .unwrap_or(false)
        })
    }

    fn output(&self) -> String {
        let mut s = String::new();
        for name in ["racs.out", "racs.log"] {
            if let Ok(mut f) = std::fs::File::open(self.dir.path().join(name)) {
                let _ = f.read_to_string(&mut s);
            }
        }
        s.lines().rev().take(10).collect::<Vec<_>>().join(" | ")
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            eprintln!(
                "the real server on port {} ended by itself during the run ({status}); its \
                 last output: {}",
                self.port,
                self.output()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut sock) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let mut request = 5u64.to_le_bytes().to_vec();
    request.extend_from_slice(b"PING\0");
    let mut reply = [0u8; 8 + 13];
    sock.write_all(&request).is_ok()
        && sock.read_exact(&mut reply).is_ok()
        && reply[8..].ends_with(b"PONG")
}
