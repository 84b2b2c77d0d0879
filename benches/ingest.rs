// SPDX-License-Identifier: MPL-2.0
//! Ingest benchmark: `appsrc ! racssink` against a bare client sending the same frames over
//! one connection, both to the same in-process racs-lite, in one run.
//!
//!     cargo bench --bench ingest                      # 600 s of audio (plus a 60 s run)
//!     RACS_BENCH_SECONDS=120 cargo bench --bench ingest
//!
//! Prints MB/s, x-realtime for 44.1 kHz/16-bit/stereo, the racssink/bare ratio, client CPU
//! seconds per hour of audio, and peak RSS for a short and a long run. The server runs in this
//! process, so its threads (all named `racs-lite*`) are subtracted from the CPU figures; peak
//! RSS includes it.

use std::time::{Duration, Instant};

use gst::prelude::*;
use gstracs::client::{runtime, stream_hash, Connection, SessionId, StreamFormat};

const RATE: u32 = 44100;
const CHANNELS: u16 = 2;
const BYTES_PER_SECOND: usize = RATE as usize * CHANNELS as usize * 2;
/// Buffers as audiotestsrc makes them: 1024 sample frames.
const BUFFER_BYTES: usize = 4096;
const CHUNK: usize = 32768;

fn clock_ticks_per_second() -> f64 {
    // Linux reports /proc CPU times in USER_HZ, which is 100 on every mainstream platform.
    100.0
}

/// utime + stime of a /proc stat line, in seconds.
fn cpu_of_stat(stat: &str) -> f64 {
    // The command name may contain spaces; fields restart after the closing parenthesis.
    let rest = &stat[stat.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / clock_ticks_per_second()
}

/// (CPU seconds of the whole process, CPU seconds of the in-process server's threads).
fn cpu_split() -> (f64, f64) {
    let total = cpu_of_stat(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default());
    let mut server = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.starts_with("racs-lite") {
                server += cpu_of_stat(
                    &std::fs::read_to_string(task.path().join("stat")).unwrap_or_default(),
                );
            }
        }
    }
    (total, server)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the peak-RSS mark so that each phase reports its own peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One second of generated stereo PCM, repeated; made before any measurement.
fn pattern() -> Vec<u8> {
    let mut out = Vec::with_capacity(BYTES_PER_SECOND + CHUNK);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    while out.len() < BYTES_PER_SECOND + CHUNK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&(x as u16).to_le_bytes());
    }
    out
}

struct Figures {
    bytes: u64,
    wall: Duration,
    client_cpu: f64,
}

impl Figures {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.wall.as_secs_f64()
    }

    fn realtime(&self) -> f64 {
        self.bytes as f64 / BYTES_PER_SECOND as f64 / self.wall.as_secs_f64()
    }

    fn cpu_per_audio_hour(&self) -> f64 {
        self.client_cpu / (self.bytes as f64 / BYTES_PER_SECOND as f64 / 3600.0)
    }
}

fn measure(run: impl FnOnce() -> u64) -> Figures {
    let (total0, server0) = cpu_split();
    let started = Instant::now();
    let bytes = run();
    let wall = started.elapsed();
    let (total1, server1) = cpu_split();
    Figures {
        bytes,
        wall,
        client_cpu: ((total1 - total0) - (server1 - server0)).max(0.0),
    }
}

fn bare_client(addr: &str, id: &str, seconds: usize, pattern: &[u8]) -> u64 {
    let format = StreamFormat::new(RATE, CHANNELS, 16).unwrap();
    let total = seconds * BYTES_PER_SECOND;
    runtime()
        .block_on(async {
            let mut conn = Connection::connect(addr, Duration::from_secs(5)).await?;
            conn.create(id, &format).await?;
            conn.open(id).await?;
            let session = SessionId::random();
            let hash = stream_hash(id.as_bytes());
            let mut sent = 0;
            while sent < total {
                let n = CHUNK.min(total - sent);
                let at = sent % BYTES_PER_SECOND;
                conn.send_frame(&session, hash, &pattern[at..at + n])
                    .await?;
                sent += n;
            }
            conn.close(id).await?;
            Ok::<_, gstracs::client::Error>(sent as u64)
        })
        .expect("bare client run")
}

fn through_racssink(
    host: &str,
    port: u16,
    id: &str,
    seconds: usize,
    buffers: &[gst::Buffer],
) -> u64 {
    let caps = gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::S16le)
        .rate(RATE as i32)
        .channels(i32::from(CHANNELS))
        .build();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("appsrc")
        .property("caps", &caps)
        .property_from_str("format", "time")
        .property("block", true)
        .property("max-bytes", 1u64 << 20)
        .build()
        .unwrap();
    let sink = gst::ElementFactory::make("racssink")
        .property("host", host)
        .property("port", u32::from(port))
        .property("stream-id", id)
        .build()
        .unwrap();
    pipeline.add_many([&src, &sink]).unwrap();
    src.link(&sink).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let total = seconds * BYTES_PER_SECOND;
    let per_buffer_ns = BUFFER_BYTES as u64 / 4 * 1_000_000_000 / u64::from(RATE);
    let mut pushed = 0;
    let mut i = 0u64;
    while pushed < total {
        // A shallow copy shares the memory; only the timestamps are new.
        let mut buffer = buffers[i as usize % buffers.len()].copy();
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_nseconds(i * per_buffer_ns));
            b.set_duration(gst::ClockTime::from_nseconds(per_buffer_ns));
        }
        let ret = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer]);
        assert_eq!(ret, gst::FlowReturn::Ok, "push-buffer");
        pushed += BUFFER_BYTES;
        i += 1;
    }
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(600),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS within 10 minutes");
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("racssink failed: {} ({:?})", e.error(), e.debug());
    }
    let stats = sink.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    let acked = stats.get::<u64>("bytes-acked").unwrap();
    assert_eq!(acked, pushed as u64, "every byte acknowledged");
    eprintln!("  racssink stats: {stats}");
    acked
}

fn main() {
    gst::init().unwrap();
    gstracs::plugin_register_static().unwrap();
    let long: usize = std::env::var("RACS_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let short = (long / 10).clamp(1, 60);

    let srv = racs_lite::TestServer::start();
    let (host, port, addr) = (srv.host(), srv.port(), srv.addr().to_string());
    let pattern = pattern();
    let buffers: Vec<gst::Buffer> = (0..BYTES_PER_SECOND / BUFFER_BYTES)
        .map(|k| {
            gst::Buffer::from_slice(pattern[k * BUFFER_BYTES..(k + 1) * BUFFER_BYTES].to_vec())
        })
        .collect();

    println!(
        "ingest: 44.1 kHz / 16-bit / stereo ({} bytes/s), {} byte buffers, {} byte frames, \
         racs-lite in-process on {addr}",
        BYTES_PER_SECOND, BUFFER_BYTES, CHUNK
    );
    let mut rows = Vec::new();
    for (phase, seconds) in [("short", short), ("long", long)] {
        reset_peak_rss();
        let bare = measure(|| bare_client(&addr, &format!("bare-{phase}"), seconds, &pattern));
        let sink =
            measure(|| through_racssink(&host, port, &format!("sink-{phase}"), seconds, &buffers));
        let peak_kib = status_kib("VmHWM:");
        println!(
            "\n{phase} run: {seconds} s of audio ({:.1} MB)",
            sink.bytes as f64 / 1e6
        );
        for (name, f) in [("bare client", &bare), ("racssink", &sink)] {
            println!(
                "  {name:<12} {:>8.1} MB/s  {:>7.0}x realtime  {:>6.2} s wall  {:>7.2} CPU s per hour of audio",
                f.mb_per_s(),
                f.realtime(),
                f.wall.as_secs_f64(),
                f.cpu_per_audio_hour()
            );
        }
        let ratio = sink.mb_per_s() / bare.mb_per_s();
        println!(
            "  ratio racssink/bare: {ratio:.3} (goal >= 0.9)   peak RSS (VmHWM, process incl. server): {} KiB",
            peak_kib
        );
        rows.push((phase, seconds, ratio, peak_kib));
    }
    let (short_rss, long_rss) = (rows[0].3, rows[1].3);
    println!(
        "\npeak RSS: {short_rss} KiB after {} s, {long_rss} KiB after {} s ({:+.1}% for {}x the input)",
        rows[0].1,
        rows[1].1,
        (long_rss as f64 / short_rss.max(1) as f64 - 1.0) * 100.0,
        rows[1].1 / rows[0].1.max(1)
    );
}
