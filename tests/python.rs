// SPDX-License-Identifier: MPL-2.0
//! "GStreamer apps in any language": a Python program using PyGObject records a stream with
//! racssink and extracts it with racssrc (tests/python/record_extract.py), against racs-lite,
//! loading the built libgstracs.so through GST_PLUGIN_PATH like any installed plugin.

mod common;
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::TestServer;
use tools::{gst_command, run};

const IMPORT_GST: &str =
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstApp', '1.0'); from gi.repository import Gst, GstApp";

/// The first interpreter that can import PyGObject's Gst. Debian's /usr/bin/python3 comes first
/// because `python3` on PATH may be a separately built CPython without Debian's `gi` module.
fn python_with_gi() -> String {
    let candidates = ["/usr/bin/python3", "python3"];
    let mut tried = Vec::new();
    for py in candidates {
        let mut cmd = Command::new(py);
        cmd.args(["-c", IMPORT_GST]);
        let ok = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return py.to_string();
        }
        tried.push(py);
    }
    panic!(
        "no Python 3 with PyGObject's Gst found (tried {}): install python3-gi, \
         gir1.2-gstreamer-1.0 and gir1.2-gst-plugins-base-1.0 \
         (scripts/setup.sh does: `apt-get install python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0`)",
        tried.join(", ")
    );
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("python")
        .join(name)
}

#[test]
fn python_records_and_extracts_a_stream() {
    let srv = TestServer::start();
    let py = python_with_gi();
    let mut cmd = gst_command(&py);
    cmd.arg(script("record_extract.py"))
        .args(["--host", "127.0.0.1", "--port", &srv.port().to_string()])
        .args(["--stream-id", "py-demo"]);
    let out = run(cmd, Duration::from_secs(120));
    assert!(out.success(), "record_extract.py failed:\n{}", out.dump());
    assert!(
        out.stdout
            .contains("recorded 88200 sample frames into 'py-demo'"),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout
            .contains("extracted the whole stream: 88200 sample frames"),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("ok: what came back is what went in"),
        "{}",
        out.dump()
    );
    // What the server holds agrees: 2 s of 16-bit stereo.
    assert_eq!(tools::info(srv.addr(), "py-demo", "size"), Some(88_200 * 4));
}

#[test]
fn python_sees_the_error_message_when_the_server_is_down() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let py = python_with_gi();
    let mut cmd = gst_command(&py);
    cmd.arg(script("record_extract.py"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()]);
    let out = run(cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(1), "{}", out.dump());
    common::assert_tidy_output(&[&out.stdout, &out.stderr]);
    assert!(
        out.stderr.contains("error: recording")
            && out.stderr.contains(&format!("127.0.0.1:{port}")),
        "the Python program does not show GStreamer's error naming the server:\n{}",
        out.dump()
    );
}
