// SPDX-License-Identifier: MPL-2.0
//! Protocol conformance suite (contract sections 1-5).
//!
//! Runs against a fresh server per test: an in-process racs-lite by default, or a real RACS
//! v0.1.0 process when `RACS_BIN=/path/to/racs` is set. The replies asserted are exact, so a
//! pass on both shows they answer alike. With `RACS_ADDR=host:port` it runs against that shared
//! server instead (then exact table-layout assertions are relaxed). Either way the cases that
//! would crash or stall a real server, or need a racs-lite option, print
//! `skipped: needs racs-lite (...)`.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::*;
use racs_lite::client::{build_frame, show, RawClient};
use racs_lite::timefmt::split_ms;

/// `YYYY-MM-DDTHH:MM:SS` of epoch ms `t` (no fraction, no zone).
fn lit_secs(t: i64) -> String {
    let (y, mo, d, h, mi, s, _) = split_ms(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")
}

// ---------------------------------------------------------------- section 1: transport

#[test]
fn ping_exact_bytes() {
    let t = target();
    let mut c = t.conn();
    c.send_raw(&hex("0500000000000000 50494e4700")).unwrap();
    assert_eq!(c.read_reply().unwrap(), hex("92a6737472696e67a4504f4e47"));
    // The connection is persistent.
    for _ in 0..5 {
        assert_eq!(cmd(&mut c, "PING"), PONG);
    }
}

#[test]
fn zero_length_gets_no_reply_and_connection_stays_usable() {
    let t = target();
    let mut c = t.conn();
    c.send_raw(&[0u8; 8]).unwrap();
    // The next reply read is the PING's: the zero-length message produced none.
    assert_eq!(cmd(&mut c, "PING"), PONG);
}

#[test]
fn empty_command_gets_n0_reply() {
    let t = target();
    let mut c = t.conn();
    for payload in [&b"\0"[..], b"   \t\n\0", b"\0PING\0", b"|>\0", b"|> |>\0"] {
        c.send_message(payload).unwrap();
        assert_eq!(c.read_reply().unwrap(), Vec::<u8>::new(), "{payload:?}");
    }
    assert_eq!(cmd(&mut c, "PING"), PONG);
}

#[test]
fn pipelined_second_message_is_swallowed() {
    let t = target();
    let mut c = t.conn();
    let mut two = Vec::new();
    for p in [&b"PING\0"[..], b"INFO 'x' 'y'\0"] {
        two.extend_from_slice(&(p.len() as u64).to_le_bytes());
        two.extend_from_slice(p);
    }
    c.send_raw(&two).unwrap();
    assert_eq!(decode(&c.read_reply().unwrap()), PONG);
    // The INFO got no reply: the next reply belongs to this SEARCH.
    assert_eq!(cmd(&mut c, "SEARCH 'no_such_stream_*_zz'"), r#"["list"]"#);
}

#[test]
fn prefix_smaller_than_body_uses_what_arrived() {
    let t = target();
    let mut c = t.conn();
    c.send_raw(&[&3u64.to_le_bytes()[..], b"PING\0"].concat())
        .unwrap();
    assert_eq!(decode(&c.read_reply().unwrap()), PONG);
    assert_eq!(cmd(&mut c, "PING"), PONG);
}

#[test]
fn only_low_32_bits_of_the_length_count() {
    let t = target();
    let mut c = t.conn();
    c.send_raw(&[&((1u64 << 32) + 5).to_le_bytes()[..], b"PING\0"].concat())
        .unwrap();
    assert_eq!(decode(&c.read_reply().unwrap()), PONG);
}

#[test]
fn half_closed_client_still_gets_its_reply() {
    let t = target();
    let mut c = t.conn();
    c.send_raw(&[&10u64.to_le_bytes()[..], b"PING\0"].concat())
        .unwrap();
    c.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(decode(&c.read_reply().unwrap()), PONG);
}

#[test]
fn dual_stack_listener() {
    let t = target();
    if !t.needs_lite("starts its own racs-lite on [::]") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let srv = match racs_lite::Server::start(
        "[::]:0".parse().unwrap(),
        racs_lite::Config::new(dir.path()),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipped: no IPv6 on this host ({e})");
            return;
        }
    };
    let port = srv.local_addr().port();
    let mut c4 = RawClient::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(cmd(&mut c4, "PING"), PONG);
    if let Ok(mut c6) = RawClient::connect(("::1", port)) {
        assert_eq!(cmd(&mut c6, "PING"), PONG);
    }
    srv.stop().unwrap();
}

#[test]
fn oversized_length_closes_only_that_connection() {
    let t = target_with(|c| c.max_message_bytes = 1 << 20);
    if !t.needs_lite("max_message_bytes; a real server waits forever") {
        return;
    }
    let mut bad = t.conn();
    bad.send_raw(&(2u64 << 20).to_le_bytes()).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(bad.stream.read(&mut b), Ok(0) | Err(_)));
    let mut bad2 = t.conn();
    bad2.send_raw(&0x8000_0000u64.to_le_bytes()).unwrap();
    assert!(matches!(bad2.stream.read(&mut b), Ok(0) | Err(_)));
    assert_eq!(cmd(&mut t.conn(), "PING"), PONG);
}

#[test]
fn half_sent_message_blocks_nobody_else() {
    let t = target();
    if !t.needs_lite("a half-sent message stalls every client of a real server") {
        return;
    }
    let mut slow = t.conn();
    slow.send_raw(&[&100u64.to_le_bytes()[..], b"PI"].concat())
        .unwrap();
    let mut other = t.conn();
    assert_eq!(cmd(&mut other, "PING"), PONG);
}

#[test]
fn idle_connection_is_dropped_after_the_timeout() {
    let t = target_with(|c| c.idle_timeout = Duration::from_millis(300));
    if !t.needs_lite("idle_timeout") {
        return;
    }
    let mut c = t.conn();
    assert_eq!(cmd(&mut c, "PING"), PONG);
    let start = Instant::now();
    let mut b = [0u8; 1];
    // Blocks until the server closes (the client's read timeout is 10 s).
    assert!(matches!(c.stream.read(&mut b), Ok(0) | Err(_)));
    assert!(start.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------- section 2: language

#[test]
fn tokens_need_no_separator() {
    let t = target();
    let mut c = t.conn();
    let id = uniq("n4");
    assert_eq!(cmd(&mut c, &format!("CREATE'{id}'8000 1 16")), NULL);
    assert_eq!(info(&mut c, &id, "sample_rate"), Some(8000));
    assert_eq!(cmd(&mut c, "PING|>PING"), PONG);
    assert_eq!(cmd(&mut c, "ping"), PONG);
    assert_eq!(cmd(&mut c, "|> PING"), PONG);
}

#[test]
fn invalid_token_offsets() {
    let t = target();
    let mut c = t.conn();
    for (line, off) in [
        ("PING \"x\"", 5),
        ("PING |", 5),
        ("PING -1", 5),
        ("PING .5", 5),
        ("  PING 'abc", 7),
        ("PING #", 5),
        ("PING 2025-11-05T12:14:14:608Z", 9),
        ("PING 2025-11-05t12:14:14.608Z", 9),
        ("PING 2025-11-05T12:14:14.608z", 9),
        ("PING 2025-11-05 12:14:14.608Z", 9),
        ("PING 2025-11-05T12:14:14.608", 9),
    ] {
        assert_eq!(
            cmd(&mut c, line),
            err(&format!("Invalid token at {off}")),
            "{line}"
        );
    }
}

#[test]
fn token_types_in_wrong_places() {
    let t = target();
    let mut c = t.conn();
    let cases = [
        ("INFO foo 'x'", "Token type 'id' is not a valid argument."),
        ("'x' PING", "Token type 'string' is not a valid command."),
        ("5 PING", "Token type 'int' is not a valid command."),
        ("1.5", "Token type 'float' is not a valid command."),
        ("1.", "Token type 'float' is not a valid command."),
        (
            "2025-11-05T12:14:14.608Z",
            "Token type 'time' is not a valid command.",
        ),
        ("PING |> 7", "Token type 'int' is not a valid command."),
        ("PING 1e5", "Token type 'id' is not a valid argument."),
        // Token by token: an earlier grammar error beats a later invalid token.
        ("'x' \"y\"", "Token type 'string' is not a valid command."),
        (
            "PING 'a' foo \"y\"",
            "Token type 'id' is not a valid argument.",
        ),
        ("PING |> 7 #", "Token type 'int' is not a valid command."),
        (
            "PING |> PING |> 1.5 |",
            "Token type 'float' is not a valid command.",
        ),
    ];
    for (line, e) in cases {
        assert_eq!(cmd(&mut c, line), err(e), "{line}");
    }
}

#[test]
fn unknown_command_runs_nothing() {
    let t = target();
    let mut c = t.conn();
    let id = uniq("unk");
    assert_eq!(
        cmd(&mut c, &format!("CREATE '{id}' 8000 1 16 |> foo_bar")),
        err("Unknown command: FOO_BAR")
    );
    assert_eq!(info(&mut c, &id, "sample_rate"), None);
    assert_eq!(cmd(&mut c, "Ping |> Nope 1"), err("Unknown command: NOPE"));
    // The pipe pattern is unanchored: `|a` is a pipe because a `|>` follows somewhere.
    assert_eq!(
        cmd(&mut c, "PING |a PONG |> PING"),
        err("Unknown command: PONG")
    );
    assert_eq!(cmd(&mut c, "PING |x PING |> PING"), PONG);
    assert_eq!(cmd(&mut c, "PING |x PING"), err("Invalid token at 5"));
    // A lexer error also means nothing runs.
    let line = format!("CREATE '{id}' 8000 1 16 |> \"x\"");
    assert_eq!(
        cmd(&mut c, &line),
        err(&format!("Invalid token at {}", line.find('"').unwrap()))
    );
    assert_eq!(info(&mut c, &id, "sample_rate"), None);
}

#[test]
fn pipeline_runs_in_order_and_stops_at_first_error() {
    let t = target();
    let mut c = t.conn();
    let id = uniq("zz");
    assert_eq!(
        cmd(
            &mut c,
            &format!("CREATE '{id}' 8000 1 16 |> CREATE '{id}' 8000 1 16 |> PING")
        ),
        err("Failed to create stream")
    );
    assert_eq!(info(&mut c, &id, "sample_rate"), Some(8000));
    // The reply is the last command's result.
    assert_eq!(cmd(&mut c, &format!("EXTRACT '{id}' 0 1 |> PING")), PONG);
    assert_eq!(
        cmd(&mut c, "PING |> SEARCH 'no_such_stream_*_zz'"),
        r#"["list"]"#
    );
}

#[test]
fn trailing_or_double_pipe_is_an_error_not_a_crash() {
    let t = target();
    if !t.needs_lite("a trailing or double pipe crashes a real server") {
        return;
    }
    let mut c = t.conn();
    let e = err(racs_lite::lang::ERR_EMPTY_PIPE);
    assert_eq!(cmd(&mut c, "PING |>"), e);
    assert_eq!(cmd(&mut c, "PING |> |> PING"), e);
    assert_eq!(cmd(&mut c, "PING"), PONG);
}

#[test]
fn strings_are_raw_and_broken_strings_swallow_text() {
    let t = target();
    let mut c = t.conn();
    let tag = uniq("q");
    let id = format!(r"it\'s_{tag}");
    assert_eq!(cmd(&mut c, &format!("CREATE '{id}' 8000 1 16")), NULL);
    // The stored name holds the backslash: `?` matches it, `\'` in the glob matches `'`.
    assert_eq!(
        cmd(&mut c, &format!(r"SEARCH 'it?\'s_{tag}'")),
        format!(r#"["list", "it\\'s_{tag}"]"#)
    );
    assert_eq!(
        cmd(&mut c, r"CREATE 'a\b' 8000 1 16 'z'"),
        err("Expected 4 args, but got 3")
    );
    assert_eq!(
        cmd(&mut c, "INFO '' 'size'"),
        err("Failure reading metadata")
    );
}

#[test]
fn ints_leading_zeros_and_overflow() {
    let t = target();
    let mut c = t.conn();
    let id = uniq("int");
    assert_eq!(cmd(&mut c, &format!("CREATE '{id}' 0044100 01 016")), NULL);
    assert_eq!(info(&mut c, &id, "sample_rate"), Some(44100));
    let e2 = err("Invalid type at arg 2. Expected: int");
    for v in [
        "9223372036854775808",
        "18446744073709551615",
        "99999999999999999999999",
        "1.",
        "1.5",
    ] {
        assert_eq!(
            cmd(&mut c, &format!("CREATE '{}' {v} 1 16", uniq("x"))),
            e2,
            "{v}"
        );
    }
}

/// A stream with one 100 ms block per frame: 8000 Hz mono 16-bit, 1600-byte frames.
fn stream_100ms(c: &mut RawClient, blocks: usize) -> (String, i64) {
    let id = uniq("b100");
    create_open(c, &id, 8000, 1, 16);
    for k in 0..blocks {
        let pcm = pcm16(&vec![k as i16; 800]);
        assert_eq!(send_frame(c, &[9; 16], &id, &pcm), NULL);
    }
    let r = info(c, &id, "ref").expect("ref set by the first frame");
    (id, r)
}

/// Block numbers present in an EXTRACT result of [`stream_100ms`] (each block is 800 copies of k).
fn block_numbers(v: &[i32]) -> Vec<i32> {
    assert_eq!(v.len() % 800, 0, "whole blocks only");
    v.chunks(800)
        .map(|b| {
            assert!(b.iter().all(|x| *x == b[0]));
            b[0]
        })
        .collect()
}

#[test]
fn time_literals() {
    let t = target();
    if !t.needs_fresh("narrow ranges depend on the table layout of a shared server") {
        return;
    }
    let mut c = t.conn();
    let (id, r) = stream_100ms(&mut c, 3);
    let base = lit_secs(r);
    let ms = r.rem_euclid(1000);
    let mut ex = |a: &str, b: &str| block_numbers(&extract(&mut c, &id, a, b));
    // Exactly three digits: the block at ref.
    let l3 = format!("{base}.{ms:03}Z");
    assert_eq!(ex(&l3, &l3), vec![0]);
    // The fraction is a whole number of ms: `.5` is 5 ms, not 500.
    let l_plain = format!("{base}.{ms}Z");
    assert_eq!(ex(&l_plain, &l_plain), vec![0]);
    // An offset is ignored (treated as UTC).
    let l_off = format!("{base}.{ms:03}+05:30");
    assert_eq!(ex(&l_off, &l_off), vec![0]);
    let l_neg = format!("{base}.{ms:03}-08:00");
    assert_eq!(ex(&l_neg, &l_neg), vec![0]);
    // `.1000mmm` seconds-earlier literal: fraction of 1000+ ms still adds up.
    let early = lit_secs(r - 1000 * 1000);
    let l_big = format!("{early}.{}Z", 1_000_000 + ms);
    assert_eq!(ex(&l_big, &l_big), vec![0]);
    // No fraction means .000; the block at ref+100 is inside [secs, secs+999].
    let l_z = format!("{base}Z");
    let all = ex("0", &format!("{}", r + 10_000));
    assert_eq!(all, vec![0, 1, 2]);
    let within: Vec<i32> = (0..3)
        .filter(|k| (r + 100 * k) / 1000 == r / 1000)
        .map(|k| k as i32)
        .collect();
    assert_eq!(ex(&l_z, &format!("{base}.999Z")), within);
    // Epoch ms integers are accepted anywhere a time is.
    assert_eq!(ex(&r.to_string(), &r.to_string()), vec![0]);
    assert_eq!(
        ex(&format!("{}", r + 100), &format!("{}", r + 100)),
        vec![1]
    );
    // Pre-1970 times are negative: type error.
    assert_eq!(
        cmd(
            &mut c,
            &format!("EXTRACT '{id}' 1969-12-31T23:59:59.000Z 5")
        ),
        err("Invalid type at arg 2. Expected: time")
    );
    assert_eq!(
        cmd(
            &mut c,
            &format!("EXTRACT '{id}' 0 1969-12-31T23:59:59.000Z")
        ),
        err("Invalid type at arg 3. Expected: time")
    );
    assert_eq!(
        cmd(&mut c, &format!("EXTRACT '{id}' 0 18446744073709551615")),
        err("Invalid type at arg 3. Expected: time")
    );
    assert_eq!(
        cmd(&mut c, &format!("EXTRACT '{id}' 1.5 2")),
        err("Invalid type at arg 2. Expected: time")
    );
}

// ---------------------------------------------------------------- section 3: commands

#[test]
fn ping_args() {
    let t = target();
    let mut c = t.conn();
    assert_eq!(cmd(&mut c, "PING 1"), err("Expected 0 args, but got 1"));
    assert_eq!(cmd(&mut c, "PING 'a' 2"), err("Expected 0 args, but got 2"));
}

#[test]
fn create_errors_and_truncation() {
    let t = target();
    let mut c = t.conn();
    let id = uniq("cr");
    assert_eq!(
        cmd(&mut c, "CREATE 1 8000 1 16"),
        err("Invalid type at arg 1. Expected: string")
    );
    assert_eq!(
        cmd(&mut c, &format!("CREATE '{id}' 'x' 1 16")),
        err("Invalid type at arg 2. Expected: int")
    );
    assert_eq!(
        cmd(&mut c, &format!("CREATE '{id}' 8000 1.0 16")),
        err("Invalid type at arg 3. Expected: int")
    );
    assert_eq!(
        cmd(&mut c, &format!("CREATE '{id}' 8000 1")),
        err("Expected 4 args, but got 3")
    );
    assert_eq!(cmd(&mut c, "CREATE"), err("Expected 4 args, but got 0"));
    assert_eq!(
        cmd(&mut c, &format!("CREATE '{id}' 4294967297 65537 65560")),
        NULL
    );
    assert_eq!(info(&mut c, &id, "sample_rate"), Some(1));
    assert_eq!(info(&mut c, &id, "channels"), Some(1));
    assert_eq!(info(&mut c, &id, "bit_depth"), Some(24));
    assert_eq!(
        cmd(&mut c, &format!("CREATE '{id}' 8000 1 16")),
        err("Failed to create stream")
    );
    let z = uniq("zero");
    assert_eq!(cmd(&mut c, &format!("CREATE '{z}' 0 0 0")), NULL);
    for a in ["sample_rate", "channels", "bit_depth", "size", "ref"] {
        assert_eq!(info(&mut c, &z, a), None, "{a}");
    }
    // A time literal is an int: its ms value, cut to the field's width.
    let tl = uniq("tlit");
    assert_eq!(
        cmd(
            &mut c,
            &format!("CREATE '{tl}' 2025-10-18T12:00:00Z 1 2025-01-01T00:00:00.016Z")
        ),
        NULL
    );
    assert_eq!(
        info(&mut c, &tl, "sample_rate"),
        Some(1_760_788_800_000u64 as u32 as i64)
    );
    assert_eq!(
        info(&mut c, &tl, "bit_depth"),
        Some(1_735_689_600_016u64 as u16 as i64)
    );
    let u = uniq("utf8 é *");
    assert_eq!(cmd(&mut c, &format!("CREATE '{u}' 48000 2 32")), NULL);
    assert_eq!(info(&mut c, &u, "bit_depth"), Some(32));
}

#[test]
fn open_close_rules() {
    let t = target();
    let mut c = t.conn();
    let mut other = t.conn();
    let id = uniq("oc");
    // OPEN does not check existence.
    assert_eq!(cmd(&mut c, &format!("OPEN '{id}'")), NULL);
    assert_eq!(
        cmd(&mut c, &format!("OPEN '{id}'")),
        err("Stream is already open")
    );
    // Open state is global: another connection sees it and may CLOSE it.
    assert_eq!(
        cmd(&mut other, &format!("OPEN '{id}'")),
        err("Stream is already open")
    );
    assert_eq!(cmd(&mut other, &format!("CLOSE '{id}'")), NULL);
    assert_eq!(
        cmd(&mut c, &format!("CLOSE '{id}'")),
        err("Stream is not open")
    );
    assert_eq!(
        cmd(&mut c, "OPEN 1"),
        err("Invalid type at arg 1. Expected string")
    );
    assert_eq!(
        cmd(&mut c, "CLOSE 1"),
        err("Invalid type at arg 1. Expected string")
    );
    // Open state survives the disconnect of the connection that opened it.
    assert_eq!(cmd(&mut c, &format!("OPEN '{id}'")), NULL);
    drop(c);
    assert_eq!(
        cmd(&mut other, &format!("OPEN '{id}'")),
        err("Stream is already open")
    );
}

#[test]
fn info_attributes_and_zero_values() {
    let t = target();
    let mut c = t.conn();
    let id = uniq("inf");
    assert_eq!(cmd(&mut c, &format!("CREATE '{id}' 44100 2 16")), NULL);
    assert_eq!(info(&mut c, &id, "sample_rate"), Some(44100));
    assert_eq!(info(&mut c, &id, "channels"), Some(2));
    assert_eq!(info(&mut c, &id, "bit_depth"), Some(16));
    assert_eq!(info(&mut c, &id, "size"), None);
    assert_eq!(info(&mut c, &id, "ref"), None);
    assert_eq!(info(&mut c, &id, "SAMPLE_RATE"), None);
    assert_eq!(info(&mut c, &id, "ttl"), None);
    assert_eq!(info(&mut c, &uniq("missing"), "sample_rate"), None);
    assert_eq!(
        cmd(&mut c, "INFO 1 'size'"),
        err("Invalid type at arg 1. Expected string")
    );
    assert_eq!(
        cmd(&mut c, &format!("INFO '{id}' 2")),
        err("Invalid type at arg 2. Expected string")
    );
    let before = racs_lite::timefmt::now_ms();
    assert_eq!(cmd(&mut c, &format!("OPEN '{id}'")), NULL);
    assert_eq!(
        send_frame(&mut c, &[1; 16], &id, &pcm16(&[1, 2, 3, 4])),
        NULL
    );
    assert_eq!(info(&mut c, &id, "size"), Some(8));
    let r = info(&mut c, &id, "ref").unwrap();
    assert!(
        r >= before - 5_000 && r <= racs_lite::timefmt::now_ms() + 5_000,
        "ref {r}"
    );
    // Exact bytes of the INFO reply on a 44100 Hz stream.
    assert_eq!(
        c.command_raw(&format!("INFO '{id}' 'sample_rate'"))
            .unwrap(),
        hex("92a3696e74cdac44")
    );
}

#[test]
fn search_globs() {
    let t = target();
    let mut c = t.conn();
    let p = uniq("S");
    let names = [
        "Alpha",
        "Bravo",
        "bravo",
        "*star",
        "[x",
        "Charlie",
        "studio/mic1",
        "studio/sub/mic2",
    ]
    .map(|n| format!("{p}_{n}"));
    for n in &names {
        assert_eq!(cmd(&mut c, &format!("CREATE '{n}' 8000 1 16")), NULL);
    }
    // Results come in the order of the metadata file names: decimal hashes sorted as strings.
    let expect = |sel: &[usize]| {
        let mut v: Vec<&String> = sel.iter().map(|i| &names[*i]).collect();
        v.sort_by_key(|n| racs_lite::stream_hash(n.as_bytes()).to_string());
        let mut s = String::from(r#"["list""#);
        for n in v {
            s.push_str(&format!(", \"{n}\""));
        }
        s.push(']');
        s
    };
    let cases: &[(&str, &[usize])] = &[
        // fnmatch with FNM_PATHNAME: no wildcard or bracket matches `/`.
        ("*", &[0, 1, 2, 3, 4, 5]),
        ("studio*", &[]),
        ("studio?mic1", &[]),
        ("studio[/]mic1", &[]),
        ("studio/*", &[6]),
        ("*/*/*", &[7]),
        ("studio/mic?", &[6]),
        ("B*", &[1]),
        ("?ravo", &[1, 2]),
        ("[ab]ravo", &[2]),
        ("[!b]ravo", &[1]),
        ("[*]star", &[3]),
        ("[[]x", &[4]),
        ("[A-C]*", &[0, 1, 5]),
        ("nothing", &[]),
    ];
    for (pat, sel) in cases {
        assert_eq!(
            cmd(&mut c, &format!("SEARCH '{p}_{pat}'")),
            expect(sel),
            "{pat}"
        );
    }
    assert_eq!(
        cmd(&mut c, "SEARCH 1"),
        err("Invalid type at arg 1. Expected string")
    );
}

#[test]
fn extract_errors() {
    let t = target();
    let mut c = t.conn();
    assert_eq!(
        cmd(&mut c, "EXTRACT 1 0 1"),
        err("Invalid type at arg 1. Expected: string")
    );
    assert_eq!(
        cmd(&mut c, &format!("EXTRACT '{}' 0 1", uniq("none"))),
        err("The stream-id does not exist")
    );
    let id = uniq("ee");
    assert_eq!(cmd(&mut c, &format!("CREATE '{id}' 8000 1 16")), NULL);
    assert_eq!(
        cmd(&mut c, &format!("EXTRACT '{id}' 'a' 1")),
        err("Invalid type at arg 2. Expected: time")
    );
    assert_eq!(
        cmd(&mut c, &format!("EXTRACT '{id}' 0 'b'")),
        err("Invalid type at arg 3. Expected: time")
    );
    // No data, or from > to: an empty s32v.
    assert_eq!(
        c.command_raw(&format!("EXTRACT '{id}' 0 99999999999999"))
            .unwrap(),
        hex("92a4733332 76c400")
    );
    assert_eq!(
        c.command_raw(&format!("EXTRACT '{id}' 5 4")).unwrap(),
        hex("92a4733332 76c400")
    );
}

#[test]
fn extract_inclusive_whole_blocks() {
    let t = target();
    if !t.needs_fresh("narrow ranges depend on the table layout of a shared server") {
        return;
    }
    let mut c = t.conn();
    let (id, r) = stream_100ms(&mut c, 5);
    let mut ex =
        |a: i64, b: i64| block_numbers(&extract(&mut c, &id, &a.to_string(), &b.to_string()));
    assert_eq!(ex(r, r), vec![0]);
    assert_eq!(ex(r + 1, r + 99), Vec::<i32>::new());
    assert_eq!(ex(r + 1, r + 100), vec![1]);
    assert_eq!(ex(r + 100, r + 300), vec![1, 2, 3]);
    assert_eq!(ex(r, r + 400), vec![0, 1, 2, 3, 4]);
    assert_eq!(ex(0, r + 1_000_000), vec![0, 1, 2, 3, 4]);
    assert_eq!(ex(r + 401, r + 1_000_000), Vec::<i32>::new());
}

#[test]
fn block_timestamps_for_several_frame_sizes() {
    let t = target();
    if !t.needs_fresh("narrow ranges depend on the table layout of a shared server") {
        return;
    }
    let mut c = t.conn();
    // 44.1 kHz stereo 16-bit = 176400 B/s; 24-bit mono 48 kHz = 144000 B/s.
    for (sr, ch, bd, frame) in [
        (44100u32, 2u16, 16u16, 1000usize),
        (44100, 2, 16, 17640),
        (48000, 1, 24, 1500),
        (8000, 1, 16, 6),
    ] {
        let id = uniq("ts");
        create_open(&mut c, &id, sr, ch, bd);
        let bps = ch as u64 * sr as u64 * bd as u64 / 8;
        let n = 12usize;
        let sample_bytes = (bd / 8) as usize;
        for k in 0..n {
            let mut pcm = vec![0u8; frame];
            // Mark each sample with the block number (low byte), sign-extension stays positive.
            for s in pcm.chunks_mut(sample_bytes) {
                s[0] = k as u8 + 1;
            }
            assert_eq!(send_frame(&mut c, &[3; 16], &id, &pcm), NULL);
        }
        let r = info(&mut c, &id, "ref").unwrap();
        let key = |k: usize| r + ((k * frame) as f64 / bps as f64 * 1000.0) as i64;
        let per_block = frame / (ch as usize * sample_bytes) * ch as usize;
        // A table may be being written (invisible) right after the writes.
        assert_eq!(
            wait_visible(&mut c, &id, per_block * n).len(),
            per_block * n
        );
        for k in 0..n {
            let t0 = key(k);
            // from = 0 reads every table (no name-time miss); the upper bound selects by key.
            let got = extract(&mut c, &id, "0", &t0.to_string());
            let upto: Vec<usize> = (0..n).filter(|j| key(*j) <= t0).collect();
            assert_eq!(
                got.len(),
                per_block * upto.len(),
                "sr {sr} frame {frame} block {k}"
            );
            for (i, j) in upto.iter().enumerate() {
                assert!(got[i * per_block..(i + 1) * per_block]
                    .iter()
                    .all(|v| *v == *j as i32 + 1));
            }
            // And the lower bound: [t0, far future] starts with the first block keyed t0.
            if t.fresh {
                let got = extract(&mut c, &id, &t0.to_string(), "99999999999999");
                let from: Vec<usize> = (0..n).filter(|j| key(*j) >= t0).collect();
                assert!(got.len() <= per_block * from.len());
            }
        }
    }
}

#[test]
fn tiny_frames_share_a_key_and_sign_extension() {
    let t = target();
    let mut c = t.conn();
    let id = uniq("tiny");
    create_open(&mut c, &id, 44100, 2, 16);
    for k in 0..30i16 {
        assert_eq!(send_frame(&mut c, &[4; 16], &id, &pcm16(&[k, -k])), NULL);
    }
    let r = info(&mut c, &id, "ref").unwrap();
    let expect: Vec<i32> = (0..30).flat_map(|k| [k, -k]).collect();
    // On a shared server another stream may have started the in-memory table earlier, and
    // then [ref, ref] misses it (the name-time filter): only [0, ref] is sure.
    // On a shared server the table may even be named after another stream's later key: only
    // [0, far future] is sure there. And a table holding some of them may be being written
    // (invisible) for a while.
    let (from, to) = if t.fresh {
        (r, r)
    } else {
        (0, 99_999_999_999_999)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = extract(&mut c, &id, &from.to_string(), &to.to_string());
        if v.len() >= expect.len() || Instant::now() >= deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(v, expect);
    // 24-bit samples are sign-extended, not scaled; a partial trailing sample-frame is dropped.
    let id24 = uniq("s24");
    create_open(&mut c, &id24, 8000, 1, 24);
    assert_eq!(
        send_frame(
            &mut c,
            &[5; 16],
            &id24,
            &hex("ffff7f 000080 ffffff 010000 aabb")
        ),
        NULL
    );
    assert_eq!(info(&mut c, &id24, "size"), Some(14));
    assert_eq!(
        extract(&mut c, &id24, "0", "99999999999999"),
        vec![8388607, -8388608, -1, 1]
    );
    let id16 = uniq("odd");
    create_open(&mut c, &id16, 8000, 2, 16);
    assert_eq!(
        send_frame(&mut c, &[6; 16], &id16, &hex("0100 0200 0300")),
        NULL
    );
    assert_eq!(extract(&mut c, &id16, "0", "99999999999999"), vec![1, 2]);
}

#[test]
fn name_time_filter_misses_blocks_in_an_earlier_table() {
    // entries = 40 like the real server's default; a fresh server has an empty table.
    let t = target();
    let mut c = t.conn();
    let other = uniq("other");
    create_open(&mut c, &other, 8000, 1, 16);
    assert_eq!(
        send_frame(&mut c, &[7; 16], &other, &pcm16(&[0; 800])),
        NULL
    );
    // Make sure `ord` starts at a later ms than `other`'s block.
    let t_other = info(&mut c, &other, "ref").unwrap();
    while racs_lite::timefmt::now_ms() <= t_other {
        std::thread::yield_now();
    }
    let (id, r) = stream_100ms(&mut c, 60);
    // The first table is being written (invisible) right after the writes.
    let all = block_numbers(&wait_visible(&mut c, &id, 60 * 800));
    assert_eq!(all, (0..60).collect::<Vec<_>>(), "from=0 sees every table");
    let narrow = block_numbers(&extract(
        &mut c,
        &id,
        &(r + 100).to_string(),
        &(r + 10_000).to_string(),
    ));
    let window = block_numbers(&extract(
        &mut c,
        &id,
        &(r + 600).to_string(),
        &(r + 750).to_string(),
    ));
    if t.fresh {
        // Table 1 = [other's block, ord 0..=38], named after other's key (< r): skipped.
        // Table 2 starts at ord 39 (in memory): read.
        assert_eq!(narrow, (39..60).collect::<Vec<_>>());
        assert_eq!(
            window,
            Vec::<i32>::new(),
            "blocks 6-7 exist but their table is named earlier"
        );
        // A range that includes the table's name-time finds them.
        let wide = block_numbers(&extract(
            &mut c,
            &id,
            &t_other.to_string(),
            &(r + 750).to_string(),
        ));
        assert_eq!(wide, (0..=7).collect::<Vec<_>>());
    } else {
        // On a shared real server the table layout is unknown: only check the subset rule.
        assert!(narrow.iter().all(|b| (1..=59).contains(b)));
        assert!(window.iter().all(|b| (6..=7).contains(b)));
    }
}

#[test]
fn format_wav_bytes_and_errors() {
    let t = target();
    let mut c = t.conn();
    let id = uniq("fmt");
    create_open(&mut c, &id, 8000, 1, 16);
    assert_eq!(
        send_frame(&mut c, &[8; 16], &id, &pcm16(&[1, -2, 300, -32768, 32767])),
        NULL
    );
    let ex = format!("EXTRACT '{id}' 0 99999999999999");
    let wav = |sr: u32, ch: u16, bd: u16, data: &[u8]| {
        let mut w = b"RIFF".to_vec();
        w.extend_from_slice(&(data.len() as u32 + 36).to_le_bytes());
        w.extend_from_slice(b"WAVEfmt ");
        w.extend_from_slice(&16u32.to_le_bytes());
        w.extend_from_slice(&1u16.to_le_bytes());
        w.extend_from_slice(&ch.to_le_bytes());
        w.extend_from_slice(&sr.to_le_bytes());
        w.extend_from_slice(&(sr * ch as u32 * bd as u32 / 8).to_le_bytes());
        w.extend_from_slice(&(ch * bd / 8).to_le_bytes());
        w.extend_from_slice(&bd.to_le_bytes());
        w.extend_from_slice(b"data");
        w.extend_from_slice(&(data.len() as u32).to_le_bytes());
        w.extend_from_slice(data);
        w
    };
    let r = c
        .command(&format!("{ex} |> FORMAT 'audio/wav' 8000 1 16"))
        .unwrap();
    assert_eq!(r[0].as_array().unwrap()[0].as_str(), Some("u8v"));
    assert_eq!(
        bin_of(&r[0]),
        wav(8000, 1, 16, &pcm16(&[1, -2, 300, -32768, 32767]))
    );
    // 24-bit keeps the low 24 bits of each int32.
    let r = c
        .command(&format!("{ex} |> FORMAT 'audio/wav' 22050 1 24"))
        .unwrap();
    assert_eq!(
        bin_of(&r[0]),
        wav(22050, 1, 24, &hex("010000 feffff 2c0100 0080ff ff7f00"))
    );
    // The output parameters are the args: 2 channels → 5/2 = 2 sample-frames.
    let r = c
        .command(&format!("{ex} |> FORMAT 'audio/wav' 8000 2 16"))
        .unwrap();
    assert_eq!(
        bin_of(&r[0]),
        wav(8000, 2, 16, &pcm16(&[1, -2, 300, -32768]))
    );
    // Empty input: just the header.
    let r = c
        .command(&format!(
            "EXTRACT '{id}' 5 4 |> FORMAT 'audio/wav' 8000 1 16"
        ))
        .unwrap();
    assert_eq!(bin_of(&r[0]), wav(8000, 1, 16, &[]));
    // Errors.
    assert_eq!(
        cmd(&mut c, &format!("{ex} |> FORMAT 'AUDIO/WAV' 8000 1 16")),
        err("Unsupported format")
    );
    assert_eq!(
        cmd(&mut c, &format!("{ex} |> FORMAT 'audio/flac' 8000 1 16")),
        err("Unsupported format")
    );
    assert_eq!(
        cmd(&mut c, &format!("{ex} |> FORMAT 'audio/wav' 8000 1 8")),
        err("Unsupported format")
    );
    assert_eq!(
        cmd(&mut c, &format!("{ex} |> FORMAT 1 8000 1 16")),
        err("Invalid type at arg 1. Expected: string")
    );
    assert_eq!(
        cmd(&mut c, &format!("{ex} |> FORMAT 'audio/wav' 'x' 1 16")),
        err("Invalid type at arg 2. Expected: int")
    );
    assert_eq!(
        cmd(&mut c, &format!("{ex} |> FORMAT 'audio/wav' 8000 1.5 16")),
        err("Invalid type at arg 3. Expected: int")
    );
    assert_eq!(
        cmd(&mut c, &format!("{ex} |> FORMAT 'audio/wav' 8000 1 'x'")),
        err("Invalid type at arg 3. Expected: int")
    );
    assert_eq!(
        cmd(&mut c, "PING |> FORMAT 'audio/wav' 8000 1 16"),
        err("Invalid input type. Expected: int32 array")
    );
    // A wrong arg count is appended after the previous s32v: two objects.
    let r = c
        .command(&format!("{ex} |> FORMAT 'audio/wav' 8000 1"))
        .unwrap();
    assert_eq!(r.len(), 2, "{}", show(&r));
    assert_eq!(ints(&bin_of(&r[0])), vec![1, -2, 300, -32768, 32767]);
    assert_eq!(show(&r[1..]), err("Expected 4 args, but got 3"));
}

#[test]
fn format_crash_cases_are_errors() {
    let t = target();
    if !t.needs_lite("these requests crash a real server") {
        return;
    }
    let mut c = t.conn();
    let id = uniq("fmtx");
    create_open(&mut c, &id, 8000, 1, 16);
    assert_eq!(send_frame(&mut c, &[8; 16], &id, &pcm16(&[1; 10])), NULL);
    let ex = format!("EXTRACT '{id}' 0 99999999999999");
    assert_eq!(
        cmd(&mut c, "FORMAT 'audio/wav' 8000 1 16"),
        err("Invalid input type. Expected: int32 array")
    );
    assert_eq!(
        cmd(&mut c, &format!("{ex} |> FORMAT 'audio/wav' 8000 0 16")),
        err(racs_lite::exec::ERR_FORMAT_CHANNELS)
    );
    for mime in ["audio/mp3", "audio/mpeg", "audio/ogg"] {
        assert_eq!(
            cmd(&mut c, &format!("{ex} |> FORMAT '{mime}' 8000 1 16")),
            err("Unsupported format")
        );
    }
    // EXTRACT on 8/32-bit streams with data.
    for bd in [8, 32] {
        let s = uniq("bd");
        create_open(&mut c, &s, 8000, 1, bd);
        assert_eq!(send_frame(&mut c, &[8; 16], &s, &[1, 2, 3, 4]), NULL);
        assert_eq!(
            cmd(&mut c, &format!("EXTRACT '{s}' 0 99999999999999")),
            err(racs_lite::storage::ERR_EXTRACT_FORMAT)
        );
    }
    assert_eq!(cmd(&mut c, "PING"), PONG);
}

#[test]
fn eval_is_broken_like_the_real_server() {
    let t = target();
    let mut c = t.conn();
    let e = err(racs_lite::exec::ERR_EVAL);
    assert_eq!(cmd(&mut c, "EVAL '(+ 1 2)'"), e);
    // The argument count is checked first, then the type.
    assert_eq!(cmd(&mut c, "EVAL"), err("Expected 1 args, but got 0"));
    assert_eq!(cmd(&mut c, "EVAL 'a' 2"), err("Expected 1 args, but got 2"));
    assert_eq!(
        cmd(&mut c, "EVAL 1"),
        err("Invalid type at arg 1. Expected string")
    );
    assert_eq!(
        cmd(&mut c, "EVAL 2025-01-01T00:00:00Z"),
        err("Invalid type at arg 1. Expected string")
    );
}

// ---------------------------------------------------------------- section 5: frames

#[test]
fn frame_test_vector() {
    let t = target();
    let mut c = t.conn();
    let r = cmd(&mut c, "CREATE 'chopin' 44100 2 16");
    assert!(r == NULL || r == err("Failed to create stream"), "{r}");
    let _ = cmd(&mut c, "CLOSE 'chopin'");
    assert_eq!(cmd(&mut c, "OPEN 'chopin'"), NULL);
    assert_eq!(
        c.command_raw("OPEN 'chopin'").unwrap(),
        [hex("92a56572726f72b6"), b"Stream is already open".to_vec()].concat()
    );
    let frame = hex("2a00000000000000 727370 0102030405060708090a0b0c0d0e0f10 45dd41503090e933 7b9586db 0800 00 0000e80318fcff7f");
    c.send_raw(&frame).unwrap();
    assert_eq!(c.read_reply().unwrap(), hex("91a46e756c6c"));
    assert_eq!(cmd(&mut c, "CLOSE 'chopin'"), NULL);
}

#[test]
fn frame_checks_in_order() {
    let t = target();
    let mut c = t.conn();
    let id = uniq("fr");
    let s1 = [1u8; 16];
    let pcm = pcm16(&[1, 2]);
    // Not created, not open: the CRC is checked first.
    let mut bad = build_frame(&s1, id.as_bytes(), &pcm);
    bad[27] ^= 1;
    assert_eq!(show(&c.frame(&bad).unwrap()), err("Malformed rsp frame."));
    // block_size larger than the payload.
    let mut long = build_frame(&s1, id.as_bytes(), &pcm);
    long[31] = 200;
    assert_eq!(show(&c.frame(&long).unwrap()), err("Malformed rsp frame."));
    assert_eq!(
        send_frame(&mut c, &s1, &id, &pcm),
        err("Stream is closed or currently in use.")
    );
    assert_eq!(cmd(&mut c, &format!("OPEN '{id}'")), NULL);
    assert_eq!(
        send_frame(&mut c, &s1, &id, &pcm),
        err("Invalid sample rate.")
    );
    assert_eq!(cmd(&mut c, &format!("CREATE '{id}' 8000 1 16")), NULL);
    assert_eq!(send_frame(&mut c, &s1, &id, &pcm), NULL);
    // Extra trailing bytes after block_size are ignored; flags are ignored.
    let mut extra = build_frame(&s1, id.as_bytes(), &pcm);
    extra.extend_from_slice(b"trailing junk");
    extra[33] = 0xff;
    assert_eq!(show(&c.frame(&extra).unwrap()), NULL);
    let mut f1 = build_frame(&s1, id.as_bytes(), &pcm);
    f1[33] = 1;
    assert_eq!(show(&c.frame(&f1).unwrap()), NULL);
    // No alignment check; empty frames are stored.
    assert_eq!(send_frame(&mut c, &s1, &id, &[9, 9, 9]), NULL);
    assert_eq!(send_frame(&mut c, &s1, &id, &[]), NULL);
    assert_eq!(info(&mut c, &id, "size"), Some(4 * 3 + 3));
    // A 65536-byte payload wraps block_size to 0: an empty block.
    let mut wrap = build_frame(&s1, id.as_bytes(), &[]);
    wrap.resize(34 + 65536, 0);
    assert_eq!(show(&c.frame(&wrap).unwrap()), NULL);
    assert_eq!(info(&mut c, &id, "size"), Some(15));
    assert_eq!(
        extract(&mut c, &id, "0", "99999999999999"),
        vec![1, 2, 1, 2, 1, 2, 2313]
    );
}

#[test]
fn sessions_bind_and_zero_never_binds() {
    let t = target();
    let mut c = t.conn();
    let mut c2 = t.conn();
    let id = uniq("sess");
    create_open(&mut c, &id, 8000, 1, 16);
    let (z, s1, s2) = ([0u8; 16], [1u8; 16], [2u8; 16]);
    let pcm = pcm16(&[5]);
    let closed = err("Stream is closed or currently in use.");
    // Zero session never binds: anyone can take over.
    assert_eq!(send_frame(&mut c, &z, &id, &pcm), NULL);
    assert_eq!(send_frame(&mut c, &z, &id, &pcm), NULL);
    assert_eq!(send_frame(&mut c2, &s1, &id, &pcm), NULL);
    // Now bound to s1, from any connection; s2 and zero are rejected.
    assert_eq!(send_frame(&mut c, &s1, &id, &pcm), NULL);
    assert_eq!(send_frame(&mut c, &s2, &id, &pcm), closed);
    assert_eq!(send_frame(&mut c2, &z, &id, &pcm), closed);
    // CLOSE then OPEN takes over.
    assert_eq!(cmd(&mut c2, &format!("CLOSE '{id}'")), NULL);
    assert_eq!(send_frame(&mut c, &s1, &id, &pcm), closed);
    assert_eq!(cmd(&mut c2, &format!("OPEN '{id}'")), NULL);
    assert_eq!(send_frame(&mut c2, &s2, &id, &pcm), NULL);
    assert_eq!(send_frame(&mut c, &s1, &id, &pcm), closed);
    assert_eq!(info(&mut c, &id, "size"), Some(10));
}

#[test]
fn empty_first_frame_sets_ref() {
    let t = target();
    let mut c = t.conn();
    let id = uniq("emp");
    create_open(&mut c, &id, 8000, 1, 16);
    assert_eq!(send_frame(&mut c, &[1; 16], &id, &[]), NULL);
    let r = info(&mut c, &id, "ref").expect("an empty frame sets ref");
    assert_eq!(info(&mut c, &id, "size"), None);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(send_frame(&mut c, &[1; 16], &id, &pcm16(&[7])), NULL);
    assert_eq!(info(&mut c, &id, "ref"), Some(r));
    assert_eq!(
        extract(&mut c, &id, &r.to_string(), &r.to_string()),
        vec![7]
    );
}

#[test]
fn bytes_after_a_frame_in_the_same_read_are_discarded() {
    let t = target();
    let mut c = t.conn();
    let id = uniq("disc");
    create_open(&mut c, &id, 8000, 1, 16);
    let f = build_frame(&[1; 16], id.as_bytes(), &pcm16(&[1, 2]));
    let mut two = Vec::new();
    for _ in 0..2 {
        two.extend_from_slice(&(f.len() as u64).to_le_bytes());
        two.extend_from_slice(&f);
    }
    c.stream.write_all(&two).unwrap();
    assert_eq!(decode(&c.read_reply().unwrap()), NULL);
    assert_eq!(info(&mut c, &id, "size"), Some(4));
}

#[test]
fn wav_block_align_is_cut_to_16_bits_before_byte_rate() {
    let t = target();
    let mut c = t.conn();
    let id = uniq("wba");
    assert_eq!(cmd(&mut c, &format!("CREATE '{id}' 8000 1 16")), NULL);
    // 40000 channels of 16 bits: block_align 80000 is stored as 14464, and byte_rate is
    // computed from the cut value: 8000 * 14464.
    let r = c
        .command(&format!(
            "EXTRACT '{id}' 0 1 |> FORMAT 'audio/wav' 8000 40000 16"
        ))
        .unwrap();
    let w = bin_of(&r[0]);
    assert_eq!(w.len(), 44);
    assert_eq!(u16::from_le_bytes([w[22], w[23]]), 40000);
    assert_eq!(
        u32::from_le_bytes(w[28..32].try_into().unwrap()),
        8000 * 14464
    );
    assert_eq!(u16::from_le_bytes([w[32], w[33]]), 14464);
    // 24-bit: 3000 channels give block_align 9000, no cut.
    let r = c
        .command(&format!(
            "EXTRACT '{id}' 0 1 |> FORMAT 'audio/wav' 48000 3000 24"
        ))
        .unwrap();
    let w = bin_of(&r[0]);
    assert_eq!(
        u32::from_le_bytes(w[28..32].try_into().unwrap()),
        48000 * 9000
    );
    assert_eq!(u16::from_le_bytes([w[32], w[33]]), 9000);
}

#[test]
fn streams_of_zero_bytes_per_second_store_blocks_but_extract_nothing() {
    let t = target();
    if !t.needs_fresh("a block of such a stream can make a whole table unreadable") {
        return;
    }
    let mut c = t.conn();
    // sample_rate 0, and bit_depth 4 (bd / 8 = 0): ch * sr * (bd / 8) is 0.
    for (sr, ch, bd) in [(0u32, 1u16, 16u16), (8000, 1, 4)] {
        let id = uniq("zbps");
        create_open(&mut c, &id, sr, ch, bd);
        for _ in 0..3 {
            assert_eq!(send_frame(&mut c, &[2; 16], &id, &pcm16(&[1, 2])), NULL);
        }
        assert_eq!(info(&mut c, &id, "size"), Some(12), "{sr} {ch} {bd}");
        assert!(info(&mut c, &id, "ref").is_some());
        assert_eq!(
            c.command_raw(&format!("EXTRACT '{id}' 0 9223372036854775807"))
                .unwrap(),
            hex("92a4733332 76c400"),
            "{sr} {ch} {bd}"
        );
    }
    assert_eq!(cmd(&mut c, "PING"), PONG);
}
