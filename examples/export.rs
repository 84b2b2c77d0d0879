// SPDX-License-Identifier: MPL-2.0
//! Export a time range of a RACS stream to a WAV, MP3, Opus or FLAC file (chosen by extension):
//!
//!     cargo run --release --example export -- <stream-id> <output-file>
//!         [--start 2026-01-09T10:00:00.000Z] [--stop 2026-01-09T10:05:00.000Z]
//!         [--offset SECONDS] [--duration SECONDS] [--host H] [--port P]
//!
//! `--start`/`--stop` are wall-clock times (RFC 3339, UTC); `--offset`/`--duration` are seconds
//! from the stream's beginning. Without either, the whole stream is exported. Progress goes to
//! stderr every second. Without --host/--port it uses localhost:6381.
//!
//! The pipeline is `racssrc ... ! audioconvert ! <encoder> ! filesink`, with the encoder:
//!   .wav  wavenc                             (gstreamer1.0-plugins-good)
//!   .mp3  lamemp3enc                         (gstreamer1.0-plugins-good on Debian bookworm)
//!   .opus, .ogg  audioresample ! opusenc ! oggmux   (gstreamer1.0-plugins-base)
//!   .flac flacenc                            (gstreamer1.0-plugins-good)

use std::process::ExitCode;
use std::time::Instant;

use gst::prelude::*;

const USAGE: &str = "usage: export <stream-id> <output.{wav,mp3,opus,ogg,flac}> [--start RFC3339] [--stop RFC3339] \
[--offset SECONDS] [--duration SECONDS] [--host H] [--port P]";

#[derive(Default)]
struct Args {
    stream_id: String,
    output: String,
    start: Option<String>,
    stop: Option<String>,
    offset: Option<f64>,
    duration: Option<f64>,
    host: String,
    port: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        host: "localhost".into(),
        port: 6381,
        ..Default::default()
    };
    let mut pos = Vec::new();
    let mut it = std::env::args().skip(1);
    let secs = |name: &str, v: String| -> Result<f64, String> {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or(format!("{name} {v:?} is not a number of seconds"))
    };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--start" => a.start = Some(value("--start")?),
            "--stop" => a.stop = Some(value("--stop")?),
            "--offset" => a.offset = Some(secs("--offset", value("--offset")?)?),
            "--duration" => a.duration = Some(secs("--duration", value("--duration")?)?),
            "--host" => a.host = value("--host")?,
            "--port" => {
                let v = value("--port")?;
                a.port = v
                    .parse()
                    .map_err(|_| format!("--port {v:?} is not a port number"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            _ => pos.push(arg),
        }
    }
    let [stream_id, output]: [String; 2] = pos.try_into().map_err(|_| USAGE.to_string())?;
    if (a.start.is_some() || a.stop.is_some()) && (a.offset.is_some() || a.duration.is_some()) {
        return Err(
            "give either --start/--stop (wall-clock) or --offset/--duration (relative), not both"
                .into(),
        );
    }
    a.stream_id = stream_id;
    a.output = output;
    Ok(a)
}

/// The encoding part of the pipeline for a file name's extension.
fn encoder_for(output: &str) -> Result<&'static str, String> {
    let ext = std::path::Path::new(output)
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    Ok(match ext.as_str() {
        "wav" => "audioconvert ! wavenc",
        "mp3" => "audioconvert ! lamemp3enc",
        "opus" | "ogg" => "audioconvert ! audioresample ! opusenc ! oggmux",
        "flac" => "audioconvert ! flacenc",
        _ => {
            return Err(format!(
                "{output}: unknown extension; use .wav, .mp3, .opus, .ogg or .flac"
            ))
        }
    })
}

mod common;

fn main() -> ExitCode {
    common::main("export", run)
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let encoder = encoder_for(&args.output)?;
    common::init()?;

    let mut range = String::new();
    if let Some(s) = &args.start {
        range += &format!(" start={s}");
    }
    if let Some(s) = &args.stop {
        range += &format!(" stop={s}");
    }
    if let Some(o) = args.offset {
        range += &format!(" start-offset={}", (o * 1e9).round() as u64);
    }
    if let Some(d) = args.duration {
        range += &format!(" duration={}", (d * 1e9).round() as u64);
    }
    let description = format!(
        "racssrc name=src host={} port={} stream-id={}{range} ! {encoder} ! filesink location={}",
        args.host, args.port, args.stream_id, args.output
    );
    eprintln!("export: {description}");
    // Built element by element for the source so that no value is re-parsed as pipeline syntax.
    let src = gst::ElementFactory::make("racssrc")
        .property("host", &args.host)
        .property("port", args.port)
        .property("stream-id", &args.stream_id)
        .build()
        .map_err(|e| format!("racssrc: {e}"))?;
    if let Some(s) = &args.start {
        src.set_property_from_str("start", s);
    }
    if let Some(s) = &args.stop {
        src.set_property_from_str("stop", s);
    }
    if let Some(o) = args.offset {
        src.set_property("start-offset", (o * 1e9).round() as u64);
    }
    if let Some(d) = args.duration {
        src.set_property("duration", (d * 1e9).round() as u64);
    }
    let tail = gst::parse::bin_from_description(encoder, true).map_err(|e| {
        format!("cannot build `{encoder}`: {e} (scripts/setup.sh installs the encoders)")
    })?;
    let filesink = gst::ElementFactory::make("filesink")
        .property("location", &args.output)
        .build()
        .map_err(|e| format!("filesink: {e}"))?;
    let pipeline = gst::Pipeline::new();
    pipeline
        .add_many([&src, tail.upcast_ref(), &filesink])
        .expect("adding fresh elements");
    gst::Element::link_many([&src, tail.upcast_ref(), &filesink])
        .map_err(|e| format!("cannot link: {e}"))?;

    // Counts the audio racssrc delivers, so that a range holding none is an error, not an
    // empty file.
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = delivered.clone();
    src.static_pad("src")
        .expect("racssrc has a src pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(b) = info.buffer() {
                counter.fetch_add(b.size() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });

    let started = Instant::now();
    let result = common::play(&pipeline, "export", |started| report(&src, started), || ());
    let position = src.query_position::<gst::ClockTime>();
    let _ = pipeline.set_state(gst::State::Null);
    if delivered.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        // racssrc refuses a range that holds no audio with an error: no file is left behind.
        let _ = std::fs::remove_file(&args.output);
        let last_warning = result?;
        return Err(format!(
            "nothing exported, {} not written: {}",
            args.output,
            last_warning.unwrap_or_else(|| "the range holds no audio".into())
        ));
    }
    result?;
    let bytes = std::fs::metadata(&args.output)
        .map(|m| m.len())
        .unwrap_or(0);
    eprintln!(
        "export: done: {} s of audio in {} ({bytes} bytes) in {:.1} s",
        position
            .map(|p| format!("{:.3}", p.nseconds() as f64 / 1e9))
            .unwrap_or("?".into()),
        args.output,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// "12.0 of 300.0 s (4%), 35.2x real time".
fn report(src: &gst::Element, started: Instant) {
    let elapsed = started.elapsed().as_secs_f64().max(1e-3);
    let Some(pos) = src.query_position::<gst::ClockTime>() else {
        eprintln!("export: waiting for audio ({elapsed:.0} s)");
        return;
    };
    let pos = pos.nseconds() as f64 / 1e9;
    match src.query_duration::<gst::ClockTime>() {
        Some(d) if d > gst::ClockTime::ZERO => {
            let d = d.nseconds() as f64 / 1e9;
            eprintln!(
                "export: {pos:8.1} of {d:.1} s ({:3.0}%), {:6.1}x real time",
                100.0 * pos / d,
                pos / elapsed
            )
        }
        _ => eprintln!("export: {pos:8.1} s, {:6.1}x real time", pos / elapsed),
    }
}
