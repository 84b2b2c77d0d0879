// SPDX-License-Identifier: MPL-2.0
//! The `racs-lite` binary: usage errors, serving, dual-stack, exit 0 on SIGTERM/SIGINT (losing
//! the unflushed table like the real server, or keeping it with `--durable`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use racs_lite::client::RawClient;

const BIN: &str = env!("CARGO_BIN_EXE_racs-lite");

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["--port", "x", "--data-dir", "/tmp"][..],
        &["--port", "1"][..],
        &["--port", "1", "--data-dir", "/tmp", "--bogus"][..],
        &["--port", "1", "--data-dir", "/tmp", "--entries", "0"][..],
        &[
            "--port",
            "1",
            "--data-dir",
            "/tmp",
            "--flush-invisible-ms",
            "soon",
        ][..],
        &["--port", "1", "--data-dir", "/tmp", "--cache-entries", "0"][..],
        &["--port", "1", "--data-dir", "/tmp", "--durable=yes"][..],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage: racs-lite"));
    }
}

/// Start the binary, write one block, signal it (or send SHUTDOWN); returns the number of
/// table files left.
fn run_and_signal(signal: &str, extra: &[&str]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["--port", "0", "--entries", "4", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    // "racs-lite: listening on [::]:PORT (...)" or "0.0.0.0:PORT"
    let port: u16 = line
        .split("]:")
        .nth(1)
        .or_else(|| line.split("0.0.0.0:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let mut c = RawClient::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(cmd(&mut c, "PING"), PONG);
    if line.contains("[::]") {
        let mut c6 = RawClient::connect(("::1", port)).unwrap();
        assert_eq!(cmd(&mut c6, "PING"), PONG);
    }
    create_open(&mut c, "bin", 8000, 1, 16);
    assert_eq!(send_frame(&mut c, &[1; 16], "bin", &pcm16(&[3; 80])), NULL);
    if signal == "SHUTDOWN" {
        c.send_message(b"SHUTDOWN\0").unwrap();
        assert!(closed_by_server(&mut c), "no reply to SHUTDOWN");
    } else {
        let st = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status after {signal}");
    let seg = dir.path().join(".racs").join("seg");
    let mut files = 0;
    let mut stack = vec![seg];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
            }
        }
    }
    // The metadata file: size (bytes 8..16) as persisted.
    let md = std::fs::read(
        dir.path()
            .join(".racs/md")
            .join(racs_lite::stream_hash(b"bin").to_string()),
    )
    .unwrap();
    let size = u64::from_le_bytes(md[8..16].try_into().unwrap());
    match (signal, extra.contains(&"--durable")) {
        ("SHUTDOWN", _) | (_, true) => assert_eq!(size, 160, "persisted size"),
        _ => assert_eq!(size, 0, "size as at CREATE"),
    }
    files
}

#[test]
fn shutdown_persists_metadata_loses_the_block_and_exits_0() {
    assert_eq!(run_and_signal("SHUTDOWN", &[]), 0);
}

#[test]
fn durable_shutdown_flushes_the_acknowledged_block() {
    assert_eq!(run_and_signal("SHUTDOWN", &["--durable"]), 1);
}

#[test]
fn sigterm_loses_the_in_memory_table_like_the_real_server() {
    assert_eq!(run_and_signal("-TERM", &[]), 0);
}

#[test]
fn sigint_loses_the_in_memory_table_like_the_real_server() {
    assert_eq!(run_and_signal("-INT", &[]), 0);
}

#[test]
fn durable_sigterm_flushes_the_acknowledged_block() {
    assert_eq!(run_and_signal("-TERM", &["--durable"]), 1);
}

#[test]
fn durable_sigint_flushes_the_acknowledged_block() {
    assert_eq!(run_and_signal("-INT", &["--durable"]), 1);
}
