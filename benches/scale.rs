// SPDX-License-Identifier: MPL-2.0
//! Scale benchmark: N live streams in one process, each `appsrc is-live=true ! racssink` over one
//! shared pool of 8 connections, against the same N `appsrc ! fakesink` as the baseline.
//!
//!     cargo bench --bench scale                          # N = 200 and 1000, 30 s each
//!     RACS_SCALE_N=50,200 RACS_SCALE_SECONDS=10 cargo bench --bench scale
//!     RACS_BIN=/path/to/racs cargo bench --bench scale   # a fresh real server per run
//!     RACS_ADDR=host:port cargo bench --bench scale      # a server you started yourself
//!
//! The sources cost little: one timer thread pushes preallocated 4096-byte buffers (1024 sample
//! frames of 44.1 kHz 16-bit stereo, 23.2 ms, as audiotestsrc makes them) into every appsrc at
//! real-time pace, the streams' phases spread evenly over the buffer period. Each appsrc has its
//! own streaming thread, which runs the sink's chain; racssink adds its I/O threads (`racs-io`).
//!
//! Every run is a fresh process (so RSS is its own) with a fresh server (unless RACS_ADDR), and
//! prints, over the measured window after a 2 s warm-up:
//! - CPU per 100 streams, per thread group: the streaming threads, `racs-io`, the feeder, the
//!   rest (an in-process racs-lite's threads are left out);
//! - racssink's cost: its streaming threads beyond fakesink's, and its whole chain (streaming
//!   threads plus I/O threads), each in % of one core per 100 streams;
//! - the latency of each push into the sink (the chain, render() included), from GStreamer's
//!   pad-push-pre/post tracer hooks: p50, p90, p99, p99.9, max;
//! - the connections to the server held by this process (sampled each second);
//! - VmRSS before the pipeline, a third of the way in and at the end, per stream;
//! - then EOS on every stream, and every stored stream's size (INFO size, and racssink's
//!   acknowledged bytes) checked against what was pushed; a few streams are read back whole.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstracs::client::{block_on, Canceller, Connection, InfoAttr};

mod common;
use common::process::{connections_to, reset_peak_rss, status_kib, thread_cpu};
use common::Target;

const RATE: u32 = 44100;
const CHANNELS: u16 = 2;
const BYTES_PER_SECOND: u64 = RATE as u64 * CHANNELS as u64 * 2;
const BUFFER_BYTES: usize = 4096;
const POOL_SIZE: u32 = 8;
const WARMUP: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Push latency, from tracer hooks: the time between pad-push-pre and pad-push-post on the same
// thread, which is the sink's whole chain for an appsrc pushing straight into it.

/// 1 µs buckets up to 10 ms, then 100 µs buckets up to 1 s, then one overflow bucket.
const FINE: usize = 10_000;
const COARSE: usize = 9_900;
static HISTOGRAM: [AtomicU64; FINE + COARSE + 1] = [const { AtomicU64::new(0) }; FINE + COARSE + 1];
static MAX_NS: AtomicU64 = AtomicU64::new(0);
static MEASURING: AtomicBool = AtomicBool::new(false);

fn record_ns(ns: u64) {
    let us = (ns / 1000) as usize;
    let bucket = if us < FINE {
        us
    } else {
        (FINE + (us - FINE) / 100).min(FINE + COARSE)
    };
    HISTOGRAM[bucket].fetch_add(1, Ordering::Relaxed);
    MAX_NS.fetch_max(ns, Ordering::Relaxed);
}

/// The upper edge of a bucket, in µs.
fn bucket_us(bucket: usize) -> f64 {
    if bucket < FINE {
        (bucket + 1) as f64
    } else {
        (FINE + (bucket - FINE + 1) * 100) as f64
    }
}

fn percentiles(ps: &[f64]) -> (u64, Vec<f64>) {
    let counts: Vec<u64> = HISTOGRAM
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let total: u64 = counts.iter().sum();
    let out = ps
        .iter()
        .map(|p| {
            let want = ((total as f64) * p / 100.0).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return bucket_us(i);
                }
            }
            f64::NAN
        })
        .collect();
    (total, out)
}

mod push_timer {
    use super::*;
    use gst::subclass::prelude::*;
    use std::cell::Cell;

    thread_local! {
        static STARTED: Cell<u64> = const { Cell::new(0) };
    }

    #[derive(Default)]
    pub struct Imp;

    #[glib::object_subclass]
    impl ObjectSubclass for Imp {
        const NAME: &'static str = "RacsBenchPushTimer";
        type Type = PushTimer;
        type ParentType = gst::Tracer;
    }

    impl ObjectImpl for Imp {
        fn constructed(&self) {
            self.parent_constructed();
            self.register_hook(TracerHook::PadPushPre);
            self.register_hook(TracerHook::PadPushPost);
        }
    }

    impl GstObjectImpl for Imp {}

    impl TracerImpl for Imp {
        fn pad_push_pre(&self, ts: u64, _pad: &gst::Pad, _buffer: &gst::Buffer) {
            STARTED.with(|s| s.set(ts));
        }

        fn pad_push_post(
            &self,
            ts: u64,
            _pad: &gst::Pad,
            _result: Result<gst::FlowSuccess, gst::FlowError>,
        ) {
            let started = STARTED.with(|s| s.replace(0));
            if started != 0 && MEASURING.load(Ordering::Relaxed) {
                record_ns(ts.saturating_sub(started));
            }
        }
    }

    glib::wrapper! {
        pub struct PushTimer(ObjectSubclass<Imp>) @extends gst::Tracer, gst::Object;
    }
}

// ---------------------------------------------------------------------------------------------
// Process figures.

/// The thread groups CPU is reported for.
const GROUPS: [&str; 4] = ["streaming", "racs-io", "feeder", "other"];

fn group_of(name: &str) -> Option<usize> {
    if name.starts_with("racs-lite") {
        None // the in-process server is not the client's cost
    } else if name.starts_with('a') && name.ends_with(":src") {
        Some(0)
    } else if name.starts_with("racs-io") {
        Some(1)
    } else if name == "feeder" {
        Some(2)
    } else {
        Some(3)
    }
}

/// CPU seconds per group between two samples (threads present in both).
fn cpu_by_group(
    before: &HashMap<String, (String, f64)>,
    after: &HashMap<String, (String, f64)>,
) -> [f64; 4] {
    let mut out = [0.0; 4];
    for (tid, (name, t1)) in after {
        let t0 = before.get(tid).map(|(_, t)| *t).unwrap_or(0.0);
        if let Some(g) = group_of(name) {
            out[g] += t1 - t0;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The server.

// ---------------------------------------------------------------------------------------------
// One run (in a child process).

struct Run {
    racs: bool,
    n: usize,
    seconds: u64,
}

fn caps() -> gst::Caps {
    gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::S16le)
        .rate(RATE as i32)
        .channels(i32::from(CHANNELS))
        .build()
}

fn run_child(run: Run, target: &Target) {
    let _timer = glib::Object::new::<push_timer::PushTimer>();
    let srv = target.start();
    let (host, port) = (srv.host.clone(), srv.port);
    let tag = std::process::id();
    let rss_before = status_kib("VmRSS:");

    let pipeline = gst::Pipeline::new();
    let caps = caps();
    let mut srcs = Vec::with_capacity(run.n);
    let mut sinks = Vec::with_capacity(run.n);
    for i in 0..run.n {
        let src = gst::ElementFactory::make("appsrc")
            .name(format!("a{i}"))
            .property("caps", &caps)
            .property("is-live", true)
            .property_from_str("format", "time")
            .build()
            .unwrap();
        let sink = if run.racs {
            gst::ElementFactory::make("racssink")
                .name(format!("k{i}"))
                .property("host", &host)
                .property("port", u32::from(port))
                .property("stream-id", format!("scale-{tag}-{i}"))
                .property("pool-size", POOL_SIZE)
                .build()
                .unwrap()
        } else {
            gst::ElementFactory::make("fakesink")
                .name(format!("k{i}"))
                .property("sync", false)
                .build()
                .unwrap()
        };
        pipeline.add_many([&src, &sink]).unwrap();
        src.link(&sink).unwrap();
        srcs.push(src);
        sinks.push(sink);
    }
    let bus = pipeline.bus().unwrap();
    pipeline
        .set_state(gst::State::Playing)
        .expect("the pipeline starts");
    // Popping with a filter drops the other messages, so the EOS is watched for everywhere.
    let mut eos = None;
    let mut watch = |bus: &gst::Bus, when: &str| {
        if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos]) {
            if let gst::MessageView::Error(e) = msg.view() {
                panic!("{when}: {} ({:?})", e.error(), e.debug());
            }
            eos = Some(msg);
        }
    };
    watch(&bus, "starting");

    // Preallocated buffers (one second of a pattern), pushed as shallow copies.
    let pattern: Vec<gst::Buffer> = (0..BYTES_PER_SECOND as usize / BUFFER_BYTES)
        .map(|k| {
            let data: Vec<u8> = (0..BUFFER_BYTES)
                .map(|j| ((k * 131 + j * 7) % 251) as u8)
                .collect();
            gst::Buffer::from_slice(data)
        })
        .collect();
    let period_ns = BUFFER_BYTES as u64 / 4 * 1_000_000_000 / u64::from(RATE);
    let period = Duration::from_nanos(period_ns);
    // The feeder outlasts the measured window by a second, so its thread is still there to be
    // measured at the end.
    let total = WARMUP + Duration::from_secs(run.seconds + 1);
    let pushes_per_stream = (total.as_nanos() / period.as_nanos()) as u64;

    let feeder = {
        let srcs = srcs.clone();
        std::thread::Builder::new()
            .name("feeder".into())
            .spawn(move || {
                let n = srcs.len() as u64;
                let t0 = Instant::now();
                let mut refused = 0u64;
                // Push j goes to stream j % n at t0 + (j / n) * period + (j % n) * period / n.
                for j in 0..pushes_per_stream * n {
                    let (k, i) = (j / n, j % n);
                    let due = t0 + period * k as u32 + period * i as u32 / n as u32;
                    let now = Instant::now();
                    if due > now + Duration::from_micros(500) {
                        std::thread::sleep(due - now);
                    }
                    let mut buffer = pattern[(k as usize + i as usize) % pattern.len()].copy();
                    {
                        let b = buffer.get_mut().unwrap();
                        b.set_pts(gst::ClockTime::from_nseconds(k * period_ns));
                        b.set_duration(gst::ClockTime::from_nseconds(period_ns));
                    }
                    let ret =
                        srcs[i as usize].emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer]);
                    if ret != gst::FlowReturn::Ok {
                        refused += 1;
                    }
                }
                for src in &srcs {
                    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
                }
                refused
            })
            .unwrap()
    };

    std::thread::sleep(WARMUP);
    reset_peak_rss();
    let cpu0 = thread_cpu();
    let wall0 = Instant::now();
    MEASURING.store(true, Ordering::Relaxed);
    let mut conns_max = 0;
    let mut conns_samples = Vec::new();
    let mut rss_third = 0;
    for s in 0..run.seconds {
        std::thread::sleep(Duration::from_secs(1));
        let c = connections_to(port);
        conns_max = conns_max.max(c);
        conns_samples.push(c);
        if s + 1 == run.seconds / 3 {
            rss_third = status_kib("VmRSS:");
        }
        watch(&bus, "during the run");
    }
    MEASURING.store(false, Ordering::Relaxed);
    let cpu1 = thread_cpu();
    let wall = wall0.elapsed().as_secs_f64();
    let rss_end = status_kib("VmRSS:");
    let hwm = status_kib("VmHWM:");

    let refused = feeder.join().unwrap();
    let groups = cpu_by_group(&cpu0, &cpu1);
    let per100 = |cpu: f64| cpu / wall * 100.0 / (run.n as f64 / 100.0);
    println!(
        "child-cpu {}",
        groups.map(per100).map(|v| format!("{v:.3}")).join(" ")
    );
    let (pushes, p) = percentiles(&[50.0, 90.0, 99.0, 99.9]);
    println!(
        "child-latency {pushes} {} {:.1}",
        p.iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" "),
        MAX_NS.load(Ordering::Relaxed) as f64 / 1000.0
    );
    let conns_last = conns_samples.last().copied().unwrap_or(0);
    println!("child-conns {conns_max} {conns_last}");
    println!("child-rss {rss_before} {rss_third} {rss_end} {hwm}");
    println!("child-refused {refused}");

    // The figures are out; what follows checks the stored data.
    let msg = eos.or_else(|| {
        bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(120),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
    });
    let ended = match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Error(e)) => {
            format!("error at EOS: {} ({:?})", e.error(), e.debug())
        }
        Some(_) => String::new(),
        None => "no EOS within 2 minutes".into(),
    };
    let expected = pushes_per_stream * BUFFER_BYTES as u64;
    // What each stream must hold: everything pushed, less what racssink reported leaving out
    // on purpose (the wall-clock timeline's corrections, counted in dropped-bytes).
    let mut stream_bytes = vec![expected; sinks.len()];
    let mut acked_ok = 0;
    let (mut dropped, mut dropping) = (0u64, 0usize);
    if run.racs {
        for (sink, want) in sinks.iter().zip(stream_bytes.iter_mut()) {
            let stats = sink.property::<gst::Structure>("stats");
            let acked = stats.get::<u64>("bytes-acked").unwrap_or(0);
            let left_out = stats.get::<u64>("dropped-bytes").unwrap_or(0);
            if left_out > 0 {
                dropped += left_out;
                dropping += 1;
            }
            *want = expected.saturating_sub(left_out);
            if acked == *want {
                acked_ok += 1;
            } else if std::env::var_os("RACS_BENCH_VERBOSE").is_some() {
                eprintln!("  {expected} bytes pushed, racssink stats: {stats}");
            }
        }
        println!("child-dropped {dropped} {dropping}");
    }
    pipeline.set_state(gst::State::Null).unwrap();
    if !ended.is_empty() {
        println!("child-failed {ended}");
    }

    if run.racs {
        // Every stream's stored size, then a few streams read back whole (a table being
        // written can hide its blocks for a moment, so wait that out).
        let canceller = Canceller::new();
        let addr = srv.addr();
        let mut wrong = Vec::new();
        if !ended.is_empty() {
            wrong.push(ended.clone());
        }
        let connect = || {
            block_on(
                &canceller,
                Connection::connect(&addr, Duration::from_secs(10)),
            )
        };
        let mut conn = match connect() {
            Ok(conn) => conn,
            Err(e) => {
                println!(
                    "child-stored {expected} {acked_ok} 0 0 0 cannot connect for the checks: {e}"
                );
                return;
            }
        };
        let mut sized_ok = 0;
        for (i, &want) in stream_bytes.iter().enumerate() {
            let id = format!("scale-{tag}-{i}");
            match block_on(&canceller, conn.info(&id, InfoAttr::Size)) {
                Ok(size) if size.unwrap_or(0) as u64 == want => sized_ok += 1,
                Ok(size) if wrong.len() < 5 => wrong.push(format!("{id}: {size:?}")),
                Ok(_) => {}
                Err(e) => {
                    wrong.push(format!("INFO size of {id}: {e}"));
                    break;
                }
            }
        }
        // EXTRACT reads every table whose name-time lies in the range, and the streams run side
        // by side, so reading one stream back reads them all: a few GB brings the real server
        // down (out of memory). A few streams are read back only below that.
        let total = expected * run.n as u64;
        let sample: Vec<usize> = if total <= 1_500_000_000 {
            (0..5).map(|k| k * run.n / 5).collect()
        } else {
            wrong.push(format!(
                "read back skipped: EXTRACT would read all {:.1} GB of tables",
                total as f64 / 1e9
            ));
            Vec::new()
        };
        let mut read_ok = 0;
        for &i in &sample {
            let id = format!("scale-{tag}-{i}");
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let s32 = match block_on(&canceller, conn.extract(&id, 0, 4_102_444_800_000)) {
                    Ok(s32) => s32,
                    Err(e) => {
                        wrong.push(format!("EXTRACT {id}: {e}"));
                        break;
                    }
                };
                if s32.len() as u64 == stream_bytes[i] * 2 {
                    read_ok += 1;
                    break;
                }
                if Instant::now() > deadline {
                    wrong.push(format!(
                        "{id} read back {} of {} bytes",
                        s32.len() / 2,
                        stream_bytes[i]
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        println!(
            "child-stored {expected} {acked_ok} {sized_ok} {read_ok} {} {}",
            sample.len(),
            wrong.join("; ")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: runs the children, prints the summary.

struct Figures {
    cpu: [f64; 4],
    latency: (u64, Vec<f64>, f64),
    conns: (usize, usize),
    rss: [u64; 4],
    refused: u64,
    stored: Option<String>,
    /// Bytes racssink left out on purpose (timeline corrections), and in how many streams.
    dropped: Option<(u64, u64)>,
}

fn spawn(racs: bool, n: usize, seconds: u64, retry: bool) -> Figures {
    let exe = std::env::current_exe().expect("own executable");
    let kind = if racs { "racssink" } else { "fakesink" };
    // A child gets its run, the warm-up, the EOS and the checks, and a few minutes more; one
    // that is still going then (1000 sinks retrying against a server that died) is ended, and
    // that run counts as failed.
    let limit = Duration::from_secs(seconds * 2 + 240);
    let run = || {
        use std::io::Read;
        let mut child = std::process::Command::new(&exe)
            .env("RACS_SCALE_CHILD", format!("{kind}:{n}:{seconds}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("run the benchmark as a child");
        let mut stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stdout.read_to_end(&mut text);
            text
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the child") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                eprintln!(
                    "  the {kind} run with N = {n} did not end within {} s; ended it",
                    limit.as_secs()
                );
                break child.wait().expect("wait for the ended child");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        std::process::Output {
            status,
            stdout: reader.join().unwrap_or_default(),
            stderr: Vec::new(),
        }
    };
    let mut out = run();
    let failed = |out: &std::process::Output| {
        !out.status.success() || String::from_utf8_lossy(&out.stdout).contains("child-failed")
    };
    for _ in 0..3 {
        if !(failed(&out) && retry) {
            break;
        }
        // The real server v0.1.0 aborts under many streams now and then (glibc: "corrupted
        // size vs. prev_size"); that fails the run, not the benchmark, and is said.
        println!("  ({kind} run with N = {n} failed, see stderr; run again on a fresh server)");
        out = run();
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() || text.contains("child-cpu "),
        "child run failed: {}\n{text}",
        out.status
    );
    assert!(
        out.status.success(),
        "child run failed: {}\n{text}",
        out.status
    );
    let line = |key: &str| -> Vec<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("child printed no {key}: {text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let num = |v: &str| v.parse::<f64>().unwrap_or(f64::NAN);
    let cpu = line("child-cpu ");
    let lat = line("child-latency ");
    let conns = line("child-conns ");
    let rss = line("child-rss ");
    Figures {
        cpu: [num(&cpu[0]), num(&cpu[1]), num(&cpu[2]), num(&cpu[3])],
        latency: (
            lat[0].parse().unwrap_or(0),
            lat[1..5].iter().map(|v| num(v)).collect(),
            num(&lat[5]),
        ),
        conns: (conns[0].parse().unwrap_or(0), conns[1].parse().unwrap_or(0)),
        rss: [0, 1, 2, 3].map(|i| rss[i].parse().unwrap_or(0)),
        refused: line("child-refused ")[0].parse().unwrap_or(0),
        dropped: text
            .lines()
            .find_map(|l| l.strip_prefix("child-dropped "))
            .and_then(|l| {
                let mut w = l.split_whitespace().map(|v| v.parse().ok());
                Some((w.next()??, w.next()??))
            }),
        stored: text
            .lines()
            .find_map(|l| l.strip_prefix("child-stored "))
            .map(str::to_string)
            .or_else(|| {
                (!out.status.success()).then(|| {
                    format!(
                        "0 0 0 0 0 the run failed after its figures ({})",
                        out.status
                    )
                })
            }),
    }
}

fn main() {
    gst::init().unwrap();
    gstracs::plugin_register_static().unwrap();
    let target = Target::from_env();
    // The server's data on tmpfs when there is one: the client is measured, not the disk.
    let data_root = std::env::var("RACS_BENCH_TMPDIR").unwrap_or_else(|_| {
        if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm".into()
        } else {
            std::env::temp_dir().display().to_string()
        }
    });
    std::env::set_var("TMPDIR", &data_root);

    if let Ok(spec) = std::env::var("RACS_SCALE_CHILD") {
        let mut it = spec.split(':');
        let racs = it.next() == Some("racssink");
        let n = it.next().and_then(|v| v.parse().ok()).expect("N");
        let seconds = it.next().and_then(|v| v.parse().ok()).expect("seconds");
        run_child(Run { racs, n, seconds }, &target);
        return;
    }

    let ns: Vec<usize> = std::env::var("RACS_SCALE_N")
        .unwrap_or_else(|_| "200,1000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let seconds: u64 = std::env::var("RACS_SCALE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    println!(
        "scale: N live appsrc ! sink streams in one process, 44.1 kHz/16-bit/stereo in {BUFFER_BYTES} \
         byte buffers, racssink pool-size={POOL_SIZE}, {seconds} s measured after {} s warm-up, {}",
        WARMUP.as_secs(),
        target.describe()
    );
    for n in ns {
        let retry = !matches!(target, Target::Given(_));
        let base = spawn(false, n, seconds, retry);
        let racs = spawn(true, n, seconds, retry);
        println!("\nN = {n}");
        println!(
            "  CPU, % of one core per 100 streams   {:>10} {:>10} {:>10} {:>10}",
            GROUPS[0], GROUPS[1], GROUPS[2], GROUPS[3]
        );
        for (name, f) in [("appsrc ! fakesink", &base), ("appsrc ! racssink", &racs)] {
            println!(
                "    {name:<34} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                f.cpu[0], f.cpu[1], f.cpu[2], f.cpu[3]
            );
        }
        println!(
            "  racssink beyond fakesink (streaming threads): {:.2}% of a core per 100 streams",
            racs.cpu[0] - base.cpu[0]
        );
        println!(
            "  racssink's whole chain (streaming threads + racs-io): {:.2}% per 100 streams (goal < 3)",
            racs.cpu[0] + racs.cpu[1]
        );
        for (name, f) in [("fakesink", &base), ("racssink", &racs)] {
            let (pushes, p, max) = &f.latency;
            println!(
                "  push latency into {name}: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.1} ms ({pushes} pushes){}",
                p[0],
                p[1],
                p[2],
                p[3],
                max / 1000.0,
                if name == "racssink" { " (goal p99 < 5 ms)" } else { "" }
            );
        }
        println!(
            "  connections to the server held: at most {}, {} at the end of the window",
            racs.conns.0, racs.conns.1
        );
        for (name, f) in [("fakesink", &base), ("racssink", &racs)] {
            let [before, third, end, hwm] = f.rss;
            println!(
                "  RSS with {name}: {before} KiB before, {third} KiB at a third, {end} KiB at the end \
                 (peak {hwm}); {:.1} KiB per stream",
                end.saturating_sub(before) as f64 / n as f64
            );
        }
        println!(
            "  racssink RSS beyond fakesink: {:.1} KiB per stream (goal < 64); growth from a third \
             to the end: {:+.1} KiB per stream",
            (racs.rss[2] as f64 - racs.rss[0] as f64 - (base.rss[2] as f64 - base.rss[0] as f64))
                / n as f64,
            (racs.rss[2] as f64 - racs.rss[1] as f64) / n as f64
        );
        if base.refused + racs.refused > 0 {
            println!(
                "  pushes refused by appsrc: {} (fakesink), {} (racssink)",
                base.refused, racs.refused
            );
        }
        match racs
            .stored
            .as_deref()
            .map(|s| s.splitn(6, ' ').collect::<Vec<_>>())
        {
            Some(v) if v.len() >= 5 => {
                let note = v.get(5).copied().unwrap_or("").trim();
                let ok = v[1] == n.to_string()
                    && v[2] == n.to_string()
                    && v[3] == v[4]
                    && note.is_empty();
                println!(
                    "  stored: {}/{n} streams acknowledged in full, {}/{n} with INFO size = {} bytes pushed less what was left out, \
                     {}/{} read back whole{}{}",
                    v[1],
                    v[2],
                    v[0],
                    v[3],
                    v[4],
                    if ok {
                        " — all complete"
                    } else if v[1] == n.to_string() && v[2] == n.to_string() && v[3] == v[4] {
                        " — "
                    } else {
                        " — INCOMPLETE: "
                    },
                    note
                );
            }
            _ => println!("  stored: the check did not run"),
        }
        if let Some((bytes, streams)) = racs.dropped.filter(|d| d.0 > 0) {
            println!(
                "  left out on purpose (wall-clock timeline corrections, reported in dropped-bytes \
                 and not expected in the stored sizes): {bytes} bytes in {streams} streams"
            );
        }
    }
}
