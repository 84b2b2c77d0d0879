// SPDX-License-Identifier: MPL-2.0
//! racssink's wall-clock timeline and rotation: the stored time of every sample (the stream's
//! `ref` plus its byte position, read back with an independent client) against the true capture
//! time of a simulated live source whose sample clock runs a known number of ppm off the wall
//! clock; restarts after a pause within and beyond `max-fill`; streams rotated every second,
//! whose seams are checked byte for byte.
//!
//! Runs on racs-lite, or on a fresh real server per test with `RACS_BIN`. The sources run in
//! real time (the server stamps `ref` by its own wall clock, which cannot be accelerated), so
//! the drift runs are short and the drift large enough to need corrections within them.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::TestServer;
use gst::prelude::*;

const RATE: u32 = 48_000;
/// 10 ms per buffer, as a sound card delivers them.
const FRAMES: u64 = 480;

fn wall_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        wall_ns() % 1_000_000_007
    )
}

/// A live `appsrc ! racssink` pipeline.
struct Live {
    pipeline: gst::Pipeline,
    src: gst::Element,
    sink: gst::Element,
}

impl Live {
    fn new(srv: &TestServer, props: &[(&str, &str)]) -> Live {
        Live::at(&srv.host(), srv.port(), props)
    }

    /// `appsrc ! racssink` writing to the server at `host`:`port` (from a thread that does not
    /// hold the server), racssink's `props` set after host, port and a 1920-byte chunk-size.
    fn at(host: &str, port: u16, props: &[(&str, &str)]) -> Live {
        common::init();
        let pipeline = gst::Pipeline::new();
        let src = gst::ElementFactory::make("appsrc")
            .property("caps", common::caps(RATE, 1, 16))
            .property("is-live", true)
            .property_from_str("format", "time")
            .build()
            .unwrap();
        let mut b = gst::ElementFactory::make("racssink")
            .property("host", host)
            .property("port", u32::from(port))
            .property("chunk-size", 1920u32);
        for (k, v) in props {
            b = b.property_from_str(k, v);
        }
        let sink = b.build().unwrap();
        pipeline.add_many([&src, &sink]).unwrap();
        src.link(&sink).unwrap();
        Live {
            pipeline,
            src,
            sink,
        }
    }

    /// Plays `buffers` buffers from a source whose sample clock runs `ppm` fast (negative:
    /// slow) against the pipeline clock, each pushed when its last sample is captured. Returns
    /// the wall-clock capture time (ns) of each buffer's first sample, then EOS's outcome.
    fn run(
        &self,
        buffers: u64,
        ppm: f64,
        content: impl Fn(u64) -> Vec<u8>,
    ) -> (Vec<i128>, common::Ended) {
        self.run_skipping(buffers, ppm, &[], content)
    }

    /// [`Live::run`], with the buffers of `skipped` never delivered (a sound server skipping
    /// cycles): their time passes, their audio is missing, and the next buffers' timestamps
    /// say so. Their entries in the returned capture times are 0.
    fn run_skipping(
        &self,
        buffers: u64,
        ppm: f64,
        skipped: &[u64],
        content: impl Fn(u64) -> Vec<u8>,
    ) -> (Vec<i128>, common::Ended) {
        let bus = self.pipeline.bus().unwrap();
        if self.pipeline.set_state(gst::State::Playing).is_err() {
            let ended = common::wait_pipeline_end(&self.pipeline);
            self.pipeline.set_state(gst::State::Null).unwrap();
            return (Vec::new(), ended);
        }
        // A live pipeline goes to PLAYING without prerolling (the sink completes its state
        // change at the first buffer): the clock and base time are set at once.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let (clock, base) = loop {
            if let (Some(c), Some(b)) = (self.pipeline.clock(), self.pipeline.base_time()) {
                break (c, b);
            }
            assert!(std::time::Instant::now() < deadline, "no clock within 5 s");
            std::thread::sleep(Duration::from_millis(5));
        };
        let true_rate = f64::from(RATE) * (1.0 + ppm / 1e6);
        let mut captures = Vec::new();
        for i in 0..buffers {
            let pts = ((i * FRAMES) as f64 / true_rate * 1e9) as u64;
            let end = (((i + 1) * FRAMES) as f64 / true_rate * 1e9) as u64;
            let id = clock.new_single_shot_id(base + gst::ClockTime::from_nseconds(end));
            let _ = id.wait();
            let now = clock.time().nseconds() as i128;
            let capture = wall_ns() - (now - i128::from(base.nseconds() + pts));
            if skipped.contains(&i) {
                captures.push(0);
                continue;
            }
            captures.push(capture);
            let mut buffer = gst::Buffer::from_slice(content(i));
            {
                let b = buffer.get_mut().unwrap();
                b.set_pts(gst::ClockTime::from_nseconds(pts));
                b.set_duration(gst::ClockTime::from_nseconds(end - pts));
            }
            if self
                .src
                .emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer])
                != gst::FlowReturn::Ok
            {
                break;
            }
        }
        let _ = self
            .src
            .emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
        let mut ended = common::wait_end(&bus, common::WAIT);
        self.pipeline.set_state(gst::State::Null).unwrap();
        while let Some(m) = bus.pop() {
            ended.messages.push(m);
        }
        common::assert_tidy_messages(&ended.messages);
        (captures, ended)
    }

    fn stat(&self, field: &str) -> u64 {
        self.sink
            .property::<gst::Structure>("stats")
            .get::<u64>(field)
            .unwrap()
    }
}

/// Buffer `i`: every sample holds `i + 1`, so the last sample of each buffer (never left out:
/// corrections take sample frames from a buffer's start) can be found in the stored stream.
fn marked(i: u64) -> Vec<u8> {
    let v = (i % 30_000 + 1) as i16;
    (0..FRAMES).flat_map(|_| v.to_le_bytes()).collect()
}

/// The stored stream `id` (16-bit mono) as samples, with its `ref`.
fn stored(addr: SocketAddr, id: &str) -> (i64, Vec<i16>) {
    let size = common::info_raw(addr, id, "size").unwrap_or_else(|e| panic!("INFO size: {e}"));
    let r = common::info_raw(addr, id, "ref").unwrap_or_else(|e| panic!("INFO ref: {e}"));
    let bytes = common::read_back(addr, id, 16, size as usize);
    assert_eq!(
        bytes.len() as i64,
        size,
        "stream {id}: EXTRACT vs INFO size"
    );
    (
        r,
        bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect(),
    )
}

/// For every buffer whose last sample is stored: stored time minus true capture time (ns).
fn offsets(
    r: i64,
    samples: &[i16],
    captures: &[i128],
    first_buffer: u64,
    ppm: f64,
) -> Vec<(u64, i128)> {
    let mut last = std::collections::HashMap::new();
    for (p, v) in samples.iter().enumerate() {
        last.insert(*v, p);
    }
    let true_rate = f64::from(RATE) * (1.0 + ppm / 1e6);
    let mut out = Vec::new();
    for (k, c) in captures.iter().enumerate() {
        let i = first_buffer + k as u64;
        let v = (i % 30_000 + 1) as i16;
        let Some(&p) = last.get(&v).filter(|_| *c != 0) else {
            continue;
        };
        let stored = i128::from(r) * 1_000_000 + p as i128 * 1_000_000_000 / i128::from(RATE);
        let captured = c + ((FRAMES - 1) as f64 / true_rate * 1e9) as i128;
        out.push((i, stored - captured));
    }
    out
}

/// Capture times are read by the sink and by the test at slightly different moments.
const JITTER_NS: i128 = 1_500_000;

/// Every `(buffer, stored - captured)` of [`offsets`] within `max_drift_ns` (and the jitter of
/// reading capture times); `what` names the run.
fn assert_within(offs: impl IntoIterator<Item = (u64, i128)>, max_drift_ns: i128, what: &str) {
    for (i, d) in offs {
        assert!(
            d.abs() <= max_drift_ns + JITTER_NS,
            "{what}buffer {i} stored {:.3} ms from its capture (max-drift {} ms)",
            d as f64 / 1e6,
            max_drift_ns / 1_000_000
        );
    }
}

#[test]
fn drift_of_100_and_1000_ppm_either_way_stays_within_max_drift() {
    let srv = TestServer::start();
    // (ppm, max-drift): 40 s of a 1000 ppm source drifts 40 ms, twice the default 20 ms bound;
    // 100 ppm drifts 4 ms, twice a 2 ms bound. Each needs at least one correction.
    let cases = [
        (1000.0, 20_000_000u64),
        (-1000.0, 20_000_000),
        (100.0, 2_000_000),
        (-100.0, 2_000_000),
    ];
    let seconds = 40;
    let runs: Vec<_> = cases
        .iter()
        .map(|&(ppm, max_drift)| {
            let id = unique(&format!("drift{ppm}"));
            let host = srv.host();
            let port = srv.port();
            let handle = std::thread::spawn({
                let id = id.clone();
                move || {
                    let max_drift = max_drift.to_string();
                    let live = Live::at(
                        &host,
                        port,
                        &[("stream-id", &id), ("max-drift", &max_drift)],
                    );
                    let (captures, ended) = live.run(seconds * 100, ppm, marked);
                    let t = live.sink.property::<gst::Structure>("stats");
                    (captures, ended, t)
                }
            });
            (ppm, max_drift, id, handle)
        })
        .collect();
    for (ppm, max_drift, id, handle) in runs {
        let (captures, ended, stats) = handle.join().unwrap();
        assert!(ended.error.is_none(), "{ppm} ppm: {}", ended.error_text());
        let (r, samples) = stored(srv.addr(), &id);
        let offs = offsets(r, &samples, &captures, 0, ppm);
        let filled = stats.get::<u64>("timeline-filled-frames").unwrap();
        let dropped = stats.get::<u64>("timeline-dropped-frames").unwrap();
        let worst = offs.iter().map(|(_, d)| d.abs()).max().unwrap();
        eprintln!(
            "{ppm} ppm, max-drift {} ms: {} buffers found of {}, worst |stored - capture| {:.3} \
             ms, filled {filled} frames, dropped {dropped}, corrections {}",
            max_drift / 1_000_000,
            offs.len(),
            captures.len(),
            worst as f64 / 1e6,
            stats.get::<u64>("timeline-corrections").unwrap()
        );
        // A buffer is missing only where a correction left out all of it.
        assert!(
            offs.len() as u64 + dropped / FRAMES + 1 >= seconds * 100,
            "{ppm} ppm: only {} buffers stored, {dropped} frames dropped",
            offs.len()
        );
        assert_within(
            offs.iter().copied(),
            i128::from(max_drift),
            &format!("{ppm} ppm: "),
        );
        // The corrections add up to the drift, less what the bound lets stand and the start-up
        // offset (the first sample is stored up to a buffer after its capture).
        let drift_frames = (seconds as f64 * f64::from(RATE) * ppm.abs() / 1e6) as u64;
        let bound_frames = max_drift * u64::from(RATE) / 1_000_000_000;
        let corrected = if ppm > 0.0 { dropped } else { filled };
        assert!(
            corrected > 0 && corrected + bound_frames + 480 >= drift_frames,
            "{ppm} ppm: corrected {corrected} frames of a drift of {drift_frames}"
        );
        assert!(
            corrected <= drift_frames + bound_frames + 960,
            "{ppm} ppm: corrected {corrected} frames, more than a drift of {drift_frames}"
        );
        if ppm < 0.0 {
            // A slow source is behind: only silence, except a start-up offset left out.
            assert!(
                dropped <= bound_frames + 960,
                "{ppm} ppm: dropped {dropped}"
            );
        } else {
            assert_eq!(filled, 0, "{ppm} ppm: a fast source needs no silence");
        }
        let messages = ended.element_messages("racssink-timeline");
        assert!(
            !messages.is_empty(),
            "{ppm} ppm: no racssink-timeline message"
        );
    }
}

#[test]
fn a_restart_after_a_pause_within_max_fill_is_filled_with_silence() {
    let srv = TestServer::start();
    let id = unique("pause");
    let first = Live::new(&srv, &[("stream-id", &id)]);
    let (c1, ended) = first.run(100, 0.0, marked);
    assert!(ended.error.is_none(), "{}", ended.error_text());
    assert_eq!(first.stat("timeline-filled-frames"), 0);
    // The pause is the scenario itself: the pipeline is down for ~1.5 s.
    std::thread::sleep(Duration::from_millis(1500));
    let second = Live::new(&srv, &[("stream-id", &id)]);
    let (c2, ended) = second.run(100, 0.0, |i| marked(i + 100));
    assert!(ended.error.is_none(), "{}", ended.error_text());
    let filled = second.stat("timeline-filled-frames");
    let pause_ns = c2[0] - (c1.last().unwrap() + 10_000_000);
    let pause_frames = (pause_ns * i128::from(RATE) / 1_000_000_000) as u64;
    eprintln!(
        "pause {:.3} s, filled {filled} frames",
        pause_ns as f64 / 1e9
    );
    assert!(
        filled.abs_diff(pause_frames) <= 960 + 20 * 48,
        "filled {filled} frames for a pause of {pause_frames}"
    );
    let (r, samples) = stored(srv.addr(), &id);
    assert_within(
        offsets(r, &samples, &c1, 0, 0.0)
            .into_iter()
            .chain(offsets(r, &samples, &c2, 100, 0.0)),
        20_000_000,
        "",
    );
    // Between the two runs: silence only.
    let end1 = samples.iter().rposition(|v| *v == 100).unwrap();
    let start2 = samples.iter().position(|v| *v == 101).unwrap();
    assert!(samples[end1 + 1..start2].iter().all(|v| *v == 0));
    assert!(start2 - end1 > 60_000, "the pause was not filled");
}

#[test]
fn a_restart_after_a_pause_beyond_max_fill_is_an_error_naming_it() {
    let srv = TestServer::start();
    let id = unique("longpause");
    let first = Live::new(&srv, &[("stream-id", &id)]);
    let (_, ended) = first.run(50, 0.0, marked);
    assert!(ended.error.is_none(), "{}", ended.error_text());
    std::thread::sleep(Duration::from_millis(1200));
    let second = Live::new(&srv, &[("stream-id", &id), ("max-fill", "500000000")]);
    let (_, ended) = second.run(50, 0.0, marked);
    let text = ended.error_text();
    assert!(
        text.contains("max-fill (0.500 s)") && text.contains(&id) && text.contains("rotate"),
        "{text}"
    );
    // Nothing of the second run was stored in the old stream.
    let size = common::info_raw(srv.addr(), &id, "size").unwrap();
    assert_eq!(size as u64, first.stat("bytes-acked"));
    assert_eq!(second.stat("bytes-acked"), 0);
}

#[test]
fn an_invalid_rotation_pattern_is_a_settings_error_at_start() {
    common::init();
    for (id, rotate, want) in [
        ("air-%A", 0u32, "uses %A"),
        ("air-%H", 0, "reuse its names"),
        ("air-%Y%m%d%H", 60, "not both"),
        ("air", 0, ""),
        ("air", 1, ""),
    ] {
        let sink = gst::ElementFactory::make("racssink")
            .property("stream-id", id)
            .property("rotate", rotate)
            .build()
            .unwrap();
        if want.is_empty() {
            assert!(sink.set_state(gst::State::Ready).is_ok(), "{id}");
        } else {
            let e = common::refused(&sink, gst::State::Ready);
            assert!(e.to_string().contains(want), "{id}: {e}");
        }
        sink.set_state(gst::State::Null).unwrap();
    }
}

/// The streams a run rotated through, from its `racssink-rotate` messages, first to last.
fn rotated_streams(ended: &common::Ended) -> Vec<(String, i64)> {
    let msgs = ended.element_messages("racssink-rotate");
    let mut out = Vec::new();
    for m in &msgs {
        if out.is_empty() {
            out.push((m.get::<String>("from").unwrap(), 0));
        }
        out.push((
            m.get::<String>("to").unwrap(),
            m.get::<i64>("boundary-ms").unwrap(),
        ));
    }
    out
}

#[test]
fn rotation_every_second_cuts_at_the_boundary_sample_and_loses_nothing() {
    let srv = TestServer::start();
    let prefix = unique("rot");
    let pattern = format!("{prefix}-%Y%m%d%H%M%S");
    // Clicks every 97 frames: repetitive, so a sample lost or doubled at a seam shows only by
    // position.
    let click = |i: u64| common::clicks(i * FRAMES, FRAMES as usize, 97, 1, 16);
    let live = Live::new(&srv, &[("stream-id", &pattern), ("max-drift", "50000000")]);
    let (captures, ended) = live.run(350, 0.0, click);
    assert!(ended.error.is_none(), "{}", ended.error_text());
    assert_eq!(live.stat("timeline-corrections"), 0);
    let streams = rotated_streams(&ended);
    assert!(streams.len() >= 4, "rotated through {streams:?}");
    assert_eq!(live.stat("rotations"), streams.len() as u64 - 1);
    let mut all = Vec::new();
    let c0 = captures[0];
    for (k, (name, boundary)) in streams.iter().enumerate() {
        assert!(name.starts_with(&prefix), "{name}");
        assert_eq!(
            common::info_raw(srv.addr(), name, "sample_rate").unwrap(),
            i64::from(RATE)
        );
        if k > 0 {
            // The first sample of this stream is the one captured at its boundary.
            let first = all.len() as i128 / 2;
            let want = ((i128::from(*boundary) * 1_000_000 - c0) * i128::from(RATE))
                .div_euclid(1_000_000_000)
                + 1;
            assert!(
                (first - want).abs() <= 1,
                "stream {name} starts at sample {first}, the boundary is at sample {want}"
            );
            // Its ref is within the bound of the boundary.
            let r = common::info_raw(srv.addr(), name, "ref").unwrap();
            assert!(
                (r - boundary).abs() <= 50,
                "{name}: ref {r}, boundary {boundary}"
            );
        }
        let size = common::info_raw(srv.addr(), name, "size").unwrap();
        let bytes = common::read_back(srv.addr(), name, 16, size as usize);
        assert_eq!(bytes.len() as i64, size, "{name}");
        all.extend(bytes);
    }
    let sent: Vec<u8> = (0..captures.len() as u64).flat_map(click).collect();
    if let Some(d) = common::first_difference(&all, &sent) {
        panic!("the rotated streams joined differ from the input: {d}");
    }

    // racssrc reads a range across three of them, from half a second before the first
    // boundary to half a second after the second: one piece, sample to sample.
    let (b1, b2) = (streams[1].1, streams[2].1);
    let r0 = common::info_raw(srv.addr(), &streams[0].0, "ref").unwrap();
    // (The first stream began when the run did, maybe less than half a second before b1.)
    let (from, to) = ((b1 - 500).max(r0 + 20), b2 + 500);
    let read = read_rotated(&srv, &pattern, from, to);
    assert!(read.error.is_none(), "{:?}", read.error);
    assert!(read.gaps.is_empty(), "gaps {:?}", read.gaps);
    assert!(read.warnings.is_empty(), "{:?}", read.warnings);
    let len0 = common::info_raw(srv.addr(), &streams[0].0, "size").unwrap() as usize / 2;
    let first = ((from - r0) * i64::from(RATE) / 1000) as usize;
    let want_len = ((to - from) * i64::from(RATE) / 1000) as usize;
    let got = &read.data;
    let at = (first.saturating_sub(2)..=first + 2)
        .find(|&f| all.get(f * 2..f * 2 + got.len()) == Some(got.as_slice()))
        .unwrap_or_else(|| {
            panic!(
                "racssrc's {} frames are not the stored frames from {first} (±2) on",
                got.len() / 2
            )
        });
    // It starts in the first stream and ends in the third.
    assert!(at < len0 && at * 2 + got.len() > (len0 + 48_000) * 2);
    assert!(
        (got.len() / 2).abs_diff(want_len) <= 50 * 48,
        "read {} frames for {} ms",
        got.len() / 2,
        to - from
    );
    // Continuous timestamps.
    for w in read.buffers.windows(2) {
        assert_eq!(w[0].0 + w[0].1, w[1].0, "timestamps jump between buffers");
    }

    // A range reaching past the last stream: what no stream holds after it is a GAP event
    // with a warning, and the range keeps its length. (A pattern that changes every second is
    // planned from the streams that exist, as a fixed rotate period names its streams that
    // way: the last one holds the rest of the range, and its early end is the gap.)
    let last = streams.last().unwrap().1;
    let (from, to) = (last - 300, last + 2500);
    let read = read_rotated(&srv, &pattern, from, to);
    assert!(read.error.is_none(), "{:?}", read.error);
    assert!(!read.gaps.is_empty(), "gaps {:?}", read.gaps);
    assert!(
        read.warnings.iter().any(|w| w.contains(&format!(
            "rotated stream '{}' ends at",
            streams.last().unwrap().0
        ))),
        "{:?}",
        read.warnings
    );
    let audio = (read.data.len() / 2) as u64;
    let gap_ns: u64 = read.gaps.iter().map(|g| g.1).sum();
    let total = audio * 1_000_000_000 / u64::from(RATE) + gap_ns;
    assert!(
        total.abs_diff(2_800_000_000) <= 5_000_000,
        "audio {audio} frames and gaps {gap_ns} ns for 2.8 s"
    );
}

struct Read {
    data: Vec<u8>,
    /// (pts, duration) of each buffer.
    buffers: Vec<(u64, u64)>,
    gaps: Vec<(u64, u64)>,
    warnings: Vec<String>,
    error: Option<String>,
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The whole stream `id`, read by racssrc.
fn read_stream(srv: &TestServer, id: &str) -> Vec<u8> {
    let read = read_with(srv, id, None);
    assert!(read.error.is_none(), "{id}: {:?}", read.error);
    read.data
}

/// `racssrc stream-id=PATTERN start=.. stop=.. ! fakesink`, collecting data and GAP events.
fn read_rotated(srv: &TestServer, pattern: &str, from_ms: i64, to_ms: i64) -> Read {
    read_with(srv, pattern, Some((from_ms, to_ms)))
}

fn read_with(srv: &TestServer, id: &str, range: Option<(i64, i64)>) -> Read {
    let mut props = common::src_props(srv, id);
    if let Some((from_ms, to_ms)) = range {
        props.push(("start", iso(from_ms).to_value()));
        props.push(("stop", iso(to_ms).to_value()));
    }
    let probe = common::SrcProbe::new(&props);
    let ended = probe.play();
    let got = probe.take();
    Read {
        data: got.data,
        buffers: got.buffers.iter().map(|b| (b.pts, b.duration)).collect(),
        gaps: got.gaps,
        warnings: ended.warnings(),
        error: ended.error.map(|(e, d)| format!("{e} | {d}")),
    }
}

#[test]
fn rotate_with_the_samples_timeline_cuts_by_sample_count() {
    // A source that is not live: the periods are counted in samples from the first one's
    // wall-clock time, so every middle stream holds exactly one second.
    let srv = TestServer::start();
    common::init();
    let id = unique("rotsamples");
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("appsrc")
        .property("caps", common::caps(RATE, 1, 16))
        .property_from_str("format", "time")
        .build()
        .unwrap();
    let sink = common::racssink(&srv, &id, &[("rotate", "1"), ("chunk-size", "1920")]);
    pipeline.add_many([&src, &sink]).unwrap();
    src.link(&sink).unwrap();
    let frames = 3 * RATE as usize + 12_345;
    // Clicks with a period that does not divide the buffer size.
    let data = common::clicks(0, frames, 113, 1, 16);
    let feed = src.clone();
    let chunks: Vec<Vec<u8>> = data.chunks(2 * 4099).map(|c| c.to_vec()).collect();
    let pusher = std::thread::spawn(move || {
        // Paced at the audio's own speed (as a file played through a clock-synced element):
        // written much faster, the server files the blocks under keys far ahead of its clock
        // and cannot give them back in order, which racssrc then reports as an error.
        let started = std::time::Instant::now();
        let mut pushed = 0u64;
        for c in chunks {
            let due = Duration::from_nanos(pushed * 1_000_000_000 / u64::from(RATE));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            pushed += c.len() as u64 / 2;
            let _ =
                feed.emit_by_name::<gst::FlowReturn>("push-buffer", &[&gst::Buffer::from_slice(c)]);
        }
        let _ = feed.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    });
    let ended = common::play_to_eos(pipeline.upcast_ref());
    pusher.join().unwrap();
    let streams = rotated_streams(&ended);
    assert!(streams.len() >= 4, "{streams:?}");
    let stats = sink.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("timeline-corrections").unwrap(), 0);
    let mut all = Vec::new();
    for (k, (name, _)) in streams.iter().enumerate() {
        assert!(name.starts_with(&format!("{id}-")), "{name}");
        let size = common::info_raw(srv.addr(), name, "size").unwrap();
        if k > 0 && k + 1 < streams.len() {
            assert_eq!(size, i64::from(RATE) * 2, "{name} holds one second");
        }
        let bytes = read_stream(&srv, name);
        assert_eq!(bytes.len() as i64, size, "{name}");
        all.extend(bytes);
    }
    if let Some(d) = common::first_difference(&all, &data) {
        panic!("the rotated streams joined differ from the input: {d}");
    }
}

#[test]
fn skipped_cycles_are_filled_with_silence_and_later_audio_stays_on_time() {
    // Three 10 ms cycles lost upstream, twice: 30 ms each time, past the 20 ms bound. (With
    // gap-policy alone a buffer's running time would say so too; here the capture times do.)
    let srv = TestServer::start();
    let id = unique("skips");
    let live = Live::new(&srv, &[("stream-id", &id)]);
    let skipped = [100, 101, 102, 200, 201, 202];
    let (captures, ended) = live.run_skipping(300, 0.0, &skipped, marked);
    assert!(ended.error.is_none(), "{}", ended.error_text());
    let filled = live.stat("timeline-filled-frames");
    // A fill also takes up the standing offset, up to the bound (the stream's first sample
    // is stored after its capture), and the first skip may stay within the bound.
    assert!(
        (2 * 1440 - 2 * 960..=2 * 1440 + 96).contains(&filled),
        "filled {filled} frames for 2 x 30 ms"
    );
    let (r, samples) = stored(srv.addr(), &id);
    let offs = offsets(r, &samples, &captures, 0, 0.0);
    assert!(
        offs.len() + skipped.len() + 1 >= 300,
        "{} buffers",
        offs.len()
    );
    assert_within(offs, 20_000_000, "");
    // Where the second three cycles were lost (buffers 200-202, marked 201-203): silence, as
    // long as they were give or take the bound (where each buffer lies is checked above).
    let end = samples.iter().rposition(|v| *v == 200).unwrap();
    let next = samples.iter().position(|v| *v == 204).unwrap();
    assert!(samples[end + 1..next].iter().all(|v| *v == 0));
    assert!(
        (next - end - 1).abs_diff(1440) <= 960 + 48,
        "{} frames",
        next - end - 1
    );
}

#[test]
fn timeline_and_rotation_settings_round_trip_through_the_uri() {
    common::init();
    let sink = gst::ElementFactory::make("racssink").build().unwrap();
    let handler = sink.dynamic_cast_ref::<gst::URIHandler>().unwrap();
    handler
        .set_uri(
            "racs://h:7/air-%25Y%25m%25d-%25H?timeline=wall-clock&max-drift=5000000\
             &max-fill=1000000000",
        )
        .unwrap();
    assert_eq!(sink.property::<String>("stream-id"), "air-%Y%m%d-%H");
    assert_eq!(sink.property::<u64>("max-drift"), 5_000_000);
    assert_eq!(sink.property::<u64>("max-fill"), 1_000_000_000);
    let uri = handler.uri().unwrap();
    assert!(uri.contains("timeline=wall-clock"), "{uri}");
    assert!(uri.contains("max-drift=5000000"), "{uri}");
    handler.set_uri("racs://h/air?rotate=3600").unwrap();
    assert_eq!(sink.property::<u32>("rotate"), 3600);
    let e = handler
        .set_uri("racs://h/air?timeline=sometimes")
        .unwrap_err();
    assert!(e.to_string().contains("auto, samples or wall-clock"), "{e}");
    common::assert_tidy("URI error", &e.to_string());
}

#[test]
fn racssrc_needs_start_and_stop_for_rotated_streams() {
    common::init();
    let src = gst::ElementFactory::make("racssrc")
        .property("stream-id", "air-%Y%m%d-%H")
        .property("start", "2026-01-09T10:00:00.000Z")
        .build()
        .unwrap();
    let text = common::refused(&src, gst::State::Paused).to_string();
    assert!(
        text.contains("rotated streams") && text.contains("both start and stop"),
        "{text}"
    );
    src.set_state(gst::State::Null).unwrap();
}

/// Waits (bounded) until the next hour boundary is at least `margin` away, so that a test
/// whose runs must share one hourly period does not straddle one.
fn away_from_the_hour(margin: Duration) {
    let hour = 3_600_000_000_000i128;
    let left = hour - wall_ns().rem_euclid(hour);
    if left < margin.as_nanos() as i128 {
        std::thread::sleep(Duration::from_nanos(left as u64 + 10_000_000));
    }
}

#[test]
fn a_pause_beyond_max_fill_with_rotation_continues_in_a_new_stream_read_back_as_one() {
    for rotate in [false, true] {
        let srv = TestServer::start();
        let prefix = unique("cont");
        // An hourly pattern, and rotate=3600 (read through its names' pattern).
        let (props, pattern): (Vec<(&str, String)>, String) = if rotate {
            (
                vec![("stream-id", prefix.clone()), ("rotate", "3600".into())],
                format!("{prefix}-%Y%m%dT%H%M%SZ"),
            )
        } else {
            let p = format!("{prefix}-%Y%m%d-%H");
            (vec![("stream-id", p.clone())], p)
        };
        let props: Vec<(&str, &str)> = props.iter().map(|(k, v)| (*k, v.as_str())).collect();
        away_from_the_hour(Duration::from_secs(30));
        let first = Live::new(&srv, &props);
        let (c1, ended) = first.run(50, 0.0, marked);
        assert!(ended.error.is_none(), "{}", ended.error_text());
        // The pause is the scenario itself: the pipeline is down for ~1.2 s.
        std::thread::sleep(Duration::from_millis(1200));
        let mut props2 = props.clone();
        props2.push(("max-fill", "500000000"));
        let second = Live::new(&srv, &props2);
        let (c2, ended) = second.run(50, 0.0, |i| marked(i + 50));
        assert!(ended.error.is_none(), "{rotate}: {}", ended.error_text());
        // The period's stream was opened, found to end too long ago, and left for a new one.
        let rotations = ended.element_messages("racssink-rotate");
        assert_eq!(rotations.len(), 1, "{rotations:?}");
        let r = &rotations[0];
        assert_eq!(r.get::<String>("reason").unwrap(), "pause");
        let (period, cont) = (
            r.get::<String>("from").unwrap(),
            r.get::<String>("to").unwrap(),
        );
        assert!(
            period.starts_with(&prefix) && cont.starts_with(&format!("{period}-")),
            "{period} -> {cont}"
        );
        assert_eq!(second.stat("rotations"), 1);
        assert_eq!(second.stat("timeline-filled-frames"), 0, "no pause filled");
        let infos: Vec<String> = ended
            .messages
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Info(i) => Some(i.error().to_string()),
                _ => None,
            })
            .collect();
        assert!(
            infos
                .iter()
                .any(|t| t.contains("more than max-fill") && t.contains(&cont)),
            "{infos:?}"
        );
        // Each run's audio is in its own stream, stored at its capture time.
        let (r1, s1) = stored(srv.addr(), &period);
        let (r2, s2) = stored(srv.addr(), &cont);
        assert_eq!(s1.len() as u64 * 2, first.stat("bytes-acked"));
        assert_eq!(s2.len() as u64 * 2, second.stat("bytes-acked"));
        assert_within(
            offsets(r1, &s1, &c1, 0, 0.0)
                .into_iter()
                .chain(offsets(r2, &s2, &c2, 50, 0.0)),
            20_000_000,
            &format!("{rotate}: "),
        );
        // racssrc reads the range across both through the pattern: the first run's audio, a
        // gap for the pause, the second run's audio.
        let end2 = r2 + (s2.len() as i64 * 1000 + i64::from(RATE) - 1) / i64::from(RATE);
        let read = read_rotated(&srv, &pattern, r1, end2 + 1);
        assert!(read.error.is_none(), "{rotate}: {:?}", read.error);
        let want: Vec<u8> = s1
            .iter()
            .chain(s2.iter())
            .flat_map(|v| v.to_le_bytes())
            .collect();
        if let Some(d) = common::first_difference(&read.data, &want) {
            panic!("{rotate}: racssrc's read differs from the two streams joined: {d}");
        }
        assert_eq!(read.gaps.len(), 1, "{rotate}: {:?}", read.gaps);
        let pause_ns = (i128::from(r2) - i128::from(r1)) * 1_000_000
            - s1.len() as i128 * 1_000_000_000 / i128::from(RATE);
        // The continuation is joined at the capture time in its name (its first sample's),
        // which lies within max-drift of its stored time.
        assert!(
            (i128::from(read.gaps[0].1) - pause_ns).abs() <= 20_000_000 + JITTER_NS,
            "{rotate}: a gap of {} ns for a pause of {pause_ns} ns",
            read.gaps[0].1
        );
        assert!(
            read.warnings
                .iter()
                .any(|w| w.contains(&format!("rotated stream '{period}' ends at"))),
            "{rotate}: {:?}",
            read.warnings
        );
    }
}

#[test]
fn streams_of_rotate_2_are_read_back_through_their_names_pattern() {
    let srv = TestServer::start();
    let id = unique("rot2");
    let click = |i: u64| common::clicks(i * FRAMES, FRAMES as usize, 89, 1, 16);
    let live = Live::new(
        &srv,
        &[
            ("stream-id", id.as_str()),
            ("rotate", "2"),
            ("max-drift", "50000000"),
        ],
    );
    let (captures, ended) = live.run(550, 0.0, click);
    assert!(ended.error.is_none(), "{}", ended.error_text());
    let streams = rotated_streams(&ended);
    assert!(streams.len() >= 3, "{streams:?}");
    let mut all = Vec::new();
    for (name, _) in &streams {
        let size = common::info_raw(srv.addr(), name, "size").unwrap();
        all.extend(common::read_back(srv.addr(), name, 16, size as usize));
    }
    let sent: Vec<u8> = (0..captures.len() as u64).flat_map(click).collect();
    if let Some(d) = common::first_difference(&all, &sent) {
        panic!("the rotated streams joined differ from the input: {d}");
    }
    // The whole run, through the pattern of rotate's names: every stream in order, sample to
    // sample, no gap.
    let r0 = common::info_raw(srv.addr(), &streams[0].0, "ref").unwrap();
    let last = &streams.last().unwrap().0;
    let end = common::info_raw(srv.addr(), last, "ref").unwrap()
        + (common::info_raw(srv.addr(), last, "size").unwrap() / 2 * 1000)
            .div_euclid(i64::from(RATE));
    let read = read_rotated(&srv, &format!("{id}-%Y%m%dT%H%M%SZ"), r0, end + 1);
    assert!(read.error.is_none(), "{:?}", read.error);
    assert!(read.gaps.is_empty(), "gaps {:?}", read.gaps);
    assert!(read.warnings.is_empty(), "{:?}", read.warnings);
    if let Some(d) = common::first_difference(&read.data, &all) {
        panic!("racssrc's read across the rotate=2 streams differs from them: {d}");
    }
    for w in read.buffers.windows(2) {
        assert_eq!(w[0].0 + w[0].1, w[1].0, "timestamps jump between buffers");
    }
}
