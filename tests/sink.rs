// SPDX-License-Identifier: MPL-2.0
//! racssink against racs-lite started in-process: what goes in must come out of EXTRACT
//! byte for byte, and every error a user can cause must say what to do.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{noise, TestServer, FAR_MS, WAIT};
use gst::prelude::*;
use gstracs::client::{runtime, Connection, SessionId, StreamFormat};

// ---------------------------------------------------------------------------------------
// Helpers

fn connect(addr: SocketAddr) -> Connection {
    runtime()
        .block_on(Connection::connect(
            &addr.to_string(),
            Duration::from_secs(5),
        ))
        .expect("connect to racs-lite")
}

fn info(addr: SocketAddr, id: &str) -> Option<gstracs::client::StreamInfo> {
    let mut conn = connect(addr);
    runtime().block_on(conn.stream_info(id)).expect("INFO")
}

/// What a pipeline run left behind.
#[derive(Debug)]
struct Outcome {
    messages: Vec<gst::Message>,
    error: Option<(glib::Error, String)>,
    stats: gst::Structure,
    took: Duration,
}

impl Outcome {
    fn error_text(&self) -> String {
        match &self.error {
            Some((e, debug)) => format!("{e} | {debug}"),
            None => String::new(),
        }
    }

    fn refs(&self) -> Vec<(String, i64, u64)> {
        self.messages
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Element(e) => e
                    .structure()
                    .filter(|s| s.name() == "racssink-ref")
                    .map(|s| {
                        (
                            s.get::<String>("stream-id").unwrap(),
                            s.get::<i64>("ref-ms").unwrap(),
                            s.get::<u64>("size").unwrap(),
                        )
                    }),
                _ => None,
            })
            .collect()
    }

    fn warnings(&self) -> Vec<String> {
        common::warning_texts(&self.messages)
    }

    fn stat(&self, name: &str) -> u64 {
        self.stats.get::<u64>(name).unwrap()
    }
}

/// Collects bus messages until EOS or an error, or `WAIT`.
fn wait_done(
    pipeline: &gst::Pipeline,
    messages: &mut Vec<gst::Message>,
) -> Option<(glib::Error, String)> {
    let ended = common::wait_pipeline_end(pipeline);
    messages.extend(ended.messages);
    ended.error
}

/// Drains what is left on the bus without waiting; checks every message so far with
/// `common::assert_tidy_messages`.
fn drain(pipeline: &gst::Pipeline, messages: &mut Vec<gst::Message>) {
    let bus = pipeline.bus().unwrap();
    while let Some(msg) = bus.pop() {
        messages.push(msg);
    }
    common::assert_tidy_messages(messages);
}

fn set_null_within(pipeline: &gst::Pipeline, limit: Duration) -> Duration {
    let started = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    let took = started.elapsed();
    assert!(took < limit, "going to NULL took {took:?}");
    took
}

/// `appsrc ! racssink`: pushes `buffers` (with PTS from the byte count when `timed`), then EOS.
fn run_appsrc(
    sink: gst::Element,
    format: &StreamFormat,
    buffers: &[&[u8]],
    timed: bool,
) -> Outcome {
    let caps = &common::format_caps(format);
    let started = Instant::now();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("appsrc")
        .property("caps", caps)
        .property_from_str("format", "time")
        .build()
        .unwrap();
    pipeline.add_many([&src, &sink]).unwrap();
    src.link(&sink).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let s = caps.structure(0).unwrap();
    let rate = s.get::<i32>("rate").unwrap() as u64;
    let width = if s.get::<&str>("format").unwrap() == "S24LE" {
        3
    } else {
        2
    };
    let bpf = s.get::<i32>("channels").unwrap() as u64 * width;
    let mut offset = 0u64;
    for data in buffers {
        let mut buffer = gst::Buffer::from_slice(data.to_vec());
        if timed {
            let pts = offset / bpf * 1_000_000_000 / rate;
            let end = (offset + data.len() as u64) / bpf * 1_000_000_000 / rate;
            let b = buffer.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_nseconds(pts));
            b.set_duration(gst::ClockTime::from_nseconds(end - pts));
        }
        offset += data.len() as u64;
        let _ = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer]);
    }
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    let mut messages = Vec::new();
    let error = wait_done(&pipeline, &mut messages);
    set_null_within(&pipeline, Duration::from_secs(3));
    drain(&pipeline, &mut messages);
    let stats = sink.property::<gst::Structure>("stats");
    Outcome {
        messages,
        error,
        stats,
        took: started.elapsed(),
    }
}

/// [`run_appsrc`] without timestamps, which must reach EOS.
fn import_ok(sink: gst::Element, format: &StreamFormat, buffers: &[&[u8]]) -> Outcome {
    let out = run_appsrc(sink, format, buffers, false);
    assert!(out.error.is_none(), "{}", out.error_text());
    out
}

/// Splits `data` into buffers of whole frames with odd, varying frame counts.
fn odd_splits(data: &[u8], bpf: usize) -> Vec<&[u8]> {
    let counts = [1usize, 37, 1001, 4097, 333, 2, 7919];
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = (counts[i % counts.len()] * bpf).min(data.len() - at);
        out.push(&data[at..at + n]);
        at += n;
        i += 1;
    }
    out
}

/// A source pad linked to racssink, driven from the test thread, for exact control of
/// timestamps, GAP events and the moment of EOS.
struct Feeder {
    pipeline: gst::Pipeline,
    sink: gst::Element,
    pad: gst::Pad,
    format: StreamFormat,
    messages: Vec<gst::Message>,
}

impl Feeder {
    fn new(sink: gst::Element, format: StreamFormat) -> Feeder {
        let pipeline = gst::Pipeline::new();
        pipeline.add(&sink).unwrap();
        let pad = gst::Pad::builder(gst::PadDirection::Src)
            .name("feed")
            .build();
        pad.set_active(true).unwrap();
        pad.link(&sink.static_pad("sink").unwrap()).unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        assert!(pad.push_event(gst::event::StreamStart::new("feed")));
        let caps_ok = pad.push_event(gst::event::Caps::new(&common::format_caps(&format)));
        let segment = gst::FormattedSegment::<gst::ClockTime>::new();
        assert!(pad.push_event(gst::event::Segment::new(&segment)));
        let mut feeder = Feeder {
            pipeline,
            sink,
            pad,
            format,
            messages: Vec::new(),
        };
        if !caps_ok {
            feeder.drain();
        }
        feeder
    }

    fn time_of(&self, bytes: usize) -> gst::ClockTime {
        let frames = (bytes / self.format.bytes_per_frame()) as u64;
        gst::ClockTime::from_nseconds(frames * 1_000_000_000 / u64::from(self.format.sample_rate))
    }

    fn push_at(
        &self,
        data: &[u8],
        pts: Option<gst::ClockTime>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut buffer = gst::Buffer::from_slice(data.to_vec());
        if let Some(pts) = pts {
            let b = buffer.get_mut().unwrap();
            b.set_pts(pts);
            b.set_duration(self.time_of(data.len()));
        }
        self.pad.push(buffer)
    }

    fn push(&self, data: &[u8]) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.push_at(data, None)
    }

    fn eos(&mut self) -> Option<(glib::Error, String)> {
        self.pad.push_event(gst::event::Eos::new());
        let mut messages = std::mem::take(&mut self.messages);
        let error = wait_done(&self.pipeline, &mut messages);
        self.messages = messages;
        error
    }

    fn drain(&mut self) {
        drain(&self.pipeline, &mut self.messages);
    }

    fn stats(&self) -> gst::Structure {
        self.sink.property::<gst::Structure>("stats")
    }

    fn error(&mut self) -> Option<String> {
        self.drain();
        self.messages.iter().find_map(|m| match m.view() {
            gst::MessageView::Error(e) => Some(e.error().to_string()),
            _ => None,
        })
    }

    /// READY first, so that messages posted while stopping (warnings about data that could
    /// not be stored) are read before the bus is flushed on the way to NULL.
    fn stop(mut self) -> Vec<gst::Message> {
        let started = Instant::now();
        self.pipeline.set_state(gst::State::Ready).unwrap();
        self.drain();
        set_null_within(&self.pipeline, Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(10));
        self.drain();
        self.messages
    }
}

fn fmt(rate: u32, channels: u16, bits: u16) -> StreamFormat {
    StreamFormat::new(rate, channels, bits).unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------
// Round trips

#[test]
fn round_trips_are_byte_exact_across_formats() {
    let cases = [
        (fmt(8000, 1, 16), 32768),
        (fmt(44100, 2, 16), 32768),
        (fmt(48000, 2, 24), 32768),
        (fmt(96000, 1, 24), 4000),
        (fmt(192000, 6, 16), 65535),
        (fmt(192000, 6, 24), 32768),
        (fmt(22050, 6, 24), 1),
    ];
    for (i, (format, chunk)) in cases.iter().enumerate() {
        // One server per case: EXTRACT reads the server's shared tables in name order, which
        // is only chronological for one stream at a time (contract section 3).
        let srv = TestServer::start();
        let id = format!("rt {i} {format}");
        // 0.4 s, plus a few frames so the last frame is partial.
        let frames = format.sample_rate as usize * 2 / 5 + 3;
        let data = noise(frames * format.bytes_per_frame(), i as u64);
        let sink = common::racssink(&srv, &id, &[("chunk-size", &chunk.to_string())]);
        let out = run_appsrc(
            sink,
            format,
            &odd_splits(&data, format.bytes_per_frame()),
            true,
        );
        assert!(out.error.is_none(), "{id}: {}", out.error_text());
        let back = common::read_back(srv.addr(), &id, format.bit_depth, data.len());
        assert_eq!(back.len(), data.len(), "{id}");
        if back != data {
            let first = back.iter().zip(&data).position(|(a, b)| a != b).unwrap();
            let chunk_bytes = gstracs::client::writer::chunk_bytes_for(format, *chunk).unwrap();
            let block = first / chunk_bytes;
            let moved = (0..data.len() / chunk_bytes)
                .find(|k| back[first..].starts_with(&data[k * chunk_bytes..k * chunk_bytes + 64]));
            panic!("{id}: stored bytes differ from byte {first} (block {block} of {chunk_bytes} bytes); found there: block {moved:?}");
        }
        let info = info(srv.addr(), &id).unwrap();
        assert_eq!(info.format().unwrap(), *format);
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(
            out.stat("silence-bytes"),
            0,
            "{id}: no gaps in a continuous stream"
        );
    }
}

#[test]
fn buffers_split_mid_frame_are_stored_whole() {
    let srv = TestServer::start();
    let format = fmt(44100, 2, 24);
    let data = noise(44100 * 6 / 10 * format.bytes_per_frame(), 7);
    // Byte splits that cut samples and frames; no timestamps.
    let mut buffers = Vec::new();
    let mut at = 0;
    for n in [1usize, 3, 5, 7, 4095, 65537, 11].iter().cycle() {
        if at >= data.len() {
            break;
        }
        let n = (*n).min(data.len() - at);
        buffers.push(&data[at..at + n]);
        at += n;
    }
    let out = import_ok(common::racssink(&srv, "split", &[]), &format, &buffers);
    common::assert_stored(srv.addr(), "split", 24, &data);
    // Every frame but the last is exactly one chunk of whole sample frames.
    let chunk = 32768 / 6 * 6;
    assert_eq!(out.stat("frames-acked"), data.len().div_ceil(chunk) as u64);
}

#[test]
fn appends_to_an_existing_stream_and_reports_its_ref() {
    let srv = TestServer::start();
    let format = fmt(16000, 1, 16);
    let a = noise(16000 * 4, 1);
    let b = noise(16000 * 4, 2);
    let first = import_ok(common::racssink(&srv, "append", &[]), &format, &[&a]);
    let second = import_ok(common::racssink(&srv, "append", &[]), &format, &[&b]);
    common::assert_stored(srv.addr(), "append", 16, &[a.as_slice(), &b].concat());
    let (r1, r2) = (first.refs(), second.refs());
    assert_eq!(r1.len(), 1);
    assert_eq!(r2.len(), 1);
    assert_eq!(r1[0].1, r2[0].1, "appending keeps the stream's ref");
    assert_eq!(r1[0].2, 32768, "size after the first frame");
    assert_eq!(r2[0].2, a.len() as u64 + 32768);
}

// ---------------------------------------------------------------------------------------
// Formats and negotiation

#[test]
fn converters_negotiate_to_the_stored_format() {
    let srv = TestServer::start();
    let stored = fmt(44100, 2, 16);
    let seed = noise(44100 * 4, 3);
    import_ok(common::racssink(&srv, "conv", &[]), &stored, &[&seed]);

    common::init();
    let pipeline = gst::parse::launch(&format!(
        "audiotestsrc num-buffers=20 samplesperbuffer=480 ! \
         audio/x-raw,format=S24LE,rate=48000,channels=1 ! audioconvert ! audioresample ! \
         racssink name=sink host={} port={} stream-id=conv",
        srv.host(),
        srv.port()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let ended = common::wait_pipeline_end(&pipeline);
    assert!(ended.error.is_none(), "{}", ended.error_text());
    let sink = pipeline.by_name("sink").unwrap();
    let caps = sink.static_pad("sink").unwrap().current_caps().unwrap();
    let s = caps.structure(0).unwrap();
    assert_eq!(s.get::<&str>("format").unwrap(), "S16LE");
    assert_eq!(s.get::<i32>("rate").unwrap(), 44100);
    assert_eq!(s.get::<i32>("channels").unwrap(), 2);
    set_null_within(&pipeline, Duration::from_secs(10));
    // 0.2 s at 48 kHz became about 0.2 s at 44.1 kHz stereo.
    let grown = info(srv.addr(), "conv").unwrap().size - seed.len() as u64;
    assert!((8800 * 4..=8840 * 4).contains(&grown), "grew by {grown}");
}

#[test]
fn a_fixed_mismatching_format_names_both_formats() {
    let srv = TestServer::start();
    let stored = fmt(44100, 2, 16);
    let out = run_appsrc(
        common::racssink(&srv, "fixed", &[]),
        &stored,
        &[&noise(4000, 1)],
        false,
    );
    assert!(out.error.is_none());
    // Through appsrc...
    let out = run_appsrc(
        common::racssink(&srv, "fixed", &[]),
        &fmt(48000, 1, 16),
        &[&noise(4000, 1)],
        false,
    );
    let (err, _) = out.error.expect("a format error");
    assert!(err.matches(gst::StreamError::Format), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("stores 44100 Hz, 2 channels, 16-bit"),
        "{text}"
    );
    assert!(
        text.contains("delivers 48000 Hz, 1 channel, 16-bit"),
        "{text}"
    );
    assert!(
        text.contains("'fixed'") && text.contains("audioconvert"),
        "{text}"
    );
    // ...and through a capsfilter in a gst-launch line.
    let pipeline = gst::parse::launch(&format!(
        "audiotestsrc num-buffers=5 ! audio/x-raw,format=S24LE,rate=44100,channels=2 ! \
         racssink host={} port={} stream-id=fixed",
        srv.host(),
        srv.port()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let (err, _) = common::wait_pipeline_end(&pipeline)
        .error
        .expect("a format error");
    set_null_within(&pipeline, Duration::from_secs(10));
    assert!(
        err.to_string()
            .contains("delivers 44100 Hz, 2 channels, 24-bit"),
        "{err}"
    );
}

#[test]
fn a_missing_stream_without_create_if_missing_is_not_found() {
    let srv = TestServer::start();
    let sink = common::racssink(&srv, "nowhere", &[("create-if-missing", "false")]);
    let out = run_appsrc(sink, &fmt(8000, 1, 16), &[&noise(1600, 1)], false);
    let (err, _) = out.error.expect("not found");
    assert!(err.matches(gst::ResourceError::NotFound), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("stream 'nowhere' does not exist"), "{text}");
    assert!(text.contains(&srv.addr().to_string()), "{text}");
    assert!(text.contains("create-if-missing=true"), "{text}");
    assert!(info(srv.addr(), "nowhere").is_none(), "nothing created");
}

// ---------------------------------------------------------------------------------------
// Takeover

/// A writer that crashed: CREATE, OPEN, one frame from its own session, no CLOSE.
fn crashed_writer(addr: SocketAddr, id: &str, format: &StreamFormat, pcm: &[u8]) -> SessionId {
    let mut conn = connect(addr);
    let session = SessionId::random();
    runtime().block_on(async {
        conn.create(id, format).await.unwrap();
        conn.open(id).await.unwrap();
        conn.send_frame(&session, gstracs::client::stream_hash(id.as_bytes()), pcm)
            .await
            .unwrap();
    });
    session
}

#[test]
fn a_stream_left_open_needs_takeover() {
    let srv = TestServer::start();
    let format = fmt(8000, 1, 16);
    let before = noise(1600, 1);
    let session = crashed_writer(srv.addr(), "left-open", &format, &before);

    let data = noise(8000, 2);
    let out = run_appsrc(
        common::racssink(&srv, "left-open", &[]),
        &format,
        &[&data],
        false,
    );
    let (err, _) = out.error.expect("busy");
    assert!(err.matches(gst::ResourceError::Busy), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("already open"), "{text}");
    assert!(text.contains("set takeover=true"), "{text}");
    assert_eq!(
        info(srv.addr(), "left-open").unwrap().size,
        before.len() as u64
    );

    import_ok(
        common::racssink(&srv, "left-open", &[("takeover", "true")]),
        &format,
        &[&data],
    );
    common::assert_stored(
        srv.addr(),
        "left-open",
        16,
        &[before.as_slice(), &data].concat(),
    );
    // The crashed writer's session no longer passes.
    let mut conn = connect(srv.addr());
    let err = runtime()
        .block_on(conn.send_frame(
            &session,
            gstracs::client::stream_hash(b"left-open"),
            &before,
        ))
        .unwrap_err();
    assert!(
        err.to_string().contains("closed or currently in use"),
        "{err}"
    );
    common::assert_tidy("client error", &err.to_string());
}

#[test]
fn a_writer_taken_over_mid_stream_stops_with_a_clear_error() {
    let srv = TestServer::start();
    let format = fmt(8000, 1, 16);
    let sink = common::racssink(&srv, "stolen", &[("chunk-size", "1600")]);
    let mut feeder = Feeder::new(sink, format);
    feeder.push(&noise(3200, 1)).unwrap();
    // Another writer takes over: CLOSE, OPEN, a frame from its session.
    let mut conn = connect(srv.addr());
    runtime().block_on(async {
        conn.close("stolen").await.unwrap();
        conn.open("stolen").await.unwrap();
        conn.send_frame(
            &SessionId::random(),
            gstracs::client::stream_hash(b"stolen"),
            &noise(1600, 9),
        )
        .await
        .unwrap();
    });
    assert_eq!(feeder.push(&noise(3200, 2)), Err(gst::FlowError::Error));
    let text = feeder.error().expect("an error message");
    assert!(text.contains("was taken over by another writer"), "{text}");
    feeder.stop();
}

// ---------------------------------------------------------------------------------------
// Settings

#[test]
fn invalid_stream_ids_name_the_character() {
    let srv = TestServer::start();
    for (id, named) in [
        ("it's", "single quote"),
        ("back\\slash", "backslash"),
        ("a |> SHUTDOWN", "pipe operator"),
        ("tab\there", "control character"),
    ] {
        let sink = common::racssink(&srv, id, &[]);
        let pipeline = gst::Pipeline::new();
        pipeline.add(&sink).unwrap();
        let e = common::refused(&pipeline, gst::State::Playing);
        assert!(e.matches(gst::ResourceError::Settings), "{id:?}");
        let text = e.to_string();
        assert!(
            text.contains("Invalid stream-id") && text.contains(named),
            "{id:?}: {text}"
        );
        pipeline.set_state(gst::State::Null).unwrap();
    }
    // No stream-id at all.
    let sink = gst::ElementFactory::make("racssink").build().unwrap();
    let pipeline = gst::Pipeline::new();
    pipeline.add(&sink).unwrap();
    let e = common::refused(&pipeline, gst::State::Ready);
    assert!(e.to_string().contains("No stream-id set"), "{e}");
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn uri_handler_sets_and_reports_the_settings() {
    common::init();
    let sink = gst::Element::make_from_uri(
        gst::URIType::Sink,
        "racs://127.0.0.1:7001/Beethoven%20Piano%20Sonata%20No.1?chunk-size=4096&takeover=true&retry-timeout=0&gap-policy=none",
        None,
    )
    .unwrap();
    assert_eq!(sink.factory().unwrap().name(), "racssink");
    assert_eq!(sink.property::<String>("host"), "127.0.0.1");
    assert_eq!(sink.property::<u32>("port"), 7001);
    assert_eq!(
        sink.property::<Option<String>>("stream-id").as_deref(),
        Some("Beethoven Piano Sonata No.1")
    );
    assert_eq!(sink.property::<u32>("chunk-size"), 4096);
    assert!(sink.property::<bool>("takeover"));
    assert_eq!(sink.property::<u32>("retry-timeout"), 0);
    let handler = sink.dynamic_cast_ref::<gst::URIHandler>().unwrap();
    assert_eq!(
        handler.uri().unwrap(),
        "racs://127.0.0.1:7001/Beethoven%20Piano%20Sonata%20No.1?chunk-size=4096&takeover=true&retry-timeout=0&gap-policy=none"
    );
    // The default port, and IPv6.
    handler.set_uri("racs://[::1]/x").unwrap();
    assert_eq!(sink.property::<String>("host"), "::1");
    assert_eq!(sink.property::<u32>("port"), 6381);
    assert!(handler.uri().unwrap().starts_with("racs://[::1]:6381/x"));

    for (uri, needle) in [
        ("racs://host:6381", "names no stream"),
        ("racs://host:99999/x", "1..=65535"),
        ("racs://host/it's", "single quote"),
        ("racs://host/x?chunk-size=70000", "1..=65535"),
        (
            "racs://host/x?colour=blue",
            "unknown URI parameter \"colour\"",
        ),
        ("racs://host/x?takeover=maybe", "true or false"),
        ("racs:host/x", "not a racs:// URI"),
    ] {
        let err = handler.set_uri(uri).unwrap_err();
        assert!(
            err.matches(gst::URIError::BadUri) || err.matches(gst::URIError::UnsupportedProtocol),
            "{uri}: {err:?}"
        );
        assert!(err.to_string().contains(needle), "{uri}: {err}");
        common::assert_tidy("URI error", &err.to_string());
    }
    // A failed URI changes nothing.
    assert_eq!(sink.property::<String>("host"), "::1");

    // A URI-made sink writes.
    let srv = TestServer::start();
    let sink = gst::Element::make_from_uri(
        gst::URIType::Sink,
        &format!("racs://{}/via%20uri?chunk-size=800", srv.addr()),
        None,
    )
    .unwrap();
    let data = noise(8000, 5);
    let out = import_ok(sink.clone(), &fmt(8000, 1, 16), &[&data]);
    assert_eq!(out.stat("frames-acked"), 10);
    common::assert_stored(srv.addr(), "via uri", 16, &data);
}

#[test]
fn uri_cannot_change_while_writing() {
    let srv = TestServer::start();
    let sink = common::racssink(&srv, "busy-uri", &[]);
    let feeder = Feeder::new(sink.clone(), fmt(8000, 1, 16));
    feeder.push(&noise(800, 1)).unwrap();
    let err = sink
        .dynamic_cast_ref::<gst::URIHandler>()
        .unwrap()
        .set_uri("racs://other:1/x")
        .unwrap_err();
    assert!(err.matches(gst::URIError::BadState), "{err:?}");
    assert!(
        err.to_string()
            .contains("cannot change the URI of a running racssink: set it before starting"),
        "{err}"
    );
    common::assert_tidy("URI error", &err.to_string());
    feeder.stop();
}

// ---------------------------------------------------------------------------------------
// Faults

#[test]
fn server_down_at_start_is_a_clear_error_without_a_hang() {
    let port = free_port();
    common::init();
    let sink = gst::ElementFactory::make("racssink")
        .property("host", "127.0.0.1")
        .property("port", u32::from(port))
        .property("stream-id", "down")
        .build()
        .unwrap();
    let out = run_appsrc(sink, &fmt(8000, 1, 16), &[&noise(1600, 1)], false);
    let (err, _) = out.error.expect("connect error");
    assert!(err.matches(gst::ResourceError::OpenWrite), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "cannot connect to the RACS server at 127.0.0.1:{port}"
        )),
        "{text}"
    );
    assert!(text.contains("check that the server is running"), "{text}");
    assert!(out.took < Duration::from_secs(5), "took {:?}", out.took);
}

/// A TCP peer that accepts and reads but never answers (`garbage`: answers every read with
/// an HTTP error instead).
fn fake_server(garbage: bool) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut conns = Vec::new();
        while Instant::now() < deadline {
            if let Ok((mut s, _)) = listener.accept() {
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                if garbage {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
                }
                conns.push(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    (addr, handle)
}

fn sink_at(addr: SocketAddr, id: &str, props: &[(&str, &str)]) -> gst::Element {
    common::init();
    let sink = gst::ElementFactory::make("racssink")
        .property("host", addr.ip().to_string())
        .property("port", u32::from(addr.port()))
        .property("stream-id", id)
        .build()
        .unwrap();
    for (name, value) in props {
        sink.set_property_from_str(name, value);
    }
    sink
}

#[test]
fn a_stalled_server_times_out() {
    let (addr, _server) = fake_server(false);
    let sink = sink_at(addr, "stall", &[("timeout", "300")]);
    let out = run_appsrc(sink, &fmt(8000, 1, 16), &[&noise(1600, 1)], false);
    let (err, _) = out.error.expect("timeout");
    assert!(err.matches(gst::ResourceError::OpenWrite), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("did not answer") && text.contains("300 ms"),
        "{text}"
    );
    assert!(text.contains("raise the timeout property"), "{text}");
    assert!(out.took < Duration::from_secs(5), "took {:?}", out.took);
}

#[test]
fn stopping_while_waiting_on_a_stalled_server_is_immediate() {
    let (addr, _server) = fake_server(false);
    let sink = sink_at(addr, "stall-stop", &[("timeout", "60000")]);
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("appsrc")
        .property("caps", common::format_caps(&fmt(8000, 1, 16)))
        .property_from_str("format", "time")
        .build()
        .unwrap();
    pipeline.add_many([&src, &sink]).unwrap();
    src.link(&sink).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let _ = src.emit_by_name::<gst::FlowReturn>(
        "push-buffer",
        &[&gst::Buffer::from_slice(noise(1600, 1))],
    );
    // Wait until the sink is blocked on the server: the Progress start message says so.
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(10),
            &[gst::MessageType::Progress],
        )
        .expect("progress start");
    let gst::MessageView::Progress(p) = msg.view() else {
        unreachable!()
    };
    assert_eq!(p.get().0, gst::ProgressType::Start);
    let took = set_null_within(&pipeline, Duration::from_secs(2));
    eprintln!("NULL after {took:?}");
}

#[test]
fn a_garbage_answering_server_is_a_protocol_error() {
    let (addr, _server) = fake_server(true);
    let sink = sink_at(addr, "garbage", &[("timeout", "2000")]);
    let out = run_appsrc(sink, &fmt(8000, 1, 16), &[&noise(1600, 1)], false);
    let (err, _) = out.error.expect("protocol error");
    let text = err.to_string();
    assert!(text.contains("does not speak the RACS protocol"), "{text}");
    assert!(out.took < Duration::from_secs(5), "took {:?}", out.took);
}

#[test]
fn eight_sinks_share_one_pool_of_three() {
    // The server refuses a 4th connection, so the pool must never open more than 3.
    let srv = TestServer::start_with(|c| c.max_connections = 3);
    common::init();
    let format = fmt(44100, 2, 16);
    let datas: Vec<Vec<u8>> = (0..8).map(|i| noise(44100 * 4 / 2, 100 + i)).collect();
    let mut runs = Vec::new();
    for (i, data) in datas.iter().enumerate() {
        let sink = common::racssink(
            &srv,
            &format!("par{i}"),
            &[("pool-size", "3"), ("chunk-size", "8192")],
        );
        let pipeline = gst::Pipeline::new();
        let src = gst::ElementFactory::make("appsrc")
            .property("caps", common::format_caps(&format))
            .build()
            .unwrap();
        pipeline.add_many([&src, &sink]).unwrap();
        src.link(&sink).unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        for piece in odd_splits(data, 4) {
            let _ = src.emit_by_name::<gst::FlowReturn>(
                "push-buffer",
                &[&gst::Buffer::from_slice(piece.to_vec())],
            );
        }
        let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
        runs.push(pipeline);
    }
    for (i, pipeline) in runs.iter().enumerate() {
        let mut messages = Vec::new();
        let error = wait_done(pipeline, &mut messages);
        assert!(error.is_none(), "par{i}: {error:?}");
        set_null_within(pipeline, Duration::from_secs(10));
    }
    // The server takes no 4th connection: read back through the pool's own.
    let pool = gstracs::client::Pool::get(&srv.host(), srv.port(), 1);
    assert_eq!(pool.size(), 3);
    for (i, data) in datas.iter().enumerate() {
        // Asked again while a table being written is still hidden from EXTRACT.
        let deadline = Instant::now() + Duration::from_secs(5);
        let back = loop {
            let s32 = runtime()
                .block_on(async {
                    let mut conn = pool.checkout(Duration::from_secs(5)).await?;
                    conn.extract(&format!("par{i}"), 0, FAR_MS).await
                })
                .unwrap();
            let back: Vec<u8> = s32.chunks_exact(4).flat_map(|s| s[..2].to_vec()).collect();
            if back.len() >= data.len() || Instant::now() > deadline {
                break back;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(back == *data, "par{i}");
    }
}

/// Feeds `data` in chunk-sized pieces, with `fault` applied to the server after `at` bytes.
fn restart_run(
    mut srv: TestServer,
    id: &str,
    data: &[u8],
    at: usize,
    concurrent: bool,
    fault: impl FnOnce(&mut TestServer) + Send + 'static,
) -> (TestServer, Vec<gst::Message>, gst::Structure) {
    let format = fmt(16000, 1, 16);
    // No replay window: what the server loses stays lost and must be reported (re-sending
    // is covered by tests/sink_crash.rs).
    let sink = common::racssink(
        &srv,
        id,
        &[
            ("chunk-size", "3200"),
            ("retry-timeout", "10000"),
            ("replay-window", "0"),
        ],
    );
    let mut feeder = Feeder::new(sink, format);
    for piece in data[..at].chunks(1000) {
        feeder.push(piece).unwrap();
    }
    // Either the fault happens between two frames, or it runs while the feeder goes on (and
    // blocks in a frame until the server is back).
    let mut fault = Some(fault);
    if !concurrent {
        (fault.take().unwrap())(&mut srv);
    }
    let addr = srv.addr();
    let fault_thread = std::thread::spawn(move || {
        if let Some(fault) = fault {
            fault(&mut srv);
        }
        srv
    });
    if concurrent {
        // The rest goes out only once the server is down, so it really meets the fault
        // (pushed at once, it could all be acknowledged before the fault began).
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            && !fault_thread.is_finished()
        {
            assert!(
                Instant::now() < deadline,
                "the fault did not take the server down"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for piece in data[at..].chunks(1000) {
        feeder.push(piece).unwrap();
    }
    let srv = fault_thread.join().unwrap();
    assert!(feeder.eos().is_none());
    let stats = feeder.stats();
    let messages = feeder.stop();
    (srv, messages, stats)
}

#[test]
fn a_restart_that_keeps_the_servers_memory_loses_and_duplicates_nothing() {
    // Only racs-lite can stop without losing its in-memory table (`durable`); a real server
    // always loses it, which tests/sink_crash.rs covers.
    let srv = TestServer::start_with(|c| c.durable = true);
    if !srv.needs_lite("a restart that keeps the in-memory table") {
        return;
    }
    let data = noise(16000 * 2 * 3, 11);
    // Stopped and restarted between two frames.
    let (srv, _, stats) = restart_run(srv, "restart-idle", &data, 16000, false, |s| s.restart());
    common::assert_stored(srv.addr(), "restart-idle", 16, &data);
    assert!(stats.get::<u64>("reconnects").unwrap() >= 1, "{stats}");
    assert_eq!(stats.get::<u64>("lost-acked-bytes").unwrap(), 0);
    assert_eq!(stats.get::<u64>("bytes-acked").unwrap(), data.len() as u64);

    // Down for a while: the writer keeps retrying until it is back.
    let (srv, _, stats) = restart_run(srv, "restart-down", &data, 40000, true, |s| {
        s.stop();
        std::thread::sleep(Duration::from_millis(400));
        s.restart();
    });
    common::assert_stored(srv.addr(), "restart-down", 16, &data);
    assert!(stats.get::<u64>("reconnects").unwrap() >= 1, "{stats}");
    assert_eq!(stats.get::<u64>("lost-acked-bytes").unwrap(), 0);
}

#[test]
fn a_killed_server_that_lost_acknowledged_data_is_reported() {
    let srv = TestServer::start();
    let data = noise(16000 * 2 * 3, 12);
    let at = 16000; // 5 frames of 3200 bytes, all still in the server's memory table
    let (srv, messages, stats) = restart_run(srv, "killed", &data, at, false, |s| {
        s.kill();
        s.restart();
    });
    // Every frame is acknowledged before the next is sent: the 5 frames were stored, then lost.
    let lost = stats.get::<u64>("lost-acked-bytes").unwrap();
    assert_eq!(lost, 16000, "{stats}");
    let warning = common::warning_texts(&messages)
        .into_iter()
        .find(|w| w.contains("lost"))
        .expect("a warning about lost data");
    let secs = lost as f64 / 32000.0;
    assert!(
        warning.contains(&format!("lost {lost} bytes ({secs:.3} s)"))
            && warning.contains("'killed'"),
        "{warning}"
    );
    // The server lost exactly what it had acknowledged; everything after is there once.
    let lost = lost as usize;
    assert!(common::read_back(srv.addr(), "killed", 16, data.len() - lost) == data[lost..]);
    // The stream got a new timeline: a second ref message.
    let refs: Vec<_> = messages
        .iter()
        .filter(|m| m.structure().is_some_and(|s| s.name() == "racssink-ref"))
        .collect();
    assert_eq!(refs.len(), 2);
}

#[test]
fn past_retry_timeout_the_error_says_how_much_audio_was_not_stored() {
    let srv = TestServer::start();
    let format = fmt(16000, 1, 16);
    let sink = common::racssink(
        &srv,
        "gone",
        &[("chunk-size", "3200"), ("retry-timeout", "300")],
    );
    let mut feeder = Feeder::new(sink, format);
    feeder.push(&noise(6400, 1)).unwrap();
    let mut srv = srv;
    srv.kill();
    let started = Instant::now();
    // The failure shows when the frame in flight is settled: at the next frame or at EOS.
    let _ = feeder.push(&noise(4000, 2));
    let (err, _) = feeder.eos().expect("an error");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(err.matches(gst::ResourceError::Write), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("gave up after 300 ms of retrying"), "{text}");
    let stats = feeder.stats();
    let unstored = 6400 + 4000 - stats.get::<u64>("bytes-acked").unwrap();
    assert!(unstored >= 4000, "{stats}");
    let secs = unstored as f64 / 32000.0;
    assert!(
        text.contains(&format!(
            "{secs:.3} s of audio ({unstored} bytes) were not stored in stream 'gone'"
        )),
        "{text}"
    );
    feeder.stop();
}

#[test]
fn stopping_without_eos_stores_what_is_held_and_closes() {
    let srv = TestServer::start();
    let format = fmt(8000, 2, 16);
    let data = noise(32768 + 1000, 13);
    let feeder = Feeder::new(common::racssink(&srv, "no-eos", &[]), format);
    feeder.push(&data).unwrap();
    feeder.stop();
    common::assert_stored(srv.addr(), "no-eos", 16, &data);
    // Closed: a fresh OPEN succeeds.
    let mut conn = connect(srv.addr());
    runtime().block_on(conn.open("no-eos")).unwrap();
}

// ---------------------------------------------------------------------------------------
// Gaps

#[test]
fn timestamp_gaps_and_gap_events_are_filled_with_silence() {
    let srv = TestServer::start();
    let format = fmt(8000, 1, 16); // 16 bytes per ms
    let ms = |n: u64| gst::ClockTime::from_mseconds(n);
    let (a, b, c) = (noise(1600, 1), noise(1600, 2), noise(1600, 3));
    for (policy, id) in [("silence", "gaps"), ("none", "no-gaps")] {
        let mut feeder = Feeder::new(
            common::racssink(&srv, id, &[("gap-policy", policy)]),
            format,
        );
        feeder.push_at(&a, Some(ms(1000))).unwrap(); // 1000..1100
        feeder.push_at(&b, Some(ms(1300))).unwrap(); // gap of 200 ms
        assert!(feeder
            .pad
            .push_event(gst::event::Gap::builder(ms(1400)).duration(ms(100)).build()));
        feeder.push_at(&c, Some(ms(1500))).unwrap(); // after a 100 ms GAP event
                                                     // Jitter below the threshold is not a gap.
        feeder
            .push_at(&c, Some(ms(1600) + gst::ClockTime::from_useconds(300)))
            .unwrap();
        assert!(feeder.eos().is_none());
        let stats = feeder.stats();
        feeder.stop();
        let mut expected = a.clone();
        if policy == "silence" {
            expected.extend(vec![0u8; 200 * 16]);
        }
        expected.extend_from_slice(&b);
        if policy == "silence" {
            expected.extend(vec![0u8; 100 * 16]);
        }
        expected.extend_from_slice(&c);
        expected.extend_from_slice(&c);
        let back = common::read_back(srv.addr(), id, 16, expected.len());
        assert_eq!(back.len(), expected.len(), "{policy}");
        assert!(back == expected, "{policy}");
        let silence = if policy == "silence" { 300 * 16 } else { 0 };
        assert_eq!(stats.get::<u64>("silence-bytes").unwrap(), silence);
        assert_eq!(
            stats.get::<u64>("silence-duration").unwrap(),
            silence / 16 * 1_000_000
        );
    }
}

// ---------------------------------------------------------------------------------------
// Messages and stats

#[test]
fn progress_ref_messages_and_stats() {
    let srv = TestServer::start();
    let format = fmt(44100, 2, 16);
    let data = noise(44100 * 4, 21); // 1 s
    let out = run_appsrc(
        common::racssink(&srv, "msgs", &[]),
        &format,
        &odd_splits(&data, 4),
        true,
    );
    assert!(out.error.is_none(), "{}", out.error_text());

    let progress: Vec<(gst::ProgressType, String, String)> = out
        .messages
        .iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Progress(p) => {
                let (t, code, text) = p.get();
                Some((t, code.to_string(), text.to_string()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(progress.len(), 2, "{progress:?}");
    assert_eq!(progress[0].0, gst::ProgressType::Start);
    assert!(
        progress[0].2.contains("Connecting to stream 'msgs'"),
        "{progress:?}"
    );
    assert_eq!(progress[1].0, gst::ProgressType::Complete);
    assert!(progress[1].2.contains("(created)"), "{progress:?}");

    let refs = out.refs();
    assert_eq!(refs.len(), 1);
    let (id, ref_ms, size) = &refs[0];
    assert_eq!(id, "msgs");
    assert_eq!(*size, 32768);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now_ms - 60_000..=now_ms).contains(ref_ms),
        "ref {ref_ms} vs now {now_ms}"
    );
    assert_eq!(*ref_ms, info(srv.addr(), "msgs").unwrap().ref_ms);

    let frames = data.len().div_ceil(32768) as u64;
    assert_eq!(out.stats.name(), "racssink-stats");
    assert_eq!(out.stat("bytes-acked"), data.len() as u64);
    assert_eq!(out.stat("bytes-sent"), data.len() as u64);
    assert_eq!(out.stat("frames-acked"), frames);
    assert_eq!(out.stat("frames-sent"), frames);
    assert_eq!(out.stat("reconnects"), 0);
    assert_eq!(out.stat("silence-bytes"), 0);
    assert_eq!(out.stat("lost-acked-bytes"), 0);
    assert!(out.stat("rtt-avg-us") > 0);
    assert!(out.stat("rtt-max-us") >= out.stat("rtt-avg-us"));
    assert!(out.warnings().is_empty(), "{:?}", out.warnings());
    // The final stats, as an element message before EOS: the same structure as the property.
    let posted = common::element_structures(&out.messages, "racssink-stats");
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0], out.stats);
    let stats_at = out
        .messages
        .iter()
        .position(|m| m.structure().is_some_and(|s| s.name() == "racssink-stats"))
        .unwrap();
    let eos_at = out
        .messages
        .iter()
        .position(|m| matches!(m.view(), gst::MessageView::Eos(_)))
        .unwrap();
    assert!(stats_at < eos_at, "posted before EOS");
}

#[test]
fn the_caps_query_answers_the_stored_format() {
    let srv = TestServer::start();
    let six = fmt(48000, 6, 24);
    let mut conn = connect(srv.addr());
    assert!(runtime().block_on(conn.create("six", &six)).unwrap());
    let sink = common::racssink(&srv, "six", &[]);
    let pad = sink.static_pad("sink").unwrap();
    let any = gst::Caps::builder("audio/x-raw").build();
    let caps = pad.query_caps(Some(&any));
    assert!(caps.is_fixed(), "{caps}");
    let s = caps.structure(0).unwrap();
    assert_eq!(s.get::<&str>("format").unwrap(), "S24LE");
    assert_eq!(s.get::<i32>("rate").unwrap(), 48000);
    assert_eq!(s.get::<i32>("channels").unwrap(), 6);
    // Without a filter (gst-launch's link check), or with one that cannot meet the stored
    // format, the template: a mismatch then fails with both formats named.
    assert!(!pad.query_caps(None).is_fixed());
    let mono = gst::Caps::builder("audio/x-raw")
        .field("channels", 1)
        .build();
    assert!(!pad.query_caps(Some(&mono)).is_empty());
    // A stream that does not exist, and a server that is down: the template, quickly.
    let fresh = common::racssink(&srv, "not-there", &[]);
    assert!(!fresh
        .static_pad("sink")
        .unwrap()
        .query_caps(Some(&any))
        .is_fixed());
    common::init();
    let down = gst::ElementFactory::make("racssink")
        .property("host", "127.0.0.1")
        .property("port", u32::from(free_port()))
        .property("stream-id", "x")
        .build()
        .unwrap();
    let started = Instant::now();
    assert!(!down
        .static_pad("sink")
        .unwrap()
        .query_caps(Some(&any))
        .is_fixed());
    assert!(started.elapsed() < Duration::from_secs(3));

    // A stereo source converted to the stored 6 channels, 48 kHz, 24-bit.
    let pipeline = gst::parse::launch(&format!(
        "audiotestsrc num-buffers=10 ! audio/x-raw,channels=2,rate=44100 ! audioconvert ! \
         audioresample ! racssink name=sink host={} port={} stream-id=six",
        srv.host(),
        srv.port()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let ended = common::wait_pipeline_end(&pipeline);
    assert!(ended.error.is_none(), "{}", ended.error_text());
    let caps = pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .current_caps()
        .unwrap();
    set_null_within(&pipeline, Duration::from_secs(10));
    let s = caps.structure(0).unwrap();
    assert_eq!(
        (
            s.get::<&str>("format").unwrap(),
            s.get::<i32>("rate").unwrap(),
            s.get::<i32>("channels").unwrap()
        ),
        ("S24LE", 48000, 6)
    );
    assert!(info(srv.addr(), "six").unwrap().size > 0);
}

#[test]
fn stopping_without_eos_when_the_server_is_gone_warns_what_was_not_stored() {
    let mut srv = TestServer::start();
    let feeder = Feeder::new(common::racssink(&srv, "lost-tail", &[]), fmt(8000, 1, 16));
    feeder.push(&noise(1600, 1)).unwrap(); // held: less than one chunk
    srv.kill();
    let messages = feeder.stop();
    let warning = messages
        .iter()
        .find_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .expect("a warning");
    assert!(
        warning.contains(
            "Stopping without EOS: could not store the last 1600 bytes (0.100 s) of stream \
             'lost-tail'"
        ),
        "{warning}"
    );
    assert!(
        warning.contains("cannot connect to the RACS server"),
        "{warning}"
    );
}

#[test]
fn a_format_too_wide_for_a_frame_is_a_settings_error() {
    let srv = TestServer::start();
    // 1 ms of 48 kHz, 1000 channels, 24-bit is 144000 bytes; a frame carries 65535.
    let mut feeder = Feeder::new(common::racssink(&srv, "wide", &[]), fmt(48000, 1000, 24));
    let text = feeder.error().expect("an error");
    assert!(
        text.contains("1 ms of 48000 Hz, 1000 channels, 24-bit is 144000 bytes"),
        "{text}"
    );
    assert!(
        text.contains("use fewer channels or a lower rate"),
        "{text}"
    );
    feeder.stop();
    assert!(info(srv.addr(), "wide").is_none(), "nothing created");
}

#[test]
fn ready_and_back_to_playing_appends_to_the_same_stream() {
    let srv = TestServer::start();
    let format = fmt(8000, 1, 16);
    let sink = common::racssink(&srv, "again", &[("chunk-size", "1600")]);
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("appsrc")
        .property("caps", common::format_caps(&format))
        .build()
        .unwrap();
    pipeline.add_many([&src, &sink]).unwrap();
    src.link(&sink).unwrap();
    let (a, b) = (noise(5000, 1), noise(7000, 2));
    let mut acked_frames = 0;
    for data in [&a, &b] {
        pipeline.set_state(gst::State::Playing).unwrap();
        let _ = src.emit_by_name::<gst::FlowReturn>(
            "push-buffer",
            &[&gst::Buffer::from_slice(data.clone())],
        );
        // Wait until it is being rendered: its whole frames are acknowledged (the rest, held,
        // is in the same render call, which deactivating the pad waits for).
        let frames = (acked_frames + data.len() / 1600) as u64;
        let deadline = Instant::now() + WAIT;
        while sink
            .property::<gst::Structure>("stats")
            .get::<u64>("frames-acked")
            .unwrap()
            < frames
        {
            assert!(Instant::now() < deadline, "not rendered");
            std::thread::sleep(Duration::from_millis(5));
        }
        pipeline.set_state(gst::State::Ready).unwrap();
        // The held rest went out as one more frame at READY.
        acked_frames = sink
            .property::<gst::Structure>("stats")
            .get::<u64>("frames-acked")
            .unwrap() as usize;
        assert_eq!(acked_frames as u64, frames + 1);
    }
    pipeline.set_state(gst::State::Null).unwrap();
    common::assert_stored(srv.addr(), "again", 16, &[a.as_slice(), &b].concat());
}

// ---------------------------------------------------------------------------------------
// if-exists

#[test]
fn if_exists_error_refuses_an_existing_stream_and_writes_nothing() {
    let srv = TestServer::start();
    let format = fmt(16000, 1, 16);
    let a = noise(16000 * 2, 31);
    let import = |data: &[u8]| {
        run_appsrc(
            common::racssink(&srv, "import", &[("if-exists", "error")]),
            &format,
            &[data],
            false,
        )
    };
    // The first import creates the stream.
    let first = import(&a);
    assert!(first.error.is_none(), "{}", first.error_text());
    let size = info(srv.addr(), "import").unwrap().size;
    assert_eq!(size, a.len() as u64);
    // Run twice, it is refused before anything is written.
    let second = import(&a);
    let (err, _) = second.error.clone().expect("the second import fails");
    assert!(err.matches(gst::ResourceError::OpenWrite), "{err:?}");
    let text = err.to_string();
    for needle in [
        "stream 'import' already exists on the RACS server at",
        &srv.addr().to_string(),
        &format!("{size} bytes from "),
        "if-exists=error refuses to append",
        "another stream-id",
        "if-exists=append",
    ] {
        assert!(text.contains(needle), "{needle:?} missing: {text}");
    }
    assert_eq!(second.stat("bytes-sent"), 0);
    assert_eq!(info(srv.addr(), "import").unwrap().size, size, "unchanged");
    common::assert_stored(srv.addr(), "import", 16, &a);
    // Not left open: a writer appending to it afterwards opens it.
    let mut conn = connect(srv.addr());
    runtime().block_on(conn.open("import")).unwrap();
    runtime().block_on(conn.close("import")).unwrap();

    // A stream that exists but holds nothing (created by someone else) is refused too.
    assert!(runtime().block_on(conn.create("empty", &format)).unwrap());
    let out = run_appsrc(
        common::racssink(&srv, "empty", &[("if-exists", "error")]),
        &format,
        &[&a],
        false,
    );
    let text = out.error_text();
    assert!(
        text.contains("stream 'empty' already exists") && text.contains("(empty)"),
        "{text}"
    );

    // The default appends (what run twice would do by accident).
    import_ok(common::racssink(&srv, "import", &[]), &format, &[&a]);
    assert_eq!(info(srv.addr(), "import").unwrap().size, 2 * size);
}

#[test]
fn if_exists_error_still_appends_to_the_stream_it_created_in_the_same_run() {
    let srv = TestServer::start();
    let format = fmt(8000, 1, 16);
    let (a, b) = (noise(4000, 41), noise(6000, 42));
    let sink = common::racssink(
        &srv,
        "own",
        &[("if-exists", "error"), ("chunk-size", "1600")],
    );
    let mut feeder = Feeder::new(sink, format);
    feeder.push(&a).unwrap();
    assert!(feeder.eos().is_none());
    // A flush after EOS, then more data: the stream is reopened and appended to.
    assert!(feeder.pad.push_event(gst::event::FlushStart::new()));
    assert!(feeder.pad.push_event(gst::event::FlushStop::new(true)));
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(feeder.pad.push_event(gst::event::Segment::new(&segment)));
    feeder.push(&b).unwrap();
    assert!(feeder.eos().is_none(), "{:?}", feeder.error());
    feeder.stop();
    common::assert_stored(srv.addr(), "own", 16, &[a.as_slice(), &b].concat());
}

#[test]
fn if_exists_error_needs_create_if_missing() {
    let srv = TestServer::start();
    let sink = common::racssink(
        &srv,
        "both",
        &[("if-exists", "error"), ("create-if-missing", "false")],
    );
    let err = common::refused_alone(&sink, gst::State::Playing);
    assert!(err.matches(gst::ResourceError::Settings), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("if-exists=error and create-if-missing=false")
            && text.contains("create-if-missing=true"),
        "{text}"
    );
    assert!(info(srv.addr(), "both").is_none());
}

#[test]
fn if_exists_is_set_and_reported_through_the_uri() {
    common::init();
    let sink = gst::ElementFactory::make("racssink").build().unwrap();
    let handler = sink.dynamic_cast_ref::<gst::URIHandler>().unwrap();
    handler.set_uri("racs://h:7/imp?if-exists=error").unwrap();
    assert_eq!(
        sink.property_value("if-exists")
            .serialize()
            .unwrap()
            .as_str(),
        "error"
    );
    assert_eq!(handler.uri().unwrap(), "racs://h:7/imp?if-exists=error");
    let e = handler
        .set_uri("racs://h:7/imp?if-exists=overwrite")
        .unwrap_err();
    assert!(e.to_string().contains("if-exists"), "{e}");
    common::assert_tidy("URI error", &e.to_string());
    handler.set_uri("racs://h:7/imp?if-exists=append").unwrap();
    assert_eq!(handler.uri().unwrap(), "racs://h:7/imp");
}

// ---------------------------------------------------------------------------------------
// Reconnects

/// The reconnect warnings and `racssink-reconnect` messages of a run.
fn reconnects(messages: &[gst::Message]) -> (Vec<String>, Vec<gst::Structure>) {
    let warnings = common::warning_texts(messages)
        .into_iter()
        .filter(|w| w.contains("Lost the connection") || w.contains("restarted while stream"))
        .collect();
    (
        warnings,
        common::element_structures(messages, "racssink-reconnect"),
    )
}

#[test]
fn every_reconnect_is_posted_with_the_address_and_what_happened() {
    let data = noise(16000 * 2 * 3, 51);
    // Killed and started again between two frames: the pooled connection is replaced without
    // an error, and the server no longer has the stream open.
    let srv = TestServer::start();
    let addr = srv.addr().to_string();
    let (srv, messages, stats) = restart_run(srv, "rc-idle", &data, 16000, false, |s| {
        s.kill();
        s.start_again();
    });
    let (warnings, posted) = reconnects(&messages);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&format!("The RACS server at {addr} restarted"))
            && warnings[0].contains("'rc-idle'"),
        "{warnings:?}"
    );
    assert_eq!(posted.len(), 1, "{posted:?}");
    let m = &posted[0];
    assert_eq!(m.get::<String>("address").unwrap(), addr);
    assert_eq!(m.get::<String>("stream-id").unwrap(), "rc-idle");
    assert!(m.get::<bool>("server-restarted").unwrap(), "{m}");
    assert!(
        m.get::<String>("reason").unwrap().contains("restarted"),
        "{m}"
    );
    assert_eq!(
        m.get::<u64>("reconnects").unwrap(),
        stats.get::<u64>("reconnects").unwrap()
    );

    // Killed while frames keep coming, started again 300 ms later: the writer retries.
    let (_srv, messages, stats) = restart_run(srv, "rc-down", &data, 16000, true, |s| {
        s.kill();
        std::thread::sleep(Duration::from_millis(300));
        s.start_again();
    });
    let (warnings, posted) = reconnects(&messages);
    assert_eq!(warnings.len(), 1, "one warning per outage: {warnings:?}");
    assert!(
        warnings[0].contains(&format!(
            "Lost the connection to the RACS server at {addr} while writing stream 'rc-down'"
        )) && warnings[0].contains("reconnecting for up to 10000 ms"),
        "{warnings:?}"
    );
    assert_eq!(posted.len(), 1, "{posted:?}");
    let m = &posted[0];
    assert_eq!(m.get::<String>("address").unwrap(), addr);
    assert!(m.get::<bool>("server-restarted").unwrap(), "{m}");
    let outage = m.get::<u64>("outage").unwrap();
    assert!(outage >= 200_000_000, "{m}");
    assert!(m.get::<String>("reason").unwrap().contains(&addr), "{m}");
    assert_eq!(stats.get::<u64>("reconnects").unwrap(), 1, "{stats}");
    let last = common::element_structures(&messages, "racssink-stats");
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].get::<u64>("reconnects").unwrap(), 1, "{}", last[0]);
}

#[test]
fn the_message_hygiene_check_finds_careless_text() {
    for careless in [
        "two  spaces",
        "a continuation\n    leftover",
        "a raw continuation\\\nleftover",
        "ends in a backslash\\",
        " blank start",
    ] {
        let caught = std::panic::catch_unwind(|| common::assert_tidy("message", careless));
        assert!(caught.is_err(), "{careless:?} passed");
    }
    common::assert_tidy("message", "Use letters other than ' \\ and |>");
}
