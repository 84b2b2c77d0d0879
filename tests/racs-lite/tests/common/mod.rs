// SPDX-License-Identifier: MPL-2.0
//! Shared helpers for the racs-lite integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use racs_lite::client::{build_frame, decode_all, show, RawClient};
use racs_lite::harness::AnyServer;

/// The server under test: a fresh server per test (racs-lite in-process, or a real RACS
/// process when `RACS_BIN` is set), or the shared server at `RACS_ADDR` when that is set.
pub struct Target {
    pub addr: SocketAddr,
    /// True for racs-lite (racs-lite-only cases may run).
    pub lite: bool,
    /// True when the server was started for this test, so its table layout is known.
    pub fresh: bool,
    pub srv: Option<AnyServer>,
}

pub fn target() -> Target {
    target_with(|_| {})
}

/// `f` adjusts racs-lite's options; on a real server only `entries` and `cache_entries`
/// apply (see [`AnyServer::start_with`]).
pub fn target_with(f: impl FnOnce(&mut racs_lite::Config)) -> Target {
    match std::env::var("RACS_ADDR") {
        Ok(a) if !a.is_empty() => {
            use std::net::ToSocketAddrs;
            let addr = a
                .to_socket_addrs()
                .expect("RACS_ADDR must be host:port")
                .next()
                .expect("RACS_ADDR resolves to no address");
            Target {
                addr,
                lite: false,
                fresh: false,
                srv: None,
            }
        }
        _ => {
            let srv = AnyServer::start_with(f);
            Target {
                addr: srv.addr(),
                lite: !srv.is_real(),
                fresh: true,
                srv: Some(srv),
            }
        }
    }
}

impl Target {
    pub fn conn(&self) -> RawClient {
        RawClient::connect(self.addr).expect("connect to the server under test")
    }

    /// True on racs-lite; otherwise prints `skipped: needs racs-lite (<why>)` and returns false.
    pub fn needs_lite(&self, why: &str) -> bool {
        if !self.lite {
            eprintln!("skipped: needs racs-lite ({why})");
        }
        self.lite
    }

    /// True on a server started for this test; otherwise prints why the case is skipped.
    pub fn needs_fresh(&self, why: &str) -> bool {
        if !self.fresh {
            eprintln!("skipped: needs a server of its own, not RACS_ADDR ({why})");
        }
        self.fresh
    }

    pub fn srv(&mut self) -> &mut AnyServer {
        self.srv.as_mut().expect("a server started for this test")
    }
}

/// Wait (up to 10 s) until `EXTRACT id 0 <far future>` returns `samples` samples: tables being
/// written are invisible for a while on both servers. Returns what it read last.
pub fn wait_visible(c: &mut RawClient, id: &str, samples: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = extract(c, id, "0", "99999999999999");
        if v.len() == samples || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Read `SHUTDOWN`'s answer: none, the connection closes.
pub fn closed_by_server(c: &mut RawClient) -> bool {
    use std::io::Read;
    let mut b = [0u8; 1];
    matches!(c.stream.read(&mut b), Ok(0) | Err(_))
}

/// A stream name unique to this test run (so reruns against a real server never collide).
pub fn uniq(base: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{base}_{}_{}_{}",
        std::process::id(),
        nanos % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Run a command and render its reply.
pub fn cmd(c: &mut RawClient, s: &str) -> String {
    show(&c.command(s).unwrap_or_else(|e| panic!("{s}: {e}")))
}

pub fn err(msg: &str) -> String {
    format!("[\"error\", \"{msg}\"]")
}

pub const NULL: &str = r#"["null"]"#;
pub const PONG: &str = r#"["string", "PONG"]"#;

pub fn send_frame(c: &mut RawClient, session: &[u8; 16], id: &str, pcm: &[u8]) -> String {
    show(&c.frame(&build_frame(session, id.as_bytes(), pcm)).unwrap())
}

/// The bin of a `[type, bin]` reply object.
pub fn bin_of(v: &rmpv::Value) -> Vec<u8> {
    let a = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    a[1].as_slice()
        .unwrap_or_else(|| panic!("not a bin reply: {v}"))
        .to_vec()
}

pub fn ints(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// EXTRACT as int32 samples (the range given as raw command text).
pub fn extract(c: &mut RawClient, id: &str, from: &str, to: &str) -> Vec<i32> {
    let r = c.command(&format!("EXTRACT '{id}' {from} {to}")).unwrap();
    assert_eq!(r.len(), 1, "EXTRACT reply: {}", show(&r));
    assert_eq!(
        r[0].as_array().unwrap()[0].as_str(),
        Some("s32v"),
        "{}",
        show(&r)
    );
    ints(&bin_of(&r[0]))
}

pub fn info(c: &mut RawClient, id: &str, attr: &str) -> Option<i64> {
    let r = c.command(&format!("INFO '{id}' '{attr}'")).unwrap();
    let a = r[0].as_array().unwrap();
    if a[0].as_str() == Some("int") {
        a[1].as_i64()
    } else {
        assert_eq!(show(&r), err("Failure reading metadata"));
        None
    }
}

/// Create and open `id`, asserting success.
pub fn create_open(c: &mut RawClient, id: &str, sr: u32, ch: u16, bd: u16) {
    assert_eq!(cmd(c, &format!("CREATE '{id}' {sr} {ch} {bd}")), NULL);
    assert_eq!(cmd(c, &format!("OPEN '{id}'")), NULL);
}

pub fn pcm16(vals: &[i16]) -> Vec<u8> {
    vals.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn decode(body: &[u8]) -> String {
    show(&decode_all(body).unwrap())
}
