// SPDX-License-Identifier: MPL-2.0
//! Ingest and EXTRACT throughput of racs-lite, driven by a bare client on one loopback
//! connection (the same kind of client used to measure the real server).
//!
//! Run: `cargo run --release -p racs-lite --example bench [-- MIB_PER_RUN]`
//! Set `RACS_ADDR=host:port` to measure another server instead of an in-process racs-lite.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use racs_lite::client::{build_frame, show, RawClient};
use racs_lite::{Config, Server};

fn ingest(addr: SocketAddr, id: &str, frame_bytes: usize, total: usize) -> (f64, usize) {
    let mut c = RawClient::connect(addr).expect("connect");
    let r = c
        .command(&format!("CREATE '{id}' 48000 2 16"))
        .expect("CREATE");
    assert_eq!(show(&r), r#"["null"]"#, "CREATE");
    c.command(&format!("CLOSE '{id}'")).expect("CLOSE");
    let r = c.command(&format!("OPEN '{id}'")).expect("OPEN");
    assert_eq!(show(&r), r#"["null"]"#, "OPEN");
    let pcm: Vec<u8> = (0..frame_bytes).map(|i| (i * 7) as u8).collect();
    let frame = build_frame(&[0x5a; 16], id.as_bytes(), &pcm);
    let mut msg = (frame.len() as u64).to_le_bytes().to_vec();
    msg.extend_from_slice(&frame);
    let frames = total / frame_bytes;
    let mut reply = [0u8; 14];
    let t = Instant::now();
    for _ in 0..frames {
        c.stream.write_all(&msg).expect("send frame");
        c.stream.read_exact(&mut reply).expect("reply");
        assert_eq!(&reply[8..], b"\x91\xa4null", "frame rejected");
    }
    let secs = t.elapsed().as_secs_f64();
    (secs, frames * frame_bytes)
}

fn extract(addr: SocketAddr, id: &str) -> (f64, usize) {
    let mut c = RawClient::connect(addr).expect("connect");
    let cmd = format!("EXTRACT '{id}' 0 99999999999999\0");
    let t = Instant::now();
    c.send_message(cmd.as_bytes()).expect("send EXTRACT");
    // Stream the reply through a fixed buffer: this measures the server, not the client's
    // allocator.
    let mut prefix = [0u8; 8];
    c.stream.read_exact(&mut prefix).expect("reply prefix");
    let n = u64::from_le_bytes(prefix) as usize;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = c
            .stream
            .read(&mut buf[..left.min(1 << 20)])
            .expect("reply body");
        assert!(k > 0, "server closed mid-reply");
        left -= k;
    }
    (t.elapsed().as_secs_f64(), n)
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512);
    let total = mib * 1024 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, server) = match std::env::var("RACS_ADDR") {
        Ok(a) => (a.parse().expect("RACS_ADDR must be host:port"), None),
        Err(_) => {
            let s = Server::start("127.0.0.1:0".parse().unwrap(), Config::new(dir.path()))
                .expect("start racs-lite");
            (s.local_addr(), Some(s))
        }
    };
    let tag = std::process::id();
    println!("racs-lite bench against {addr}, {mib} MiB per ingest run");
    for (label, fb) in [("32 KiB", 32768usize), ("64 KiB", 65532usize)] {
        let id = format!("bench_{tag}_{fb}");
        let (secs, bytes) = ingest(addr, &id, fb, total);
        println!(
            "ingest  {label} frames: {:8.1} MB/s  ({} frames, {:.1} MB in {:.2} s)",
            bytes as f64 / 1e6 / secs,
            bytes / fb,
            bytes as f64 / 1e6,
            secs
        );
        let (secs, out) = extract(addr, &id);
        println!(
            "extract {label} stream: {:8.1} MB/s of PCM read ({:.1} MB of s32v reply in {:.2} s)",
            bytes as f64 / 1e6 / secs,
            out as f64 / 1e6,
            secs
        );
    }
    if let Some(s) = server {
        let t = Instant::now();
        s.stop().expect("clean stop");
        println!("clean stop: {:.2} s", t.elapsed().as_secs_f64());
    }
}
