// SPDX-License-Identifier: MPL-2.0
//! Extract benchmark: `racssrc ! fakesink` against bare clients reading the same stream from
//! the same server, in one run.
//!
//!     cargo bench --bench extract                       # 10 minutes of audio, racs-lite
//!     RACS_BENCH_SECONDS=120 cargo bench --bench extract
//!     RACS_BENCH_RSS=0 cargo bench --bench extract      # skip the 1 min / 1 h RSS runs
//!     RACS_BIN=/path/to/racs cargo bench --bench extract  # a fresh real server
//!     RACS_ADDR=host:port cargo bench --bench extract     # a server you started yourself
//!
//! It also reads ranges that start inside the stream (the last quarter, the middle half), where
//! racssrc proves the start's offset by counting, and prints what that costs in requests and
//! bytes received.
//!
//! The stream is 44.1 kHz, 16-bit, stereo, stored in 32768-byte frames (racssink's default).
//! Compared, each over the whole stream with 10 s pages:
//! - racssrc: `racssrc ! fakesink sync=false`, the plugin as a pipeline uses it;
//! - reader: the same `RangeReader` pages (the same EXTRACTs) narrowed to S16LE, no GStreamer;
//! - naive: plain `EXTRACT key(c) key(c)+9999` pages on one connection, narrowed to S16LE,
//!   without any of the reader's checks (it is not even correct when tables straddle pages).
//!
//! Peak RSS (VmHWM) is measured in a fresh process for 1 minute and for 1 hour of audio: this
//! process stores the stream in its server, then re-runs itself with `--rss-child`, which only
//! extracts everything through `racssrc ! fakesink` and reports its peak.

use std::time::{Duration, Instant};

mod common;
use common::Target;

use gst::prelude::*;
use gstracs::client::pcm::narrow_in_place;
use gstracs::client::reader::{Bound, RangeReader, ReaderConfig};
use gstracs::client::{
    block_on, runtime, stream_hash, Canceller, Connection, Pool, SessionId, StreamFormat,
};

const RATE: u32 = 44100;
const CHANNELS: u16 = 2;
const BYTES_PER_SECOND: u64 = RATE as u64 * CHANNELS as u64 * 2;
const CHUNK: usize = 32768;
const PAGE_MS: u64 = 10_000;

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Stores `seconds` of a deterministic signal in stream `id`.
fn store(addr: &str, id: &str, seconds: u64) {
    let format = StreamFormat::new(RATE, CHANNELS, 16).unwrap();
    runtime().block_on(async {
        let mut conn = Connection::connect(addr, Duration::from_secs(10))
            .await
            .unwrap();
        conn.create(id, &format).await.unwrap();
        conn.close(id).await.unwrap();
        conn.open(id).await.unwrap();
        let session = SessionId::random();
        let hash = stream_hash(id.as_bytes());
        let total = seconds * BYTES_PER_SECOND;
        let mut pcm = vec![0u8; CHUNK];
        let mut sent = 0u64;
        let mut x = 0x1234_5678u32;
        while sent < total {
            let n = (CHUNK as u64).min(total - sent) as usize;
            for b in pcm[..n].iter_mut() {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (x >> 24) as u8;
            }
            conn.send_frame(&session, hash, &pcm[..n]).await.unwrap();
            sent += n as u64;
        }
    });
}

/// `racssrc ! fakesink`: (seconds, output bytes).
fn run_racssrc(host: &str, port: u16, id: &str) -> (f64, u64) {
    let pipeline = gst::parse::launch(&format!(
        "racssrc host={host} port={port} stream-id={id} chunk-duration={} ! fakesink name=sink sync=false",
        PAGE_MS * 1_000_000
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let b = bytes.clone();
    sink.static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer() {
                b.fetch_add(buf.size() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
    let t0 = Instant::now();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(3600),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("no EOS");
    let secs = t0.elapsed().as_secs_f64();
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("racssrc failed: {} {:?}", e.error(), e.debug());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    (secs, bytes.load(std::sync::atomic::Ordering::Relaxed))
}

/// The same reader pages without GStreamer: (seconds, output bytes, the reader's counters).
fn run_reader(host: &str, port: u16, id: &str) -> (f64, u64, gstracs::client::reader::ReaderStats) {
    run_reader_range(host, port, id, Bound::Open, Bound::Open)
}

/// The reader's pages of `[start, stop)`.
fn run_reader_range(
    host: &str,
    port: u16,
    id: &str,
    start: Bound,
    stop: Bound,
) -> (f64, u64, gstracs::client::reader::ReaderStats) {
    let pool = Pool::get(host, port, 3);
    let mut cfg = ReaderConfig::new(id);
    cfg.start = start;
    cfg.stop = stop;
    cfg.page_ms = PAGE_MS;
    let c = Canceller::new();
    let t0 = Instant::now();
    let mut reader = block_on(&c, async {
        Ok(RangeReader::open(pool, cfg).await.unwrap())
    })
    .unwrap();
    let mut bytes = 0u64;
    while let Some(mut page) =
        block_on(&c, async { Ok(reader.next_page().await.unwrap()) }).unwrap()
    {
        narrow_in_place(&mut page.data, 2);
        bytes += page.data.len() as u64;
    }
    (t0.elapsed().as_secs_f64(), bytes, reader.stats())
}

/// Plain pages with no checks: (seconds, output bytes, EXTRACTs).
fn run_naive(addr: &str, id: &str) -> (f64, u64, u64) {
    runtime().block_on(async {
        let t0 = Instant::now();
        let mut conn = Connection::connect(addr, Duration::from_secs(10))
            .await
            .unwrap();
        let info = conn.stream_info(id).await.unwrap().unwrap();
        let format = info.format().unwrap();
        let mut cursor = 0u64;
        let mut queries = 0;
        let mut received = 0u64;
        while cursor < info.size {
            let k = format.block_time_ms(info.ref_ms, cursor);
            let from = if cursor == 0 { 0 } else { k as u64 };
            let mut data = conn
                .extract(id, from, (k + PAGE_MS as i64 - 1) as u64)
                .await
                .unwrap();
            queries += 1;
            if data.is_empty() {
                break;
            }
            narrow_in_place(&mut data, 2);
            cursor += data.len() as u64;
            received += data.len() as u64;
        }
        (t0.elapsed().as_secs_f64(), received, queries)
    })
}

/// Child process: extract a stored stream through racssrc and print the peak RSS.
fn rss_child(host: &str, port: u16, id: &str, seconds: u64) {
    gst::init().unwrap();
    gstracs::plugin_register_static().unwrap();
    let before = vm_hwm_kib();
    let (secs, bytes) = run_racssrc(host, port, id);
    assert_eq!(bytes, seconds * BYTES_PER_SECOND, "racssrc lost audio");
    println!("{before} {} {secs:.2}", vm_hwm_kib());
}

/// Stores `seconds` in a new server of this process, then extracts it in a fresh process:
/// (peak RSS before extracting, peak RSS after, seconds). A new server each time: the streams
/// written here run far ahead of real time, and a stream whose first blocks share a table with
/// such a stream cannot be read back correctly (see docs/racssrc.md, "Limits").
fn rss_of(seconds: u64) -> (u64, u64, f64) {
    let srv = racs_lite::TestServer::start();
    let id = format!("rss{seconds}");
    store(&srv.addr().to_string(), &id, seconds);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--rss-child",
            &srv.host(),
            &srv.port().to_string(),
            &id,
            &seconds.to_string(),
        ])
        .output()
        .expect("cannot re-run the benchmark binary");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("child failed: {}", String::from_utf8_lossy(&out.stderr)));
    let v: Vec<&str> = line.split_whitespace().collect();
    (
        v[0].parse().unwrap(),
        v[1].parse().unwrap(),
        v[2].parse().unwrap(),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--rss-child") {
        rss_child(
            &args[i + 1],
            args[i + 2].parse().unwrap(),
            &args[i + 3],
            args[i + 4].parse().unwrap(),
        );
        return;
    }
    let seconds: u64 = std::env::var("RACS_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    gst::init().unwrap();
    gstracs::plugin_register_static().unwrap();
    let target = Target::from_env();
    println!("server: {}", target.describe());
    let srv = target.start();
    let addr = srv.addr();
    let t0 = Instant::now();
    store(&addr, "bench", seconds);
    println!(
        "stored {seconds} s of 44.1 kHz/16-bit/stereo ({:.1} MB) in {:.2} s",
        (seconds * BYTES_PER_SECOND) as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    let mb = |bytes: u64, secs: f64| bytes as f64 / 1e6 / secs;
    // Warm the page cache and the pool once, then measure each twice and keep the best.
    let _ = run_reader(&srv.host, srv.port, "bench");
    let mut best = (f64::MAX, f64::MAX, f64::MAX);
    let (mut q_reader, mut q_naive, mut naive_bytes) = (Default::default(), 0, 0);
    for _ in 0..2 {
        let (s, bytes) = run_racssrc(&srv.host, srv.port, "bench");
        assert_eq!(bytes, seconds * BYTES_PER_SECOND, "racssrc output");
        best.0 = best.0.min(s);
        let (s, bytes, st) = run_reader(&srv.host, srv.port, "bench");
        assert_eq!(bytes, seconds * BYTES_PER_SECOND, "reader output");
        best.1 = best.1.min(s);
        q_reader = st;
        let (s, bytes, q) = run_naive(&addr, "bench");
        best.2 = best.2.min(s);
        q_naive = q;
        naive_bytes = bytes;
    }
    let total = seconds * BYTES_PER_SECOND;
    println!(
        "racssrc ! fakesink : {:8.1} MB/s  ({:.0}x real time)",
        mb(total, best.0),
        seconds as f64 / best.0
    );
    let st: gstracs::client::reader::ReaderStats = q_reader;
    println!(
        "bare reader pages  : {:8.1} MB/s  ({} EXTRACTs, {} of them probes and checks; {} INFOs; \
         {} pauses; {} retries; {:.2}x the audio received)",
        mb(total, best.1),
        st.queries,
        st.fallbacks,
        st.infos,
        st.waits,
        st.retries,
        st.bytes as f64 / (2.0 * total as f64)
    );
    println!(
        "naive plain pages  : {:8.1} MB/s  ({q_naive} EXTRACTs, unchecked: got {:.1}% of the audio)",
        mb(naive_bytes, best.2),
        naive_bytes as f64 * 100.0 / total as f64
    );
    println!(
        "ratio racssrc / bare reader: {:.2} (goal >= 0.9)",
        best.1 / best.0
    );
    // Ranges that start inside the stream: the start is proven by counting bytes from a table
    // start to the stream's end (or from the stream's first byte, whichever is shorter).
    let frames = seconds * u64::from(RATE);
    for (what, a, b) in [
        ("the last quarter", frames * 3 / 4, frames),
        ("the middle half ", frames / 4, frames * 3 / 4),
    ] {
        let (secs, bytes, st) = run_reader_range(
            &srv.host,
            srv.port,
            "bench",
            Bound::Frame(a),
            Bound::Frame(b),
        );
        assert_eq!(bytes, (b - a) * 4, "reader output");
        println!(
            "reader, {what}: {:8.1} MB/s  ({} EXTRACTs, {} of them probes and checks; {} pauses; \
             {:.2}x the range's audio received)",
            mb(bytes, secs),
            st.queries,
            st.fallbacks,
            st.waits,
            st.bytes as f64 / (2.0 * bytes as f64)
        );
    }
    if std::env::var("RACS_BENCH_RSS").as_deref() != Ok("0") && target.is_lite() {
        drop(srv);
        let (s1, p1, t1) = rss_of(60);
        let (s2, p2, t2) = rss_of(3600);
        println!(
            "peak RSS of a fresh racssrc process, 1 min of audio: {:.1} MiB ({:.1} MiB before \
             the pipeline ran; {t1:.1} s)",
            p1 as f64 / 1024.0,
            s1 as f64 / 1024.0
        );
        println!(
            "peak RSS of a fresh racssrc process, 1 h of audio  : {:.1} MiB ({:.1} MiB before \
             the pipeline ran; {t2:.1} s)",
            p2 as f64 / 1024.0,
            s2 as f64 / 1024.0
        );
        println!(
            "difference of the peaks: {:.1} MiB (goal: within 20 MiB)",
            (p2 as f64 - p1 as f64) / 1024.0
        );
    }
}
