// SPDX-License-Identifier: MPL-2.0
//! Record any audio file or URI into a RACS stream:
//!
//!     cargo run --release --example record -- <file-or-uri> <stream-id> [--host H] [--port P]
//!         [--takeover] [--chunk-size BYTES]
//!
//! The pipeline is `uridecodebin uri=... ! audioconvert ! audioresample ! racssink`, so anything
//! GStreamer can decode works: local files (WAV, FLAC, MP3, Ogg, ...), http(s):// URLs, RTSP.
//! A new stream takes the decoded format (converted to S16LE or S24LE); an existing stream keeps
//! its own format and the audio is converted to it. Progress goes to stderr every second; Enter
//! ends a live source cleanly (what was sent is stored and the stream is closed).
//!
//! Without --host/--port it uses localhost:6381. To run a local server:
//!
//!     cargo run --release -p racs-lite -- --port 6381 --data-dir /tmp/racs

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use gst::prelude::*;

const USAGE: &str = "usage: record <file-or-uri> <stream-id> [--host H] [--port P] [--takeover] [--chunk-size BYTES]";

struct Args {
    input: String,
    stream_id: String,
    host: String,
    port: u32,
    takeover: bool,
    chunk_size: Option<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut pos = Vec::new();
    let mut host = "localhost".to_string();
    let mut port = 6381;
    let mut takeover = false;
    let mut chunk_size = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        match a.as_str() {
            "--host" => host = value("--host")?,
            "--port" => {
                let v = value("--port")?;
                port = v
                    .parse()
                    .map_err(|_| format!("--port {v:?} is not a port number"))?;
            }
            "--chunk-size" => {
                let v = value("--chunk-size")?;
                chunk_size = Some(
                    v.parse()
                        .map_err(|_| format!("--chunk-size {v:?} is not a number"))?,
                );
            }
            "--takeover" => takeover = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            _ => pos.push(a),
        }
    }
    let [input, stream_id]: [String; 2] = pos.try_into().map_err(|_| USAGE.to_string())?;
    Ok(Args {
        input,
        stream_id,
        host,
        port,
        takeover,
        chunk_size,
    })
}

/// A URI for `input`: kept when it already is one, else a file path made absolute.
fn to_uri(input: &str) -> Result<String, String> {
    let is_uri = input.split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    });
    if is_uri {
        return Ok(input.to_string());
    }
    let path = std::path::absolute(input).map_err(|e| format!("{input}: {e}"))?;
    if !path.exists() {
        return Err(format!("{}: no such file", path.display()));
    }
    glib::filename_to_uri(&path, None)
        .map(|u| u.to_string())
        .map_err(|e| format!("{}: {e}", path.display()))
}

mod common;

fn main() -> ExitCode {
    common::main("record", run)
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let uri = to_uri(&args.input)?;
    common::init()?;

    let src = gst::ElementFactory::make("uridecodebin")
        .property("uri", &uri)
        .build()
        .map_err(|e| format!("uridecodebin: {e}"))?;
    let convert = make("audioconvert")?;
    let resample = make("audioresample")?;
    let mut sink = gst::ElementFactory::make("racssink")
        .property("host", &args.host)
        .property("port", args.port)
        .property("stream-id", &args.stream_id)
        .property("takeover", args.takeover);
    if let Some(c) = args.chunk_size {
        sink = sink.property("chunk-size", c);
    }
    let sink = sink.build().map_err(|e| format!("racssink: {e}"))?;
    let pipeline = gst::Pipeline::new();
    pipeline
        .add_many([&src, &convert, &resample, &sink])
        .expect("adding fresh elements");
    gst::Element::link_many([&convert, &resample, &sink]).expect("linking raw audio elements");
    let convert_weak = convert.downgrade();
    src.connect_pad_added(move |_, pad| {
        let Some(convert) = convert_weak.upgrade() else {
            return;
        };
        let is_audio = pad
            .current_caps()
            .or_else(|| Some(pad.query_caps(None)))
            .and_then(|c| c.structure(0).map(|s| s.name().starts_with("audio/")))
            .unwrap_or(false);
        let sinkpad = convert.static_pad("sink").unwrap();
        if is_audio && !sinkpad.is_linked() {
            let _ = pad.link(&sinkpad);
        }
    });

    eprintln!(
        "record: uridecodebin uri={uri} ! audioconvert ! audioresample ! racssink host={} port={} stream-id={}{}",
        args.host,
        args.port,
        args.stream_id,
        if args.takeover { " takeover=true" } else { "" }
    );

    // Enter: send EOS so racssink stores what it holds and closes the stream. (Ctrl-C kills the
    // process at once, leaving the stream open on the server: the next run needs --takeover.)
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            flag.store(true, Ordering::SeqCst);
        }
    });
    eprintln!("record: press Enter to stop early (the stream is then closed cleanly)");

    let started = Instant::now();
    let mut eos_sent = false;
    let result = common::play(
        &pipeline,
        "record",
        |started| report(&pipeline, &sink, started),
        || {
            if interrupted.load(Ordering::SeqCst) && !eos_sent {
                eprintln!("record: stopping, storing what is buffered and closing the stream");
                pipeline.send_event(gst::event::Eos::new());
                eos_sent = true;
            }
        },
    );
    // The summary needs the negotiated caps and the final stats: take it before stopping.
    let stored = stored_seconds(&sink);
    let _ = pipeline.set_state(gst::State::Null);
    result?;
    let took = started.elapsed().as_secs_f64().max(1e-3);
    match stored {
        Some(s) => eprintln!(
            "record: done: {s:.1} s of audio stored in stream '{}' on {}:{} in {took:.1} s ({:.1}x real time)",
            args.stream_id,
            args.host,
            args.port,
            s / took
        ),
        None => eprintln!(
            "record: done: stream '{}' on {}:{}",
            args.stream_id, args.host, args.port
        ),
    }
    Ok(())
}

fn make(name: &str) -> Result<gst::Element, String> {
    gst::ElementFactory::make(name).build().map_err(|_| {
        format!("GStreamer element {name} is missing (install gstreamer1.0-plugins-base)")
    })
}

/// "12.0 s stored, 35.2x real time": seconds acknowledged by the server when racssink's stats
/// tell, else seconds that reached racssink.
fn report(pipeline: &gst::Pipeline, sink: &gst::Element, started: Instant) {
    let elapsed = started.elapsed().as_secs_f64().max(1e-3);
    let stored = stored_seconds(sink).or_else(|| {
        pipeline
            .query_position::<gst::ClockTime>()
            .map(|p| p.nseconds() as f64 / 1e9)
    });
    match stored {
        Some(s) => eprintln!("record: {s:8.1} s stored, {:6.1}x real time", s / elapsed),
        None => eprintln!("record: waiting for audio ({elapsed:.0} s)"),
    }
}

fn stored_seconds(sink: &gst::Element) -> Option<f64> {
    let stats = sink.property::<gst::Structure>("stats");
    let bytes = ["bytes-acked", "bytes-acknowledged", "acked-bytes"]
        .iter()
        .find_map(|f| stats.get::<u64>(*f).ok())?;
    let caps = sink.static_pad("sink")?.current_caps()?;
    let info = gst_audio::AudioInfo::from_caps(&caps).ok()?;
    Some(bytes as f64 / (info.rate() as f64 * info.bpf() as f64))
}
