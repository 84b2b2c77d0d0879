// SPDX-License-Identifier: MPL-2.0
//! Ingest benchmark: racssink (fed by appsrc, pushed into its pad, and in a `filesrc ! wavparse`
//! transcoding pipeline) against a bare client sending the same frames over one connection, all
//! to the same server, in one run.
//!
//!     cargo bench --bench ingest                      # 600 s of audio (plus a 60 s run)
//!     RACS_BENCH_SECONDS=120 cargo bench --bench ingest
//!     RACS_BENCH_ROUNDS=9 cargo bench --bench ingest   # best of 9 alternating rounds (5)
//!     RACS_BIN=/path/to/racs cargo bench --bench ingest   # a fresh real server per run
//!     RACS_ADDR=host:port cargo bench --bench ingest  # one running server for every round
//!     RACS_BENCH_ONLY=1,6 RACS_BENCH_RSS=0 cargo bench --bench ingest  # some contenders
//!
//! Every run of every contender gets an empty server of its own: racs-lite in this process by
//! default, a fresh real RACS process with `RACS_BIN` (its data under the benchmark's tmpfs
//! directory). With `RACS_ADDR` all runs go to a server you started yourself (streams are named
//! after this process's id, so runs never collide); restart it between runs for equal footing.
//!
//! The bare client is what a C client does: a blocking socket, each request written in one
//! `write`, the reply read back, no runtime. The plugin's own client (`Connection` under
//! `block_on`) runs beside it, so the cost of the library and of the element show apart.
//!
//! Prints MB/s, x-realtime for 44.1 kHz/16-bit/stereo, the ratio of each contender to the bare
//! client, client CPU seconds per hour of audio, and peak RSS for a short and a long run. An
//! in-process racs-lite's threads (all named `racs-lite*`) are subtracted from the CPU figures;
//! peak RSS includes it. A real server is another process and counts in neither.

use std::time::{Duration, Instant};

use gst::prelude::*;
use gstracs::client::frame::encode_frame_into;
use gstracs::client::{block_on, stream_hash, Canceller, Connection, SessionId, StreamFormat};

mod common;
use common::process::{process_cpu, reset_peak_rss, status_kib, threads_cpu};
use common::Target;

const RATE: u32 = 44100;
const CHANNELS: u16 = 2;
const BYTES_PER_SECOND: usize = RATE as usize * CHANNELS as usize * 2;
/// Buffers as audiotestsrc makes them (1024 sample frames); the benchmark also runs with
/// buffers of one frame's size, as a file decoder might deliver.
const BUFFER_BYTES: usize = 4096;
const CHUNK: usize = 32768;

/// (CPU seconds of the whole process, CPU seconds of the in-process server's threads).
fn cpu_split() -> (f64, f64) {
    (process_cpu(), threads_cpu("racs-lite"))
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
    /// A contender that did not run.
    fn none() -> Figures {
        Figures {
            bytes: 0,
            wall: Duration::from_secs(1),
            client_cpu: 0.0,
            peak_kib: 0,
        }
    }

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

/// One request on a blocking socket, the way a C client does it: prefix and payload in one
/// write, then the 8-byte reply length and the reply.
fn bare_request(sock: &mut std::net::TcpStream, request: &[u8], reply: &mut Vec<u8>) {
    use std::io::{Read, Write};
    sock.write_all(request).expect("bare client: send");
    let mut prefix = [0u8; 8];
    sock.read_exact(&mut prefix)
        .expect("bare client: reply length");
    reply.resize(u64::from_le_bytes(prefix) as usize, 0);
    sock.read_exact(reply).expect("bare client: reply");
}

fn bare_command(sock: &mut std::net::TcpStream, text: &str) -> Vec<u8> {
    let mut request = ((text.len() + 1) as u64).to_le_bytes().to_vec();
    request.extend_from_slice(text.as_bytes());
    request.push(0);
    let mut reply = Vec::new();
    bare_request(sock, &request, &mut reply);
    reply
}

/// `["null"]`, the reply to OPEN and to a stored frame.
const NULL_REPLY: &[u8] = b"\x91\xa4null";

/// The bare client: no runtime, no pool, one buffer reused for every frame.
fn bare_client(addr: &str, id: &str, seconds: usize, pattern: &[u8]) -> u64 {
    let mut sock = std::net::TcpStream::connect(addr).expect("bare client: connect");
    sock.set_nodelay(true).unwrap();
    bare_command(&mut sock, &format!("CREATE '{id}' {RATE} {CHANNELS} 16"));
    assert_eq!(bare_command(&mut sock, &format!("OPEN '{id}'")), NULL_REPLY);
    let session = SessionId::random();
    let hash = stream_hash(id.as_bytes());
    let total = seconds * BYTES_PER_SECOND;
    let mut request = Vec::with_capacity(8 + 34 + CHUNK);
    let mut reply = Vec::with_capacity(64);
    let mut sent = 0;
    while sent < total {
        let n = CHUNK.min(total - sent);
        let at = sent % BYTES_PER_SECOND;
        request.clear();
        request.extend_from_slice(&((34 + n) as u64).to_le_bytes());
        encode_frame_into(&mut request, &session, hash, &pattern[at..at + n]).unwrap();
        bare_request(&mut sock, &request, &mut reply);
        assert_eq!(reply, NULL_REPLY, "bare client: frame refused");
        sent += n;
    }
    bare_command(&mut sock, &format!("CLOSE '{id}'"));
    sent as u64
}

/// The plugin's client with its I/O on the runtime's threads (a task's view of it, and how
/// every request ran before `block_on` let the calling thread drive the socket): each reply
/// wakes the waiting thread through a runtime worker.
fn runtime_client(addr: &str, id: &str, seconds: usize, pattern: &[u8]) -> u64 {
    let format = StreamFormat::new(RATE, CHANNELS, 16).unwrap();
    let total = seconds * BYTES_PER_SECOND;
    let rt = gstracs::client::runtime();
    let mut conn = rt
        .block_on(Connection::connect(addr, Duration::from_secs(5)))
        .expect("runtime client: connect");
    rt.block_on(async {
        conn.create(id, &format).await?;
        conn.open(id).await
    })
    .expect("runtime client: create and open");
    let session = SessionId::random();
    let hash = stream_hash(id.as_bytes());
    let mut sent = 0;
    while sent < total {
        let n = CHUNK.min(total - sent);
        let at = sent % BYTES_PER_SECOND;
        rt.block_on(conn.send_frame(&session, hash, &pattern[at..at + n]))
            .expect("runtime client: frame");
        sent += n;
    }
    rt.block_on(conn.close(id)).expect("runtime client: close");
    sent as u64
}

/// The plugin's client without GStreamer: one `Connection`, driven through `block_on` as the
/// elements drive it.
fn library_client(addr: &str, id: &str, seconds: usize, pattern: &[u8]) -> u64 {
    let format = StreamFormat::new(RATE, CHANNELS, 16).unwrap();
    let total = seconds * BYTES_PER_SECOND;
    let canceller = Canceller::new();
    let mut conn = block_on(
        &canceller,
        Connection::connect(addr, Duration::from_secs(5)),
    )
    .expect("library client: connect");
    block_on(&canceller, async {
        conn.create(id, &format).await?;
        conn.open(id).await
    })
    .expect("library client: create and open");
    let session = SessionId::random();
    let hash = stream_hash(id.as_bytes());
    let mut sent = 0;
    while sent < total {
        let n = CHUNK.min(total - sent);
        let at = sent % BYTES_PER_SECOND;
        block_on(
            &canceller,
            conn.send_frame(&session, hash, &pattern[at..at + n]),
        )
        .expect("library client: frame");
        sent += n;
    }
    block_on(&canceller, conn.close(id)).expect("library client: close");
    sent as u64
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

/// The error message on the pipeline's bus, if any, for failure messages.
fn bus_error(pipeline: &gst::Pipeline) -> String {
    match pipeline
        .bus()
        .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]))
    {
        Some(msg) => match msg.view() {
            gst::MessageView::Error(e) => format!("{} ({:?})", e.error(), e.debug()),
            _ => unreachable!("filtered"),
        },
        None => "no error message".into(),
    }
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
        if let Err(flow) = pad.push(buffer) {
            panic!("push into racssink: {flow:?}: {}", bus_error(&pipeline));
        }
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
    through_sink(Some((host, port, id)), seconds, buffers)
}

/// `appsrc ! racssink` (with a server), or `appsrc ! fakesink` (`None`: the same pipeline's
/// cost without the element, the floor for the racssink contenders).
fn through_sink(server: Option<(&str, u16, &str)>, seconds: usize, buffers: &[gst::Buffer]) -> u64 {
    let caps = bench_caps();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("appsrc")
        .property("caps", &caps)
        .property_from_str("format", "time")
        .property("block", true)
        .property("max-bytes", 1u64 << 20)
        .build()
        .unwrap();
    let sink = match server {
        Some((host, port, id)) => make_racssink(host, port, id),
        None => gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .build()
            .unwrap(),
    };
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
        if ret != gst::FlowReturn::Ok {
            panic!("push-buffer: {ret:?}: {}", bus_error(&pipeline));
        }
        pushed += buffer_bytes;
        i += 1;
    }
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    if server.is_none() {
        wait_eos(&pipeline);
        return pushed as u64;
    }
    let acked = finish(&pipeline, &sink);
    assert_eq!(acked, pushed as u64, "every byte acknowledged");
    acked
}

/// Waits for EOS of a pipeline without racssink and stops it.
fn wait_eos(pipeline: &gst::Pipeline) {
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(600),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS within 10 minutes");
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("pipeline failed: {} ({:?})", e.error(), e.debug());
    }
    pipeline.set_state(gst::State::Null).unwrap();
}

/// `filesrc ! wavparse ! fakesink`: the file contender's pipeline without racssink.
fn file_into_fakesink(wav: &std::path::Path) -> u64 {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! wavparse ! fakesink sync=false",
        wav.display()
    ))
    .expect("the file pipeline")
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    wait_eos(&pipeline);
    std::fs::metadata(wav).map_or(0, |m| m.len().saturating_sub(44))
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

/// The contenders, in the order they run in the first round.
const NAMES: [&str; 10] = [
    "bare client (blocking socket, same frames)",
    "library client (Connection under block_on)",
    "appsrc ! racssink, 4096 byte buffers",
    "appsrc ! racssink, 32768 byte buffers",
    "racssink alone, 32768 byte buffers",
    "filesrc ! wavparse ! racssink (WAV on tmpfs)",
    "library client, I/O on the runtime's threads",
    "appsrc ! fakesink, 4096 byte buffers",
    "appsrc ! fakesink, 32768 byte buffers",
    "filesrc ! wavparse ! fakesink",
];
/// The fakesink pipelines: no server, the floor of the racssink contenders of the same shape.
const BASELINES: [usize; 3] = [7, 8, 9];
const RUN_ORDER: [usize; 10] = [2, 3, 4, 5, 6, 1, 0, 7, 8, 9];

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
    let only: Option<Vec<usize>> = std::env::var("RACS_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|w| w.trim().parse().ok()).collect());
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
    let target = Target::from_env();
    let tag = std::process::id();

    let pattern = pattern();
    let buffers_of = |size: usize| -> Vec<gst::Buffer> {
        (0..BYTES_PER_SECOND / size)
            .map(|k| gst::Buffer::from_slice(pattern[k * size..(k + 1) * size].to_vec()))
            .collect()
    };
    let buffer_sets: Vec<Vec<gst::Buffer>> = [BUFFER_BYTES, CHUNK]
        .iter()
        .map(|&s| buffers_of(s))
        .collect();

    // Child mode: one contender, once, in a fresh process, so that its peak RSS is its own
    // (freed memory of earlier runs stays mapped by the allocator and would count).
    if let Ok(spec) = std::env::var("RACS_BENCH_CHILD") {
        let (which, seconds) = spec
            .split_once(':')
            .expect("RACS_BENCH_CHILD=which:seconds");
        let (which, seconds): (usize, usize) = (which.parse().unwrap(), seconds.parse().unwrap());
        let srv = target.start();
        let (host, port, addr) = (srv.host.clone(), srv.port, srv.addr());
        let id = format!("rss-{tag}");
        let f = measure(|| match which {
            0 => bare_client(&addr, &id, seconds, &pattern),
            1 => library_client(&addr, &id, seconds, &pattern),
            i => through_racssink(&host, port, &id, seconds, &buffer_sets[i - 2]),
        });
        println!("child-peak-kib {}", f.peak_kib);
        return;
    }

    println!(
        "ingest: 44.1 kHz / 16-bit / stereo ({BYTES_PER_SECOND} bytes/s), {CHUNK} byte frames, \
         {}, data under {data_root}, best of {rounds} alternating rounds",
        target.describe()
    );
    let mut peaks: Vec<usize> = Vec::new();
    for (phase, seconds) in [("short", short), ("long", long)] {
        // Alternate the contenders, several rounds, and keep the best time of each: on a
        // shared machine the scheduler, not the code, decides the worst runs. Each run gets a
        // fresh server (unless one is given).
        let mut best: Vec<Option<Figures>> = (0..NAMES.len()).map(|_| None).collect();
        let wav = std::path::Path::new(&data_root).join(format!("racs-bench-{tag}.wav"));
        if only
            .as_ref()
            .is_none_or(|o| o.contains(&5) || o.contains(&9))
        {
            write_wav(&wav, seconds, &pattern);
        }
        for round in 0..rounds {
            // Every run meets an empty server of its own (a server holding the earlier runs'
            // data is slower), and the order rotates from round to round.
            for k in 0..RUN_ORDER.len() {
                let which = RUN_ORDER[(k + round) % RUN_ORDER.len()];
                // RACS_BENCH_ONLY=1,6 runs those contenders (0..9); the others report 0.
                if only.as_ref().is_some_and(|o| !o.contains(&which)) {
                    best[which].get_or_insert(Figures::none());
                    continue;
                }
                let mut attempt = 0;
                let f = loop {
                    let srv = target.start();
                    let (host, port, addr) = (srv.host.clone(), srv.port, srv.addr());
                    let id = format!("c{which}-{tag}-{phase}-{round}-{attempt}");
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        measure(|| match which {
                            0 => bare_client(&addr, &id, seconds, &pattern),
                            1 => library_client(&addr, &id, seconds, &pattern),
                            2 | 3 => {
                                through_racssink(&host, port, &id, seconds, &buffer_sets[which - 2])
                            }
                            4 => into_racssink_pad(&host, port, &id, seconds, &buffer_sets[1]),
                            5 => file_into_racssink(&host, port, &id, &wav),
                            6 => runtime_client(&addr, &id, seconds, &pattern),
                            7 | 8 => through_sink(None, seconds, &buffer_sets[which - 7]),
                            _ => file_into_fakesink(&wav),
                        })
                    }));
                    drop(srv);
                    match run {
                        Ok(f) => break f,
                        // A server that dies under a run (or a port another test took between
                        // the probe and the bind) fails that run, not the benchmark: it runs
                        // again on a fresh server, and says so.
                        Err(_) if attempt < 2 && !matches!(target, Target::Given(_)) => {
                            attempt += 1;
                            println!(
                                "  ({} failed, see stderr; run again on a fresh server)",
                                NAMES[which]
                            );
                        }
                        Err(e) => std::panic::resume_unwind(e),
                    }
                };
                let slot = &mut best[which];
                if slot
                    .as_ref()
                    .is_none_or(|b| b.bytes == 0 || f.wall < b.wall)
                {
                    *slot = Some(f);
                }
            }
        }
        let _ = std::fs::remove_file(&wav);
        let best: Vec<Figures> = best.into_iter().map(Option::unwrap).collect();
        println!(
            "\n{phase} run: {seconds} s of audio ({:.1} MB)",
            (seconds * BYTES_PER_SECOND) as f64 / 1e6
        );
        for (name, f) in NAMES.iter().zip(&best) {
            println!(
                "  {name:<46} {:>7.1} MB/s {:>6.0}x realtime {:>6.3} s wall {:>6.2} CPU s/audio hour",
                f.mb_per_s(),
                f.realtime(),
                f.wall.as_secs_f64(),
                f.cpu_per_audio_hour(),
            );
        }
        for (i, (name, f)) in NAMES.iter().zip(&best).enumerate().skip(1) {
            if BASELINES.contains(&i) {
                continue;
            }
            println!(
                "  ratio {name:<46} / bare: {:.3}{}",
                f.mb_per_s() / best[0].mb_per_s(),
                if name.contains("racssink") {
                    " (goal >= 0.9)"
                } else {
                    ""
                }
            );
        }
        // What the element adds to the same pipeline with a fakesink, per buffer: the wall
        // time (one streaming thread, frames acknowledged in between) and the CPU.
        for (sink, base, size) in [(2, 7, BUFFER_BYTES), (3, 8, CHUNK), (5, 9, 0)] {
            let (r, b) = (&best[sink], &best[base]);
            if r.bytes == 0 || b.bytes == 0 {
                continue;
            }
            let per = |f: &Figures| {
                if size == 0 {
                    f.bytes as f64 / 1e6
                } else {
                    (f.bytes / size as u64) as f64
                }
            };
            println!(
                "  {:<46} {:>7.2} us per buffer wall ({:.2} with fakesink), CPU {:.2} vs {:.2} s per audio hour{}",
                NAMES[sink],
                r.wall.as_secs_f64() * 1e6 / per(r),
                b.wall.as_secs_f64() * 1e6 / per(b),
                r.cpu_per_audio_hour(),
                b.cpu_per_audio_hour(),
                if size == 0 { " (per MB, not per buffer)" } else { "" }
            );
        }
        println!(
            "  ratio library client on the calling thread / on the runtime's threads: {:.3} \
             (CPU {:.2} vs {:.2} s per audio hour)",
            best[1].mb_per_s() / best[6].mb_per_s(),
            best[1].cpu_per_audio_hour(),
            best[6].cpu_per_audio_hour()
        );
        peaks.push(seconds);
    }
    if std::env::var("RACS_BENCH_RSS").as_deref() == Ok("0") {
        return;
    }
    println!(
        "\npeak RSS (VmHWM of a fresh process running one contender once; an in-process \
         racs-lite included), short vs long run:"
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
    for (i, name) in NAMES.iter().enumerate().take(4) {
        let (s_secs, l_secs) = (peaks[0], peaks[1]);
        let (s_rss, l_rss) = (child_peak(i, s_secs), child_peak(i, l_secs));
        println!(
            "  {name:<46} {s_rss:>7} KiB for {s_secs} s, {l_rss:>7} KiB for {l_secs} s ({:+.1}% for {}x the input)",
            (l_rss as f64 / s_rss.max(1) as f64 - 1.0) * 100.0,
            l_secs / s_secs.max(1)
        );
    }
}
