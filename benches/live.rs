// SPDX-License-Identifier: MPL-2.0
//! End-to-end latency of a live stream: `appsrc ! racssink chunk-size=N` written in real time →
//! server → `racssrc live-edge=true catch-up=keep ! appsink`, in one process. The audio is
//! silence with a marker every 250 ms whose value is its index; a marker's latency is the time
//! from the moment its sample was due (the writer pushes 5 ms buffers as the clock reaches their
//! end, like a capture source) to the moment racssrc pushed the buffer holding it.
//!
//! Runs chunk-size 882 (5 ms blocks at 44.1 kHz stereo 16-bit), 1764 (10 ms) and racssink's
//! default, against racs-lite in this process, and against `RACS_ADDR=host:port` when set
//! (a server you started). With `RACS_PID=<pid of that server>` it also prints the server's CPU
//! time per second of audio (from /proc/PID/stat) and its open file descriptors before and after
//! each run (/proc/PID/fd): the real server keeps every table file it reads open.
//!
//! `RACS_BENCH_SECONDS` (default 20) sets the audio per run; `RACS_BENCH_CHUNKS=882,1764` picks
//! the chunk sizes (0 = racssink's default); `RACS_BENCH_WRITER_ONLY=1` runs the writers alone
//! (the server's cost without a follower, to subtract).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

const RATE: u64 = 44_100;
/// A marker every this many frames (250 ms).
const PERIOD: u64 = RATE / 4;
/// Frames per pushed buffer (5 ms).
const STEP: u64 = RATE / 200;

fn caps() -> gst::Caps {
    gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::S16le)
        .rate(RATE as i32)
        .channels(2)
        .build()
}

/// Silence with marker `i` (value 1000 + i on both channels) at frame `i * PERIOD`.
fn signal(first: u64, frames: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames as usize * 4);
    for f in first..first + frames {
        let v: i16 = if f.is_multiple_of(PERIOD) {
            (1000 + (f / PERIOD) % 30_000) as i16
        } else {
            0
        };
        out.extend_from_slice(&v.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

struct Run {
    latencies_ms: Vec<f64>,
    markers_written: u64,
    stats: gst::Structure,
    latency_reported: Option<(gst::ClockTime, Option<gst::ClockTime>)>,
    warnings: usize,
    errors: Vec<String>,
}

fn run(host: &str, port: u16, chunk: u32, seconds: u64) -> Run {
    let id = format!(
        "live-bench-{chunk}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    // The writer.
    let wpipe = gst::Pipeline::new();
    let appsrc = gst::ElementFactory::make("appsrc")
        .property("caps", caps())
        .property_from_str("format", "time")
        .build()
        .unwrap();
    let mut sink = gst::ElementFactory::make("racssink")
        .property("host", host)
        .property("port", u32::from(port))
        .property("stream-id", &id);
    if chunk > 0 {
        sink = sink.property("chunk-size", chunk);
    }
    let sink = sink.build().unwrap();
    wpipe.add_many([&appsrc, &sink]).unwrap();
    appsrc.link(&sink).unwrap();
    wpipe.set_state(gst::State::Playing).unwrap();
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Half a second of the stream exists before the reader starts at its live edge.
    let lead = RATE / 2;
    let total = lead + seconds * RATE;
    let writer = {
        let stop = stop.clone();
        let appsrc = appsrc.clone();
        std::thread::spawn(move || {
            let mut at = 0;
            while at < total && !stop.load(Ordering::SeqCst) {
                let end = at + STEP;
                let due = t0 + Duration::from_nanos(end * 1_000_000_000 / RATE);
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                let mut buffer = gst::Buffer::from_mut_slice(signal(at, STEP));
                {
                    let b = buffer.get_mut().unwrap();
                    b.set_pts(gst::ClockTime::from_nseconds(at * 1_000_000_000 / RATE));
                    b.set_duration(gst::ClockTime::from_nseconds(STEP * 1_000_000_000 / RATE));
                }
                let _ = appsrc.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer]);
                at = end;
            }
            let _ = appsrc.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
        })
    };
    while Instant::now() < t0 + Duration::from_nanos(lead * 1_000_000_000 / RATE) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The follower.
    let rpipe = gst::Pipeline::new();
    let src = gst::ElementFactory::make("racssrc")
        .property("host", host)
        .property("port", u32::from(port))
        .property("stream-id", &id)
        .property("live-edge", true)
        .property_from_str("catch-up", "keep")
        .build()
        .unwrap();
    let fakesink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .build()
        .unwrap();
    rpipe.add_many([&src, &fakesink]).unwrap();
    src.link(&fakesink).unwrap();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    {
        let latencies = latencies.clone();
        src.static_pad("src")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                let now = Instant::now();
                let Some(buffer) = info.buffer() else {
                    return gst::PadProbeReturn::Ok;
                };
                let map = buffer.map_readable().unwrap();
                for fr in map.chunks_exact(4) {
                    let v = i16::from_le_bytes([fr[0], fr[1]]);
                    if v >= 1000 {
                        let frame = (v as u64 - 1000) * PERIOD;
                        // The marker's sample was due when the writer's clock reached it; its
                        // buffer is pushed 5 ms later at the latest, like a capture source.
                        let due = t0 + Duration::from_nanos(frame * 1_000_000_000 / RATE);
                        latencies
                            .lock()
                            .unwrap()
                            .push(now.saturating_duration_since(due).as_secs_f64() * 1000.0);
                    }
                }
                gst::PadProbeReturn::Ok
            });
    }
    // RACS_BENCH_WRITER_ONLY=1: the writer alone, for the server's cost without a follower.
    let follow = std::env::var_os("RACS_BENCH_WRITER_ONLY").is_none();
    if follow {
        rpipe.set_state(gst::State::Playing).unwrap();
    }
    let bus = rpipe.bus().unwrap();
    let wbus = wpipe.bus().unwrap();
    let mut warnings = 0;
    let mut errors = Vec::new();
    let end = t0 + Duration::from_nanos(total * 1_000_000_000 / RATE) + Duration::from_secs(2);
    let mut latency_reported = None;
    while Instant::now() < end {
        if let Some(m) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) {
            match m.view() {
                gst::MessageView::Warning(_) => warnings += 1,
                gst::MessageView::Error(e) => {
                    errors.push(format!("racssrc: {}", e.error()));
                    break;
                }
                _ => {}
            }
        }
        while let Some(m) = wbus.pop() {
            if let gst::MessageView::Error(e) = m.view() {
                errors.push(format!("racssink: {}", e.error()));
            }
        }
        if follow && latency_reported.is_none() && Instant::now() > t0 + Duration::from_secs(3) {
            let mut q = gst::query::Latency::new();
            if src.query(&mut q) {
                let (_, min, max) = q.result();
                latency_reported = Some((min, max));
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let stats = src.property::<gst::Structure>("stats");
    rpipe.set_state(gst::State::Null).unwrap();
    let _ = wbus.timed_pop_filtered(
        gst::ClockTime::from_seconds(5),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    wpipe.set_state(gst::State::Null).unwrap();
    let mut latencies_ms = std::mem::take(&mut *latencies.lock().unwrap());
    latencies_ms.sort_by(f64::total_cmp);
    Run {
        latencies_ms,
        markers_written: seconds * 4,
        stats,
        latency_reported,
        warnings,
        errors,
    }
}

fn bench_target(name: &str, host: &str, port: u16, pid: Option<u32>, chunks: &[u32], secs: u64) {
    println!("\n== {name} ({host}:{port}), {secs} s per run ==");
    println!(
        "{:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>14} {:>10} {:>12}",
        "chunk",
        "markers",
        "p50 ms",
        "p95 ms",
        "max ms",
        "req/s",
        "reported min",
        "srv CPU %",
        "srv fds"
    );
    for &chunk in chunks {
        let cpu0 = pid.and_then(cpu_seconds);
        let fd0 = pid.and_then(open_fds);
        let wall = Instant::now();
        let r = run(host, port, chunk, secs);
        let wall = wall.elapsed().as_secs_f64();
        let cpu = match (cpu0, pid.and_then(cpu_seconds)) {
            (Some(a), Some(b)) => format!("{:.2}", (b - a) / wall * 100.0),
            _ => "n/a".into(),
        };
        let fds = match (fd0, pid.and_then(open_fds)) {
            (Some(a), Some(b)) => format!("{a}->{b}"),
            _ => "n/a".into(),
        };
        let l = &r.latencies_ms;
        // Every request the server answered (EXTRACT and INFO); "extra-requests" counts
        // the probes and checks among them.
        let requests = r.stats.get::<u64>("requests").unwrap_or(0);
        println!(
            "{:>7} {:>4}/{:<3} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>14} {:>10} {:>12}",
            if chunk == 0 {
                "default".to_string()
            } else {
                chunk.to_string()
            },
            l.len(),
            r.markers_written,
            percentile(l, 0.5),
            percentile(l, 0.95),
            l.last().copied().unwrap_or(f64::NAN),
            requests as f64 / secs as f64,
            r.latency_reported.map_or("n/a".into(), |(min, _)| format!(
                "{:.1} ms",
                min.nseconds() as f64 / 1e6
            )),
            cpu,
            fds
        );
        if r.warnings > 0 || !r.errors.is_empty() {
            println!("        {} warnings, errors: {:?}", r.warnings, r.errors);
        }
        println!("        racssrc {}", r.stats);
    }
}

fn main() {
    gst::init().unwrap();
    gstracs::plugin_register_static().unwrap();
    let secs: u64 = std::env::var("RACS_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let chunks: Vec<u32> = std::env::var("RACS_BENCH_CHUNKS")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![882, 1764, 0]);
    println!(
        "end-to-end latency: appsrc (5 ms buffers in real time) ! racssink chunk-size=N -> server -> \
         racssrc live-edge=true catch-up=keep, a marker every 250 ms"
    );
    if std::env::var_os("RACS_ADDR").is_none() || std::env::var_os("RACS_BENCH_LITE").is_some() {
        let srv = racs_lite::TestServer::start();
        bench_target(
            "racs-lite in-process (tables hidden 100 ms while written)",
            &srv.host(),
            srv.port(),
            None,
            &chunks,
            secs,
        );
    }
    if let Some(addr) = std::env::var("RACS_ADDR").ok().filter(|a| !a.is_empty()) {
        let (host, port) = addr.rsplit_once(':').expect("RACS_ADDR is host:port");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let pid = std::env::var("RACS_PID").ok().and_then(|p| p.parse().ok());
        bench_target(
            "RACS_ADDR",
            host,
            port.parse().expect("RACS_ADDR's port"),
            pid,
            &chunks,
            secs,
        );
    }
}
