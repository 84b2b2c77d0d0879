// SPDX-License-Identifier: MPL-2.0
//! racssink on a server that crashes, restarts, stalls and is taken over: what it says was
//! stored, lost and dropped must be exactly what the server holds.
//!
//! Every case runs on racs-lite (which loses data as a real RACS v0.1.0 server does) or, with
//! `RACS_BIN`, on a fresh real server per test. The server's content is read back twice: with
//! EXTRACT, and block by block from its table files (the same format on both servers), which
//! gives every block's key, so stored times are checked against capture times without trusting
//! the writer's own arithmetic. Content is repetitive on purpose (silence, tones, clicks): a
//! block in the wrong place or stored twice cannot be found by its samples, only by counting.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{first_difference, TestServer};
use gst::prelude::*;
use racs_lite::client::{build_frame, show, RawClient};

const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Formats and signals

#[derive(Debug, Clone, Copy)]
struct Fmt {
    rate: u32,
    channels: u16,
    bits: u16,
}

impl Fmt {
    const fn new(rate: u32, channels: u16, bits: u16) -> Fmt {
        Fmt {
            rate,
            channels,
            bits,
        }
    }
    fn bpf(&self) -> usize {
        usize::from(self.channels) * usize::from(self.bits / 8)
    }
    fn bps(&self) -> u64 {
        u64::from(self.rate) * self.bpf() as u64
    }
    /// Bytes of `ms` milliseconds.
    fn ms(&self, ms: u64) -> usize {
        (u64::from(self.rate) * ms / 1000) as usize * self.bpf()
    }
    fn us_of(&self, bytes: u64) -> i64 {
        (u128::from(bytes) * 1_000_000 / u128::from(self.bps())) as i64
    }
}

/// Repetitive content of `len` bytes starting at byte `at` of the stream.
#[derive(Debug, Clone, Copy)]
enum Signal {
    Silence,
    Tone(f64),
    Clicks(u64),
    /// Silence with a tone burst every other second: long identical stretches.
    Bursts,
}

impl Signal {
    fn make(self, f: Fmt, at: usize, len: usize) -> Vec<u8> {
        let first = (at / f.bpf()) as u64;
        let frames = len / f.bpf();
        match self {
            Signal::Silence => common::silence(frames, f.channels, f.bits),
            Signal::Tone(hz) => common::tone(first, frames, f.rate, f.channels, f.bits, hz),
            Signal::Clicks(period) => common::clicks(first, frames, period, f.channels, f.bits),
            Signal::Bursts => {
                let mut out = Vec::with_capacity(len);
                let tone = common::tone(first, frames, f.rate, f.channels, f.bits, 440.0);
                for i in 0..frames {
                    let on = (first + i as u64) / u64::from(f.rate) % 2 == 1;
                    let b = &tone[i * f.bpf()..(i + 1) * f.bpf()];
                    if on {
                        out.extend_from_slice(b);
                    } else {
                        out.extend(std::iter::repeat_n(0u8, f.bpf()));
                    }
                }
                out
            }
        }
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

// ---------------------------------------------------------------------------------------
// Reading the server's tables from its data directory

thread_local! {
    /// When the server of this test was last down (after its kill or SHUTDOWN, before its
    /// restart): tables written before it hold the old timeline, after it the new one.
    static DOWN_AT: std::cell::Cell<Option<SystemTime>> = const { std::cell::Cell::new(None) };
}

/// Every block of stream `id` in the table files under `data_dir/.racs/seg`: (key, data), in
/// the order they were written: tables written before the server was last down first, then
/// by key (a table being written, `.tmp`, is skipped).
fn blocks_on_disk(data_dir: &Path, id: &str) -> Vec<(i64, Vec<u8>)> {
    let mut blocks = blocks_with_phase(data_dir, id);
    blocks.sort_by_key(|(phase, k, _)| (*phase, *k));
    blocks.into_iter().map(|(_, k, d)| (k, d)).collect()
}

/// (0 before the server was last down / 1 after, key, data) of every block of `id`.
fn blocks_with_phase(data_dir: &Path, id: &str) -> Vec<(u8, i64, Vec<u8>)> {
    fn walk(dir: &Path, hash: u64, out: &mut Vec<(u8, i64, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                walk(&path, hash, out);
            } else if !name.ends_with(".tmp") {
                if let Ok(bytes) = std::fs::read(&path) {
                    let written = e.metadata().and_then(|m| m.modified()).ok();
                    let phase = match (DOWN_AT.get(), written) {
                        (Some(down), Some(w)) if w > down => 1,
                        _ => 0,
                    };
                    let mut blocks = Vec::new();
                    parse_table(&bytes, hash, &mut blocks);
                    out.extend(blocks.into_iter().map(|(k, d)| (phase, k, d)));
                }
            }
        }
    }
    let hash = racs_lite::stream_hash(id.as_bytes());
    let mut out = Vec::new();
    walk(&data_dir.join(".racs").join("seg"), hash, &mut out);
    out
}

/// A table: 16-byte header, entries (u64 hash, u64 key, u32 crc, u16 len, u8 flags, data),
/// an index, and a u16 entry count at the end.
fn parse_table(b: &[u8], hash: u64, out: &mut Vec<(i64, Vec<u8>)>) {
    if b.len() < 18 {
        return;
    }
    let count = u16::from_le_bytes([b[b.len() - 2], b[b.len() - 1]]) as usize;
    let mut at = 16;
    for _ in 0..count {
        if at + 23 > b.len() {
            return;
        }
        let h = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let key = i64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap());
        let len = u16::from_le_bytes([b[at + 20], b[at + 21]]) as usize;
        let data = &b[at + 23..(at + 23 + len).min(b.len())];
        if h == hash {
            out.push((key, data.to_vec()));
        }
        at += 23 + len;
    }
}

/// Pushes every block still in the server's in-memory table out to its table files (a filler
/// stream of `entries + 1` small frames), and waits until each of `ids` has `want[i]` bytes
/// on disk.
fn flush_to_disk(srv: &TestServer, ids: &[(&str, usize)]) {
    let mut c = RawClient::connect(srv.addr()).unwrap();
    let filler = format!("zz-filler-{}", now_us());
    c.command(&format!("CREATE '{filler}' 8000 1 16")).unwrap();
    c.command(&format!("OPEN '{filler}'")).unwrap();
    let session = [7u8; 16];
    for _ in 0..=srv.config().entries {
        let r = c.frame(&build_frame(&session, filler.as_bytes(), &[0u8; 160]));
        assert_eq!(show(&r.unwrap()), r#"["null"]"#);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for &(id, want) in ids {
        loop {
            let have: usize = blocks_on_disk(srv.data_dir(), id)
                .iter()
                .map(|(_, d)| d.len())
                .sum();
            if have >= want || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------------------
// One racssink, fed from the test

/// A racssink in its own pipeline, fed through a pad from the test: as fast as it takes
/// (an import) or paced by the pipeline clock with capture timestamps (a live source, which
/// also answers the latency query as live).
struct Rig {
    id: String,
    fmt: Fmt,
    signal: Signal,
    live: bool,
    pipeline: gst::Pipeline,
    sink: gst::Element,
    pad: gst::Pad,
    pushed: AtomicU64,
    fed: Mutex<Vec<u8>>,
    /// Wall-clock µs of running time 0 (live rigs).
    wall0_us: i64,
}

impl Rig {
    /// A rig writing stream `id` to `srv`; `props` are set after host, port and stream-id
    /// (a `port` there points it at a relay in front of the server).
    fn new(
        srv: &TestServer,
        id: &str,
        fmt: Fmt,
        signal: Signal,
        live: bool,
        props: &[(&str, &str)],
    ) -> Rig {
        let sink = common::racssink(srv, id, props);
        // No preroll: the pipeline is PLAYING (with its clock) before the first buffer.
        sink.set_property("async", false);
        let pipeline = gst::Pipeline::new();
        pipeline.add(&sink).unwrap();
        let pad = gst::Pad::builder(gst::PadDirection::Src)
            .name("feed")
            .query_function(move |_pad, _parent, query| match query.view_mut() {
                gst::QueryViewMut::Latency(q) if live => {
                    q.set(true, gst::ClockTime::from_mseconds(10), None);
                    true
                }
                _ => false,
            })
            .build();
        pad.set_active(true).unwrap();
        pad.link(&sink.static_pad("sink").unwrap()).unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        assert!(pad.push_event(gst::event::StreamStart::new(id)));
        assert!(pad.push_event(gst::event::Caps::new(&common::caps(
            fmt.rate,
            fmt.channels,
            fmt.bits
        ))));
        let segment = gst::FormattedSegment::<gst::ClockTime>::new();
        assert!(pad.push_event(gst::event::Segment::new(&segment)));
        let clock = pipeline.clock().expect("a playing pipeline has a clock");
        let base = pipeline.base_time().unwrap();
        let wall0_us = now_us() - (clock.time().nseconds() as i64 - base.nseconds() as i64) / 1000;
        Rig {
            id: id.to_string(),
            fmt,
            signal,
            live,
            pipeline,
            sink,
            pad,
            pushed: AtomicU64::new(0),
            fed: Mutex::new(Vec::new()),
            wall0_us,
        }
    }

    fn running_time(&self) -> gst::ClockTime {
        let clock = self.pipeline.clock().unwrap();
        clock.time() - self.pipeline.base_time().unwrap()
    }

    /// Pushes the next `len` bytes of the signal (live: once the clock has passed their end).
    fn push(&self, len: usize) -> Result<gst::FlowSuccess, gst::FlowError> {
        let at = self.pushed.load(Ordering::SeqCst) as usize;
        let data = self.signal.make(self.fmt, at, len);
        let pts = gst::ClockTime::from_useconds(self.fmt.us_of(at as u64) as u64);
        let dur = gst::ClockTime::from_useconds(self.fmt.us_of(len as u64) as u64);
        if self.live {
            let end = pts + dur;
            let now = self.running_time();
            if end > now {
                std::thread::sleep(Duration::from_nanos((end - now).nseconds()));
            }
        }
        self.fed.lock().unwrap().extend_from_slice(&data);
        self.pushed.fetch_add(len as u64, Ordering::SeqCst);
        let mut buffer = gst::Buffer::from_slice(data);
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(pts);
            b.set_duration(dur);
        }
        self.pad.push(buffer)
    }

    /// Pushes `total` bytes in buffers of `buf` bytes; stops at the first flow error.
    fn push_all(&self, total: usize, buf: usize) -> Result<(), gst::FlowError> {
        let mut left = total;
        while left > 0 {
            let n = left.min(buf);
            self.push(n)?;
            left -= n;
        }
        Ok(())
    }

    fn stats(&self) -> gst::Structure {
        self.sink.property::<gst::Structure>("stats")
    }

    #[allow(dead_code)]
    fn stat(&self, name: &str) -> u64 {
        self.stats().get::<u64>(name).unwrap()
    }

    /// EOS (unless the run already failed), then everything the run left behind.
    fn finish(self, eos: bool) -> Run {
        let bus = self.pipeline.bus().unwrap();
        let ended = if eos {
            self.pad.push_event(gst::event::Eos::new());
            common::wait_end(&bus, WAIT)
        } else {
            let mut messages = Vec::new();
            while let Some(m) = bus.pop() {
                messages.push(m);
            }
            let error = messages.iter().find_map(|m| match m.view() {
                gst::MessageView::Error(e) => Some((
                    e.error(),
                    e.debug().map(|d| d.to_string()).unwrap_or_default(),
                )),
                _ => None,
            });
            common::Ended { messages, error }
        };
        let stats = self.stats();
        self.pipeline.set_state(gst::State::Ready).unwrap();
        let mut messages = ended.messages;
        while let Some(m) = bus.pop() {
            messages.push(m);
        }
        self.pipeline.set_state(gst::State::Null).unwrap();
        common::assert_tidy_messages(&messages);
        Run {
            id: self.id,
            fmt: self.fmt,
            live: self.live,
            fed: self.fed.into_inner().unwrap(),
            error: ended.error.map(|(e, d)| format!("{e} | {d}")),
            messages,
            stats,
            wall0_us: self.wall0_us,
        }
    }
}

/// What one racssink run left behind.
struct Run {
    id: String,
    fmt: Fmt,
    live: bool,
    fed: Vec<u8>,
    error: Option<String>,
    messages: Vec<gst::Message>,
    stats: gst::Structure,
    wall0_us: i64,
}

/// One `racssink-loss` message.
#[derive(Debug, Clone)]
struct Reported {
    kind: String,
    input: u64,
    bytes: u64,
    start_us: i64,
    duration: u64,
}

impl Run {
    fn stat(&self, name: &str) -> u64 {
        self.stats.get::<u64>(name).unwrap()
    }

    fn structures(&self, name: &str) -> Vec<gst::Structure> {
        common::element_structures(&self.messages, name)
    }

    fn losses(&self) -> Vec<Reported> {
        let mut out: Vec<Reported> = self
            .structures("racssink-loss")
            .iter()
            .map(|s| Reported {
                kind: s.get::<String>("kind").unwrap(),
                input: s.get::<u64>("input-offset").unwrap(),
                bytes: s.get::<u64>("bytes").unwrap(),
                start_us: s.get::<i64>("start-us").unwrap(),
                duration: s.get::<u64>("duration").unwrap(),
            })
            .collect();
        out.sort_by_key(|r| r.input);
        out
    }

    fn reported(&self, kind: &str) -> u64 {
        self.losses()
            .iter()
            .filter(|l| l.kind == kind)
            .map(|l| l.bytes)
            .sum()
    }

    fn warnings(&self) -> Vec<String> {
        common::warning_texts(&self.messages)
    }

    /// The input ranges kept: what was fed minus every reported loss and drop.
    fn kept(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = 0u64;
        for l in self.losses() {
            assert!(
                l.input >= at,
                "{}: overlapping loss reports {:?}",
                self.id,
                self.losses()
            );
            if l.input > at {
                out.push((at, l.input - at));
            }
            at = l.input + l.bytes;
        }
        if (self.fed.len() as u64) > at {
            out.push((at, self.fed.len() as u64 - at));
        }
        out
    }

    fn expected(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (at, len) in self.kept() {
            out.extend_from_slice(&self.fed[at as usize..(at + len) as usize]);
        }
        out
    }

    /// The input offset of stored byte `pos` (through [`Run::kept`]).
    fn input_of(&self, kept: &[(u64, u64)], mut pos: u64) -> u64 {
        for &(at, len) in kept {
            if pos < len {
                return at + pos;
            }
            pos -= len;
        }
        panic!("{}: stored byte {pos} beyond what was fed", self.id);
    }
}

/// The stored blocks of a run as (stored time µs - capture time µs) of their first and last
/// sample, after checking that the stream holds exactly what was fed minus what was reported
/// lost or dropped, and that the stats say the same.
fn check(srv: &TestServer, run: &Run) -> Vec<(i64, i64)> {
    eprintln!(
        "{}: fed {} bytes; server lost {}, re-sent {}, lost {}, dropped {}; losses {:?}",
        run.id,
        run.fed.len(),
        run.stat("server-lost-bytes"),
        run.stat("replayed-bytes"),
        run.stat("lost-acked-bytes"),
        run.stat("dropped-bytes"),
        run.losses()
    );
    assert!(run.error.is_none(), "{}: {:?}", run.id, run.error);
    let want = run.expected();
    // Through EXTRACT: as many bytes (its order is the order of the table names, which
    // need not be the stream's when several streams write at once, contract section 3)...
    let got = common::read_back(srv.addr(), &run.id, run.fmt.bits, want.len());
    assert_eq!(
        got.len(),
        want.len(),
        "{}: EXTRACT; losses reported: {:?}; stats: {}",
        run.id,
        run.losses(),
        run.stats
    );
    // ...and block by block from the table files, in key order: exactly these bytes.
    flush_to_disk(srv, &[(&run.id, want.len())]);
    let blocks = blocks_on_disk(srv.data_dir(), &run.id);
    let disk: Vec<u8> = blocks.iter().flat_map(|(_, d)| d.clone()).collect();
    // Times go on from the old timeline to the new one, unless the writer said they overlap
    // (a kill while an import ran ahead of the wall clock).
    let phases = blocks_with_phase(srv.data_dir(), &run.id);
    let old_end = phases.iter().filter(|b| b.0 == 0).map(|b| b.1).max();
    let new_start = phases.iter().filter(|b| b.0 == 1).map(|b| b.1).min();
    if let (Some(old_end), Some(new_start)) = (old_end, new_start) {
        if new_start <= old_end {
            assert!(
                run.warnings()
                    .iter()
                    .any(|w| w.contains("restarted the timeline")),
                "{}: the new timeline starts at {new_start}, before the old one's end {old_end}, \
                 and nothing said so",
                run.id
            );
        }
    }
    if let Some(d) = first_difference(&disk, &want) {
        let layout: Vec<(u8, i64, usize)> = blocks_with_phase(srv.data_dir(), &run.id)
            .iter()
            .map(|(p, k, d)| (*p, *k, d.len()))
            .take(8)
            .collect();
        panic!(
            "{}: table files: {d}; losses: {:?}; first blocks (phase, key, len): {layout:?}",
            run.id,
            run.losses()
        );
    }
    assert_eq!(
        run.stat("lost-acked-bytes"),
        run.reported("lost"),
        "{}: {}",
        run.id,
        run.stats
    );
    assert_eq!(
        run.stat("dropped-bytes"),
        run.reported("dropped"),
        "{}",
        run.id
    );
    for l in run.losses() {
        assert_eq!(
            l.duration,
            (u128::from(l.bytes) * 1_000_000_000 / u128::from(run.fmt.bps())) as u64
        );
        if l.kind == "dropped" {
            // A drop is reported at its capture time.
            let capture = run.wall0_us + run.fmt.us_of(l.input);
            assert!((l.start_us - capture).abs() <= 1000, "{l:?} vs {capture}");
        }
    }
    let kept = run.kept();
    let mut pos = 0u64;
    let mut diffs = Vec::new();
    for (key, data) in &blocks {
        if data.is_empty() {
            continue;
        }
        let first = run.input_of(&kept, pos);
        let last = run.input_of(&kept, pos + data.len() as u64 - 1);
        assert_eq!(
            last - first,
            data.len() as u64 - 1,
            "{}: a block spans a loss",
            run.id
        );
        let capture = run.wall0_us + run.fmt.us_of(first);
        diffs.push((key * 1000 - capture, first as i64));
        pos += data.len() as u64;
    }
    diffs
}

/// keep-time: every stored sample within 50 ms of its capture time.
fn assert_on_time(run: &Run, diffs: &[(i64, i64)]) {
    assert!(run.live);
    for &(d, input) in diffs {
        assert!(
            d.abs() <= 50_000,
            "{}: the block from input byte {input} is stored {:.1} ms from its capture time; \
             losses {:?}",
            run.id,
            d as f64 / 1000.0,
            run.losses()
        );
    }
}

/// keep-audio: every stored sample at or after its capture time (1 ms for key truncation).
fn assert_not_early(run: &Run, diffs: &[(i64, i64)]) {
    for &(d, input) in diffs {
        assert!(
            d >= -1000,
            "{}: input byte {input} stored {:.1} ms before its capture",
            run.id,
            d as f64 / 1000.0
        );
    }
}

fn restart_messages(run: &Run) -> Vec<(u64, u64, bool)> {
    run.structures("racssink-restart")
        .iter()
        .map(|s| {
            (
                s.get::<u64>("server-lost-bytes").unwrap(),
                s.get::<u64>("replayed-bytes").unwrap(),
                s.get::<bool>("new-timeline").unwrap(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Scenarios: several streams of repetitive content, a fault on the server while they are
// written, and what every run must show. One table of scenarios, one runner, one set of
// checks derived from each scenario's settings.

/// What happens to the server.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// kill -9 and a restart: the in-memory table is lost and the stream gets a new timeline.
    Kill,
    /// SHUTDOWN from another client and a restart: the in-memory table is lost, the stream's
    /// size and ref (its timeline) are kept.
    Shutdown,
}

/// When the fault comes.
#[derive(Debug, Clone, Copy)]
enum When {
    /// Every stream is fed `before_ms` of audio in 20 ms buffers, then (while they wait) the
    /// fault, then `after_ms` more and EOS.
    Between { before_ms: u64, after_ms: u64 },
    /// Every stream is fed `total_ms` as fast as it takes, from its own thread; the fault comes
    /// once the first stream has a quarter of it acknowledged, whatever is in flight.
    MidImport { total_ms: u64 },
}

/// The server of a scenario.
#[derive(Debug, Clone, Copy)]
enum Srv {
    /// Tables of this many blocks, colliding tables kept ([`server`]).
    Entries(usize),
    /// The default server (tables of 40 blocks), as a user runs it.
    Default,
}

/// racssink's `replay-window`.
#[derive(Debug, Clone, Copy)]
enum Window {
    /// The default, `auto`: two server tables of frames (80 frames).
    Auto,
    /// `0`: nothing kept for re-sending.
    Off,
    /// A time.
    Ms(u64),
    /// A size in MiB.
    MiB(u64),
}

impl Window {
    /// The property value, unless the default.
    fn prop(self) -> Option<String> {
        match self {
            Window::Auto => None,
            Window::Off => Some("0".into()),
            Window::Ms(ms) => Some(format!("{ms}ms")),
            Window::MiB(n) => Some(format!("{n}MiB")),
        }
    }

    /// Bytes it holds of a stream of `fmt` written in frames of `chunk` bytes.
    fn bytes(self, fmt: Fmt, chunk: usize) -> u64 {
        match self {
            Window::Auto => 80 * chunk as u64,
            Window::Off => 0,
            Window::Ms(ms) => fmt.ms(ms) as u64,
            Window::MiB(n) => n << 20,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    /// Stream ids are `<name>-<index>`.
    name: &'static str,
    server: Srv,
    streams: &'static [(Fmt, Signal)],
    /// Live rigs (paced by the clock, capture timestamps) or imports.
    live: bool,
    /// `recovery-policy`, when not the default (auto).
    policy: Option<&'static str>,
    window: Window,
    /// `chunk-size` in bytes; by default 100 ms of audio (equal block durations keep the
    /// tables of different streams from starting at the same key).
    chunk: Option<usize>,
    fault: Fault,
    when: When,
    /// How long after the last push the fault comes (lets a table being written land).
    quiet: Duration,
    /// How long the server stays down.
    outage: Duration,
    /// keep-time after a kill: at least this much of the audio fed after the fault is stored.
    stored_after_ms: Option<u64>,
    /// At most this many bytes of each stream lost by the server (what one table holds).
    server_loss_at_most: Option<u64>,
}

impl Scenario {
    fn chunk(&self, fmt: Fmt) -> usize {
        self.chunk.unwrap_or_else(|| fmt.ms(100))
    }

    /// The policy racssink settles on: auto is keep-time for a live source.
    fn policy(&self) -> &'static str {
        match (self.policy, self.live) {
            (Some(p), _) => p,
            (None, true) => "keep-time",
            (None, false) => "keep-audio",
        }
    }

    /// Bytes of a stream that racssink re-sends at most after the server lost them.
    fn resend_cap(&self, fmt: Fmt) -> u64 {
        if self.policy() == "keep-time" {
            0
        } else {
            self.window.bytes(fmt, self.chunk(fmt))
        }
    }
}

const F8K: Fmt = Fmt::new(8000, 1, 16);
const F16K2: Fmt = Fmt::new(16000, 2, 16);
const F48K24: Fmt = Fmt::new(48000, 1, 24);
const F44K2: Fmt = Fmt::new(44100, 2, 16);

const fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Three imports into a server with 16-block tables: 3 x 10 blocks, one table written and 14
/// blocks in the server's memory when the fault comes.
const KILL_MID: Scenario = Scenario {
    name: "kill-mid",
    server: Srv::Entries(16),
    streams: &[
        (F8K, Signal::Silence),
        (F16K2, Signal::Tone(441.0)),
        (F48K24, Signal::Clicks(4800)),
    ],
    live: false,
    policy: None,
    window: Window::Auto,
    chunk: None,
    fault: Fault::Kill,
    when: When::Between {
        before_ms: 1000,
        after_ms: 1000,
    },
    quiet: ms(400),
    outage: ms(300),
    stored_after_ms: None,
    server_loss_at_most: None,
};

/// 9 blocks into 8-block tables: the first table is being written when the server dies, the
/// 9th block is in memory.
const KILL_FLUSH: Scenario = Scenario {
    name: "kill-flush",
    server: Srv::Entries(8),
    streams: &[(F8K, Signal::Bursts)],
    when: When::Between {
        before_ms: 900,
        after_ms: 500,
    },
    quiet: Duration::ZERO,
    outage: ms(100),
    ..KILL_MID
};

const SHUTDOWN: Scenario = Scenario {
    name: "shutdown",
    fault: Fault::Shutdown,
    when: When::Between {
        before_ms: 1000,
        after_ms: 700,
    },
    outage: ms(200),
    ..KILL_MID
};

const LIVE: Scenario = Scenario {
    name: "live-kill",
    streams: &[(F8K, Signal::Clicks(400)), (F16K2, Signal::Bursts)],
    live: true,
    when: When::Between {
        before_ms: 1500,
        after_ms: 3500,
    },
    quiet: ms(300),
    outage: ms(700),
    // Audio from the live edge on is stored, on time, on the new timeline.
    stored_after_ms: Some(1000),
    ..KILL_MID
};

/// A fast import outruns the server's table writes: a kill can lose more than the default
/// window (two tables) holds.
const IMPORT: Scenario = Scenario {
    name: "import",
    server: Srv::Entries(40),
    streams: &[(F16K2, Signal::Tone(441.0)), (F8K, Signal::Bursts)],
    when: When::MidImport { total_ms: 30_000 },
    quiet: Duration::ZERO,
    ..KILL_MID
};

const SCENARIOS: &[Scenario] = &[
    KILL_MID,
    Scenario {
        name: "kill-exact",
        window: Window::Off,
        ..KILL_MID
    },
    KILL_FLUSH,
    // A window of 4 blocks: what it holds is re-sent, the rest is reported exactly.
    Scenario {
        name: "kill-flush-small",
        streams: &[(F8K, Signal::Clicks(800))],
        window: Window::Ms(400),
        ..KILL_FLUSH
    },
    // Nothing is sent after the restart but the CLOSE, which finds the stream not open.
    Scenario {
        name: "kill-at-eos",
        streams: &[(F8K, Signal::Tone(250.0)), (F16K2, Signal::Silence)],
        when: When::Between {
            before_ms: 1000,
            after_ms: 0,
        },
        quiet: ms(300),
        outage: ms(200),
        ..KILL_MID
    },
    SHUTDOWN,
    Scenario {
        name: "shutdown-exact",
        window: Window::Off,
        ..SHUTDOWN
    },
    LIVE,
    Scenario {
        name: "live-audio",
        streams: &[(F8K, Signal::Tone(1000.0)), (F48K24, Signal::Silence)],
        policy: Some("keep-audio"),
        when: When::Between {
            before_ms: 1500,
            after_ms: 1000,
        },
        outage: ms(500),
        stored_after_ms: None,
        ..LIVE
    },
    Scenario {
        name: "live-shutdown",
        streams: &[(F16K2, Signal::Clicks(1600)), (F8K, Signal::Silence)],
        fault: Fault::Shutdown,
        when: When::Between {
            before_ms: 1500,
            after_ms: 1500,
        },
        outage: ms(400),
        stored_after_ms: None,
        ..LIVE
    },
    // As first seen on a real server: a live recording in 4096-byte (23 ms) blocks, a server
    // with its default 40-block table, killed and back after a second.
    Scenario {
        name: "issue",
        server: Srv::Default,
        streams: &[(F44K2, Signal::Bursts)],
        chunk: Some(4096),
        when: When::Between {
            before_ms: 2000,
            after_ms: 3500,
        },
        outage: ms(1000),
        stored_after_ms: None,
        server_loss_at_most: Some(40 * 4096),
        ..LIVE
    },
    // A window of 16 MiB covers the import's loss; the default re-sends what it holds and
    // reports the rest; none reports all of it.
    Scenario {
        name: "import-big",
        window: Window::MiB(16),
        ..IMPORT
    },
    IMPORT,
    Scenario {
        name: "import-exact",
        window: Window::Off,
        ..IMPORT
    },
];

/// A server with tables of `entries` blocks. Two tables whose first blocks have the same key
/// overwrite each other on a real server, a silent loss of acknowledged data no writer can
/// see; streams restarted together can get equal keys, so racs-lite keeps both tables here
/// (the real server does not: the multi-stream cases can meet that loss there).
fn server(entries: usize) -> TestServer {
    TestServer::start_with(|c| {
        c.entries = entries;
        c.keep_colliding_tables = true;
    })
}

/// Runs the named scenarios one after another on one server (the first one's), each with
/// every check of [`expect`].
fn run_scenarios(names: &[&str]) {
    let find = |name: &str| {
        SCENARIOS
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no scenario {name}"))
    };
    let mut srv = match find(names[0]).server {
        Srv::Entries(n) => server(n),
        Srv::Default => TestServer::start(),
    };
    for name in names {
        let sc = find(name);
        let runs = run_scenario(&mut srv, sc);
        let mut server_lost = 0;
        for run in &runs {
            let diffs = check(&srv, run);
            expect(&srv, sc, run, &diffs);
            server_lost += run.stat("server-lost-bytes");
        }
        assert!(
            server_lost > 0,
            "{name}: the {:?} lost the in-memory table",
            sc.fault
        );
    }
}

/// The fault of `sc` on the server, after its quiet time.
fn fault(srv: &mut TestServer, sc: &Scenario) {
    std::thread::sleep(sc.quiet);
    match sc.fault {
        Fault::Kill => srv.kill(),
        Fault::Shutdown => srv.shutdown(),
    }
    DOWN_AT.set(Some(SystemTime::now()));
    std::thread::sleep(sc.outage);
    srv.start_again();
}

/// One rig per stream of `sc`, fed and faulted as `sc.when` says; the finished runs.
fn run_scenario(srv: &mut TestServer, sc: &Scenario) -> Vec<Run> {
    let window = sc.window.prop();
    let rigs: Vec<Arc<Rig>> = sc
        .streams
        .iter()
        .enumerate()
        .map(|(i, &(fmt, signal))| {
            let chunk = sc.chunk(fmt).to_string();
            let mut props = vec![("chunk-size", chunk.as_str()), ("retry-timeout", "20000")];
            if let Some(w) = &window {
                props.push(("replay-window", w));
            }
            if let Some(p) = sc.policy {
                props.push(("recovery-policy", p));
            }
            Arc::new(Rig::new(
                srv,
                &format!("{}-{i}", sc.name),
                fmt,
                signal,
                sc.live,
                &props,
            ))
        })
        .collect();
    let feed = |rigs: &[Arc<Rig>], ms: u64| -> Vec<std::thread::JoinHandle<_>> {
        rigs.iter()
            .map(|r| {
                let r = r.clone();
                std::thread::spawn(move || r.push_all(r.fmt.ms(ms), r.fmt.ms(20)))
            })
            .collect()
    };
    let join = |threads: Vec<std::thread::JoinHandle<Result<(), gst::FlowError>>>| {
        for t in threads {
            t.join().unwrap().expect("pushing");
        }
    };
    match sc.when {
        When::Between {
            before_ms,
            after_ms,
        } => {
            join(feed(&rigs, before_ms));
            fault(srv, sc);
            join(feed(&rigs, after_ms));
        }
        When::MidImport { total_ms } => {
            let threads = feed(&rigs, total_ms);
            let deadline = Instant::now() + WAIT;
            let quarter = rigs[0].fmt.ms(total_ms) as u64 / 4;
            while rigs[0].stat("bytes-acked") < quarter {
                assert!(Instant::now() < deadline, "the import did not progress");
                std::thread::sleep(Duration::from_millis(2));
            }
            fault(srv, sc);
            join(threads);
        }
    }
    rigs.into_iter()
        .map(|r| Arc::into_inner(r).unwrap().finish(true))
        .collect()
}

fn policy_of(run: &Run) -> String {
    run.structures("racssink-ref")[0]
        .get::<String>("recovery-policy")
        .unwrap()
}

/// What a run of `sc` must show beyond [`check`] (which `diffs` come from): the policy, what
/// was re-sent and reported, the warnings, the timeline and where audio lies on it.
fn expect(srv: &TestServer, sc: &Scenario, run: &Run, diffs: &[(i64, i64)]) {
    let id = &run.id;
    let policy = sc.policy();
    assert_eq!(policy_of(run), policy, "{id}: auto follows the source");
    let (server_lost, replayed, lost) = (
        run.stat("server-lost-bytes"),
        run.stat("replayed-bytes"),
        run.stat("lost-acked-bytes"),
    );
    // The window re-sends what it holds of the server's newest lost blocks; the rest is
    // reported lost. A loss with stored audio after it (the real server writes tables from
    // detached threads, so a kill can lose an older table while a newer one survives) is not
    // re-sent, which would put it after that audio: it is reported in its place. `check`
    // compares the stored stream with what was fed less every reported loss, in place.
    let resendable = server_lost.min(sc.resend_cap(run.fmt));
    assert!(replayed <= resendable, "{id}: {}", run.stats);
    let middle = replayed < resendable;
    if middle {
        assert!(
            run.losses().iter().any(|l| l.kind == "lost"),
            "{id}: less re-sent than the window holds, and no loss reported: {}",
            run.stats
        );
    }
    assert_eq!(lost, server_lost - replayed, "{id}: {}", run.stats);
    if let Some(most) = sc.server_loss_at_most {
        assert!(server_lost <= most, "{id}: {}", run.stats);
    }
    if lost == 0 && policy == "keep-audio" {
        assert!(run.expected() == run.fed, "{id}: nothing may be missing");
    }
    if !sc.live {
        // An import's loss is the server's newest blocks not re-sent: one range of whole
        // blocks, ending (before what was re-sent) where the fault came.
        let losses = run.losses();
        assert!(middle || losses.len() <= 1, "{id}: {losses:?}");
        for l in &losses {
            assert_eq!(l.kind, "lost", "{id}: {losses:?}");
            assert_eq!(l.bytes % sc.chunk(run.fmt) as u64, 0, "{id}: whole blocks");
            if let (When::Between { before_ms, .. }, false) = (sc.when, middle) {
                assert_eq!(
                    l.input + l.bytes + replayed,
                    run.fmt.ms(before_ms) as u64,
                    "{id}: {losses:?}"
                );
            }
        }
    }
    let warnings = run.warnings();
    if lost > 0 {
        let why = if policy == "keep-time" {
            "keep-time re-sends nothing"
        } else {
            "replay-window"
        };
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("lost {lost} bytes"))
                    && w.contains(&format!("'{id}'"))
                    && w.contains(why)),
            "{id}: {warnings:?}"
        );
    }
    if lost == 0 && run.stat("dropped-bytes") == 0 {
        // No loss to warn about (an import ahead of the wall clock may overlap timelines).
        assert!(
            warnings.iter().all(|w| w.contains("restarted the timeline")
                || w.contains("Lost the connection")
                || w.contains("restarted while stream")),
            "{id}: {warnings:?}"
        );
    }
    let restarts = restart_messages(run);
    match sc.fault {
        Fault::Kill => {
            assert_eq!(restarts.len(), 1, "{id}: one restart");
            assert!(restarts[0].2, "{id}: a kill starts a new timeline");
        }
        Fault::Shutdown => {
            // SHUTDOWN persisted size and ref: the timeline goes on (with a hole where the
            // server lost audio).
            assert!(restarts.iter().all(|r| !r.2), "{id}: {restarts:?}");
            if !sc.live && sc.resend_cap(run.fmt) == 0 {
                // INFO size still counts what the server lost; the report may not.
                let size = common::info_raw(srv.addr(), id, "size").unwrap() as u64;
                assert_eq!(
                    size,
                    run.fed.len() as u64,
                    "{id}: the server's size counts the lost bytes too"
                );
            }
        }
    }
    if !sc.live {
        return;
    }
    if policy == "keep-time" {
        assert_on_time(run, diffs);
        if sc.fault == Fault::Kill {
            // The outage (and the wait for the truth) is a backlog: dropped, and said so.
            assert!(
                run.stat("dropped-bytes") >= run.fmt.ms(sc.outage.as_millis() as u64) as u64,
                "{id}: {}",
                run.stats
            );
            assert!(
                warnings.iter().any(|w| w.contains("keep-time dropped")),
                "{id}: {warnings:?}"
            );
        }
        if let (Some(want), When::Between { before_ms, .. }) = (sc.stored_after_ms, sc.when) {
            let after = run.fmt.ms(before_ms) as u64;
            let stored_after: u64 = run
                .kept()
                .iter()
                .map(|&(at, len)| (at + len).saturating_sub(at.max(after)))
                .sum();
            assert!(
                stored_after >= run.fmt.ms(want) as u64,
                "{id}: {stored_after}"
            );
        }
    } else {
        assert_not_early(run, diffs);
        if sc.fault == Fault::Kill {
            // The new timeline starts after the outage: what follows lags its capture by it.
            let outage_us = sc.outage.as_micros() as i64;
            let lag = run.structures("racssink-lag");
            assert_eq!(lag.len(), 1, "{id}");
            let lag_us = lag[0].get::<i64>("lag-us").unwrap();
            assert!(lag_us >= outage_us, "{id}: lag {lag_us} us");
            let last = diffs.last().unwrap().0;
            assert!(last >= outage_us, "{id}: still {last} us late at the end");
        }
    }
}

/// One `#[test]` per group of scenarios run one after another on one server.
macro_rules! scenario_tests {
    ($($test:ident: [$($name:literal),+];)+) => {
        $(
            #[test]
            fn $test() {
                run_scenarios(&[$($name),+]);
            }
        )+
    };
}

scenario_tests! {
    // Kills and SHUTDOWNs between two frames.
    a_kill_mid_table_loses_nothing_acknowledged_the_window_covers: ["kill-mid"];
    a_kill_mid_table_without_a_window_reports_the_exact_loss: ["kill-exact"];
    a_kill_right_after_a_table_flush_loses_more_than_a_table_and_the_window_covers_it:
        ["kill-flush", "kill-flush-small"];
    a_kill_between_the_last_frame_and_eos_is_found_at_close: ["kill-at-eos"];
    a_shutdown_from_another_client_is_no_silent_loss: ["shutdown", "shutdown-exact"];
    // Live sources: where the audio goes on the server's new timeline.
    a_live_source_keeps_time_through_a_kill_dropping_the_backlog_exactly: ["live-kill"];
    keep_audio_on_a_live_source_stores_everything_later_than_captured: ["live-audio"];
    a_live_source_keeps_time_through_a_shutdown_the_timeline_goes_on: ["live-shutdown"];
    the_issue_case_live_44k_stereo_23ms_blocks_default_table_kill_and_restart: ["issue"];
}

/// A kill in the middle of a fast import, frames in flight: a fresh server for each window.
#[test]
fn a_kill_during_a_fast_import_is_reported_exactly() {
    for name in ["import-big", "import", "import-exact"] {
        run_scenarios(&[name]);
    }
}

#[test]
fn the_default_policy_follows_the_kind_of_source() {
    let srv = TestServer::start();
    for (live, want) in [(true, "keep-time"), (false, "keep-audio")] {
        let id = format!("default-policy-{live}");
        let pipeline = gst::parse::launch(&format!(
            "audiotestsrc is-live={live} num-buffers=20 ! audio/x-raw,format=S16LE,rate=8000,\
             channels=1 ! racssink name=sink host={} port={} stream-id={id}",
            srv.host(),
            srv.port()
        ))
        .unwrap();
        common::init();
        let ended = common::play_to_eos(&pipeline);
        let refs = ended.element_messages("racssink-ref");
        assert_eq!(
            refs[0].get::<String>("recovery-policy").unwrap(),
            want,
            "is-live={live}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Takeover

/// Watches a server's table files while a test runs, for tables replaced under their name.
///
/// A table file is named after the millisecond of its first block; the real server (and
/// racs-lite, which copies it) renames a second table with the same name over the first,
/// whose blocks are then gone although the server acknowledged them (contract section 5). A
/// rename gives the path a new inode: seen between two polls, that is the overwrite, named
/// with what the replaced table held.
struct TableWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Table files seen so far, each name counted once per inode.
    versions: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<Overwrite>>>,
}

/// Every table file seen: its inode and (stream hash, entries) of what it held.
type SeenTables = std::collections::HashMap<std::path::PathBuf, (u64, Vec<(u64, usize)>)>;

/// A table file replaced by another table of the same name.
struct Overwrite {
    /// The path under `.racs/seg` (the first block's time).
    name: String,
    /// (stream hash, entries) of the table replaced, and of the one that replaced it.
    before: Vec<(u64, usize)>,
    after: Vec<(u64, usize)>,
}

impl Overwrite {
    /// Entries of stream `hash` the replaced table held.
    fn lost_of(&self, hash: u64) -> usize {
        self.before
            .iter()
            .filter(|(h, _)| *h == hash)
            .map(|(_, n)| *n)
            .sum()
    }

    /// What was replaced, `hash`'s entries named as `id`'s.
    fn describe(&self, hash: u64, id: &str) -> String {
        let show = |t: &[(u64, usize)]| {
            t.iter()
                .map(|(h, n)| {
                    if *h == hash {
                        format!("{n} of '{id}'")
                    } else {
                        format!("{n} of stream {h}")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "table {} holding {} entries ({}) replaced by one holding {}",
            self.name,
            self.before.iter().map(|(_, n)| n).sum::<usize>(),
            show(&self.before),
            show(&self.after)
        )
    }
}

impl TableWatch {
    fn start(data_dir: &Path) -> TableWatch {
        use std::os::unix::fs::MetadataExt;
        fn entries_by_stream(bytes: &[u8]) -> Vec<(u64, usize)> {
            let mut out: Vec<(u64, usize)> = Vec::new();
            if bytes.len() < 18 {
                return out;
            }
            let count = u16::from_le_bytes([bytes[bytes.len() - 2], bytes[bytes.len() - 1]]);
            let mut at = 16;
            for _ in 0..count {
                if at + 23 > bytes.len() {
                    break;
                }
                let h = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
                let len = u16::from_le_bytes([bytes[at + 20], bytes[at + 21]]) as usize;
                match out.iter_mut().find(|(x, _)| *x == h) {
                    Some((_, n)) => *n += 1,
                    None => out.push((h, 1)),
                }
                at += 23 + len;
            }
            out
        }
        fn walk(
            dir: &Path,
            seg: &Path,
            seen: &mut SeenTables,
            found: &mut Vec<Overwrite>,
            versions: &AtomicU64,
        ) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let path = e.path();
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if meta.is_dir() {
                    walk(&path, seg, seen, found, versions);
                    continue;
                }
                if path.to_string_lossy().ends_with(".tmp") {
                    continue;
                }
                let ino = meta.ino();
                if seen.get(&path).is_some_and(|(i, _)| *i == ino) {
                    continue;
                }
                let content = std::fs::read(&path)
                    .map(|b| entries_by_stream(&b))
                    .unwrap_or_default();
                versions.fetch_add(1, Ordering::SeqCst);
                if let Some((_, before)) = seen.insert(path.clone(), (ino, content.clone())) {
                    found.push(Overwrite {
                        name: path
                            .strip_prefix(seg)
                            .unwrap_or(&path)
                            .display()
                            .to_string(),
                        before,
                        after: content,
                    });
                }
            }
        }
        let seg = data_dir.join(".racs").join("seg");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let versions = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = stop.clone();
            let versions = versions.clone();
            std::thread::spawn(move || {
                let mut seen = std::collections::HashMap::new();
                let mut found = Vec::new();
                // Bounded: the test stops it; this is only a backstop.
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    walk(&seg, &seg, &mut seen, &mut found, &versions);
                    std::thread::sleep(Duration::from_millis(2));
                }
                walk(&seg, &seg, &mut seen, &mut found, &versions);
                found
            })
        };
        TableWatch {
            stop,
            versions,
            thread: Some(thread),
        }
    }

    /// Waits (up to 10 s) until `n` table files (a name replaced counts again) have been seen.
    fn wait_versions(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.versions.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} table files written within 10 s",
                self.versions.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The overwrites seen so far (the watch ends).
    fn finish(mut self) -> Vec<Overwrite> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for TableWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A stream that pushes the server's in-memory table out to its table files without ever
/// naming a table after a time another stream uses.
///
/// [`flush_to_disk`]'s filler starts its timeline when it is needed, and its blocks (sent as
/// fast as the server takes them) run ahead of the wall clock, into the times of a stream
/// written just before or just after it: a table named after a filler block can then have the
/// same name as a table of that stream and replace it (the real server's file naming). This one
/// starts at 1 Hz with one 65534-byte block before anything else is written: its first block
/// opens the server's first table, and every later block lies more than nine hours ahead, one
/// second apart.
struct FarFiller {
    id: String,
    session: [u8; 16],
}

impl FarFiller {
    /// Creates and starts the filler: call it on a fresh server, before any other writer.
    fn prime(srv: &TestServer) -> FarFiller {
        let f = FarFiller {
            id: format!("zz-far-{}", now_us()),
            session: [9u8; 16],
        };
        let mut c = RawClient::connect(srv.addr()).unwrap();
        assert_eq!(
            show(&c.command(&format!("CREATE '{}' 1 1 16", f.id)).unwrap()),
            r#"["null"]"#
        );
        assert_eq!(
            show(&c.command(&format!("OPEN '{}'", f.id)).unwrap()),
            r#"["null"]"#
        );
        let r = c.frame(&build_frame(&f.session, f.id.as_bytes(), &[0u8; 65534]));
        assert_eq!(show(&r.unwrap()), r#"["null"]"#);
        f
    }

    /// One table's worth of one-second blocks and one more: every block written before is on
    /// its way to a table file.
    fn push_out(&self, srv: &TestServer) {
        let mut c = RawClient::connect(srv.addr()).unwrap();
        for _ in 0..=srv.config().entries {
            let r = c.frame(&build_frame(&self.session, self.id.as_bytes(), &[0u8; 2]));
            assert_eq!(show(&r.unwrap()), r#"["null"]"#);
        }
    }
}

/// Table files being written (`.tmp`) under `data_dir`.
fn tables_being_written(data_dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.to_string_lossy().ends_with(".tmp") {
                out.push(p.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&data_dir.join(".racs").join("seg"), &mut out);
    out
}

/// The whole of stream `id` once the server has it all: EXTRACT until it returns the
/// stream's `size` (the server's own count of the bytes it accepted), then pushed out to the
/// table files and read from them in key order. A server that holds fewer bytes than it
/// accepted after `patience` (tables being written are hidden meanwhile) fails the test, naming a table replaced under its name if the
/// watch saw one (a real-server limit), else what is still being written.
fn stored_in_key_order(
    srv: &TestServer,
    filler: &FarFiller,
    watch: TableWatch,
    id: &str,
    what: &str,
    patience: Duration,
) -> Vec<u8> {
    let size = common::info_raw(srv.addr(), id, "size")
        .unwrap_or_else(|e| panic!("{what}: INFO size of {id}: {e}")) as usize;
    let deadline = Instant::now() + patience;
    let mut seen;
    loop {
        seen = common::read_back(srv.addr(), id, 16, size);
        if seen.len() >= size || Instant::now() > deadline {
            break;
        }
    }
    filler.push_out(srv);
    let on_disk = || -> Vec<u8> {
        blocks_on_disk(srv.data_dir(), id)
            .into_iter()
            .flat_map(|(_, d)| d)
            .collect()
    };
    let mut stored = on_disk();
    while stored.len() < size && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        stored = on_disk();
    }
    let overwrites = watch.finish();
    if seen.len() != size || stored.len() != size {
        let hash = racs_lite::stream_hash(id.as_bytes());
        let mine: Vec<String> = overwrites
            .iter()
            .filter(|o| o.lost_of(hash) > 0)
            .map(|o| o.describe(hash, id))
            .collect();
        let why = if mine.is_empty() {
            format!(
                "no table holding its blocks was seen replaced under its name ({} other tables \
                 were); table files still being written: {:?}",
                overwrites.len(),
                tables_being_written(srv.data_dir())
            )
        } else {
            format!(
                "the server replaced table files holding its blocks with later tables of the \
                 same name (two tables whose first blocks share a millisecond: a limit of the \
                 real server's file naming, docs/racssink.md): {}",
                mine.join("; ")
            )
        };
        panic!(
            "{what}: the server accepted {size} bytes of '{id}' (INFO size) but EXTRACT returns \
             {} and its table files hold {}: {why}",
            seen.len(),
            stored.len()
        );
    }
    if seen != stored {
        eprintln!("{what}: EXTRACT's order differs from the keys'");
    }
    stored
}

/// The takeover test's own check, shown to fail and to say why when the server replaces a
/// table under its name: one-sample frames at 44.1 kHz give six tables of eight blocks whose
/// first blocks all fall in one millisecond, and each replaces the one before (contract
/// section 5, on both servers).
#[test]
fn a_table_replaced_under_its_name_is_named_as_the_cause_of_a_loss() {
    let srv = TestServer::start_with(|c| c.entries = 8);
    let filler = FarFiller::prime(&srv);
    let watch = TableWatch::start(srv.data_dir());
    let id = "replaced";
    let mut c = RawClient::connect(srv.addr()).unwrap();
    c.command(&format!("CREATE '{id}' 44100 1 16")).unwrap();
    c.command(&format!("OPEN '{id}'")).unwrap();
    let session = [3u8; 16];
    // The first table holds the filler's block and 7 of these; 7 more tables follow (and 1
    // block stays in memory), the first five named after the stream's first millisecond, the
    // other two after its second. Each table is waited for, so that the watch sees every one
    // before the next replaces it.
    for table in 0..8u64 {
        for i in 0..8u64 {
            let sample = ((table * 8 + i) as i16).to_le_bytes();
            let r = c.frame(&build_frame(&session, id.as_bytes(), &sample));
            assert_eq!(show(&r.unwrap()), r#"["null"]"#);
        }
        // The last block sent handed table `table` over: all so far seen before the next
        // one can replace it.
        watch.wait_versions(table + 1);
    }
    let what = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stored_in_key_order(
            &srv,
            &filler,
            watch,
            id,
            "replaced tables",
            Duration::from_secs(3),
        )
    }));
    let message = match what {
        Ok(stored) => panic!(
            "a stream with replaced tables read back whole: {} bytes",
            stored.len()
        ),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "(not a string)".into()),
    };
    assert!(
        message.contains("the server accepted 128 bytes of 'replaced'")
            && message.contains("replaced table files holding its blocks")
            && message
                .contains("entries (8 of 'replaced') replaced by one holding 8 of 'replaced'"),
        "{message}"
    );
}

#[test]
fn takeover_wins_against_a_live_writer_five_times_out_of_five() {
    let fmt = Fmt::new(16000, 1, 16);
    for round in 0..5 {
        // A fresh server per round, its first table opened by the filler: no block of an
        // earlier round runs ahead into this one's times, so no table of this round can be
        // named like another (a round is about the takeover, not about that limit).
        let srv = TestServer::start();
        let filler = FarFiller::prime(&srv);
        let watch = TableWatch::start(srv.data_dir());
        let id = format!("takeover-{round}");
        // Small frames back to back (or paced every other round): the old writer's next frame
        // is never far away when the new one reopens the stream.
        let live = round % 2 == 1;
        let old = Arc::new(Rig::new(
            &srv,
            &id,
            fmt,
            Signal::Tone(500.0),
            live,
            &[("chunk-size", "320")],
        ));
        let writer = {
            let old = old.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + WAIT;
                while Instant::now() < deadline {
                    if old.push(320).is_err() {
                        return true;
                    }
                }
                false
            })
        };
        let deadline = Instant::now() + WAIT;
        while old.stat("bytes-acked") < 16000 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        let new = Rig::new(
            &srv,
            &id,
            fmt,
            Signal::Clicks(160),
            false,
            &[("chunk-size", "320"), ("takeover", "true")],
        );
        new.push_all(16000, 640).expect("the new writer writes");
        let new = new.finish(true);
        assert!(new.error.is_none(), "round {round}: {:?}", new.error);
        assert!(
            writer.join().unwrap(),
            "round {round}: the old writer was not cut off"
        );
        let old = Arc::into_inner(old).unwrap().finish(false);
        let err = old.error.clone().expect("the old writer's error");
        assert!(
            err.contains("was taken over by another writer") && err.contains("takeover=true"),
            "{err}"
        );
        // The old writer's audio as it meant to store it: a live source's wall-clock
        // timeline leaves out whole frames at the start when the stream's timeline began
        // later than the first capture by more than max-drift (a loaded machine), reported
        // as kind "dropped". Nothing else may be missing, nothing may be reported lost.
        assert_eq!(old.reported("lost"), 0, "round {round}: {:?}", old.losses());
        assert_eq!(old.stat("silence-bytes"), 0, "round {round}: {}", old.stats);
        assert_eq!(
            old.stat("dropped-bytes"),
            old.reported("dropped"),
            "round {round}: {}",
            old.stats
        );
        let old_meant = old.expected();
        // The stream: what the old writer had stored, then all of the new writer's audio (in
        // key order, from the table files: EXTRACT returns tables in name order, which is not
        // always the stream's).
        let stored = stored_in_key_order(
            &srv,
            &filler,
            watch,
            &id,
            &format!("round {round}"),
            Duration::from_secs(30),
        );
        assert!(stored.len() >= new.fed.len(), "round {round}");
        let k = stored.len() - new.fed.len();
        let acked = old.stat("bytes-acked") as usize;
        assert!(
            k >= acked.max(16000) && k <= old_meant.len(),
            "round {round}: {k} bytes of the old writer stored, {acked} acknowledged, {} fed, \
             {} left out; old: {}",
            old.fed.len(),
            old.reported("dropped"),
            old.stats
        );
        assert!(
            stored[..k] == old_meant[..k],
            "round {round}: the old writer's part: {:?}; old fed {}, new fed {}, stored {}; old: \
             {}; {:?}",
            first_difference(&stored[..k], &old_meant[..k]),
            old.fed.len(),
            new.fed.len(),
            stored.len(),
            old.stats,
            old.warnings()
        );
        assert!(
            stored[k..] == new.fed[..],
            "round {round}: the new writer's part"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Stalls

/// A TCP relay in front of the server that can stop passing bytes, like a server that stalls
/// (the real one stalls every client while one message is incomplete). What arrives meanwhile
/// is held; on resuming, the oldest connection's bytes go first, so the server executes a
/// frame whose writer gave up waiting, as a real server does once it wakes up.
struct Stall {
    addr: std::net::SocketAddr,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    relays: Arc<Mutex<Vec<Arc<Relay>>>>,
}

struct Relay {
    server: std::net::TcpStream,
    /// Client bytes not yet passed on, and whether the client has closed.
    held: Mutex<(Vec<u8>, bool)>,
}

impl Relay {
    /// Passes on what is held; after the client closed, closes towards the server too.
    fn flush(&self, held: &mut (Vec<u8>, bool)) {
        use std::io::Write;
        if !held.0.is_empty() {
            let _ = (&self.server).write_all(&held.0);
            held.0.clear();
        }
        if held.1 {
            let _ = self.server.shutdown(std::net::Shutdown::Write);
        }
    }
}

impl Stall {
    fn start(upstream: std::net::SocketAddr) -> Stall {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let relays: Arc<Mutex<Vec<Arc<Relay>>>> = Arc::default();
        let (f, r) = (frozen.clone(), relays.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                let relay = Arc::new(Relay {
                    server,
                    held: Mutex::new((Vec::new(), false)),
                });
                r.lock().unwrap().push(relay.clone());
                let (f1, relay1, mut c1) = (f.clone(), relay.clone(), client.try_clone().unwrap());
                std::thread::spawn(move || {
                    use std::io::Read;
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = c1.read(&mut buf).unwrap_or(0);
                        let mut held = relay1.held.lock().unwrap();
                        if n == 0 {
                            held.1 = true;
                        } else {
                            held.0.extend_from_slice(&buf[..n]);
                        }
                        if !f1.load(Ordering::SeqCst) {
                            relay1.flush(&mut held);
                        }
                        if n == 0 {
                            return;
                        }
                    }
                });
                let (f2, mut s2, mut c2) = (f.clone(), relay.server.try_clone().unwrap(), client);
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = s2.read(&mut buf).unwrap_or(0);
                        if n == 0 {
                            let _ = c2.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        while f2.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        if c2.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Stall {
            addr,
            frozen,
            relays,
        }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Passes on what was held, oldest connection first, then lets bytes through again.
    fn thaw(&self) {
        for relay in self.relays.lock().unwrap().iter() {
            let mut held = relay.held.lock().unwrap();
            relay.flush(&mut held);
        }
        // Let the server take the held requests before any new one.
        std::thread::sleep(Duration::from_millis(100));
        self.frozen.store(false, Ordering::SeqCst);
    }
}

/// A stall of the server while a live rig writes: its stream id and content, how long the
/// stall lasts, racssink's `timeout` and `retry-timeout` (ms), and how much audio follows (ms).
type StallCase = (
    &'static str,
    Signal,
    Duration,
    &'static str,
    &'static str,
    u64,
);

#[rustfmt::skip]
const STALLS: &[StallCase] = &[
    ("stall-short", Signal::Silence, ms(200), "1000", "2000", 1000),
    ("stall-retry", Signal::Clicks(800), ms(1500), "300", "4000", 1500),
    ("stall-gone", Signal::Tone(300.0), ms(2500), "300", "700", 1500),
];

/// On a fresh server, the stall case `name`: a live rig writing through a stalling relay, 1 s
/// of audio, a stall while it keeps pushing, then more. Returns the server and the run.
fn stalled_run(name: &str) -> (TestServer, Run) {
    let srv = TestServer::start();
    let (id, signal, stall, timeout_ms, retry_ms, after_ms) = *STALLS
        .iter()
        .find(|c| c.0 == name)
        .unwrap_or_else(|| panic!("no stall case {name}"));
    let relay = Stall::start(srv.addr());
    let fmt = F8K;
    let chunk = fmt.ms(100).to_string();
    let relay_port = relay.addr.port().to_string();
    let rig = Arc::new(Rig::new(
        &srv,
        id,
        fmt,
        signal,
        true,
        &[
            ("port", relay_port.as_str()),
            ("chunk-size", chunk.as_str()),
            ("timeout", timeout_ms),
            ("retry-timeout", retry_ms),
            // The error's byte accounting, without samples left out by the wall-clock
            // timeline at the start (tests/sink_timeline.rs covers those).
            ("timeline", "samples"),
        ],
    ));
    let feeder = {
        let rig = rig.clone();
        std::thread::spawn(move || {
            rig.push_all(rig.fmt.ms(1000 + after_ms), rig.fmt.ms(20))
                .is_ok()
        })
    };
    // Stall once a second of audio is stored.
    let deadline = Instant::now() + WAIT;
    while rig.stat("bytes-acked") < fmt.ms(1000) as u64 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    relay.freeze();
    std::thread::sleep(stall);
    relay.thaw();
    let ok = feeder.join().unwrap();
    let run = Arc::into_inner(rig).unwrap().finish(ok);
    (srv, run)
}

#[test]
fn a_stall_shorter_than_the_timeout_goes_unnoticed() {
    let (srv, run) = stalled_run("stall-short");
    check(&srv, &run);
    assert!(run.expected() == run.fed);
    assert_eq!(run.stat("reconnects"), 0, "{}", run.stats);
}

#[test]
fn a_stall_within_the_retry_timeout_stores_everything_once() {
    // The frame in flight times out and is executed when the server wakes; INFO size tells
    // the writer so, and it is not sent twice.
    let (srv, run) = stalled_run("stall-retry");
    let diffs = check(&srv, &run);
    assert!(run.expected() == run.fed, "{}", run.stats);
    assert!(run.stat("reconnects") >= 1, "{}", run.stats);
    assert_eq!(run.stat("server-lost-bytes"), 0);
    // No restart: the stall does not move the timeline.
    assert_on_time(&run, &diffs);
}

/// The number before `what` in `text` ("(1234 bytes)" style).
fn bytes_before(text: &str, what: &str) -> u64 {
    let at = text
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in {text}"));
    let head = &text[..at];
    let open = head.rfind('(').expect("an opening parenthesis");
    head[open + 1..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no byte count before {what:?} in {text}"))
}

#[test]
fn a_stall_past_the_retry_timeout_says_what_is_stored_unknown_and_not_stored() {
    let (srv, run) = stalled_run("stall-gone");
    let err = run.error.clone().expect("the writer gave up");
    assert!(err.contains("gave up after 700 ms of retrying"), "{err}");
    let not_stored = bytes_before(&err, " bytes) were not stored");
    let unknown = bytes_before(&err, " bytes, the frame in flight");
    let stored = bytes_before(&err, " bytes) before that were stored");
    assert!(err.contains("may or may not be stored"), "{err}");
    assert_eq!(unknown, F8K.ms(100) as u64, "one frame: {err}");
    assert_eq!(stored, run.stat("bytes-acked"));
    assert_eq!(
        stored + unknown + not_stored,
        run.fed.len() as u64,
        "every byte fed is accounted for: {err}"
    );
    // The server woke up and executed the frame in flight: it was stored after all, which
    // is why the writer could not call it either way.
    let want = &run.fed[..(stored + unknown) as usize];
    let got = common::read_back(srv.addr(), &run.id, 16, want.len());
    assert!(
        got == want,
        "{}",
        first_difference(&got, want).unwrap_or_default()
    );
}

#[test]
fn an_invalid_replay_window_is_a_settings_error_naming_the_forms() {
    let srv = TestServer::start();
    let sink = common::racssink(&srv, "bad-window", &[("replay-window", "ten")]);
    let err = common::refused_alone(&sink, gst::State::Playing);
    assert!(err.matches(gst::ResourceError::Settings), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("Invalid replay-window \"ten\"")
            && text.contains("4MiB")
            && text.contains("10s"),
        "{text}"
    );
    // The URI form refuses it at once.
    let handler = sink.dynamic_cast::<gst::URIHandler>().unwrap();
    let e = handler
        .set_uri("racs://127.0.0.1:6381/x?replay-window=lots")
        .unwrap_err();
    assert!(e.to_string().contains("expected auto"), "{e}");
    common::assert_tidy("URI error", &e.to_string());
    handler
        .set_uri("racs://127.0.0.1:6381/x?replay-window=10s&recovery-policy=keep-time")
        .unwrap();
    assert!(handler
        .uri()
        .unwrap()
        .ends_with("?replay-window=10s&recovery-policy=keep-time"));
}

#[test]
fn keep_time_on_a_stream_with_a_timeline_keeps_its_offset_and_says_so() {
    let srv = server(16);
    let id = "keep-offset";
    // An import sets the stream's timeline; a live recording appends later.
    let import = Rig::new(
        &srv,
        id,
        F8K,
        Signal::Tone(300.0),
        false,
        &[("chunk-size", "1600")],
    );
    import.push_all(F8K.ms(1000), F8K.ms(100)).unwrap();
    let import = import.finish(true);
    assert!(import.error.is_none());
    // The import's second of audio ends about now; the live audio comes a second later.
    std::thread::sleep(Duration::from_millis(2000));
    // timeline=samples: with the wall-clock timeline (the default for live sources) the
    // pause would be filled with silence instead (tests/sink_timeline.rs).
    let live = Rig::new(
        &srv,
        id,
        F8K,
        Signal::Clicks(800),
        true,
        &[("chunk-size", "1600"), ("timeline", "samples")],
    );
    live.push_all(F8K.ms(1500), F8K.ms(20)).unwrap();
    let run = live.finish(true);
    assert_eq!(policy_of(&run), "keep-time");
    let w = run.warnings();
    assert!(
        w.iter().any(|w| w.contains("already has a timeline")),
        "{w:?}"
    );
    // The appended blocks: their stored times differ from their capture times by one
    // constant (the stream's end lay about a second before the live edge).
    flush_to_disk(&srv, &[(id, F8K.ms(2500))]);
    let blocks = blocks_on_disk(srv.data_dir(), id);
    let mut at = 0u64;
    let mut diffs = Vec::new();
    for (key, data) in &blocks {
        if at >= import.fed.len() as u64 {
            let input = at - import.fed.len() as u64;
            diffs.push(key * 1000 - (run.wall0_us + F8K.us_of(input)));
        }
        at += data.len() as u64;
    }
    assert_eq!(
        at,
        (import.fed.len() + run.fed.len()) as u64,
        "nothing dropped"
    );
    let (lo, hi) = (diffs.iter().min().unwrap(), diffs.iter().max().unwrap());
    assert!(*hi < -500_000, "stored before the capture time: {diffs:?}");
    assert!(hi - lo <= 2_000, "a constant offset: {lo}..{hi} us");
}
