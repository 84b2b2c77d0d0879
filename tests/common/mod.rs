// SPDX-License-Identifier: MPL-2.0
//! The one test kit of the element suites: GStreamer set-up, the server under test (racs-lite
//! in-process, or a fresh real RACS process per test when `RACS_BIN` is set), waiting for the end
//! of a pipeline, caps, signal generators (silence, tones, clicks, noise, ramps) and reading a
//! stream back with an independent minimal client (racs-lite's, not the plugin's).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Once;
use std::time::{Duration, Instant};

use gst::prelude::*;

/// The server of one test: racs-lite, or a real RACS v0.1.0 process when `RACS_BIN` is set.
pub use racs_lite::harness::AnyServer as TestServer;

/// Far enough in the future to cover every block (epoch ms, year 2100).
pub const FAR_MS: u64 = 4_102_444_800_000;

/// How long a pipeline may take to reach EOS or an error in a test.
pub const WAIT: Duration = Duration::from_secs(30);

/// Initialises GStreamer once and registers the `racs` plugin from this crate.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer failed to initialise");
        gstracs::plugin_register_static().expect("the racs plugin failed to register");
    });
}

// ---------------------------------------------------------------------------------------
// Pipelines

/// How a pipeline run ended, with every bus message seen on the way.
#[derive(Debug)]
pub struct Ended {
    pub messages: Vec<gst::Message>,
    /// The error (with its debug text) when the run ended with one.
    pub error: Option<(glib::Error, String)>,
}

impl Ended {
    /// `"<error> | <debug>"`, or empty after EOS.
    pub fn error_text(&self) -> String {
        match &self.error {
            Some((e, debug)) => format!("{e} | {debug}"),
            None => String::new(),
        }
    }

    /// The warnings seen, as `"<message> | <debug>"`.
    pub fn warnings(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Warning(w) => Some(format!(
                    "{} | {}",
                    w.error(),
                    w.debug().map(|d| d.to_string()).unwrap_or_default()
                )),
                _ => None,
            })
            .collect()
    }

    /// The element messages of the given structure name.
    pub fn element_messages(&self, name: &str) -> Vec<gst::Structure> {
        element_structures(&self.messages, name)
    }
}

/// The structures of the element messages named `name` among `messages`.
pub fn element_structures(messages: &[gst::Message], name: &str) -> Vec<gst::Structure> {
    messages
        .iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Element(e) => e
                .structure()
                .filter(|s| s.name() == name)
                .map(|s| s.to_owned()),
            _ => None,
        })
        .collect()
}

/// The texts of the warnings among `messages`.
pub fn warning_texts(messages: &[gst::Message]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .collect()
}

/// Panics when a message a user reads has the marks of careless text: doubled spaces, a
/// line-continuation leftover (a newline followed by indentation, or a backslash at the end
/// of a line or of the text; a backslash the text names, such as a character it refuses, is
/// no leftover), or blank ends.
pub fn assert_tidy(what: &str, text: &str) {
    assert!(!text.contains("  "), "{what} has doubled spaces: {text:?}");
    assert!(
        !text.contains("\n  ") && !text.contains("\\\n") && !text.ends_with('\\'),
        "{what} has a line-continuation leftover: {text:?}"
    );
    assert_eq!(text.trim(), text, "{what} has blank ends: {text:?}");
}

/// [`assert_tidy`] for the text and debug text of every error and warning among `messages`,
/// and no error posted twice.
pub fn assert_tidy_messages(messages: &[gst::Message]) {
    let mut errors = Vec::new();
    for m in messages {
        let (kind, err, debug) = match m.view() {
            gst::MessageView::Error(e) => ("error", e.error(), e.debug()),
            gst::MessageView::Warning(w) => ("warning", w.error(), w.debug()),
            _ => continue,
        };
        let text = err.to_string();
        assert_tidy(kind, &text);
        if let Some(d) = debug {
            assert_tidy(&format!("{kind} debug"), &d);
        }
        if kind == "error" {
            assert!(
                !errors.contains(&text),
                "the same error was posted twice: {text:?}"
            );
            errors.push(text);
        }
    }
}

/// Collects bus messages until EOS or an error; panics after `within`.
pub fn wait_end(bus: &gst::Bus, within: Duration) -> Ended {
    let deadline = Instant::now() + within;
    let mut messages = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) else {
            panic!("no EOS or error within {within:?}");
        };
        messages.push(msg.clone());
        match msg.view() {
            gst::MessageView::Eos(_) => {
                return Ended {
                    messages,
                    error: None,
                }
            }
            gst::MessageView::Error(e) => {
                let error = Some((
                    e.error(),
                    e.debug().map(|d| d.to_string()).unwrap_or_default(),
                ));
                return Ended { messages, error };
            }
            _ => {}
        }
    }
}

/// Sets `pipeline` to PLAYING, waits for the end (up to [`WAIT`]), sets it to NULL and adds
/// what was left on the bus.
pub fn play(pipeline: &gst::Element) -> Ended {
    let bus = pipeline.bus().expect("a pipeline has a bus");
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The reason is on the bus as an error message.
        let ended = wait_end(&bus, WAIT);
        pipeline.set_state(gst::State::Null).unwrap();
        return ended;
    }
    let mut ended = wait_end(&bus, WAIT);
    pipeline.set_state(gst::State::Null).unwrap();
    while let Some(m) = bus.pop() {
        ended.messages.push(m);
    }
    assert_tidy_messages(&ended.messages);
    ended
}

/// [`play`], panicking with the error's text unless the run reached EOS.
pub fn play_to_eos(pipeline: &gst::Element) -> Ended {
    let ended = play(pipeline);
    assert!(
        ended.error.is_none(),
        "expected EOS, got an error: {}",
        ended.error_text()
    );
    ended
}

/// Interleaved S16LE or S24LE caps.
pub fn caps(rate: u32, channels: u16, bit_depth: u16) -> gst::Caps {
    gst_audio::AudioCapsBuilder::new_interleaved()
        .format(if bit_depth == 24 {
            gst_audio::AudioFormat::S24le
        } else {
            gst_audio::AudioFormat::S16le
        })
        .rate(rate as i32)
        .channels(i32::from(channels))
        .build()
}

// ---------------------------------------------------------------------------------------
// Signals. Repetitive content (silence, tones, clicks) is what a reader that aligns by
// content gets wrong; noise and ramps never repeat.

/// Bytes of one sample value in the stream's little-endian width.
fn put(out: &mut Vec<u8>, v: i32, bit_depth: u16) {
    out.extend_from_slice(&v.to_le_bytes()[..usize::from(bit_depth / 8)]);
}

/// Digital silence.
pub fn silence(frames: usize, channels: u16, bit_depth: u16) -> Vec<u8> {
    vec![0; frames * usize::from(channels) * usize::from(bit_depth / 8)]
}

/// A steady sine of `hz` at half scale, starting at sample frame `first`.
pub fn tone(
    first: u64,
    frames: usize,
    rate: u32,
    channels: u16,
    bit_depth: u16,
    hz: f64,
) -> Vec<u8> {
    let amp = f64::from((1i32 << (bit_depth - 1)) - 1) / 2.0;
    let mut out = Vec::with_capacity(frames * usize::from(channels) * usize::from(bit_depth / 8));
    for i in 0..frames as u64 {
        let t = (first + i) as f64 / f64::from(rate);
        let v = (amp * (2.0 * std::f64::consts::PI * hz * t).sin()).round() as i32;
        for _ in 0..channels {
            put(&mut out, v, bit_depth);
        }
    }
    out
}

/// Silence with a full-scale click of one sample frame every `period` frames (counted from
/// frame 0 of the stream, so `first` places the slice).
pub fn clicks(first: u64, frames: usize, period: u64, channels: u16, bit_depth: u16) -> Vec<u8> {
    let peak = (1i32 << (bit_depth - 1)) - 1;
    let mut out = Vec::with_capacity(frames * usize::from(channels) * usize::from(bit_depth / 8));
    for i in 0..frames as u64 {
        let v = if (first + i).is_multiple_of(period) {
            peak
        } else {
            0
        };
        for _ in 0..channels {
            put(&mut out, v, bit_depth);
        }
    }
    out
}

/// Deterministic pseudo-random bytes (every byte pattern is a valid 16/24-bit sample).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Reading back with an independent client

/// One raw EXTRACT `[from, to]` with racs-lite's minimal client: the int32 samples, or the
/// server's error text.
pub fn extract_s32(
    addr: SocketAddr,
    id: &str,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<i32>, String> {
    let mut c = racs_lite::client::RawClient::connect(addr).map_err(|e| e.to_string())?;
    let reply = c
        .command(&format!("EXTRACT '{id}' {from_ms} {to_ms}"))
        .map_err(|e| e.to_string())?;
    let first = reply.first().ok_or("empty reply")?;
    let arr = first.as_array().ok_or("reply is not an array")?;
    match (arr.first().and_then(|t| t.as_str()), arr.get(1)) {
        (Some("s32v"), Some(rmpv::Value::Binary(b))) => Ok(b
            .chunks_exact(4)
            .map(|s| i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .collect()),
        (Some("error"), Some(m)) => Err(m.as_str().unwrap_or("?").to_string()),
        _ => Err(format!(
            "unexpected reply {}",
            racs_lite::client::show(&reply)
        )),
    }
}

/// The whole stored stream (EXTRACT from 0 to [`FAR_MS`]) narrowed back to its sample width,
/// asked again until at least `len` bytes are visible or 5 s have passed (a table being
/// written is hidden from EXTRACT for a moment).
pub fn read_back(addr: SocketAddr, id: &str, bit_depth: u16, len: usize) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s32 = extract_s32(addr, id, 0, FAR_MS).unwrap_or_else(|e| panic!("EXTRACT {id}: {e}"));
        let mut out = Vec::with_capacity(s32.len() * 3);
        for v in s32 {
            put(&mut out, v, bit_depth);
        }
        if out.len() >= len || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (up to 5 s) until EXTRACT from 0 returns at least `samples` int32 samples of `id`:
/// after a write, the table being written is hidden from EXTRACT for a moment. Panics with the
/// count seen when the deadline passes.
pub fn wait_visible(addr: SocketAddr, id: &str, samples: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = extract_s32(addr, id, 0, FAR_MS)
            .unwrap_or_else(|e| panic!("EXTRACT {id}: {e}"))
            .len();
        if seen >= samples {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {seen} of {samples} samples of {id} became visible within 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `INFO id attr` with the minimal client: the value, or the server's error text.
pub fn info_raw(addr: SocketAddr, id: &str, attr: &str) -> Result<i64, String> {
    let mut c = racs_lite::client::RawClient::connect(addr).map_err(|e| e.to_string())?;
    let reply = c
        .command(&format!("INFO '{id}' '{attr}'"))
        .map_err(|e| e.to_string())?;
    let arr = reply
        .first()
        .and_then(|v| v.as_array())
        .ok_or("reply is not an array")?;
    match (arr.first().and_then(|t| t.as_str()), arr.get(1)) {
        (Some("int"), Some(v)) => v.as_i64().ok_or_else(|| "not an int".to_string()),
        (Some("error"), Some(m)) => Err(m.as_str().unwrap_or("?").to_string()),
        _ => Err(format!(
            "unexpected reply {}",
            racs_lite::client::show(&reply)
        )),
    }
}

/// The first position where `got` and `want` differ, as a message (or None when equal).
pub fn first_difference(got: &[u8], want: &[u8]) -> Option<String> {
    if got == want {
        return None;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    Some(format!(
        "{} bytes stored, {} expected; first difference at byte {at}",
        got.len(),
        want.len()
    ))
}

// ---------------------------------------------------------------------------------------
// racssrc probe pipelines

/// One buffer that reached a [`SrcProbe`]: PTS and duration (ns), its `timestamp/x-unix`
/// reference timestamp (ns) when it carries one, and its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrcBuffer {
    pub pts: u64,
    pub duration: u64,
    pub unix: Option<u64>,
    pub size: usize,
}

/// What a [`SrcProbe`] received, in order.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// Every byte of every buffer.
    pub data: Vec<u8>,
    pub buffers: Vec<SrcBuffer>,
    /// GAP events as (pts, duration) in ns.
    pub gaps: Vec<(u64, u64)>,
    /// Tag events.
    pub tags: Vec<gst::TagList>,
}

/// `racssrc ! fakesink sync=false` with a probe on the sink pad that collects every buffer,
/// GAP event and tag event.
pub struct SrcProbe {
    pub pipeline: gst::Pipeline,
    pub src: gst::Element,
    pub received: std::sync::Arc<std::sync::Mutex<Received>>,
}

/// The properties that point a racssrc at stream `id` on `srv`.
pub fn src_props(srv: &TestServer, id: &str) -> Vec<(&'static str, glib::Value)> {
    vec![
        ("host", srv.host().to_value()),
        ("port", u32::from(srv.port()).to_value()),
        ("stream-id", id.to_value()),
    ]
}

/// Sets `props` on `element` in order; a string given for an enum property is its nick.
pub fn set_props(element: &gst::Element, props: &[(&str, glib::Value)]) {
    for (k, v) in props {
        let spec = element
            .find_property(k)
            .unwrap_or_else(|| panic!("{} has no property {k}", element.name()));
        match v.get::<&str>() {
            Ok(text) if spec.value_type().is_a(glib::Type::ENUM) => {
                element.set_property_from_str(k, text)
            }
            _ => element.set_property_from_value(k, v),
        }
    }
}

impl SrcProbe {
    /// A racssrc with `props` (see [`src_props`], [`set_props`]) in a probe pipeline.
    pub fn new(props: &[(&str, glib::Value)]) -> SrcProbe {
        init();
        let src = gst::ElementFactory::make("racssrc").build().unwrap();
        set_props(&src, props);
        SrcProbe::around(src)
    }

    /// A probe pipeline around an element made by the test.
    pub fn around(src: gst::Element) -> SrcProbe {
        let (pipeline, sink) = into_fakesink(&src);
        let received = std::sync::Arc::new(std::sync::Mutex::new(Received::default()));
        let r = received.clone();
        let unix_caps = gst::Caps::new_empty_simple("timestamp/x-unix");
        sink.static_pad("sink").unwrap().add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_, info| {
                let mut r = r.lock().unwrap();
                if let Some(buf) = info.buffer() {
                    r.data.extend_from_slice(&buf.map_readable().unwrap());
                    let unix = buf
                        .iter_meta::<gst::ReferenceTimestampMeta>()
                        .find(|m| m.reference().can_intersect(&unix_caps))
                        .map(|m| m.timestamp().nseconds());
                    r.buffers.push(SrcBuffer {
                        pts: buf.pts().unwrap().nseconds(),
                        duration: buf.duration().unwrap().nseconds(),
                        unix,
                        size: buf.size(),
                    });
                }
                match info.event().map(|e| e.view()) {
                    Some(gst::EventView::Gap(g)) => {
                        let (pts, dur) = g.get();
                        r.gaps
                            .push((pts.nseconds(), dur.map_or(0, |d| d.nseconds())));
                    }
                    Some(gst::EventView::Tag(t)) => r.tags.push(t.tag_owned()),
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            },
        );
        SrcProbe {
            pipeline,
            src,
            received,
        }
    }

    /// What arrived so far.
    pub fn received(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap()
    }

    /// What arrived so far, leaving the probe empty (as before a seek).
    pub fn take(&self) -> Received {
        std::mem::take(&mut *self.received())
    }

    /// [`play`]s the pipeline.
    pub fn play(&self) -> Ended {
        play(self.pipeline.upcast_ref())
    }
}

/// [`wait_end`] (up to [`WAIT`]) on a pipeline the test set playing itself, with
/// [`assert_tidy_messages`] on what it posted.
pub fn wait_pipeline_end(pipeline: &gst::Pipeline) -> Ended {
    let ended = wait_end(&pipeline.bus().expect("a pipeline has a bus"), WAIT);
    assert_tidy_messages(&ended.messages);
    ended
}

/// [`caps`] of a stream format.
pub fn format_caps(f: &gstracs::client::StreamFormat) -> gst::Caps {
    caps(f.sample_rate, f.channels, f.bit_depth)
}

/// Sets `element` to `state`, which must fail, and returns the error it posted, after
/// [`assert_tidy_messages`] on everything it posted. An element outside a pipeline gets a bus
/// of its own first. The element is left in the state it reached.
pub fn refused(element: &impl IsA<gst::Element>, state: gst::State) -> glib::Error {
    let element = element.upcast_ref::<gst::Element>();
    let bus = element.bus().unwrap_or_else(|| {
        let bus = gst::Bus::new();
        element.set_bus(Some(&bus));
        bus
    });
    assert!(
        element.set_state(state).is_err(),
        "{} reached {state:?}",
        element.name()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut messages = Vec::new();
    let error = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) else {
            panic!("{} posted no error within 5 s", element.name());
        };
        messages.push(m.clone());
        if let gst::MessageView::Error(e) = m.view() {
            break e.error();
        }
    };
    messages.extend(std::iter::from_fn(|| bus.pop()));
    assert_tidy_messages(&messages);
    error
}

/// [`assert_tidy`] for every error and warning a command-line program printed: gst-launch-1.0's
/// `ERROR: from element <path>: <text>` and `WARNING: ...` lines, and the examples' and
/// scripts' `error: <text>`, `<name>: error: <text>`, `warning: ...` and `FAILED: <text>`
/// lines; and no element error printed twice.
pub fn assert_tidy_output(outputs: &[&str]) {
    let mut errors: Vec<&str> = Vec::new();
    for line in outputs.iter().flat_map(|o| o.lines()) {
        let element = ["ERROR: from element ", "WARNING: from element "]
            .iter()
            .find_map(|p| line.strip_prefix(p))
            .map(|rest| rest.split_once(": ").map_or(rest, |(_path, text)| text));
        if let Some(text) = element {
            assert_tidy(line, text);
            if line.starts_with("ERROR") {
                assert!(
                    !errors.contains(&text),
                    "the same error was printed twice: {text:?}\n{}",
                    outputs.join("\n")
                );
                errors.push(text);
            }
            continue;
        }
        let program = ["error: ", "warning: ", "FAILED: "].iter().find_map(|m| {
            let at = line.find(m)?;
            let before = &line[..at];
            let marks_it = before.is_empty() || before.ends_with(": ") || m == &"FAILED: ";
            marks_it.then(|| &line[at + m.len()..])
        });
        if let Some(text) = program {
            assert_tidy(line, text);
        }
    }
}

/// Panics unless stream `id` holds exactly `want` (read back with [`read_back`] in the stream's
/// `bit_depth`), naming the first difference.
pub fn assert_stored(addr: SocketAddr, id: &str, bit_depth: u16, want: &[u8]) {
    let got = read_back(addr, id, bit_depth, want.len());
    if let Some(d) = first_difference(&got, want) {
        panic!("stream {id:?}: {d}");
    }
}

/// `element` alone in a pipeline, set to `state`, which must fail: the error it posted (see
/// [`refused`]); the pipeline is set back to NULL.
pub fn refused_alone(element: &gst::Element, state: gst::State) -> glib::Error {
    let pipeline = gst::Pipeline::new();
    pipeline.add(element).unwrap();
    let err = refused(&pipeline, state);
    pipeline.set_state(gst::State::Null).unwrap();
    err
}

/// A racssink writing stream `id` to `srv`, with `props` (as gst-launch-1.0 takes them) set
/// after host, port and stream-id.
pub fn racssink(srv: &TestServer, id: &str, props: &[(&str, &str)]) -> gst::Element {
    init();
    let sink = gst::ElementFactory::make("racssink")
        .property("host", srv.host())
        .property("port", u32::from(srv.port()))
        .property("stream-id", id)
        .build()
        .expect("racssink");
    for (name, value) in props {
        sink.set_property_from_str(name, value);
    }
    sink
}

/// A pipeline of `src ! fakesink sync=false`: the pipeline and the sink.
pub fn into_fakesink(src: &gst::Element) -> (gst::Pipeline, gst::Element) {
    init();
    let pipeline = gst::Pipeline::new();
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .build()
        .unwrap();
    pipeline.add_many([src, &sink]).unwrap();
    src.link(&sink).unwrap();
    (pipeline, sink)
}
