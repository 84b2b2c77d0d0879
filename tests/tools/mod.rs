// SPDX-License-Identifier: MPL-2.0
//! Helpers for the tests that use the plugin the way its users do: the built `libgstracs.so`
//! loaded by GStreamer's own tools (gst-launch-1.0, gst-inspect-1.0) and by Python, every child
//! process run with a deadline, and a small WAV reader to check what comes out.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What a child process did.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Both streams, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// The directory cargo builds into (target/debug): `CARGO_TARGET_DIR`/debug when set, else two
/// levels above this test binary (target/debug/deps/<test>).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("the test binary is not in <target>/<profile>/deps")
}

/// The newest built `libgstracs.so` of this build profile.
pub fn built_plugin() -> PathBuf {
    let dir = profile_dir();
    let candidates = [
        dir.join("libgstracs.so"),
        dir.join("deps").join("libgstracs.so"),
    ];
    let newest = candidates
        .iter()
        .filter_map(|p| {
            let t = p.metadata().and_then(|m| m.modified()).ok()?;
            Some((t, p.clone()))
        })
        .max_by_key(|(t, _)| *t);
    match newest {
        Some((_, p)) => p,
        None => panic!(
            "libgstracs.so not found in {} or its deps/ folder: build the plugin first \
             with `cargo build --lib` (scripts/test.sh does that)",
            dir.display()
        ),
    }
}

struct GstEnv {
    _dir: tempfile::TempDir,
    plugin_dir: PathBuf,
    registry: PathBuf,
}

/// A private plugin directory holding a copy of the built plugin (so GStreamer does not scan
/// the other shared objects of target/, such as proc-macro libraries) and a private registry
/// file (so a stale registry from an earlier build is never used).
fn gst_env() -> &'static GstEnv {
    static ENV: OnceLock<GstEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("gstracs-env-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir(&plugin_dir).expect("cannot create the plugin directory");
        let src = built_plugin();
        std::fs::copy(&src, plugin_dir.join("libgstracs.so"))
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", src.display()));
        GstEnv {
            registry: dir.path().join("registry.bin"),
            plugin_dir,
            _dir: dir,
        }
    })
}

/// The directory to put in GST_PLUGIN_PATH.
pub fn plugin_dir() -> &'static Path {
    &gst_env().plugin_dir
}

/// A command for `program` that finds the built plugin through GST_PLUGIN_PATH.
pub fn gst_command(program: &str) -> Command {
    let env = gst_env();
    let mut cmd = Command::new(program);
    cmd.env_remove("GST_PLUGIN_PATH_1_0")
        .env_remove("GST_REGISTRY_1_0")
        .env("GST_PLUGIN_PATH", &env.plugin_dir)
        .env("GST_REGISTRY", &env.registry);
    cmd
}

/// Run `cmd` to completion, killing it if it is still running after `timeout`.
pub fn run(cmd: Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let (status, stdout, stderr) = run_until(cmd, timeout);
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what} did not finish within {timeout:?} and was killed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ),
    }
}

/// Runs `cmd`; the exit status, or `None` when it was killed at the deadline.
fn run_until(mut cmd: Command, timeout: Duration) -> (Option<ExitStatus>, String, String) {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_deadline(&mut child, timeout);
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    (status, stdout, stderr)
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` until `timeout`; on expiry kills it and returns None.
fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("cannot wait for a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `gst-launch-1.0 <pipeline>` with the built plugin and a deadline. The pipeline is split
/// on whitespace as a shell would split an unquoted command line.
pub fn gst_launch(pipeline: &str, timeout: Duration) -> Output {
    let mut cmd = gst_command("gst-launch-1.0");
    cmd.args(pipeline.split_whitespace());
    run(cmd, timeout)
}

/// Like `gst_launch`, and panics with the tool's output unless it exited with status 0.
pub fn gst_launch_ok(pipeline: &str, timeout: Duration) -> Output {
    let out = gst_launch(pipeline, timeout);
    assert!(
        out.success(),
        "gst-launch-1.0 {pipeline}\nfailed:\n{}",
        out.dump()
    );
    out
}

/// Runs a pipeline that must fail, and returns what gst-launch-1.0 printed.
///
/// gst-launch-1.0 1.22 quits its main loop from the bus sync handler when an ERROR is posted;
/// if that happens before the main thread has entered `g_main_loop_run()` (an element failing
/// within microseconds of the PAUSED state change, more likely on a loaded machine), the quit
/// is lost and the tool waits forever after printing the error. That race is in the tool, not
/// in the plugin, so a run that printed an element's ERROR and then hung counts as a failure
/// exit here; a hang without an ERROR still fails the test.
pub fn gst_launch_error(pipeline: &str, timeout: Duration) -> Output {
    let mut cmd = gst_command("gst-launch-1.0");
    cmd.args(pipeline.split_whitespace());
    let (status, stdout, stderr) = run_until(cmd, timeout);
    let status = match status {
        Some(status) => {
            assert!(
                !status.success(),
                "gst-launch-1.0 {pipeline}\nsucceeded but should have failed:\n{stdout}\n{stderr}"
            );
            status
        }
        None if stderr.contains("ERROR: from element") => {
            eprintln!("gst-launch-1.0 hung after printing the error (its own quit race); killed");
            std::os::unix::process::ExitStatusExt::from_raw(9)
        }
        None => panic!(
            "gst-launch-1.0 {pipeline}\ndid not finish within {timeout:?} and printed no error:\n{stdout}\n{stderr}"
        ),
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// True when GStreamer on this machine has `element` (gst-inspect-1.0 --exists).
pub fn element_exists(element: &str) -> bool {
    let mut cmd = gst_command("gst-inspect-1.0");
    cmd.args(["--exists", element]);
    run(cmd, Duration::from_secs(60)).success()
}

/// The format and the PCM bytes of a canonical or chunked RIFF/WAVE file.
#[derive(Debug)]
pub struct Wav {
    pub channels: u16,
    pub rate: u32,
    pub bits: u16,
    pub data: Vec<u8>,
}

impl Wav {
    pub fn frames(&self) -> usize {
        self.data.len() / (self.channels as usize * self.bits as usize / 8)
    }

    pub fn seconds(&self) -> f64 {
        self.frames() as f64 / self.rate as f64
    }

    /// Samples of a 16-bit file.
    pub fn samples_i16(&self) -> Vec<i16> {
        assert_eq!(self.bits, 16, "not a 16-bit WAV file");
        self.data
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }
}

/// Reads a PCM WAV file; panics with the reason when it is not one.
pub fn read_wav(path: &Path) -> Wav {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_wav(&bytes).unwrap_or_else(|e| panic!("{} is not a PCM WAV file: {e}", path.display()))
}

pub fn parse_wav(b: &[u8]) -> Result<Wav, String> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err("no RIFF/WAVE header".into());
    }
    let mut pos = 12;
    let mut fmt = None;
    while pos + 8 <= b.len() {
        let id = &b[pos..pos + 4];
        let len = u32::from_le_bytes(b[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            if len < 16 || body + 16 > b.len() {
                return Err("short fmt chunk".into());
            }
            let f = &b[body..body + 16];
            let channels = u16::from_le_bytes([f[2], f[3]]);
            let rate = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
            let bits = u16::from_le_bytes([f[14], f[15]]);
            fmt = Some((channels, rate, bits));
        } else if id == b"data" {
            let (channels, rate, bits) = fmt.ok_or("data chunk before fmt chunk")?;
            let end = (body + len).min(b.len());
            return Ok(Wav {
                channels,
                rate,
                bits,
                data: b[body..end].to_vec(),
            });
        }
        pos = body + len + (len & 1);
    }
    Err("no data chunk".into())
}

/// Decodes any audio file GStreamer can play into a 16-bit WAV file and reads it back.
pub fn decode_to_wav(input: &Path, work: &Path, timeout: Duration) -> Wav {
    let out = work.join(format!(
        "{}.decoded.wav",
        input.file_name().unwrap().to_string_lossy()
    ));
    gst_launch_ok(
        &format!(
            "filesrc location={} ! decodebin ! audioconvert ! audio/x-raw,format=S16LE ! wavenc ! filesink location={}",
            input.display(),
            out.display()
        ),
        timeout,
    );
    read_wav(&out)
}

/// One INFO attribute of a stream, read over a raw connection: `None` when the server answers
/// with an error (a missing stream, or a value of 0, which RACS reports as an error).
pub fn info(addr: std::net::SocketAddr, id: &str, attr: &str) -> Option<i64> {
    let mut c = racs_lite::client::RawClient::connect(addr).expect("cannot connect to racs-lite");
    let reply = c
        .command(&format!("INFO '{id}' '{attr}'"))
        .expect("INFO failed on the wire");
    match reply.first() {
        Some(rmpv::Value::Array(a)) if a.len() == 2 && a[0].as_str() == Some("int") => {
            a[1].as_i64()
        }
        _ => None,
    }
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds, e.g. 2026-01-09T10:00:00.250Z.
pub fn rfc3339_ms(ms: i64) -> String {
    gstracs::client::reader::format_unix_ms(ms)
}
