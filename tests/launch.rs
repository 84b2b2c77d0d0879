// SPDX-License-Identifier: MPL-2.0
//! The plugin as a user meets it on the command line: the built libgstracs.so found through
//! GST_PLUGIN_PATH by gst-inspect-1.0 and gst-launch-1.0, recording files into racs-lite and
//! exporting streams to WAV, MP3 and Opus files that decode back to the right length.

mod common;
mod tools;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::TestServer;
use tools::{
    decode_to_wav, element_exists, gst_command, gst_launch_error, gst_launch_ok, info, read_wav,
    run,
};

const T: Duration = Duration::from_secs(60);
/// For runs that must fail: an error comes within the elements' 5 s timeout.
const TE: Duration = Duration::from_secs(20);

/// One property as gst-inspect-1.0 prints it.
#[derive(Debug)]
struct Prop {
    blurb: String,
    default: Option<String>,
    text: String,
}

/// The "Element Properties:" section of `gst-inspect-1.0 <element>`, by property name.
fn inspect_properties(element: &str) -> BTreeMap<String, Prop> {
    let mut cmd = gst_command("gst-inspect-1.0");
    cmd.arg(element);
    let out = run(cmd, T);
    assert!(
        out.success(),
        "gst-inspect-1.0 {element} failed:\n{}",
        out.dump()
    );
    let mut props = BTreeMap::new();
    let mut in_props = false;
    let mut current: Option<(String, Prop)> = None;
    for line in out.stdout.lines() {
        if line.starts_with("Element Properties:") {
            in_props = true;
            continue;
        }
        if !in_props {
            continue;
        }
        if !line.is_empty() && !line.starts_with(' ') {
            break; // the next section
        }
        // A property starts with two spaces, its name, padding, and ": blurb".
        let is_start = line.starts_with("  ") && !line.starts_with("   ") && line.contains(" : ");
        if is_start {
            if let Some((name, p)) = current.take() {
                props.insert(name, p);
            }
            let (name, blurb) = line.trim_start().split_once(" : ").unwrap();
            current = Some((
                name.trim().to_string(),
                Prop {
                    blurb: blurb.trim().to_string(),
                    default: None,
                    text: line.to_string(),
                },
            ));
        } else if let Some((_, p)) = current.as_mut() {
            p.text.push('\n');
            p.text.push_str(line);
            if let Some(i) = line.find("Default: ") {
                p.default = Some(line[i + "Default: ".len()..].trim().to_string());
            }
        }
    }
    if let Some((name, p)) = current.take() {
        props.insert(name, p);
    }
    assert!(
        !props.is_empty(),
        "no properties found in gst-inspect-1.0 {element}:\n{}",
        out.dump()
    );
    props
}

/// Asserts that `props` lists `name` with a blurb and a default that starts with `default`.
fn assert_prop(props: &BTreeMap<String, Prop>, element: &str, name: &str, default: &str) {
    let p = props.get(name).unwrap_or_else(|| {
        panic!(
            "gst-inspect-1.0 {element} does not list property {name}; it lists {:?}",
            props.keys()
        )
    });
    assert!(
        p.blurb.len() > 10,
        "{element}::{name} has no useful blurb:\n{}",
        p.text
    );
    let d = p
        .default
        .as_deref()
        .unwrap_or_else(|| panic!("{element}::{name} shows no default:\n{}", p.text));
    assert!(
        d.starts_with(default),
        "{element}::{name}: expected default {default:?}, gst-inspect-1.0 shows {d:?}:\n{}",
        p.text
    );
}

#[test]
fn inspect_racssink_lists_every_property_with_blurb_and_default() {
    let props = inspect_properties("racssink");
    let element = "racssink";
    for (name, default) in [
        ("host", "\"localhost\""),
        ("port", "6381"),
        ("stream-id", "null"),
        ("pool-size", "3"),
        ("chunk-size", "32768"),
        ("create-if-missing", "true"),
        ("takeover", "false"),
        ("timeout", "5000"),
        ("retry-timeout", "10000"),
        ("gap-policy", "0, \"silence\""),
        ("sync", "false"),
    ] {
        assert_prop(&props, element, name, default);
    }
    // stats is a read-only structure: gst-inspect-1.0 shows its fields instead of a default.
    let stats = &props["stats"];
    assert!(stats.blurb.len() > 10, "{}", stats.text);
    for field in [
        "bytes-sent",
        "bytes-acked",
        "frames-sent",
        "frames-acked",
        "reconnects",
        "silence-bytes",
        "rtt-avg-us",
        "rtt-max-us",
    ] {
        assert!(
            stats.text.contains(&format!("{field}: 0")),
            "racssink::stats does not show {field}:\n{}",
            stats.text
        );
    }
    // The URI handler is listed too.
    let mut cmd = gst_command("gst-inspect-1.0");
    cmd.arg(element);
    let out = run(cmd, T);
    assert!(
        out.stdout.contains("URI handling capabilities"),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains("racs"), "{}", out.dump());
}

#[test]
fn inspect_racssrc_lists_every_property_with_blurb_and_default() {
    let props = inspect_properties("racssrc");
    let element = "racssrc";
    for (name, default) in [
        ("host", "\"localhost\""),
        ("port", "6381"),
        ("stream-id", "null"),
        ("pool-size", "3"),
        ("start", "null"),
        ("stop", "null"),
        ("start-offset", "0"),
        ("duration", "18446744073709551615"),
        ("chunk-duration", "10000000000"),
        ("follow", "false"),
        ("timeout", "5000"),
    ] {
        assert_prop(&props, element, name, default);
    }
    let mut cmd = gst_command("gst-inspect-1.0");
    cmd.arg(element);
    let out = run(cmd, T);
    assert!(
        out.stdout.contains("Element can act as source."),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains("racs"), "{}", out.dump());
}

/// Makes `secs` seconds of a 440 Hz sine in an audio file through gst-launch-1.0.
fn make_file(path: &Path, caps: &str, encoder: &str, secs: u32) {
    gst_launch_ok(
        &format!(
            "audiotestsrc wave=sine freq=440 num-buffers={} samplesperbuffer=4800 ! {caps} ! audioconvert ! {encoder} ! filesink location={}",
            secs * 10,
            path.display()
        ),
        T,
    );
}

#[test]
fn transcode_wav_and_ogg_files_into_racs() {
    let srv = TestServer::start();
    let work = tempfile::tempdir().unwrap();
    let wav = work.path().join("in.wav");
    let ogg = work.path().join("in.ogg");
    // 48 kHz mono float WAV: 2 s = 96000 sample frames.
    make_file(
        &wav,
        "audio/x-raw,format=F32LE,rate=48000,channels=1",
        "wavenc",
        2,
    );
    // 48 kHz stereo Ogg/Vorbis, 2 s.
    make_file(
        &ogg,
        "audio/x-raw,format=F32LE,rate=48000,channels=2",
        "vorbisenc ! oggmux",
        2,
    );

    // A new stream takes the decoded file's rate and channels; audioconvert picks S16LE.
    gst_launch_ok(
        &format!(
            "filesrc location={} ! decodebin ! audioconvert ! audioresample ! racssink host=127.0.0.1 port={} stream-id=tones",
            wav.display(),
            srv.port()
        ),
        T,
    );
    assert_eq!(info(srv.addr(), "tones", "sample_rate"), Some(48000));
    assert_eq!(info(srv.addr(), "tones", "channels"), Some(1));
    let bits = info(srv.addr(), "tones", "bit_depth").expect("bit_depth");
    assert!(bits == 16 || bits == 24, "bit depth {bits}");
    let bytes_per_frame = bits / 8;
    assert_eq!(
        info(srv.addr(), "tones", "size"),
        Some(96_000 * bytes_per_frame),
        "the WAV file's 96000 sample frames are stored"
    );

    // Appending the stereo Ogg file: racssink answers the stream's stored format in the caps
    // query, so audioconvert downmixes to mono and the stream keeps its format.
    gst_launch_ok(
        &format!(
            "filesrc location={} ! decodebin ! audioconvert ! audioresample ! racssink host=127.0.0.1 port={} stream-id=tones",
            ogg.display(),
            srv.port()
        ),
        T,
    );
    assert_eq!(info(srv.addr(), "tones", "channels"), Some(1));
    assert_eq!(info(srv.addr(), "tones", "sample_rate"), Some(48000));
    let size = info(srv.addr(), "tones", "size").unwrap();
    let appended = size / bytes_per_frame - 96_000;
    // Vorbis decodes to the encoded length give or take its block overlap.
    assert!(
        (appended - 96_000).abs() <= 2048,
        "appended {appended} sample frames from a 2 s Ogg file, expected about 96000"
    );
}

/// Records 3 s of a 44.1 kHz stereo S16LE sine into `id` and returns the same signal as a WAV.
fn record_reference(srv: &TestServer, work: &Path, id: &str) -> tools::Wav {
    let src = "audiotestsrc wave=sine freq=440 volume=0.5 num-buffers=30 samplesperbuffer=4410 ! audio/x-raw,format=S16LE,rate=44100,channels=2,layout=interleaved";
    gst_launch_ok(
        &format!(
            "{src} ! racssink host=127.0.0.1 port={} stream-id={id}",
            srv.port()
        ),
        T,
    );
    let reference = work.join("reference.wav");
    gst_launch_ok(
        &format!("{src} ! wavenc ! filesink location={}", reference.display()),
        T,
    );
    let wav = read_wav(&reference);
    assert_eq!(wav.frames(), 132_300);
    wav
}

/// Where `part` (whole sample frames) starts inside `whole`, if it occurs there.
fn find_frames(
    whole: &[i16],
    part: &[i16],
    channels: usize,
    around: usize,
    slack: usize,
) -> Option<usize> {
    let lo = around.saturating_sub(slack);
    let hi = (around + slack).min(whole.len() / channels);
    (lo..=hi).find(|&f| {
        let s = f * channels;
        s + part.len() <= whole.len() && whole[s..s + part.len()] == *part
    })
}

#[test]
fn export_to_wav_is_sample_exact() {
    let srv = TestServer::start();
    let work = tempfile::tempdir().unwrap();
    let reference = record_reference(&srv, work.path(), "sine");

    // The whole stream.
    let all = work.path().join("all.wav");
    gst_launch_ok(
        &format!(
            "racssrc host=127.0.0.1 port={} stream-id=sine ! audioconvert ! wavenc ! filesink location={}",
            srv.port(),
            all.display()
        ),
        T,
    );
    let got = read_wav(&all);
    assert_eq!((got.channels, got.rate, got.bits), (2, 44100, 16));
    assert_eq!(got.frames(), 132_300, "the whole 3 s stream comes back");
    assert!(
        got.data == reference.data,
        "what came back differs from what went in"
    );

    // Seconds 1.0 to 2.0 through the relative form: within 1 ms at both ends.
    let part = work.path().join("part.wav");
    gst_launch_ok(
        &format!(
            "racssrc host=127.0.0.1 port={} stream-id=sine start-offset=1000000000 duration=1000000000 ! audioconvert ! wavenc ! filesink location={}",
            srv.port(),
            part.display()
        ),
        T,
    );
    let got = read_wav(&part);
    assert!(
        got.frames().abs_diff(44_100) <= 88,
        "1 s asked, {} sample frames came back",
        got.frames()
    );
    let at = find_frames(&reference.samples_i16(), &got.samples_i16(), 2, 44_100, 441)
        .expect("the extracted second is not a slice of what was recorded");
    assert!(
        at.abs_diff(44_100) <= 44,
        "the range starts at frame {at}, asked 44100"
    );
}

#[test]
fn export_to_mp3_and_opus_decodes_to_the_right_length() {
    let srv = TestServer::start();
    let work = tempfile::tempdir().unwrap();
    record_reference(&srv, work.path(), "sine");
    let mut checked = 0;

    if element_exists("lamemp3enc") {
        let mp3 = work.path().join("out.mp3");
        gst_launch_ok(
            &format!(
                "racssrc host=127.0.0.1 port={} stream-id=sine ! audioconvert ! lamemp3enc ! filesink location={}",
                srv.port(),
                mp3.display()
            ),
            T,
        );
        let back = decode_to_wav(&mp3, work.path(), T);
        assert_eq!(back.channels, 2);
        assert!(
            (back.seconds() - 3.0).abs() < 0.1,
            "the MP3 file decodes to {:.3} s, expected 3 s",
            back.seconds()
        );
        checked += 1;
    } else {
        eprintln!("lamemp3enc is not installed: MP3 export not checked (install gstreamer1.0-plugins-good, or -ugly before GStreamer 1.22)");
    }

    if element_exists("opusenc") && element_exists("oggmux") {
        let opus = work.path().join("out.opus");
        gst_launch_ok(
            &format!(
                "racssrc host=127.0.0.1 port={} stream-id=sine ! audioconvert ! audioresample ! opusenc ! oggmux ! filesink location={}",
                srv.port(),
                opus.display()
            ),
            T,
        );
        let back = decode_to_wav(&opus, work.path(), T);
        assert!(
            (back.seconds() - 3.0).abs() < 0.05,
            "the Opus file decodes to {:.3} s, expected 3 s",
            back.seconds()
        );
        checked += 1;
    } else {
        eprintln!("opusenc/oggmux are not installed: Opus export not checked (install gstreamer1.0-plugins-base)");
    }
    // scripts/setup.sh installs both, so on a machine it has set up both are checked.
    if std::env::var_os("CI").is_some() {
        assert_eq!(checked, 2, "CI must check both MP3 and Opus export");
    }
}

/// The first line gst-launch-1.0 prints for an element's error or warning (every error and
/// warning it printed checked with `common::assert_tidy_output`).
fn first_line(out: &tools::Output, kind: &str) -> String {
    common::assert_tidy_output(&[&out.stdout, &out.stderr]);
    out.stderr
        .lines()
        .chain(out.stdout.lines())
        .find(|l| l.starts_with(&format!("{kind}: from element")))
        .unwrap_or_else(|| panic!("no {kind} line:\n{}", out.dump()))
        .to_string()
}

#[test]
fn racssrc_errors_say_what_is_wrong() {
    let srv = TestServer::start();
    let port = srv.port();

    let out = gst_launch_error(
        &format!("racssrc host=127.0.0.1 port={port} stream-id=nosuchstream ! fakesink"),
        TE,
    );
    assert!(
        !out.success(),
        "extracting a missing stream succeeded:\n{}",
        out.dump()
    );
    let line = first_line(&out, "ERROR");
    assert!(
        line.contains("stream 'nosuchstream' does not exist")
            && line.contains(&format!("127.0.0.1:{port}")),
        "the error names the stream and the server: {line}"
    );

    gst_launch_ok(
        &format!(
            "audiotestsrc num-buffers=10 ! audio/x-raw,format=S16LE,rate=44100,channels=2 ! racssink host=127.0.0.1 port={port} stream-id=short"
        ),
        T,
    );
    let out = gst_launch_error(
        &format!("racssrc host=127.0.0.1 port={port} stream-id=short start=yesterday ! fakesink"),
        TE,
    );
    assert!(!out.success(), "{}", out.dump());
    common::assert_tidy_output(&[&out.stdout, &out.stderr]);
    let line = first_line(&out, "ERROR");
    assert!(
        line.contains("'yesterday'") && line.contains("YYYY-MM-DDTHH:MM:SS"),
        "the error shows the expected time form: {line}"
    );

    // A range after the end of the stream: an error saying what the stream holds.
    let out = gst_launch_error(
        &format!(
            "racssrc host=127.0.0.1 port={port} stream-id=short start-offset=60000000000 ! fakesink"
        ),
        TE,
    );
    assert!(
        !out.success(),
        "a range past the end must fail:\n{}",
        out.dump()
    );
    let line = first_line(&out, "ERROR");
    assert!(
        line.contains("after the end of the stream") && line.contains("holds"),
        "the error says the range is past the end: {line}"
    );
}

#[test]
fn server_down_fails_with_a_message_naming_the_server() {
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = gst_launch_error(
        &format!(
            "audiotestsrc num-buffers=10 ! audio/x-raw,format=S16LE,rate=44100,channels=2 ! racssink host=127.0.0.1 port={port} stream-id=x timeout=2000 retry-timeout=0"
        ),
        TE,
    );
    assert!(
        !out.success(),
        "recording with the server down succeeded:\n{}",
        out.dump()
    );
    let line = first_line(&out, "ERROR");
    assert!(
        line.contains(&format!(
            "cannot connect to the RACS server at 127.0.0.1:{port}"
        )),
        "the error names the server it could not reach: {line}"
    );
}

/// The errors a user meets most on the command line, as gst-launch-1.0 prints them.
#[test]
fn stream_in_use_and_format_mismatch_say_what_to_do() {
    let srv = TestServer::start();
    let tone = "audiotestsrc num-buffers=10 ! audio/x-raw,format=S16LE,rate=44100,channels=2";
    gst_launch_ok(
        &format!(
            "{tone} ! racssink host=127.0.0.1 port={} stream-id=busy",
            srv.port()
        ),
        T,
    );

    // A fixed format that differs from the stored one.
    let out = gst_launch_error(
        &format!(
            "audiotestsrc num-buffers=10 ! audio/x-raw,format=S16LE,rate=48000,channels=1 ! racssink host=127.0.0.1 port={} stream-id=busy",
            srv.port()
        ),
        TE,
    );
    assert!(!out.success(), "{}", out.dump());
    common::assert_tidy_output(&[&out.stdout, &out.stderr]);
    assert!(
        out.stderr.contains("44100 Hz, 2 channels, 16-bit")
            && out.stderr.contains("48000 Hz, 1 channel, 16-bit")
            && out.stderr.contains("audioconvert ! audioresample"),
        "the mismatch error names both formats and the fix:\n{}",
        out.dump()
    );

    // A stream left open by a writer that crashed (OPEN without CLOSE).
    let mut c = racs_lite::client::RawClient::connect(srv.addr()).unwrap();
    c.command("OPEN 'busy'").unwrap();
    let out = gst_launch_error(
        &format!(
            "{tone} ! racssink host=127.0.0.1 port={} stream-id=busy",
            srv.port()
        ),
        TE,
    );
    assert!(!out.success(), "{}", out.dump());
    common::assert_tidy_output(&[&out.stdout, &out.stderr]);
    assert!(
        out.stderr.contains("already open") && out.stderr.contains("takeover=true"),
        "the stream-in-use error says how to take the stream over:\n{}",
        out.dump()
    );
    gst_launch_ok(
        &format!(
            "{tone} ! racssink host=127.0.0.1 port={} stream-id=busy takeover=true",
            srv.port()
        ),
        T,
    );
    assert_eq!(info(srv.addr(), "busy", "size"), Some(2 * 10 * 1024 * 4));
}

/// A program built from examples/ (cargo test builds them before running the tests).
fn example(name: &str) -> std::process::Command {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --lib --examples` (cargo test without a filter builds them)",
        path.display()
    );
    std::process::Command::new(path)
}

#[test]
fn ls_example_lists_streams_with_slashes_and_says_what_it_cannot_know() {
    let mut srv = TestServer::start();
    let port = srv.port().to_string();
    for (id, caps) in [
        ("air", "format=S16LE,rate=44100,channels=2"),
        ("studio/mic1", "format=S24LE,rate=48000,channels=1"),
    ] {
        gst_launch_ok(
            &format!(
                "audiotestsrc num-buffers=10 samplesperbuffer=4800 ! audio/x-raw,{caps} ! racssink host=127.0.0.1 port={port} stream-id={id}"
            ),
            T,
        );
    }
    let ls = |args: &[&str]| {
        let mut cmd = example("ls");
        cmd.args(["--host", "127.0.0.1", "--port", &port])
            .args(args);
        run(cmd, T)
    };
    let out = ls(&[]);
    assert!(out.success(), "ls failed:\n{}", out.dump());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two streams:\n{}", out.dump());
    assert!(
        lines[1].starts_with("air ") && lines[1].contains("44100") && lines[1].contains("1.088 s"),
        "{}",
        out.dump()
    );
    assert!(
        lines[2].starts_with("studio/mic1 ")
            && lines[2].contains("48000")
            && lines[2].contains("1.000 s"),
        "{}",
        out.dump()
    );
    let out = ls(&["s*"]);
    assert!(
        out.success() && !out.stdout.contains("studio/mic1"),
        "globs do not match '/':\n{}",
        out.dump()
    );
    // After a kill the server has lost size and ref: listed as unknown, not as 0.
    srv.kill();
    srv.start_again();
    let out = ls(&["air"]);
    assert!(out.success(), "{}", out.dump());
    assert!(
        out.stdout
            .contains("unknown (no data, or lost in a server crash)"),
        "{}",
        out.dump()
    );
    // A server that is not there.
    srv.kill();
    let out = ls(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", out.dump());
    common::assert_tidy_output(&[&out.stdout, &out.stderr]);
    assert!(
        out.stderr
            .contains("cannot connect to the RACS server at 127.0.0.1:"),
        "{}",
        out.dump()
    );
}

#[test]
fn record_and_export_examples_round_trip() {
    let srv = TestServer::start();
    let work = tempfile::tempdir().unwrap();
    let port = srv.port().to_string();
    let input = work.path().join("input.flac");
    gst_launch_ok(
        &format!(
            "audiotestsrc wave=sine num-buffers=40 samplesperbuffer=4410 ! audio/x-raw,format=S16LE,rate=44100,channels=2 ! flacenc ! filesink location={}",
            input.display()
        ),
        T,
    );

    let mut cmd = example("record");
    cmd.arg(&input)
        .arg("show")
        .args(["--host", "127.0.0.1", "--port", &port]);
    let out = run(cmd, T);
    assert!(out.success(), "record failed:\n{}", out.dump());
    assert!(
        out.stderr
            .contains("record: done: 4.0 s of audio stored in stream 'show'"),
        "record reports what it stored:\n{}",
        out.dump()
    );
    assert_eq!(info(srv.addr(), "show", "size"), Some(4 * 44_100 * 4));

    // One second from 0.5 s, to WAV (exact to 1 ms) and to MP3 (decodes to about 1 s).
    let wav = work.path().join("clip.wav");
    let mut cmd = example("export");
    cmd.args(["show"])
        .arg(&wav)
        .args(["--offset", "0.5", "--duration", "1"])
        .args(["--host", "127.0.0.1", "--port", &port]);
    let out = run(cmd, T);
    assert!(out.success(), "export failed:\n{}", out.dump());
    assert!(
        out.stderr.contains("export: done: 1.000 s of audio"),
        "{}",
        out.dump()
    );
    let got = read_wav(&wav);
    assert!(
        got.frames().abs_diff(44_100) <= 88,
        "{} frames",
        got.frames()
    );

    let mp3 = work.path().join("clip.mp3");
    let mut cmd = example("export");
    cmd.args(["show"])
        .arg(&mp3)
        .args(["--offset", "0.5", "--duration", "1"])
        .args(["--host", "127.0.0.1", "--port", &port]);
    let out = run(cmd, T);
    assert!(out.success(), "export failed:\n{}", out.dump());
    let back = decode_to_wav(&mp3, work.path(), T);
    assert!(
        (back.seconds() - 1.0).abs() < 0.1,
        "{:.3} s",
        back.seconds()
    );

    // The errors a user makes: a stream that is not there, an extension it cannot write.
    let mut cmd = example("export");
    cmd.args(["nosuch"]).arg(work.path().join("x.wav")).args([
        "--host",
        "127.0.0.1",
        "--port",
        &port,
    ]);
    let out = run(cmd, T);
    assert_eq!(out.status.code(), Some(1), "{}", out.dump());
    common::assert_tidy_output(&[&out.stdout, &out.stderr]);
    assert!(
        out.stderr
            .contains("export: error: stream 'nosuch' does not exist"),
        "{}",
        out.dump()
    );
    // A range after the end of the stream: an error, and no empty file left behind.
    let late = work.path().join("late.wav");
    let mut cmd = example("export");
    cmd.args(["show"])
        .arg(&late)
        .args(["--offset", "60", "--host", "127.0.0.1", "--port", &port]);
    let out = run(cmd, T);
    assert_eq!(out.status.code(), Some(1), "{}", out.dump());
    common::assert_tidy_output(&[&out.stdout, &out.stderr]);
    assert!(
        out.stderr.contains("export: error: nothing to read")
            && out.stderr.contains("after the end of the stream"),
        "{}",
        out.dump()
    );
    assert!(
        !late.exists(),
        "an empty {} was left behind",
        late.display()
    );
    let mut cmd = example("export");
    cmd.args(["show"]).arg(work.path().join("x.aiff"));
    let out = run(cmd, T);
    assert_eq!(out.status.code(), Some(1), "{}", out.dump());
    common::assert_tidy_output(&[&out.stdout, &out.stderr]);
    assert!(out.stderr.contains("unknown extension"), "{}", out.dump());
}

#[test]
fn quickstart_example_checks_what_came_back() {
    let work = tempfile::tempdir().unwrap();
    let out_wav = work.path().join("excerpt.wav");
    let mut cmd = example("quickstart");
    cmd.arg("--out").arg(&out_wav).env_remove("RACS_ADDR");
    let out = run(cmd, T);
    assert!(out.success(), "the quickstart failed:\n{}", out.dump());
    for step in ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"] {
        assert!(
            out.stdout.contains(step),
            "missing step {step}:\n{}",
            out.dump()
        );
    }
    assert!(
        out.stdout
            .contains("every one of the 220500 sample frames is identical to what went in"),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("OK: what came back is what went in"),
        "{}",
        out.dump()
    );
    let wav = read_wav(&out_wav);
    assert_eq!((wav.channels, wav.rate, wav.bits), (2, 44100, 16));
    assert_eq!(wav.frames(), 220_500, "seconds 2.5 to 7.5");

    // With RACS_ADDR pointing at no server it fails, saying why.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = example("quickstart");
    cmd.arg("--out")
        .arg(work.path().join("none.wav"))
        .env("RACS_ADDR", format!("127.0.0.1:{port}"));
    let out = run(cmd, T);
    assert_eq!(out.status.code(), Some(1), "{}", out.dump());
    common::assert_tidy_output(&[&out.stdout, &out.stderr]);
    assert!(
        out.stderr.contains(&format!(
            "quickstart FAILED: recording: cannot connect to the RACS server at 127.0.0.1:{port}"
        )),
        "{}",
        out.dump()
    );
}

/// Properties every element gets from its GStreamer base class; the README documents only the
/// element's own (and `sync`, whose default racssink changes).
const BASE_CLASS_PROPERTIES: &[&str] = &[
    "async",
    "blocksize",
    "do-timestamp",
    "enable-last-sample",
    "last-sample",
    "max-bitrate",
    "max-lateness",
    "name",
    "num-buffers",
    "parent",
    "processing-deadline",
    "qos",
    "render-delay",
    "throttle-time",
    "ts-offset",
    "typefind",
];

/// The README's property table for `element`: name -> the Default column.
fn readme_properties(element: &str) -> BTreeMap<String, String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find(&format!("\n### {element}\n"))
        .unwrap_or_else(|| panic!("README.md has no section ### {element}"));
    let section = &readme[start + 1..];
    let end = section[4..].find("\n#").map_or(section.len(), |e| e + 4);
    section[..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cols: Vec<&str> = l.split(" | ").collect();
            (
                cols[0]
                    .trim_start_matches("| ")
                    .trim_matches('`')
                    .to_string(),
                cols[2].to_string(),
            )
        })
        .collect()
}

#[test]
fn readme_property_tables_match_gst_inspect() {
    for element in ["racssink", "racssrc"] {
        let inspected = inspect_properties(element);
        let documented = readme_properties(element);
        for (name, prop) in &inspected {
            if BASE_CLASS_PROPERTIES.contains(&name.as_str()) {
                continue;
            }
            let doc = documented
                .get(name)
                .unwrap_or_else(|| panic!("README.md's {element} table lacks the property {name}"));
            // gst-inspect shows strings quoted and unset strings as null; enums as `0, "silence"`.
            let Some(default) = prop.default.as_deref() else {
                continue; // read-only structures show their fields instead
            };
            let want = match default {
                "null" => "none".to_string(),
                d if d.contains(", \"") => d.split('"').nth(1).unwrap().to_string(),
                d => d.trim_matches('"').to_string(),
            };
            assert!(
                doc.contains(&want),
                "README.md says {element}::{name} defaults to {doc}, gst-inspect-1.0 shows {default}"
            );
        }
        for name in documented.keys() {
            assert!(
                inspected.contains_key(name),
                "README.md documents {element}::{name}, which gst-inspect-1.0 does not list"
            );
        }
    }
}
