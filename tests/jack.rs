// SPDX-License-Identifier: MPL-2.0
//! The README's JACK recipes, run as written against a JACK server with the dummy backend
//! (Debian's jackd2, installed by scripts/setup.sh): JACK is F32 only, so `audioconvert` is
//! needed in both directions, and without it the pipelines fail to negotiate.

mod common;
mod tools;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use tools::{gst_launch_error, gst_launch_ok, info};

const T: Duration = Duration::from_secs(30);

/// A JACK server of this test's own (dummy backend: no sound card, real-time clock).
struct Jackd {
    child: Child,
    name: String,
}

impl Jackd {
    /// None (after saying so) when jackd is not installed.
    fn start() -> Option<Jackd> {
        if Command::new("jackd").arg("--version").output().is_err() {
            eprintln!("skipped: jackd is not installed (scripts/setup.sh installs jackd2)");
            return None;
        }
        let name = format!("racs-test-{}", std::process::id());
        let child = Command::new("jackd")
            .args([
                "--no-realtime",
                "-n",
                &name,
                "-d",
                "dummy",
                "-r",
                "48000",
                "-p",
                "480",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("jackd is installed but did not start");
        let mut jack = Jackd { child, name };
        // Ready when a client can connect: jack_lsp (from jackd2) lists its ports.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ports = Command::new("jack_lsp")
                .args(["-s", &jack.name])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if ports.contains("system:capture_1") {
                return Some(jack);
            }
            if let Ok(Some(status)) = jack.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = jack.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("jackd -n {} exited ({status}):\n{err}", jack.name);
            }
            assert!(
                Instant::now() < deadline,
                "jackd -n {} did not come up within 10 s",
                jack.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Jackd {
    /// SIGTERM, so that jackd takes itself out of JACK's shared server registry (a killed
    /// server stays listed there, and JACK refuses new servers once eight are listed).
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn jack_recipes_need_audioconvert_both_ways_and_work_with_it() {
    let Some(jack) = Jackd::start() else {
        return;
    };
    let srv = TestServer::start();
    let server = format!("host=127.0.0.1 port={}", srv.port());
    let j = &jack.name;

    // Without audioconvert, F32 from JACK cannot reach racssink.
    let out = gst_launch_error(
        &format!("jackaudiosrc server={j} num-buffers=10 ! racssink {server} stream-id=raw"),
        T,
    );
    common::assert_tidy_output(&[&out.stdout, &out.stderr]);
    assert!(
        out.stderr.contains("Internal data stream error")
            || out.stderr.contains("not-negotiated")
            || out.stderr.contains("could not link"),
        "{}",
        out.dump()
    );
    assert_eq!(info(srv.addr(), "raw", "size"), None, "nothing was stored");

    // The README's recipe: capture (the dummy backend's silence, in 10 ms periods) into RACS.
    // As a live source it gets the wall-clock timeline, which may add silence or leave samples
    // out to keep stored time on capture time; the byte count is checked on a second stream
    // with timeline=samples.
    for (id, extra) in [("jack-live", ""), ("jack", " timeline=samples")] {
        gst_launch_ok(
            &format!(
                "jackaudiosrc server={j} num-buffers=100 ! audioconvert ! racssink {server} stream-id={id}{extra}"
            ),
            T,
        );
    }
    assert_eq!(info(srv.addr(), "jack-live", "bit_depth"), Some(24));
    // F32 becomes S24LE, the most precise format racssink takes; 100 periods of 480 frames.
    assert_eq!(info(srv.addr(), "jack", "bit_depth"), Some(24));
    assert_eq!(info(srv.addr(), "jack", "sample_rate"), Some(48_000));
    let channels = info(srv.addr(), "jack", "channels").expect("channels");
    assert_eq!(
        info(srv.addr(), "jack", "size"),
        Some(100 * 480 * 3 * channels)
    );

    // And back out to JACK: without audioconvert the link fails, with it the range plays.
    let out = gst_launch_error(
        &format!("racssrc {server} stream-id=jack ! jackaudiosink server={j}"),
        T,
    );
    common::assert_tidy_output(&[&out.stdout, &out.stderr]);
    assert!(out.stderr.contains("could not link"), "{}", out.dump());
    let started = Instant::now();
    gst_launch_ok(
        &format!("racssrc {server} stream-id=jack ! audioconvert ! jackaudiosink server={j}"),
        T,
    );
    // jackaudiosink plays in real time: one second of audio takes about a second.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "played 1 s of audio in {:?}",
        started.elapsed()
    );
}
