// SPDX-License-Identifier: MPL-2.0
//! Ingest benchmark: racssink (fed by appsrc, pushed into its pad, and in a `filesrc ! wavparse`
//! transcoding pipeline) against a bare client sending the same frames over one connection, all
//! to the same in-process racs-lite, in one run.
//!
//!     cargo bench --bench ingest                      # 600 s of audio (plus a 60 s run)
//!     RACS_BENCH_SECONDS=120 cargo bench --bench ingest
//!     RACS_BENCH_ROUNDS=9 cargo bench --bench ingest   # best of 9 alternating rounds (5)
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
/// Buffers as audiotestsrc makes them (1024 sample frames); the benchmark also runs with
/// buffers of one frame's size, as a file decoder might deliver.
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
    /// Peak RSS of the process during this run (server included), KiB.
    peak_kib: u64,
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
    reset_peak_rss();
    let (total0, server0) = cpu_split();
    let started = Instant::now();
    let bytes = run();
    let wall = started.elapsed();
    let (total1, server1) = cpu_split();
    Figures {
        bytes,
        wall,
        client_cpu: ((total1 - total0) - (server1 - server0)).max(0.0),
        peak_kib: status_kib("VmHWM:"),
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

fn bench_caps() -> gst::Caps {
    gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::S16le)
        .rate(RATE as i32)
        .channels(i32::from(CHANNELS))
        .build()
}

fn make_racssink(host: &str, port: u16, id: &str) -> gst::Element {
    gst::ElementFactory::make("racssink")
        .property("host", host)
        .property("port", u32::from(port))
        .property("stream-id", id)
        .build()
        .unwrap()
}

/// Buffer `i` of the run: a shallow copy (the memory is shared) with its own timestamps.
fn timestamped(buffers: &[gst::Buffer], i: u64, per_buffer_ns: u64) -> gst::Buffer {
    let mut buffer = buffers[i as usize % buffers.len()].copy();
    {
        let b = buffer.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_nseconds(i * per_buffer_ns));
        b.set_duration(gst::ClockTime::from_nseconds(per_buffer_ns));
    }
    buffer
}

/// Waits for EOS (an error message fails the benchmark), stops the pipeline and returns the
/// bytes the server acknowledged.
fn finish(pipeline: &gst::Pipeline, sink: &gst::Element) -> u64 {
    let msg = pipeline
        .bus()
        .unwrap()
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
    if std::env::var_os("RACS_BENCH_VERBOSE").is_some() {
        eprintln!("  racssink stats: {stats}");
    }
    stats.get::<u64>("bytes-acked").unwrap()
}

/// racssink alone: buffers pushed into its sink pad from this thread, so no queue and no
/// second thread stand between the data and the element (what appsrc adds).
fn into_racssink_pad(
    host: &str,
    port: u16,
    id: &str,
    seconds: usize,
    buffers: &[gst::Buffer],
) -> u64 {
    let caps = bench_caps();
    let pipeline = gst::Pipeline::new();
    let sink = make_racssink(host, port, id);
    pipeline.add(&sink).unwrap();
    let pad = gst::Pad::builder(gst::PadDirection::Src).build();
    pad.set_active(true).unwrap();
    pad.link(&sink.static_pad("sink").unwrap()).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    assert!(pad.push_event(gst::event::StreamStart::new("bench")));
    assert!(pad.push_event(gst::event::Caps::new(&caps)));
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(pad.push_event(gst::event::Segment::new(&segment)));
    let total = seconds * BYTES_PER_SECOND;
    let buffer_bytes = buffers[0].size();
    let per_buffer_ns = buffer_bytes as u64 / 4 * 1_000_000_000 / u64::from(RATE);
    let mut pushed = 0;
    let mut i = 0u64;
    while pushed < total {
        let buffer = timestamped(buffers, i, per_buffer_ns);
        pad.push(buffer).expect("push into racssink");
        pushed += buffer_bytes;
        i += 1;
    }
    assert!(pad.push_event(gst::event::Eos::new()));
    let acked = finish(&pipeline, &sink);
    assert_eq!(acked, pushed as u64, "every byte acknowledged");
    acked
}

fn through_racssink(
    host: &str,
    port: u16,
    id: &str,
    seconds: usize,
    buffers: &[gst::Buffer],
) -> u64 {
    let caps = bench_caps();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("appsrc")
        .property("caps", &caps)
        .property_from_str("format", "time")
        .property("block", true)
        .property("max-bytes", 1u64 << 20)
        .build()
        .unwrap();
    let sink = make_racssink(host, port, id);
    pipeline.add_many([&src, &sink]).unwrap();
    src.link(&sink).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let total = seconds * BYTES_PER_SECOND;
    let buffer_bytes = buffers[0].size();
    let per_buffer_ns = buffer_bytes as u64 / 4 * 1_000_000_000 / u64::from(RATE);
    let mut pushed = 0;
    let mut i = 0u64;
    while pushed < total {
        let buffer = timestamped(buffers, i, per_buffer_ns);
        let ret = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer]);
        assert_eq!(ret, gst::FlowReturn::Ok, "push-buffer");
        pushed += buffer_bytes;
        i += 1;
    }
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    let acked = finish(&pipeline, &sink);
    assert_eq!(acked, pushed as u64, "every byte acknowledged");
    acked
}

/// A WAV file of `seconds` of the pattern, for the file-transcoding contender.
fn write_wav(path: &std::path::Path, seconds: usize, pattern: &[u8]) {
    use std::io::Write;
    let data_len = (seconds * BYTES_PER_SECOND) as u32;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create the WAV file"));
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"RIFF");
    header.extend_from_slice(&(data_len + 36).to_le_bytes());
    header.extend_from_slice(b"WAVEfmt ");
    header.extend_from_slice(&16u32.to_le_bytes());
    header.extend_from_slice(&1u16.to_le_bytes());
    header.extend_from_slice(&CHANNELS.to_le_bytes());
    header.extend_from_slice(&RATE.to_le_bytes());
    header.extend_from_slice(&(BYTES_PER_SECOND as u32).to_le_bytes());
    header.extend_from_slice(&(CHANNELS * 2).to_le_bytes());
    header.extend_from_slice(&16u16.to_le_bytes());
    header.extend_from_slice(b"data");
    header.extend_from_slice(&data_len.to_le_bytes());
    f.write_all(&header).unwrap();
    for _ in 0..seconds {
        f.write_all(pattern).unwrap();
    }
    f.flush().unwrap();
}

/// A transcoding pipeline as users write it: `filesrc ! wavparse ! racssink`, one streaming
/// thread, the file on tmpfs.
fn file_into_racssink(host: &str, port: u16, id: &str, wav: &std::path::Path) -> u64 {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! wavparse ! racssink name=sink host={host} port={port} stream-id={id}",
        wav.display()
    ))
    .expect("the file pipeline")
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    finish(&pipeline, &pipeline.by_name("sink").unwrap())
}

fn main() {
    gst::init().unwrap();
    gstracs::plugin_register_static().unwrap();
    let env = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let long = env("RACS_BENCH_SECONDS", 600).max(1);
    let short = (long / 10).clamp(1, 60);
    let rounds = env("RACS_BENCH_ROUNDS", 5).max(1);
    let only = std::env::var("RACS_BENCH_ONLY")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    // The server's data goes to tmpfs when there is one: what is measured is the client path,
    // not the disk (racs-lite queues flushed tables for its writer thread without bound, so a
    // slow disk would also inflate this process's RSS).
    let data_root = std::env::var("RACS_BENCH_TMPDIR").unwrap_or_else(|_| {
        if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm".into()
        } else {
            std::env::temp_dir().display().to_string()
        }
    });
    // SAFETY-free in edition 2021; set before any other thread reads the environment.
    std::env::set_var("TMPDIR", &data_root);

    let pattern = pattern();
    let buffers_of = |size: usize| -> Vec<gst::Buffer> {
        (0..BYTES_PER_SECOND / size)
            .map(|k| gst::Buffer::from_slice(pattern[k * size..(k + 1) * size].to_vec()))
            .collect()
    };
    let sizes = [BUFFER_BYTES, CHUNK];
    let buffer_sets: Vec<Vec<gst::Buffer>> = sizes.iter().map(|&s| buffers_of(s)).collect();

    // Child mode: one contender, once, in a fresh process, so that its peak RSS is its own
    // (freed memory of earlier runs stays mapped by the allocator and would count).
    if let Ok(spec) = std::env::var("RACS_BENCH_CHILD") {
        let (which, seconds) = spec
            .split_once(':')
            .expect("RACS_BENCH_CHILD=which:seconds");
        let (which, seconds): (usize, usize) = (which.parse().unwrap(), seconds.parse().unwrap());
        let srv = racs_lite::TestServer::start();
        let f = measure(|| match which {
            0 => bare_client(&srv.addr().to_string(), "rss", seconds, &pattern),
            i => through_racssink(&srv.host(), srv.port(), "rss", seconds, &buffer_sets[i - 1]),
        });
        println!("child-peak-kib {}", f.peak_kib);
        return;
    }

    println!(
        "ingest: 44.1 kHz / 16-bit / stereo ({BYTES_PER_SECOND} bytes/s), {CHUNK} byte frames, \
         racs-lite in-process (data under {data_root}), best of {rounds} alternating rounds"
    );
    let mut peaks: Vec<usize> = Vec::new();
    for (phase, seconds) in [("short", short), ("long", long)] {
        // Alternate the contenders, several rounds, and keep the best time of each: on a
        // shared machine the scheduler, not the code, decides the worst runs. Peak RSS is the
        // highest seen over the rounds. Each round gets a fresh server, and the sinks run
        // before the bare client so that they never meet its leftover server backlog.
        let mut best: Vec<Option<Figures>> = vec![None, None, None, None, None];
        let wav =
            std::path::Path::new(&data_root).join(format!("racs-bench-{}.wav", std::process::id()));
        write_wav(&wav, seconds, &pattern);
        for round in 0..rounds {
            let srv = racs_lite::TestServer::start();
            let (host, port, addr) = (srv.host(), srv.port(), srv.addr().to_string());
            // RACS_BENCH_ONLY=0|1|2|3|4 runs one contender (for diagnosis); the others report 0.
            let skip = |i: usize| only.is_some_and(|o| o != i);
            let mut runs = Vec::new();
            for (i, buffers) in buffer_sets.iter().enumerate() {
                runs.push(measure(|| {
                    if skip(i + 1) {
                        return 0;
                    }
                    through_racssink(&host, port, &format!("sink{i}-{round}"), seconds, buffers)
                }));
            }
            runs.push(measure(|| {
                if skip(3) {
                    return 0;
                }
                into_racssink_pad(
                    &host,
                    port,
                    &format!("pad-{round}"),
                    seconds,
                    &buffer_sets[1],
                )
            }));
            runs.push(measure(|| {
                if skip(4) {
                    return 0;
                }
                file_into_racssink(&host, port, &format!("file-{round}"), &wav)
            }));
            runs.insert(
                0,
                measure(|| {
                    if skip(0) {
                        return 0;
                    }
                    bare_client(&addr, &format!("bare-{round}"), seconds, &pattern)
                }),
            );
            for (slot, f) in best.iter_mut().zip(runs) {
                if slot.as_ref().is_none_or(|b| f.wall < b.wall) {
                    *slot = Some(f);
                }
            }
            drop(srv);
        }
        let _ = std::fs::remove_file(&wav);
        let best: Vec<Figures> = best.into_iter().map(Option::unwrap).collect();
        println!(
            "\n{phase} run: {seconds} s of audio ({:.1} MB)",
            best[0].bytes.max(best[1].bytes) as f64 / 1e6
        );
        let names = [
            "bare client (one connection, same frames)".to_string(),
            format!("appsrc ! racssink, {} byte buffers", sizes[0]),
            format!("appsrc ! racssink, {} byte buffers", sizes[1]),
            format!("racssink alone, {} byte buffers", sizes[1]),
            "filesrc ! wavparse ! racssink (WAV on tmpfs)".to_string(),
        ];
        for (name, f) in names.iter().zip(&best) {
            println!(
                "  {name:<46} {:>7.1} MB/s {:>6.0}x realtime {:>6.3} s wall {:>6.2} CPU s/audio hour",
                f.mb_per_s(),
                f.realtime(),
                f.wall.as_secs_f64(),
                f.cpu_per_audio_hour(),
            );
        }
        for (i, size) in sizes.iter().enumerate() {
            println!(
                "  ratio appsrc ! racssink / bare with {size} byte buffers: {:.3} (goal >= 0.9)",
                best[i + 1].mb_per_s() / best[0].mb_per_s()
            );
        }
        println!(
            "  ratio racssink alone (no appsrc thread) / bare with {} byte buffers: {:.3}",
            sizes[1],
            best[3].mb_per_s() / best[0].mb_per_s()
        );
        println!(
            "  ratio filesrc ! wavparse ! racssink / bare: {:.3}",
            best[4].mb_per_s() / best[0].mb_per_s()
        );
        peaks.push(seconds);
    }
    println!(
        "\npeak RSS (VmHWM of a fresh process running one contender once, in-process server \
         included), short vs long run:"
    );
    let exe = std::env::current_exe().expect("own executable");
    let child_peak = |which: usize, seconds: usize| -> u64 {
        let out = std::process::Command::new(&exe)
            .env("RACS_BENCH_CHILD", format!("{which}:{seconds}"))
            .output()
            .expect("run the benchmark as a child");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("child-peak-kib "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("child {which}:{seconds} failed: {out:?}"))
    };
    let names = [
        "bare client",
        "racssink 4 KiB buffers",
        "racssink 32 KiB buffers",
    ];
    for (i, name) in names.iter().enumerate() {
        let (s_secs, l_secs) = (peaks[0], peaks[1]);
        let (s_rss, l_rss) = (child_peak(i, s_secs), child_peak(i, l_secs));
        println!(
            "  {name:<24} {s_rss:>7} KiB for {s_secs} s, {l_rss:>7} KiB for {l_secs} s ({:+.1}% for {}x the input)",
            (l_rss as f64 / s_rss.max(1) as f64 - 1.0) * 100.0,
            l_secs / s_secs.max(1)
        );
    }
}
