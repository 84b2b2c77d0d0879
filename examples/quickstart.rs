// SPDX-License-Identifier: MPL-2.0
//! The quickstart: store ten seconds of audio in RACS with `racssink`, extract seconds 2.5 to 7.5
//! again with `racssrc` into a WAV file, and check that what came back is what went in.
//!
//!     cargo run --release --example quickstart [-- --out FILE.wav]
//!
//! It starts racs-lite (the in-repo stand-in for a RACS v0.1.0 server) inside this process on a
//! free port, or uses your server when RACS_ADDR=host:port is set. The plugin is registered
//! statically, so no GST_PLUGIN_PATH is needed here; the gst-launch-1.0 lines it prints show how
//! to do the same from a shell with the built libgstracs.so.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use gst::prelude::*;
use gstracs::client::{block_on, Canceller, Pool, StreamInfo};

const RATE: usize = 44_100;
const CHANNELS: usize = 2;
const BYTES_PER_FRAME: usize = 2 * CHANNELS;
const RECORD_SECONDS: usize = 10;
/// The excerpt, in ms from the start of the stream.
const FROM_MS: usize = 2_500;
const TO_MS: usize = 7_500;
/// How far from the asked start the check looks for the excerpt (so that a wrong position is
/// reported as such, not as foreign audio): 10 ms.
const SEARCH_FRAMES: usize = RATE / 100;
const DEADLINE: gst::ClockTime = gst::ClockTime::from_seconds(60);

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nquickstart FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    out: PathBuf,
}

fn parse_args() -> Res<Args> {
    let mut out = PathBuf::from("racs-quickstart.wav");
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" | "-o" => out = it.next().ok_or("--out needs a file name")?.into(),
            "-h" | "--help" => {
                println!(
                    "usage: quickstart [--out FILE.wav]   (RACS_ADDR=host:port to use your server)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Args { out })
}

/// Where the server is: RACS_ADDR, or racs-lite started in this process.
enum Server {
    External,
    Embedded(racs_lite::Server, tempfile::TempDir),
}

fn run() -> Res<()> {
    let args = parse_args()?;
    gst::init().map_err(|e| format!("GStreamer failed to initialise: {e}"))?;
    gstracs::plugin_register_static().map_err(|e| format!("cannot register the plugin: {e}"))?;

    println!("RACS quickstart");
    println!("===============");
    println!("RACS (Remote Audio Caching Server) keeps audio streams as PCM blocks stamped with");
    println!("wall-clock time, so any time range can be fetched back later. This plugin adds two");
    println!("GStreamer elements: racssink stores what a pipeline plays into a RACS stream, and");
    println!("racssrc plays any time range of a stream back into a pipeline.\n");

    // 1. The server.
    let (host, port, server) = match std::env::var("RACS_ADDR") {
        Ok(addr) => {
            let (h, p) = addr
                .rsplit_once(':')
                .ok_or_else(|| format!("RACS_ADDR={addr:?} is not host:port"))?;
            let p: u16 = p
                .parse()
                .map_err(|_| format!("RACS_ADDR={addr:?}: {p:?} is not a port number"))?;
            println!("[1/5] Server: using the RACS server at {h}:{p} (from RACS_ADDR).");
            (h.trim_matches(['[', ']']).to_string(), p, Server::External)
        }
        Err(_) => {
            let dir = tempfile::Builder::new()
                .prefix("racs-quickstart-")
                .tempdir()
                .map_err(|e| format!("cannot create a data directory: {e}"))?;
            let srv = racs_lite::Server::start(
                "127.0.0.1:0".parse().unwrap(),
                racs_lite::Config::new(dir.path()),
            )
            .map_err(|e| format!("cannot start racs-lite: {e}"))?;
            let addr = srv.local_addr();
            println!(
                "[1/5] Server: started racs-lite, the in-repo stand-in for a RACS v0.1.0 server, inside\n      this program on {addr} (data in {}).\n      Set RACS_ADDR=host:port to use a real server instead.",
                dir.path().display()
            );
            (
                addr.ip().to_string(),
                addr.port(),
                Server::Embedded(srv, dir),
            )
        }
    };
    let stream_id = format!(
        "quickstart-{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let plugin_dir = built_plugin_dir();

    // 2. Record.
    let signal = format!(
        "audiotestsrc wave=sine freq=440 volume=0.5 is-live=false samplesperbuffer=4410 num-buffers={} ! audio/x-raw,format=S16LE,rate={RATE},channels={CHANNELS},layout=interleaved",
        RECORD_SECONDS * 10
    );
    let record =
        format!("{signal} ! racssink name=sink host={host} port={port} stream-id={stream_id}");
    println!(
        "\n[2/5] Record: {RECORD_SECONDS} s of a 440 Hz sine (S16LE, stereo, 44.1 kHz) into the new stream '{stream_id}'."
    );
    println!(
        "      racssink creates the stream with the format of its caps, opens it, and sends the"
    );
    println!("      audio as fixed-size frames over a pooled connection. The pipeline:");
    if plugin_dir.is_none() {
        println!("      (to run these lines yourself, build the plugin library first: cargo build --release,\n      then export GST_PLUGIN_PATH=$PWD/target/release)");
    }
    print_launch(&record, plugin_dir.as_deref());
    let pipeline = gst::parse::launch(&record)
        .map_err(|e| format!("cannot build the recording pipeline: {e}"))?;
    let sink = by_name(&pipeline, "sink")?;
    let sent = capture(&sink);
    let t = Instant::now();
    run_to_eos(&pipeline, "recording")?;
    let took = t.elapsed().as_secs_f64();
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let sent_frames = sent.len() / BYTES_PER_FRAME;
    println!(
        "      -> sent {} sample frames ({} bytes, {:.1} s of audio) in {:.2} s ({:.0}x real time).",
        sent_frames,
        sent.len(),
        sent_frames as f64 / RATE as f64,
        took,
        sent_frames as f64 / RATE as f64 / took.max(1e-6)
    );
    if sink.find_property("stats").is_some() {
        let stats = sink.property::<gst::Structure>("stats");
        let n = |f: &str| stats.get::<u64>(f).unwrap_or(0);
        println!(
            "      racssink stats: {} frames ({} bytes) sent, {} acknowledged by the server, {} reconnects,\n      round trip {} us on average, {} us at most.",
            n("frames-sent"),
            n("bytes-sent"),
            n("frames-acked"),
            n("reconnects"),
            n("rtt-avg-us"),
            n("rtt-max-us")
        );
    }
    if sent_frames != RECORD_SECONDS * RATE {
        return Err(format!(
            "expected to record {} sample frames, the source gave {sent_frames}",
            RECORD_SECONDS * RATE
        ));
    }

    // 3. What the server holds.
    let info = stream_info(&host, port, &stream_id)?;
    println!("\n[3/5] The server now holds stream '{stream_id}' (INFO):");
    println!(
        "      {} Hz, {} channel(s), {}-bit, {} bytes of PCM, reference time {} (the wall-clock",
        info.sample_rate,
        info.channels,
        info.bit_depth,
        info.size,
        rfc3339(info.ref_ms)
    );
    println!(
        "      time of its first sample; every later sample's time follows from the sample count)."
    );
    if info.size as usize != sent.len() {
        return Err(format!(
            "the server holds {} bytes, {} were sent",
            info.size,
            sent.len()
        ));
    }

    // 4. Extract seconds 2.5 to 7.5 into a WAV file, then the same range by wall-clock time.
    let out = absolute(&args.out);
    let extract = format!(
        "racssrc host={host} port={port} stream-id={stream_id} start-offset={} duration={} ! audioconvert ! wavenc ! filesink location={}",
        FROM_MS * 1_000_000,
        (TO_MS - FROM_MS) * 1_000_000,
        out.display()
    );
    println!(
        "\n[4/5] Extract: seconds {:.1} to {:.1} of the stream into a WAV file, by offset and duration",
        FROM_MS as f64 / 1000.0,
        TO_MS as f64 / 1000.0
    );
    println!("      (nanoseconds from the stream's start, the GStreamer way):");
    print_launch(&extract, plugin_dir.as_deref());
    let t = Instant::now();
    let pipeline = gst::parse::launch(&extract)
        .map_err(|e| format!("cannot build the extract pipeline: {e}"))?;
    run_to_eos(&pipeline, "extracting")?;
    let took = t.elapsed().as_secs_f64();
    let wav = std::fs::read(&out).map_err(|e| format!("cannot read {}: {e}", out.display()))?;
    let got = wav_data(&wav).map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "      -> wrote {} ({} bytes, {:.3} s of audio) in {:.2} s.",
        out.display(),
        wav.len(),
        got.len() as f64 / (BYTES_PER_FRAME * RATE) as f64,
        took
    );

    let (start, stop) = (
        rfc3339(info.ref_ms + FROM_MS as i64),
        rfc3339(info.ref_ms + TO_MS as i64),
    );
    let by_time = format!(
        "racssrc host={host} port={port} stream-id={stream_id} start={start} stop={stop} ! fakesink name=sink"
    );
    println!("      The same range by wall-clock time (RFC 3339, UTC), as you would ask for \"10:00 to 10:05\":");
    print_launch(&by_time, plugin_dir.as_deref());
    let pipeline = gst::parse::launch(&by_time)
        .map_err(|e| format!("cannot build the extract pipeline: {e}"))?;
    let by_time_data = capture(&by_name(&pipeline, "sink")?);
    run_to_eos(&pipeline, "extracting by time")?;
    let by_time_data = std::mem::take(&mut *by_time_data.lock().unwrap());

    // 5. Compare with what went in.
    println!("\n[5/5] Check: compare the WAV file's samples with the samples racssink was given.");
    let asked = FROM_MS * RATE / 1000;
    let want_frames = (TO_MS - FROM_MS) * RATE / 1000;
    let got_frames = got.len() / BYTES_PER_FRAME;
    let at = find_slice(&sent, got, asked, SEARCH_FRAMES).ok_or(
        "the WAV file's audio does not occur in what was recorded near the asked start: it is not what went in",
    )?;
    let first_err = at.abs_diff(asked);
    let last_err = (at + got_frames).abs_diff(asked + want_frames);
    println!(
        "      first sample = recorded sample frame {at} ({:.4} s; asked {:.4} s, off by {first_err} frame(s))",
        at as f64 / RATE as f64,
        asked as f64 / RATE as f64
    );
    println!(
        "      length       = {got_frames} sample frames ({:.4} s; asked {:.4} s, end off by {last_err} frame(s))",
        got_frames as f64 / RATE as f64,
        want_frames as f64 / RATE as f64
    );
    println!("      every one of the {got_frames} sample frames is identical to what went in");
    if first_err != 0 || last_err != 0 {
        return Err(format!(
            "the range is not the one asked for: start off by {first_err} sample frame(s), end by {last_err}"
        ));
    }
    if by_time_data != got {
        return Err(format!(
            "the range by wall-clock time ({} bytes) differs from the range by offset ({} bytes)",
            by_time_data.len(),
            got.len()
        ));
    }
    println!("      the range asked by wall-clock time is the same audio, byte for byte");

    println!("\nOK: what came back is what went in, sample for sample, from the asked start to the asked end.");
    println!("The excerpt is {}; listen to it with:", out.display());
    println!("  gst-launch-1.0 playbin uri=file://{}", out.display());
    match server {
        Server::Embedded(srv, _dir) => {
            println!("\nThe embedded racs-lite stops now, so the pipelines above need a server of your own:");
            println!("  cargo run --release -p racs-lite -- --port 6381 --data-dir /tmp/racs   # in another terminal");
            println!("  RACS_ADDR=127.0.0.1:6381 scripts/quickstart.sh                         # then the lines it prints work as shown");
            srv.stop()
                .map_err(|e| format!("racs-lite did not stop cleanly: {e}"))?;
        }
        Server::External => {}
    }
    println!("More recipes (files, URLs, live capture; MP3, Opus, HLS export) are in README.md.");
    Ok(())
}

/// The folder holding the libgstracs.so built with this example (target/<profile>), if any.
fn built_plugin_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?; // target/<profile>/examples/quickstart
    dir.join("libgstracs.so")
        .exists()
        .then(|| dir.to_path_buf())
}

fn print_launch(pipeline: &str, plugin_dir: Option<&Path>) {
    let env = match plugin_dir {
        Some(d) => format!("GST_PLUGIN_PATH={} ", d.display()),
        None => String::new(),
    };
    println!("\n      {env}gst-launch-1.0 {pipeline}\n");
}

fn by_name(pipeline: &gst::Element, name: &str) -> Res<gst::Element> {
    pipeline
        .downcast_ref::<gst::Bin>()
        .and_then(|b| b.by_name(name))
        .ok_or_else(|| format!("no element named {name}"))
}

/// Collects every byte that reaches `element`'s sink pad.
fn capture(element: &gst::Element) -> Arc<Mutex<Vec<u8>>> {
    let data = Arc::new(Mutex::new(Vec::new()));
    let d = data.clone();
    element.static_pad("sink").expect("a sink pad").add_probe(
        gst::PadProbeType::BUFFER,
        move |_, info| {
            if let Some(buf) = info.buffer() {
                if let Ok(map) = buf.map_readable() {
                    d.lock().unwrap().extend_from_slice(&map);
                }
            }
            gst::PadProbeReturn::Ok
        },
    );
    data
}

/// Plays `pipeline` to EOS, printing progress and element messages; fails on an error or after
/// the deadline.
fn run_to_eos(pipeline: &gst::Element, what: &str) -> Res<()> {
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let result = (|| {
        pipeline.set_state(gst::State::Playing).map_err(|_| {
            format!(
                "{what}: the pipeline did not start: {}",
                pending_error(&bus)
            )
        })?;
        let deadline = Instant::now() + std::time::Duration::from_secs(DEADLINE.seconds());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64))
            else {
                return Err(format!("{what}: no end of stream within {DEADLINE}"));
            };
            match msg.view() {
                gst::MessageView::Eos(_) => return Ok(()),
                gst::MessageView::Error(e) => {
                    return Err(format!("{what}: {}", e.error()));
                }
                gst::MessageView::Warning(w) => println!("      warning: {}", w.error()),
                gst::MessageView::Progress(p) => {
                    let (_, code, text) = p.get();
                    println!("      progress: {code}: {text}");
                }
                gst::MessageView::Element(e) => match e.structure() {
                    Some(s) if s.name() == "racssink-ref" => {
                        if let Ok(ms) = s.get::<i64>("ref-ms") {
                            println!(
                                "      message: the server acknowledged the first frame; the stream's reference time is {}",
                                rfc3339(ms)
                            );
                        }
                    }
                    Some(s) => println!(
                        "      message from {}: {s}",
                        msg.src().map(|s| s.name()).unwrap_or_default()
                    ),
                    None => {}
                },
                _ => {}
            }
        }
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn pending_error(bus: &gst::Bus) -> String {
    match bus.timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error]) {
        Some(msg) => match msg.view() {
            gst::MessageView::Error(e) => e.error().to_string(),
            _ => String::new(),
        },
        None => "no error message".into(),
    }
}

fn stream_info(host: &str, port: u16, id: &str) -> Res<StreamInfo> {
    let pool = Pool::get(host, port, 1);
    let timeout = std::time::Duration::from_secs(10);
    block_on(&Canceller::new(), async move {
        let mut conn = pool.checkout(timeout).await?;
        conn.stream_info(id).await
    })
    .map_err(|e| format!("INFO for '{id}' failed: {e}"))?
    .ok_or_else(|| format!("the server does not know stream '{id}'"))
}

/// The PCM bytes of a WAV file (the data chunk).
fn wav_data(b: &[u8]) -> Res<&[u8]> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err("not a WAV file".into());
    }
    let mut pos = 12;
    while pos + 8 <= b.len() {
        let len = u32::from_le_bytes(b[pos + 4..pos + 8].try_into().unwrap()) as usize;
        if &b[pos..pos + 4] == b"data" {
            return Ok(&b[pos + 8..(pos + 8 + len).min(b.len())]);
        }
        pos += 8 + len + (len & 1);
    }
    Err("no data chunk in the WAV file".into())
}

/// Where `part` starts in `whole`, in sample frames, searching `slack` frames either side of
/// `around`; only an exact match of every byte counts.
fn find_slice(whole: &[u8], part: &[u8], around: usize, slack: usize) -> Option<usize> {
    if part.is_empty() {
        return None;
    }
    (around.saturating_sub(slack)..=around + slack).find(|&f| {
        let s = f * BYTES_PER_FRAME;
        whole.get(s..s + part.len()) == Some(part)
    })
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Epoch milliseconds as RFC 3339 UTC with exactly three fraction digits.
fn rfc3339(ms: i64) -> String {
    gstracs::client::reader::format_unix_ms(ms)
}
