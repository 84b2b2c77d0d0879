// SPDX-License-Identifier: MPL-2.0
//! Property tests: the tokenizer, the command parser, the frame decoder and the whole request
//! path never panic, whatever the input; and the server survives random bytes on the wire.

mod common;

use std::io::Write;
use std::sync::Mutex;

use proptest::prelude::*;
use racs_lite::client::{build_frame, RawClient};
use racs_lite::exec::{decode_frame, handle_payload, Outcome};
use racs_lite::lang::{parse, tokenize, Parsed};
use racs_lite::storage::Store;

/// Fragments that make the grammar-aware generator hit interesting paths.
const FRAGMENTS: &[&str] = &[
    "PING",
    "CREATE",
    "OPEN",
    "CLOSE",
    "INFO",
    "SEARCH",
    "EXTRACT",
    "FORMAT",
    "EVAL",
    "ping",
    "|>",
    "|",
    " ",
    "\t",
    "\n",
    "'",
    "'s'",
    "'a\\'b'",
    "'\\",
    "\\'",
    "''",
    "\"",
    "0",
    "007",
    "1.",
    "1.5",
    ".5",
    "-1",
    "18446744073709551616",
    "9223372036854775808",
    "2025-11-05T12:14:14.608Z",
    "2025-13-45T99:99:99.9999999999Z",
    "2025-11-05T12:14:14+05:00",
    "2025-11-05T12:14:14",
    "'audio/wav'",
    "44100",
    "2",
    "16",
    "24",
    "0",
    "'x'",
    "'*'",
    "'[!a]*'",
    "'['",
    "é",
    "\u{0}",
    "rsp",
    "_id",
    "X",
    "\u{7f}",
    "#",
];

fn grammarish() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(FRAGMENTS).prop_map(|s| s.as_bytes().to_vec()),
            prop::collection::vec(any::<u8>(), 0..4),
        ],
        0..16,
    )
    .prop_map(|parts| parts.concat())
}

fn fresh_store() -> (tempfile::TempDir, Mutex<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 4).unwrap();
    (dir, Mutex::new(store))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn tokenizer_and_parser_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(off) = tokenize(&bytes) {
            prop_assert!(off < bytes.len());
        }
        let _ = parse(&bytes);
    }

    #[test]
    fn grammar_aware_inputs_never_panic(bytes in grammarish()) {
        let toks = tokenize(&bytes);
        match parse(&bytes) {
            Parsed::Error(e) => prop_assert!(!e.is_empty()),
            Parsed::Empty => prop_assert!(toks.map(|t| t.iter().all(|t| *t == racs_lite::lang::Token::Pipe)).unwrap_or(false)),
            Parsed::Pipeline(cmds) => prop_assert!(!cmds.is_empty()),
        }
    }

    #[test]
    fn frame_decoder_never_panics(tail in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut p = b"rsp".to_vec();
        p.extend_from_slice(&tail);
        let _ = decode_frame(&p);
        let _ = decode_frame(&tail);
    }

    #[test]
    fn valid_frames_decode(session in any::<[u8; 16]>(), pcm in prop::collection::vec(any::<u8>(), 0..600), junk in prop::collection::vec(any::<u8>(), 0..20)) {
        let mut f = build_frame(&session, b"s", &pcm);
        f.extend_from_slice(&junk);
        let h = decode_frame(&f).unwrap();
        prop_assert_eq!(h.session, session);
        prop_assert_eq!(h.block, &pcm[..]);
        prop_assert_eq!(h.hash, racs_lite::stream_hash(b"s"));
    }

    #[test]
    fn globs_never_panic(pat in prop::collection::vec(prop::sample::select(b"ab*?[]!^-\\:".to_vec()), 0..12), name in prop::collection::vec(prop::sample::select(b"ab*?[]!-\\".to_vec()), 0..12)) {
        let _ = racs_lite::glob::fnmatch(&pat, &name);
        prop_assert!(racs_lite::glob::fnmatch(b"*", &name));
    }
}

#[test]
fn request_path_never_panics() {
    // One store across many random requests, so state (streams, sessions, tables) accumulates.
    let (_dir, store) = fresh_store();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1500,
        ..ProptestConfig::default()
    });
    let setup = [
        "CREATE 's' 8000 1 16",
        "CREATE 't' 44100 2 24",
        "CREATE 'u' 8000 0 8",
        "OPEN 's'",
        "OPEN 't'",
        "OPEN 'u'",
    ];
    for s in setup {
        let _ = handle_payload(&store, s.as_bytes());
    }
    let strategy = prop_oneof![
        grammarish(),
        // Frames for the streams above, valid or mangled.
        (
            prop::sample::select(vec!["s", "t", "u", "nope"]),
            any::<[u8; 16]>(),
            prop::collection::vec(any::<u8>(), 0..64),
            any::<u8>()
        )
            .prop_map(|(id, sess, pcm, mangle)| {
                let mut f = build_frame(&sess, id.as_bytes(), &pcm);
                if mangle % 4 == 0 {
                    let i = mangle as usize % f.len();
                    f[i] ^= mangle;
                }
                f
            }),
        // Read paths.
        (
            prop::sample::select(vec!["s", "t", "u", "nope"]),
            0u64..5_000_000_000_000,
            0u64..5_000_000_000_000
        )
            .prop_map(|(id, a, b)| format!(
                "EXTRACT '{id}' {a} {b} |> FORMAT 'audio/wav' 8000 1 16"
            )
            .into_bytes()),
    ];
    runner
        .run(&strategy, |payload| {
            match handle_payload(&store, &payload) {
                Outcome::Reply(v) => {
                    let mut out = Vec::new();
                    for x in &v {
                        racs_lite::pack::encode(x, &mut out);
                    }
                    let decoded = racs_lite::client::decode_all(&out).unwrap();
                    prop_assert_eq!(decoded.len(), v.len());
                }
                Outcome::Shutdown => {}
            }
            Ok(())
        })
        .unwrap();
    store
        .lock()
        .unwrap()
        .shutdown(racs_lite::storage::StopMode::Durable)
        .unwrap();
}

#[test]
fn server_survives_random_bytes_on_the_wire() {
    let srv = racs_lite::harness::AnyServer::start_with(|c| {
        c.max_message_bytes = 1 << 16;
        c.idle_timeout = std::time::Duration::from_secs(2);
    });
    if !srv.needs_lite("random bytes crash or stall a real server") {
        return;
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 150,
        ..ProptestConfig::default()
    });
    let strategy = (
        0u64..(1 << 17),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..300),
        grammarish(),
    );
    runner
        .run(&strategy, |(len, high, noise, text)| {
            let mut c = RawClient::connect(srv.addr()).unwrap();
            let len = if high { len | (1 << 40) } else { len };
            let mut msg = len.to_le_bytes().to_vec();
            msg.extend_from_slice(&text);
            msg.push(0);
            msg.extend_from_slice(&noise);
            let _ = c.stream.write_all(&msg);
            drop(c);
            Ok(())
        })
        .unwrap();
    // Still serving, on a fresh connection.
    let mut c = RawClient::connect(srv.addr()).unwrap();
    assert_eq!(common::cmd(&mut c, "PING"), common::PONG);
}
