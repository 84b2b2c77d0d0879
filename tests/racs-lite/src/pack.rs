// SPDX-License-Identifier: MPL-2.0
//! Reply values and their msgpack encoding (contract section 4).

/// One reply object.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `["null"]`
    Null,
    /// `["error", msg]`
    Error(Vec<u8>),
    /// `["string", s]`
    Str(Vec<u8>),
    /// `["int", v]`
    Int(i64),
    /// `["list", e1, e2, ...]` (flat)
    List(Vec<Vec<u8>>),
    /// `["s32v", bin]` holding packed int32 LE.
    S32v(Vec<u8>),
    /// `["u8v", bin]`
    U8v(Vec<u8>),
}

impl Value {
    pub fn error(msg: impl Into<String>) -> Value {
        Value::Error(msg.into().into_bytes())
    }
}

fn array_header(out: &mut Vec<u8>, n: usize) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0xdc);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// Append a msgpack str.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 256 {
        out.push(0xd9);
        out.push(n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s);
}

/// Append a msgpack bin header for `n` bytes.
pub fn write_bin_header(out: &mut Vec<u8>, n: usize) {
    if n < 256 {
        out.push(0xc4);
        out.push(n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0xc5);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xc6);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// Append an int64 in its smallest msgpack form (as msgpack-c's `pack_int64`).
pub fn write_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        let u = v as u64;
        if u < 128 {
            out.push(u as u8);
        } else if u < 256 {
            out.push(0xcc);
            out.push(u as u8);
        } else if u < 65536 {
            out.push(0xcd);
            out.extend_from_slice(&(u as u16).to_be_bytes());
        } else if u < (1 << 32) {
            out.push(0xce);
            out.extend_from_slice(&(u as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&u.to_be_bytes());
        }
    } else if v >= -32 {
        out.push(v as i8 as u8);
    } else if v >= i8::MIN as i64 {
        out.push(0xd0);
        out.push(v as i8 as u8);
    } else if v >= i16::MIN as i64 {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= i32::MIN as i64 {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Append the msgpack encoding of one reply object.
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    if let Some(tail) = encode_split(v, out) {
        out.extend_from_slice(tail);
    }
}

/// Like [`encode`], but for `s32v`/`u8v` values the bin content is not copied: it is returned,
/// to be sent right after `out`.
pub fn encode_split<'a>(v: &'a Value, out: &mut Vec<u8>) -> Option<&'a [u8]> {
    match v {
        Value::Null => {
            array_header(out, 1);
            write_str(out, b"null");
        }
        Value::Error(m) => {
            array_header(out, 2);
            write_str(out, b"error");
            write_str(out, m);
        }
        Value::Str(s) => {
            array_header(out, 2);
            write_str(out, b"string");
            write_str(out, s);
        }
        Value::Int(i) => {
            array_header(out, 2);
            write_str(out, b"int");
            write_int(out, *i);
        }
        Value::List(items) => {
            array_header(out, items.len() + 1);
            write_str(out, b"list");
            for it in items {
                write_str(out, it);
            }
        }
        Value::S32v(b) | Value::U8v(b) => {
            array_header(out, 2);
            let name: &[u8] = if matches!(v, Value::S32v(_)) {
                b"s32v"
            } else {
                b"u8v"
            };
            write_str(out, name);
            write_bin_header(out, b.len());
            return Some(b);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    fn enc(v: Value) -> Vec<u8> {
        let mut o = Vec::new();
        encode(&v, &mut o);
        o
    }
    #[test]
    fn vectors() {
        assert_eq!(enc(Value::Null), b"\x91\xa4null");
        assert_eq!(
            enc(Value::Str(b"PONG".to_vec())),
            b"\x92\xa6string\xa4PONG".to_vec()
        );
        assert_eq!(enc(Value::Int(44100)), b"\x92\xa3int\xcd\xac\x44".to_vec());
        assert_eq!(enc(Value::List(vec![])), b"\x91\xa4list".to_vec());
    }
}
