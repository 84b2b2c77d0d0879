// SPDX-License-Identifier: MPL-2.0
//! The racs:// URI handler as applications use it: playbin and uridecodebin playing a stream,
//! and racssink made from a URI, all against racs-lite.

mod common;
mod tools;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::TestServer;
use gst::prelude::*;

/// Plays `pipeline` to EOS; panics with the error message or on a timeout.
fn run_to_eos(pipeline: &gst::Element) {
    common::play_to_eos(pipeline);
}

/// Records `secs` seconds of a sine, S16LE stereo 44.1 kHz, into `id`.
fn record(srv: &TestServer, id: &str, secs: u32) {
    let p = gst::parse::launch(&format!(
        "audiotestsrc wave=sine num-buffers={} samplesperbuffer=4410 ! audio/x-raw,format=S16LE,rate=44100,channels=2 ! racssink host=127.0.0.1 port={} stream-id={id}",
        secs * 10,
        srv.port()
    ))
    .unwrap();
    run_to_eos(&p);
}

/// A fakesink that counts the sample frames reaching it.
fn counting_sink() -> (gst::Element, Arc<AtomicUsize>) {
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .build()
        .unwrap();
    let frames = Arc::new(AtomicUsize::new(0));
    let counter = frames.clone();
    let pad = sink.static_pad("sink").unwrap();
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(buf) = info.buffer() {
            let caps = pad.current_caps().expect("caps before buffers");
            let ai = gst_audio::AudioInfo::from_caps(&caps).expect("raw audio caps");
            counter.fetch_add(buf.size() / ai.bpf() as usize, Ordering::SeqCst);
        }
        gst::PadProbeReturn::Ok
    });
    (sink, frames)
}

#[test]
fn playbin_plays_a_racs_uri() {
    common::init();
    let srv = TestServer::start();
    record(&srv, "radio", 2);
    let (sink, frames) = counting_sink();
    let playbin = gst::ElementFactory::make("playbin")
        .property("uri", format!("racs://127.0.0.1:{}/radio", srv.port()))
        .property("audio-sink", &sink)
        .build()
        .unwrap();
    run_to_eos(&playbin);
    assert_eq!(
        frames.load(Ordering::SeqCst),
        88_200,
        "playbin played the whole 2 s stream"
    );
}

#[test]
fn playbin_plays_a_time_range_given_in_the_uri() {
    common::init();
    let srv = TestServer::start();
    record(&srv, "radio", 3);
    let ref_ms = tools::info(srv.addr(), "radio", "ref").expect("the stream has a reference time");
    let start = tools::rfc3339_ms(ref_ms + 500);
    let stop = tools::rfc3339_ms(ref_ms + 2500);
    let (sink, frames) = counting_sink();
    let uri = format!(
        "racs://127.0.0.1:{}/radio?start={start}&stop={stop}",
        srv.port()
    );
    let playbin = gst::ElementFactory::make("playbin")
        .property("uri", &uri)
        .property("audio-sink", &sink)
        .build()
        .unwrap();
    run_to_eos(&playbin);
    let n = frames.load(Ordering::SeqCst);
    assert!(
        n.abs_diff(88_200) <= 88,
        "{uri}: 2 s asked, {n} sample frames played"
    );
}

#[test]
fn uridecodebin_plays_a_racs_uri() {
    common::init();
    let srv = TestServer::start();
    record(&srv, "radio", 1);
    let pipeline = gst::parse::launch(&format!(
        "uridecodebin uri=racs://127.0.0.1:{}/radio ! audioconvert ! fakesink name=sink sync=false",
        srv.port()
    ))
    .unwrap();
    let bin = pipeline.downcast_ref::<gst::Bin>().unwrap();
    let sink = bin.by_name("sink").unwrap();
    let frames = Arc::new(AtomicUsize::new(0));
    let counter = frames.clone();
    sink.static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            if let Some(buf) = info.buffer() {
                let caps = pad.current_caps().unwrap();
                let ai = gst_audio::AudioInfo::from_caps(&caps).unwrap();
                counter.fetch_add(buf.size() / ai.bpf() as usize, Ordering::SeqCst);
            }
            gst::PadProbeReturn::Ok
        });
    run_to_eos(&pipeline);
    assert_eq!(frames.load(Ordering::SeqCst), 44_100);
}

#[test]
fn racssink_made_from_a_uri_records() {
    common::init();
    let srv = TestServer::start();
    let uri = format!("racs://127.0.0.1:{}/from-uri?chunk-size=4096", srv.port());
    let sink = gst::Element::make_from_uri(gst::URIType::Sink, &uri, None)
        .unwrap_or_else(|e| panic!("no sink for {uri}: {e}"));
    assert_eq!(sink.factory().unwrap().name(), "racssink");
    assert_eq!(
        sink.property::<Option<String>>("host").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(sink.property::<u32>("port"), u32::from(srv.port()));
    assert_eq!(
        sink.property::<Option<String>>("stream-id").as_deref(),
        Some("from-uri")
    );
    assert_eq!(sink.property::<u32>("chunk-size"), 4096);
    let uri_handler = sink.dynamic_cast_ref::<gst::URIHandler>().unwrap();
    assert!(uri_handler.uri().unwrap().starts_with("racs://127.0.0.1:"));

    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("audiotestsrc")
        .property("num-buffers", 10i32)
        .property("samplesperbuffer", 4410i32)
        .build()
        .unwrap();
    let caps = gst::ElementFactory::make("capsfilter")
        .property(
            "caps",
            gst::Caps::builder("audio/x-raw")
                .field("format", "S16LE")
                .field("rate", 44100i32)
                .field("channels", 1i32)
                .build(),
        )
        .build()
        .unwrap();
    pipeline.add_many([&src, &caps, &sink]).unwrap();
    gst::Element::link_many([&src, &caps, &sink]).unwrap();
    run_to_eos(pipeline.upcast_ref());
    assert_eq!(
        tools::info(srv.addr(), "from-uri", "size"),
        Some(44_100 * 2)
    );
}

#[test]
fn racssrc_made_from_a_uri_takes_its_range() {
    common::init();
    let uri =
        "racs://example.org:7000/air?start=2026-01-09T10:00:00.250Z&stop=2026-01-09T10:05:00.000Z";
    let src = gst::Element::make_from_uri(gst::URIType::Src, uri, None)
        .unwrap_or_else(|e| panic!("no source for {uri}: {e}"));
    assert_eq!(src.factory().unwrap().name(), "racssrc");
    assert_eq!(
        src.property::<Option<String>>("host").as_deref(),
        Some("example.org")
    );
    assert_eq!(src.property::<u32>("port"), 7000);
    assert_eq!(
        src.property::<Option<String>>("stream-id").as_deref(),
        Some("air")
    );
    assert_eq!(
        src.property::<Option<String>>("start").as_deref(),
        Some("2026-01-09T10:00:00.250Z")
    );
    assert_eq!(
        src.property::<Option<String>>("stop").as_deref(),
        Some("2026-01-09T10:05:00.000Z")
    );
}

#[test]
fn a_uri_without_a_stream_id_is_refused_with_a_reason() {
    common::init();
    for ty in [gst::URIType::Src, gst::URIType::Sink] {
        let err = gst::Element::make_from_uri(ty, "racs://127.0.0.1:6381/", None)
            .expect_err("a racs:// URI without a stream id was accepted");
        assert!(
            err.to_string().to_lowercase().contains("stream"),
            "the error does not say the stream id is missing: {err}"
        );
    }
}

/// Every property of racssink's own that a URI carries, with its value as text.
fn own_settings(sink: &gst::Element) -> Vec<(String, String)> {
    sink.list_properties()
        .iter()
        .filter(|p| {
            p.owner_type() == sink.type_()
                && p.flags().contains(glib::ParamFlags::READWRITE)
                && p.name() != "uri"
        })
        .map(|p| {
            let v = sink.property_value(p.name());
            let text = match glib::EnumValue::from_value(&v) {
                Some((_, e)) => e.nick().to_string(),
                None => v
                    .serialize()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| "null".into()),
            };
            (p.name().to_string(), text)
        })
        .collect()
}

#[test]
fn racssink_uri_property_round_trips_every_setting() {
    uri_property_round_trips_every_setting("racssink", "chunk-size", 4096);
}

#[test]
fn racssrc_uri_property_round_trips_every_setting() {
    uri_property_round_trips_every_setting("racssrc", "poll-interval", 50);
}

/// Every property of `element` the URI carries, changed from its default, comes back through
/// the `uri` property into a fresh element; defaults are left out of the URI.
fn uri_property_round_trips_every_setting(element: &str, some: &str, value: u32) {
    common::init();
    let elem = gst::ElementFactory::make(element).build().unwrap();
    let defaults = own_settings(&elem);
    // A value other than the default for every property the URI carries, chosen from its
    // definition, so a property added later is covered too.
    for p in elem.list_properties().iter() {
        if p.owner_type() != elem.type_()
            || !p.flags().contains(glib::ParamFlags::READWRITE)
            || p.name() == "uri"
        {
            continue;
        }
        let name = p.name();
        if let Some(b) = p.downcast_ref::<glib::ParamSpecBoolean>() {
            elem.set_property(name, !b.default_value());
        } else if let Some(u) = p.downcast_ref::<glib::ParamSpecUInt>() {
            let v = if u.default_value() == u.minimum() {
                u.minimum() + 1
            } else {
                u.minimum()
            };
            elem.set_property(name, v);
        } else if let Some(u) = p.downcast_ref::<glib::ParamSpecUInt64>() {
            let v = if u.default_value() < u.maximum() - 1_000_000 {
                u.default_value() + 1_000_000
            } else {
                u.minimum()
            };
            elem.set_property(name, v);
        } else if let Some(e) = p.downcast_ref::<glib::ParamSpecEnum>() {
            let class = e.enum_class();
            let other = class
                .values()
                .iter()
                .find(|v| v.value() != e.default_value_as_i32())
                .unwrap();
            elem.set_property_from_str(name, other.nick());
        } else if p.value_type() == glib::Type::STRING {
            let v = match name {
                "host" => "::1",
                "stream-id" => "air/studio 1 %Y&x=y?",
                "replay-window" => "10s",
                "start" => "2026-01-09T10:00:00.250Z",
                "stop" => "2026-01-09T11:00:00Z",
                other => panic!("no test value for the string property {other}"),
            };
            elem.set_property(name, v);
        } else {
            panic!("no test value for {name} ({})", p.value_type());
        }
    }
    let changed = own_settings(&elem);
    for ((name, d), (_, c)) in defaults.iter().zip(&changed) {
        assert_ne!(d, c, "{name} was not changed from its default");
    }
    let uri: String = elem.property("uri");
    assert!(uri.starts_with("racs://[::1]:"), "{uri}");
    // A fresh element given that URI through the property has the same settings.
    let copy = gst::ElementFactory::make(element)
        .property("uri", &uri)
        .build()
        .unwrap();
    assert_eq!(own_settings(&copy), changed, "{uri}");
    assert_eq!(copy.property::<String>("uri"), uri);
    // Defaults are left out.
    let plain = gst::ElementFactory::make(element)
        .property("stream-id", "air")
        .build()
        .unwrap();
    assert_eq!(plain.property::<String>("uri"), "racs://localhost:6381/air");
    plain.set_property(some, value);
    assert_eq!(
        plain.property::<String>("uri"),
        format!("racs://localhost:6381/air?{some}={value}")
    );
}

#[test]
fn racssink_uri_property_works_from_gst_launch_and_a_bad_one_fails_at_start() {
    common::init();
    let srv = TestServer::start();
    let pipeline = gst::parse::launch(&format!(
        "audiotestsrc num-buffers=10 samplesperbuffer=4410 ! audio/x-raw,format=S16LE,rate=44100,channels=1 \
         ! racssink name=sink uri=\"racs://127.0.0.1:{}/by%20property?chunk-size=4410&if-exists=error\"",
        srv.port()
    ))
    .unwrap();
    let sink = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("sink")
        .unwrap();
    assert_eq!(sink.property::<u32>("chunk-size"), 4410);
    run_to_eos(&pipeline);
    assert_eq!(
        tools::info(srv.addr(), "by property", "size"),
        Some(44_100 * 2)
    );

    // A URI the property refuses leaves the settings as they were, and starting says why.
    let sink = gst::ElementFactory::make("racssink")
        .property("stream-id", "kept")
        .property("uri", "racs://127.0.0.1:1/x?chunk-size=0")
        .build()
        .unwrap();
    assert_eq!(
        sink.property::<Option<String>>("stream-id").as_deref(),
        Some("kept")
    );
    let e = common::refused(&sink, gst::State::Paused);
    assert!(e.matches(gst::ResourceError::Settings), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("Invalid uri")
            && text.contains("chunk-size=\"0\": expected a number in 1..=65535"),
        "{text}"
    );
    sink.set_state(gst::State::Null).unwrap();
    // A good URI afterwards clears it.
    sink.set_property("uri", "racs://127.0.0.1:1/x");
    assert_eq!(sink.property::<String>("uri"), "racs://127.0.0.1:1/x");
}
