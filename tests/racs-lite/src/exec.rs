// SPDX-License-Identifier: MPL-2.0
//! Command execution and frame handling (contract sections 2, 3 and 5).

use std::sync::{Mutex, MutexGuard};

use crate::lang::{parse, Arg, Command, Parsed};
use crate::pack::Value;
use crate::storage::{stream_hash, Store};
use crate::timefmt::now_ms;

/// What to send back for one request.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Reply with these objects concatenated; an empty list is an N=0 reply.
    Reply(Vec<Value>),
    /// SHUTDOWN: no reply, close the connection, stop the server cleanly.
    Shutdown,
}

pub const KNOWN_COMMANDS: &[&str] = &[
    "PING", "CREATE", "OPEN", "CLOSE", "INFO", "SEARCH", "EXTRACT", "FORMAT", "EVAL", "SHUTDOWN",
];

pub const ERR_MALFORMED: &str = "Malformed rsp frame.";
pub const ERR_CLOSED: &str = "Stream is closed or currently in use.";
pub const ERR_NO_META: &str = "Invalid sample rate.";
pub const ERR_EVAL: &str = "(resolve-interface no binding `~A' in module ~A (ls (racs)) #f)";
pub const ERR_FORMAT_INPUT: &str = "Invalid input type. Expected: int32 array";
/// racs-lite only: FORMAT with 0 channels (SIGFPE on the real server).
pub const ERR_FORMAT_CHANNELS: &str = "Invalid channel count: 0";

fn lock(m: &Mutex<Store>) -> MutexGuard<'_, Store> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Handle one request payload (everything read for this message, after the prefix).
pub fn handle_payload(store: &Mutex<Store>, payload: &[u8]) -> Outcome {
    if payload.starts_with(b"rsp") {
        return Outcome::Reply(vec![handle_frame(store, payload)]);
    }
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len());
    run_line(store, &payload[..end])
}

/// Decoded fixed header of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameHeader<'a> {
    pub session: [u8; 16],
    pub hash: u64,
    pub crc: u32,
    pub block: &'a [u8],
}

/// Decode and CRC-check a frame payload (starting with `rsp`).
pub fn decode_frame(p: &[u8]) -> Result<FrameHeader<'_>, &'static str> {
    if p.len() < 34 || &p[..3] != b"rsp" {
        return Err(ERR_MALFORMED);
    }
    let session: [u8; 16] = p[3..19].try_into().map_err(|_| ERR_MALFORMED)?;
    let hash = u64::from_le_bytes(p[19..27].try_into().map_err(|_| ERR_MALFORMED)?);
    let crc = u32::from_le_bytes(p[27..31].try_into().map_err(|_| ERR_MALFORMED)?);
    let bs = u16::from_le_bytes([p[31], p[32]]) as usize;
    let block = p.get(34..34 + bs).ok_or(ERR_MALFORMED)?;
    if crc32c::crc32c(block) != crc {
        return Err(ERR_MALFORMED);
    }
    Ok(FrameHeader {
        session,
        hash,
        crc,
        block,
    })
}

/// The key of a block appended at `size` bytes into a stream, like the real server's
/// `racs_streaminfo_offset`: `ref + trunc(size / bps * 1000)` in doubles, where
/// `bps = ch * sr * (bd / 8)` is computed in 32-bit unsigned arithmetic. With 0 bytes per
/// second the quotient is infinite or NaN, which x86-64 converts to `i64::MIN`: such blocks get
/// keys no EXTRACT range reaches.
pub fn block_key(ref_ms: i64, size: u64, sr: u32, ch: u16, bd: u16) -> u64 {
    let bps = (ch as u32).wrapping_mul(sr).wrapping_mul((bd / 8) as u32);
    let ms = size as f64 / bps as f64 * 1000.0;
    let off = if ms.is_finite() && ms < 9.223372036854775e18 {
        ms as i64
    } else {
        i64::MIN
    };
    off.wrapping_add(ref_ms) as u64
}

fn handle_frame(store: &Mutex<Store>, p: &[u8]) -> Value {
    let f = match decode_frame(p) {
        Ok(f) => f,
        Err(e) => return Value::error(e),
    };
    let mut st = lock(store);
    let st = &mut *st;
    match st.open.get(&f.hash) {
        Some(s) if *s == [0u8; 16] || *s == f.session => {}
        _ => return Value::error(ERR_CLOSED),
    }
    let Some(m) = st.meta(f.hash) else {
        return Value::error(ERR_NO_META);
    };
    if m.ref_ms == 0 && m.size == 0 {
        m.ref_ms = now_ms();
    }
    let ts = block_key(m.ref_ms, m.size, m.sr, m.ch, m.bd);
    m.size = m.size.wrapping_add(f.block.len() as u64);
    st.open.insert(f.hash, f.session);
    st.append(f.hash, ts, f.crc, f.block);
    Value::Null
}

/// Parse and run one command line (already cut at its NUL).
pub fn run_line(store: &Mutex<Store>, line: &[u8]) -> Outcome {
    let cmds = match parse(line) {
        Parsed::Empty => return Outcome::Reply(Vec::new()),
        Parsed::Error(e) => return Outcome::Reply(vec![Value::error(e)]),
        Parsed::Pipeline(c) => c,
    };
    if let Some(c) = cmds
        .iter()
        .find(|c| !KNOWN_COMMANDS.contains(&c.name.as_str()))
    {
        return Outcome::Reply(vec![Value::error(format!("Unknown command: {}", c.name))]);
    }
    let mut out: Vec<Value> = Vec::new();
    for c in &cmds {
        match c.name.as_str() {
            "SHUTDOWN" => return Outcome::Shutdown,
            "FORMAT" => match format(&out, &c.args) {
                Ok(v) => out = vec![v],
                Err(FormatError::ArgCount(e)) => {
                    out.push(Value::error(e));
                    break;
                }
                Err(FormatError::Other(e)) => {
                    out = vec![Value::error(e)];
                    break;
                }
            },
            _ => match run(store, c) {
                Ok(v) => out = vec![v],
                Err(e) => {
                    out = vec![Value::error(e)];
                    break;
                }
            },
        }
    }
    Outcome::Reply(out)
}

fn count(args: &[Arg], n: usize) -> Result<(), String> {
    if args.len() == n {
        Ok(())
    } else {
        Err(format!("Expected {n} args, but got {}", args.len()))
    }
}

/// String arg `i` (0-based); `colon` selects `Expected: string` vs `Expected string`.
fn str_arg(args: &[Arg], i: usize, colon: bool) -> Result<&[u8], String> {
    match &args[i] {
        Arg::Str(s) => Ok(s),
        _ if colon => Err(format!("Invalid type at arg {}. Expected: string", i + 1)),
        _ => Err(format!("Invalid type at arg {}. Expected string", i + 1)),
    }
}

/// Non-negative int arg `i` (a time literal is one too); the error names arg `label`.
fn int_arg(args: &[Arg], i: usize, label: usize) -> Result<u64, String> {
    match args[i] {
        Arg::Int(v) if v >= 0 => Ok(v as u64),
        _ => Err(format!("Invalid type at arg {label}. Expected: int")),
    }
}

/// Time arg: a time literal or an int (the same thing once parsed), not negative.
fn time_arg(args: &[Arg], i: usize) -> Result<i64, String> {
    match args[i] {
        Arg::Int(v) if v >= 0 => Ok(v),
        _ => Err(format!("Invalid type at arg {}. Expected: time", i + 1)),
    }
}

fn run(store: &Mutex<Store>, c: &Command) -> Result<Value, String> {
    let a = &c.args;
    match c.name.as_str() {
        "PING" => {
            count(a, 0)?;
            Ok(Value::Str(b"PONG".to_vec()))
        }
        "CREATE" => {
            count(a, 4)?;
            let id = str_arg(a, 0, true)?;
            let sr = int_arg(a, 1, 2)? as u32;
            let ch = int_arg(a, 2, 3)? as u16;
            let bd = int_arg(a, 3, 4)? as u16;
            match lock(store).create(id, sr, ch, bd) {
                Ok(true) => Ok(Value::Null),
                Ok(false) => Err("Failed to create stream".into()),
                Err(e) => {
                    crate::log(&format!("CREATE: cannot write metadata: {e}"));
                    Err("Failed to create stream".into())
                }
            }
        }
        "OPEN" => {
            count(a, 1)?;
            let h = stream_hash(str_arg(a, 0, false)?);
            let mut st = lock(store);
            if st.open.contains_key(&h) {
                return Err("Stream is already open".into());
            }
            st.open.insert(h, [0; 16]);
            Ok(Value::Null)
        }
        "CLOSE" => {
            count(a, 1)?;
            let h = stream_hash(str_arg(a, 0, false)?);
            match lock(store).open.remove(&h) {
                Some(_) => Ok(Value::Null),
                None => Err("Stream is not open".into()),
            }
        }
        "INFO" => {
            count(a, 2)?;
            let id = str_arg(a, 0, false)?;
            let attr = str_arg(a, 1, false)?;
            let mut st = lock(store);
            let m = st.meta(stream_hash(id));
            let v: i64 = match (m.as_deref(), attr) {
                (Some(m), b"sample_rate") => m.sr as i64,
                (Some(m), b"channels") => m.ch as i64,
                (Some(m), b"bit_depth") => m.bd as i64,
                (Some(m), b"size") => m.size as i64,
                (Some(m), b"ref") => m.ref_ms,
                _ => 0,
            };
            if v == 0 {
                Err("Failure reading metadata".into())
            } else {
                Ok(Value::Int(v))
            }
        }
        "SEARCH" => {
            count(a, 1)?;
            let pat = str_arg(a, 0, false)?;
            Ok(Value::List(lock(store).search(pat)))
        }
        "EXTRACT" => {
            count(a, 3)?;
            let id = str_arg(a, 0, true)?;
            let from = time_arg(a, 1)?;
            let to = time_arg(a, 2)?;
            let plan = lock(store).plan_extract(id, from, to)?;
            Ok(Value::S32v(plan.run()?))
        }
        "EVAL" => {
            count(a, 1)?;
            str_arg(a, 0, false)?;
            Err(ERR_EVAL.into())
        }
        other => Err(format!("Unknown command: {other}")),
    }
}

enum FormatError {
    /// Appended after the previous output (2-object reply).
    ArgCount(String),
    Other(String),
}

fn format(prev: &[Value], a: &[Arg]) -> Result<Value, FormatError> {
    if a.len() != 4 {
        return Err(FormatError::ArgCount(format!(
            "Expected 4 args, but got {}",
            a.len()
        )));
    }
    let o = FormatError::Other;
    let mime = str_arg(a, 0, true).map_err(o)?;
    let sr = int_arg(a, 1, 2).map_err(o)? as u32;
    let ch = int_arg(a, 2, 3).map_err(o)? as u16;
    let bd = int_arg(a, 3, 3).map_err(o)? as u16;
    let input = match prev {
        [Value::S32v(b)] => b,
        _ => return Err(o(ERR_FORMAT_INPUT.into())),
    };
    if ch == 0 {
        return Err(o(ERR_FORMAT_CHANNELS.into()));
    }
    if mime != b"audio/wav" || (bd != 16 && bd != 24) {
        return Err(o("Unsupported format".into()));
    }
    Ok(Value::U8v(wav(input, sr, ch, bd)))
}

/// Canonical 44-byte WAV header + samples truncated to their low `bd` bits.
pub fn wav(input: &[u8], sr: u32, ch: u16, bd: u16) -> Vec<u8> {
    let vals = input.len() / 4;
    let samples = vals / ch as usize;
    let total = samples * ch as usize;
    let bps = (bd / 8) as usize;
    let data_len = total * bps;
    let mut w = Vec::with_capacity(44 + data_len);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&((data_len + 36) as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&ch.to_le_bytes());
    w.extend_from_slice(&sr.to_le_bytes());
    // block_align is a u16 field, and byte_rate is computed from it after the cut.
    let block_align = (ch as u32 * bd as u32 / 8) as u16;
    let byte_rate = sr.wrapping_mul(block_align as u32);
    w.extend_from_slice(&byte_rate.to_le_bytes());
    w.extend_from_slice(&block_align.to_le_bytes());
    w.extend_from_slice(&bd.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(data_len as u32).to_le_bytes());
    for s in input[..total * 4].chunks_exact(4) {
        w.extend_from_slice(&s[..bps]);
    }
    w
}
