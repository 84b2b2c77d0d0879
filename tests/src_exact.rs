// SPDX-License-Identifier: MPL-2.0
//! racssrc, exact or an error: every scenario of issue 9's list as its own test, on content
//! that repeats (silence, steady tones, clicks), with the server's own failures. Each compares
//! what came out with a model of what the server stores (`srckit`).

#[allow(unused_imports)]
mod common;
mod srckit;

use std::time::{Duration, Instant};

use gst::prelude::*;
use gstracs::client::reader::{format_unix_ms, Bound, Piece};
use gstracs::client::StreamFormat;
use srckit::{check, read, Bench, Content, Outcome};

fn fmt(rate: u32, ch: u16, bits: u16) -> StreamFormat {
    StreamFormat::new(rate, ch, bits).unwrap()
}

/// What a racssrc pipeline produced: the samples (stream width), buffer PTS and durations,
/// GAP events (pts, duration), and how it ended.
struct Run {
    data: Vec<u8>,
    buffers: Vec<(u64, u64, usize)>,
    gaps: Vec<(u64, u64)>,
    /// Each buffer's wall-clock reference timestamp (`timestamp/x-unix`), ns.
    unix: Vec<u64>,
    /// Tag events, in order.
    tags: Vec<gst::TagList>,
    ended: common::Ended,
    stats: Option<gst::Structure>,
}

/// `racssrc ! fakesink` with the given properties, played to EOS or an error.
fn element(bench: &Bench, id: &str, props: &[(&str, glib::Value)]) -> Run {
    let props: Vec<(&str, glib::Value)> = common::src_props(&bench.srv, id)
        .into_iter()
        .chain(props.iter().cloned())
        .collect();
    let probe = common::SrcProbe::new(&props);
    let ended = probe.play();
    let stats = probe.src.property::<Option<gst::Structure>>("stats");
    let got = probe.take();
    Run {
        data: got.data,
        buffers: got
            .buffers
            .iter()
            .map(|b| (b.pts, b.duration, b.size))
            .collect(),
        gaps: got.gaps,
        unix: got.buffers.iter().filter_map(|b| b.unix).collect(),
        tags: got.tags,
        ended,
        stats,
    }
}

/// The model's samples of frames `[a, b)` of a stream, in its width; panics where lost.
fn stored(bench: &Bench, s: usize, a: u64, b: u64) -> Vec<u8> {
    bench
        .world
        .stream_timeline(s)
        .expect("recordings that do not overlap")[a as usize..b as usize]
        .iter()
        .map(|f| f.clone().expect("a frame the server lost"))
        .collect::<Vec<_>>()
        .concat()
}

fn ns(frames: u64, rate: u32) -> u64 {
    frames * 1_000_000_000 / u64::from(rate)
}

/// Reads `[start, stop)` with the reader and checks it against the model; the outcome.
fn read_checked(bench: &Bench, s: usize, start: Bound, stop: Bound, page_ms: u64) -> Outcome {
    let m = &bench.world.streams[s];
    let frames = m.size / m.format.bytes_per_frame() as u64;
    let out = read(bench.addr(), &m.id, start, stop, page_ms);
    let whole = bench
        .world
        .stream_timeline(s)
        .expect("recordings that do not overlap");
    let frames = frames.max(whole.len() as u64);
    let (first, end) = srckit::range_frames(start, stop, frames);
    if let Err(e) = check(&whole, &m.format, first, end, &out, 0) {
        panic!("{} [{first}, {end}) / {page_ms} ms: {e}", m.id);
    }
    out
}

#[test]
fn silence_then_noise_after_another_stream_left_the_table_partly_filled() {
    // Another stream leaves the shared in-memory table partly filled, then this one is written:
    // 20 s of digital silence, then 40 s of noise. Seconds 15 to 45 come back exactly: the
    // noise starts 5 s in, not early. The old reader lined pages up by content and returned
    // 27.77 s with the noise 2.2 to 4.8 s early.
    let mut bench = Bench::new(40, Duration::from_millis(100));
    let f = fmt(44100, 2, 16);
    let other = bench.create("other", fmt(48000, 2, 16));
    bench.blocks(other, 7, 8192, Content::Ramp);
    let s = bench.create("quiet-then-noise", f);
    bench.blocks(s, 108, 8192, Content::Silence); // 20.06 s
    bench.blocks(s, 216, 8192, Content::Noise { seed: 7 }); // 40.1 s
    let run = element(
        &bench,
        "quiet-then-noise",
        &[
            ("start-offset", 15_000_000_000u64.to_value()),
            ("duration", 30_000_000_000u64.to_value()),
        ],
    );
    assert!(run.ended.error.is_none(), "{}", run.ended.error_text());
    let first = 15 * 44100;
    let want = stored(&bench, s, first, first + 30 * 44100);
    assert_eq!(run.data.len(), want.len(), "30 s asked");
    assert!(
        run.data == want,
        "{:?}",
        common::first_difference(&run.data, &want)
    );
    // PTS from sample counts, from 0.
    let mut frames = 0u64;
    for &(pts, dur, size) in &run.buffers {
        assert_eq!(pts, ns(frames, 44100));
        frames += (size / 4) as u64;
        assert_eq!(pts + dur, ns(frames, 44100));
    }
}

#[test]
fn a_steady_tone_comes_back_exactly_by_wall_clock_time() {
    // The README's export example on a steady 440 Hz tone: a wall-clock range, exact to the
    // sample (the stream is written in blocks of one size).
    let mut bench = Bench::new(40, Duration::from_millis(100));
    let f = fmt(44100, 2, 16);
    let s = bench.create("tone", f);
    // A square wave of 50 frames is a steady tone whose every period is identical.
    bench.blocks(s, 60, 8192, Content::Square { period: 50 });
    let r = bench.world.streams[s].ref_ms;
    let run = element(
        &bench,
        "tone",
        &[
            ("start", format_unix_ms(r + 2500).to_value()),
            ("stop", format_unix_ms(r + 7500).to_value()),
            ("chunk-duration", 700_000_000u64.to_value()),
        ],
    );
    assert!(run.ended.error.is_none(), "{}", run.ended.error_text());
    let want = stored(&bench, s, 110_250, 330_750);
    assert!(
        run.data == want,
        "{:?}",
        common::first_difference(&run.data, &want)
    );
}

#[test]
fn clicks_followed_live_stay_in_place() {
    // Silence with a click every 500 ms, written live (in steps, tables hidden while written),
    // followed from its start: every click comes out where it was stored. The old reader put
    // clicks up to 25 blocks away on a loaded machine.
    let mut bench = Bench::new(4, Duration::from_millis(150));
    let f = fmt(8000, 1, 16);
    let s = bench.create("clicks", f);
    bench.blocks(s, 5, 800, Content::Clicks { period: 4000 });
    let addr = bench.addr();
    let total = 8000 * 12u64;
    let reader = std::thread::spawn(move || srckit::read_follow(addr, "clicks", total));
    for _ in 0..115 {
        std::thread::sleep(Duration::from_millis(15));
        bench.block(s, 800, Content::Clicks { period: 4000 });
    }
    let out = reader.join().unwrap();
    let timeline = bench.world.timeline(s);
    check(&timeline, &f, 0, total, &out, 0).unwrap();
    assert!(out.error.is_none(), "{:?}", out.error);
}

#[test]
fn import_then_live_then_import_reads_the_live_stream_whole() {
    // Import a file (ahead of the clock), record a few seconds live, import again: the live
    // stream's first blocks sit in the first import's table, filed under that import's future
    // time. The old reader failed with "keeps leaving out blocks ... after byte 0".
    let mut bench = Bench::new(40, Duration::from_millis(100));
    let a = bench.create("import-1", fmt(44100, 2, 16));
    bench.blocks(a, 163, 8192, Content::Noise { seed: 1 }); // 30 s in a moment: 3 left in the table
    let live = bench.create("live", fmt(48000, 2, 16));
    for _ in 0..30 {
        bench.block(live, 4800, Content::Silence);
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = bench.create("import-2", fmt(44100, 2, 16));
    bench.blocks(b, 163, 8192, Content::Square { period: 100 });
    for page_ms in [10_000, 700] {
        let out = read_checked(&bench, live, Bound::Open, Bound::Open, page_ms);
        assert!(out.error.is_none(), "{:?}", out.error);
    }
    let out = read_checked(&bench, a, Bound::Open, Bound::Open, 10_000);
    assert!(out.error.is_none(), "{:?}", out.error);
}

#[test]
fn streams_written_at_once_with_different_start_delays_never_come_back_swapped() {
    // Many live streams at once, each starting after its own delay (so their keys are offset
    // by different amounts): the server files blocks in tables whose names no longer follow
    // arrival order, and EXTRACT returns neighbouring blocks swapped. Every stream must come
    // back exact, or the reader must say it cannot, before anything wrong.
    let mut bench = Bench::new(8, Duration::from_millis(60));
    let f = fmt(44100, 2, 16);
    let n = 16;
    let mut ids = Vec::new();
    for i in 0..n {
        let s = bench.create(&format!("live{i}"), f);
        // Start-up delays: each stream's ref lags its first capture differently.
        std::thread::sleep(Duration::from_millis(3 * (i as u64 % 5)));
        bench.block(s, 8192, Content::Clicks { period: 8192 });
        ids.push(s);
    }
    for round in 0..24 {
        for (i, &s) in ids.iter().enumerate() {
            let c = if (round + i) % 3 == 0 {
                Content::Silence
            } else {
                Content::Clicks { period: 8192 }
            };
            bench.block(s, 8192, c);
        }
    }
    let mut errors = 0;
    for &s in &ids {
        let out = read_checked(&bench, s, Bound::Open, Bound::Open, 10_000);
        errors += usize::from(out.error.is_some());
    }
    assert!(errors <= n / 4, "{errors} of {n} streams could not be read");
}

#[test]
fn a_crash_mid_stream_reads_back_whole_each_recording_at_its_own_times() {
    // Killed and restarted mid-stream: the stream has two recordings, the old blocks at their
    // old times and the new ones from a new ref (INFO describes only the new part). Read whole,
    // it comes back in time order: the old recording, a gap up to the new ref, the new one, each
    // sample exact. The old reader left the old part out silently, then refused it.
    let mut bench = Bench::new(8, Duration::from_millis(60));
    let f = fmt(16000, 1, 16);
    let s = bench.create("crashy", f);
    for _ in 0..12 {
        // Live: 50 ms of audio every 50 ms, so the old recording ends before the restart.
        bench.block(s, 800, Content::Square { period: 40 });
        std::thread::sleep(Duration::from_millis(50));
    }
    bench.kill_restart();
    bench.blocks(s, 30, 800, Content::Silence);
    let whole = bench.world.stream_timeline(s).expect("two recordings");
    let (old_end, new_start) = {
        let last_old = whole.iter().position(|f| f.is_none()).expect("a gap");
        let first_new = whole[last_old..].iter().position(|f| f.is_some()).unwrap() + last_old;
        (last_old as u64, first_new as u64)
    };
    assert!(old_end > 0 && new_start > old_end);
    for page_ms in [10_000, 120] {
        let out = read_checked(&bench, s, Bound::Open, Bound::Open, page_ms);
        assert!(out.error.is_none(), "{:?}", out.error);
        let gaps: Vec<_> = out
            .pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Gap {
                    frame,
                    frames,
                    reason,
                    ..
                } => Some((*frame, *frames, reason.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!((gaps[0].0, gaps[0].0 + gaps[0].1), (old_end, new_start));
        assert!(gaps[0].2.contains("restarted"), "{}", gaps[0].2);
    }
    // By wall-clock time: a range inside the old recording, and one across the restart.
    let r0 = bench.world.streams[s].epochs[0];
    let r1 = bench.world.streams[s].epochs[1];
    for (a, b) in [(r0 + 100, r0 + 400), (r0 + 300, r1 + 500)] {
        let ns = |t: i64| i128::from(t) * 1_000_000;
        let out = read(
            bench.addr(),
            "crashy",
            Bound::UnixNs(ns(a)),
            Bound::UnixNs(ns(b)),
            10_000,
        );
        assert!(out.error.is_none(), "{:?}", out.error);
        // Frames on the stream's timeline: from the old recording's ref, 16 per ms; the new
        // recording starts at the frame of its own ref.
        let frame = |t: i64| {
            if t >= r1 {
                new_start + (t - r1) as u64 * 16
            } else {
                (t - r0) as u64 * 16
            }
        };
        check(&whole, &f, frame(a), frame(b), &out, 0).unwrap();
    }
    // And from the new ref on, by frame on the stream's timeline.
    read_checked(&bench, s, Bound::Frame(new_start), Bound::Open, 10_000);
    // Through racssrc: a warning naming the restart, a GAP event over the time between the
    // recordings, the audio of both exact, and each recording's buffers stamped with its own
    // wall-clock times.
    let run = element(&bench, "crashy", &[]);
    assert!(run.ended.error.is_none(), "{}", run.ended.error_text());
    let warnings = run.ended.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("'crashy'") && w.contains("restarted")),
        "{warnings:?}"
    );
    assert_eq!(
        run.gaps,
        vec![(
            ns(old_end, 16000),
            ns(new_start, 16000) - ns(old_end, 16000)
        )]
    );
    let mut want = stored(&bench, s, 0, old_end);
    want.extend(stored(&bench, s, new_start, whole.len() as u64));
    assert!(
        run.data == want,
        "{:?}",
        common::first_difference(&run.data, &want)
    );
    assert_eq!(run.unix.first().copied(), Some(r0 as u64 * 1_000_000));
    let i = run
        .buffers
        .iter()
        .position(|b| b.0 >= ns(new_start, 16000))
        .unwrap();
    assert_eq!(run.buffers[i].0, ns(new_start, 16000), "PTS after the gap");
    assert_eq!(
        run.unix[i],
        r1 as u64 * 1_000_000,
        "the new recording's own time"
    );
    // Tags before the first buffer: the stream id and the wall-clock time of the first sample.
    let tags = run.tags.first().expect("a tag event");
    assert_eq!(
        tags.get::<gst::tags::Title>().map(|v| v.get().to_string()),
        Some("crashy".to_string())
    );
    let dt = tags.get::<gst::tags::DateTime>().expect("a date and time");
    let dt = dt.get().to_g_date_time().unwrap();
    assert_eq!(dt.to_unix() * 1000 + i64::from(dt.microsecond()) / 1000, r0);
    // The final counters as an element message before EOS, the same as the property's.
    let finals = common::element_structures(&run.ended.messages, "racssrc-stats");
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(Some(&finals[0]), run.stats.as_ref());
    assert!(finals[0].get::<u64>("holes").unwrap() >= 1);
}

#[test]
fn a_fast_import_cut_short_by_a_crash_is_an_error_before_any_audio() {
    // A fast import (keys far ahead of the clock) killed and started again: the new recording's
    // times run into the old one's, and EXTRACT answers with blocks of both for the same times.
    // The old reader pushed audio out of order before it stopped; now nothing goes out.
    let mut bench = Bench::new(8, Duration::from_millis(60));
    let f = fmt(16000, 1, 16);
    let s = bench.create("import", f);
    bench.blocks(s, 40, 1600, Content::Square { period: 40 }); // 4 s in a moment
    bench.kill_restart();
    bench.blocks(s, 30, 1600, Content::Silence);
    for start in [Bound::Open, Bound::Frame(0)] {
        let out = read(bench.addr(), "import", start, Bound::Open, 10_000);
        let text = out.error.map(|e| e.to_string()).expect("an error");
        assert!(
            text.contains("'import'") && text.contains("run into the current recording"),
            "{text}"
        );
        assert!(out.pieces.is_empty());
    }
}

#[test]
fn a_shutdown_hole_is_a_gap_with_its_position_and_length_or_an_error_on_request() {
    // SHUTDOWN loses the unflushed table: a hole in the middle of the stream. Reading across it
    // warns with the position and length and sends a GAP event with the right timestamps, the
    // audio on both sides exact. The old reader failed, putting the hole at byte 0.
    let mut bench = Bench::new(6, Duration::from_millis(60));
    let f = fmt(8000, 2, 16);
    let s = bench.create("holey", f);
    bench.blocks(s, 40, 800, Content::Clicks { period: 1000 });
    let other = bench.create("other", fmt(8000, 1, 16));
    bench.blocks(other, 1, 800, Content::Silence);
    bench.blocks(s, 3, 800, Content::Clicks { period: 1000 });
    bench.shutdown_restart();
    bench.blocks(s, 30, 800, Content::Clicks { period: 1000 });
    let timeline = bench.world.timeline(s);
    let lost: Vec<usize> = (0..timeline.len())
        .filter(|&i| timeline[i].is_none())
        .collect();
    assert!(!lost.is_empty(), "the test checks nothing");
    let (h0, h1) = (lost[0] as u64, *lost.last().unwrap() as u64 + 1);
    let out = read_checked(&bench, s, Bound::Open, Bound::Open, 10_000);
    assert!(out.error.is_none(), "{:?}", out.error);
    assert!(out.pieces.iter().any(
        |p| matches!(p, Piece::Gap { frame, frames, .. } if *frame == h0 && *frames == h1 - h0)
    ));
    // Through racssrc: a warning, a GAP event at the hole's time, audio around it exact.
    let run = element(&bench, "holey", &[]);
    assert!(run.ended.error.is_none(), "{}", run.ended.error_text());
    let warnings = run.ended.warnings();
    assert!(
        warnings.iter().any(|w| w.contains("'holey'")
            && w.contains("lost")
            && w.contains(&format!("byte {}", h0 * 4))),
        "{warnings:?}"
    );
    assert_eq!(run.gaps, vec![(ns(h0, 8000), ns(h1, 8000) - ns(h0, 8000))]);
    let mut want = stored(&bench, s, 0, h0);
    want.extend(stored(&bench, s, h1, timeline.len() as u64));
    assert!(
        run.data == want,
        "{:?}",
        common::first_difference(&run.data, &want)
    );
    let after = run.buffers.iter().find(|b| b.0 >= ns(h1, 8000)).unwrap();
    assert_eq!(after.0, ns(h1, 8000), "PTS after the gap");
    // hole-policy=error: an error at the hole, nothing of the hole or after it delivered.
    let run = element(&bench, "holey", &[("hole-policy", "error".to_value())]);
    let text = run.ended.error_text();
    assert!(
        text.contains("'holey'") && text.contains("hole-policy=error"),
        "{text}"
    );
    assert!(run.data.len() <= (h0 * 4) as usize);
}

#[test]
fn any_channel_count_negotiates_through_audioconvert() {
    // Caps carry a channel-mask: GStreamer's default layout up to 8 channels, unpositioned
    // above, so `racssrc ! audioconvert` works for 1 to 64 channels.
    common::init();
    let mut bench = Bench::new(40, Duration::ZERO);
    // GStreamer's channel mixer (inside audioconvert) takes at most 63 channels; 64 go
    // straight to a sink.
    for ch in [1u16, 2, 6, 8, 9, 63, 64] {
        let id = format!("ch{ch}");
        let s = bench.create(&id, fmt(8000, ch, 16));
        bench.blocks(s, 5, 400, Content::Ramp);
        let convert = if ch < 64 {
            "audioconvert ! audio/x-raw,format=F32LE !"
        } else {
            ""
        };
        let pipeline = gst::parse::launch(&format!(
            "racssrc host={} port={} stream-id={id} ! {convert} fakesink sync=false",
            bench.srv.host(),
            bench.srv.port()
        ))
        .unwrap();
        let ended = common::play(&pipeline);
        assert!(
            ended.error.is_none(),
            "{ch} channels: {}",
            ended.error_text()
        );
    }
}

#[test]
fn the_last_seconds_of_a_finished_stream_cost_a_few_requests_and_no_waits() {
    // The last 3.5 s of a 10 s finished stream in 0.5 s chunks: the old reader slept and made
    // 108 EXTRACTs. Now: no waits, a bounded number of requests, read in well under a second.
    let mut bench = Bench::new(40, Duration::from_millis(100));
    let f = fmt(44100, 2, 16);
    let s = bench.create("short", f);
    bench.blocks(s, 53, 8192, Content::Noise { seed: 3 });
    std::thread::sleep(Duration::from_millis(300)); // no table is being written any more
    let t0 = Instant::now();
    let run = element(
        &bench,
        "short",
        &[
            ("start-offset", 6_000_000_000u64.to_value()),
            ("chunk-duration", 500_000_000u64.to_value()),
        ],
    );
    let took = t0.elapsed();
    assert!(run.ended.error.is_none(), "{}", run.ended.error_text());
    let total = bench.world.streams[s].size / 4;
    assert!(run.data == stored(&bench, s, 6 * 44100, total));
    let st = run.stats.expect("stats");
    let requests = st.get::<u64>("requests").unwrap();
    let waits = st.get::<u64>("waits").unwrap();
    assert_eq!(waits, 0, "{st}");
    assert!(requests <= 60, "{requests} requests: {st}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn a_stream_read_right_after_a_fast_import_comes_back_whole() {
    // Written faster than real time and read at once: the newest tables are hidden while they
    // are written. The read must wait them out, never end early.
    let mut bench = Bench::new(40, Duration::from_millis(100));
    let f = fmt(44100, 2, 16);
    let s = bench.create("fresh", f);
    bench.blocks(s, 323, 8192, Content::Noise { seed: 9 });
    let run = element(&bench, "fresh", &[]);
    assert!(run.ended.error.is_none(), "{}", run.ended.error_text());
    let total = bench.world.streams[s].size / 4;
    assert_eq!(run.data.len() as u64, total * 4, "{:?}", run.stats);
    assert!(run.data == stored(&bench, s, 0, total));
    let out = read_checked(&bench, s, Bound::Open, Bound::Open, 10_000);
    assert!(out.error.is_none(), "{:?}", out.error);
}
