//! The command language of RACS v0.1.0: tokenizer and parser (contract section 2).

use crate::timefmt::timegm;

/// One lexical token.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// A time literal, already converted to ms since the epoch (may be negative).
    Time(i64),
    Float(f64),
    /// `strtoull` result stored as int64 (wraps above `i64::MAX`, saturates to -1 beyond u64).
    Int(i64),
    /// Raw bytes between the quotes (no unescaping).
    Str(Vec<u8>),
    Pipe,
    /// Upper-cased identifier.
    Id(String),
}

/// A command argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Time(i64),
    Float(f64),
    Int(i64),
    Str(Vec<u8>),
}

/// One command of a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    pub args: Vec<Arg>,
}

/// Result of parsing a command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Nothing to run: the reply is N=0 with no body.
    Empty,
    /// A pipeline of one or more commands.
    Pipeline(Vec<Command>),
    /// A lexer or grammar error, with its exact reply text.
    Error(String),
}

/// Error text for a pipe with no command after it (crashes the real server; racs-lite only).
pub const ERR_EMPTY_PIPE: &str = "Expected a command after '|>'";

fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn digits(s: &[u8], i: usize) -> usize {
    s[i.min(s.len())..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count()
}

fn exact_digits(s: &[u8], i: usize, n: usize) -> bool {
    s.len() >= i + n && s[i..i + n].iter().all(|c| c.is_ascii_digit())
}

/// Length of an anchored match of
/// `[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})` at `i`.
fn match_time(s: &[u8], i: usize) -> Option<usize> {
    let lit = |j: usize, c: u8| s.get(j) == Some(&c);
    let mut j = i;
    for (n, sep) in [
        (4, Some(b'-')),
        (2, Some(b'-')),
        (2, Some(b'T')),
        (2, Some(b':')),
        (2, Some(b':')),
        (2, None),
    ] {
        if !exact_digits(s, j, n) {
            return None;
        }
        j += n;
        if let Some(c) = sep {
            if !lit(j, c) {
                return None;
            }
            j += 1;
        }
    }
    if lit(j, b'.') {
        let d = digits(s, j + 1);
        if d > 0 {
            j += 1 + d;
        }
    }
    if lit(j, b'Z') {
        return Some(j + 1 - i);
    }
    if (lit(j, b'+') || lit(j, b'-'))
        && exact_digits(s, j + 1, 2)
        && lit(j + 3, b':')
        && exact_digits(s, j + 4, 2)
    {
        return Some(j + 6 - i);
    }
    None
}

/// `%d` as glibc's scanf reads it from a run of digits: a long, truncated to int.
fn scan_int(d: &[u8]) -> i64 {
    let mut v: i64 = 0;
    for &c in d {
        v = v.saturating_mul(10).saturating_add((c - b'0') as i64);
    }
    v as i32 as i64
}

/// Decode a matched time literal like `sscanf("%d-%d-%dT%d:%d:%d.%dZ")` + `timegm`:
/// the fraction is a whole number of ms, the zone offset is ignored.
fn decode_time(t: &[u8]) -> i64 {
    let f = |a: usize, b: usize| scan_int(&t[a..b]);
    let secs = timegm(f(0, 4), f(5, 7), f(8, 10), f(11, 13), f(14, 16), f(17, 19));
    let frac = if t.get(19) == Some(&b'.') {
        let d = digits(t, 20);
        scan_int(&t[20..20 + d])
    } else {
        0
    };
    secs.wrapping_mul(1000).wrapping_add(frac)
}

/// `strtoull` on a run of digits: saturates at u64::MAX.
fn strtoull(d: &[u8]) -> u64 {
    let mut v: u64 = 0;
    for &c in d {
        match v
            .checked_mul(10)
            .and_then(|v| v.checked_add((c - b'0') as u64))
        {
            Some(n) => v = n,
            None => return u64::MAX,
        }
    }
    v
}

/// Unanchored search for `'([^'\\]|\\')*'` starting at `from`; returns (start, end).
fn search_string(s: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut start = from;
    while start < s.len() {
        if s[start] == b'\'' {
            let mut j = start + 1;
            while j < s.len() {
                match s[j] {
                    b'\'' => return Some((start, j + 1)),
                    b'\\' if s.get(j + 1) == Some(&b'\'') => j += 2,
                    b'\\' => break,
                    _ => j += 1,
                }
            }
        }
        start += 1;
    }
    None
}

/// Tokenize a whole command string (already cut at its NUL).
/// On error returns the 0-based byte offset for `Invalid token at N`.
pub fn tokenize(s: &[u8]) -> Result<Vec<Token>, usize> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < s.len() && is_c_space(s[i]) {
            i += 1;
        }
        if i >= s.len() {
            return Ok(out);
        }
        let c = s[i];
        if c.is_ascii_digit() {
            if let Some(n) = match_time(s, i) {
                out.push(Token::Time(decode_time(&s[i..i + n])));
                i += n;
                continue;
            }
            let d = digits(s, i);
            if s.get(i + d) == Some(&b'.') {
                let d2 = digits(s, i + d + 1);
                let text = std::str::from_utf8(&s[i..i + d + 1 + d2]).unwrap_or("0");
                out.push(Token::Float(text.parse::<f64>().unwrap_or(0.0)));
                i += d + 1 + d2;
            } else {
                out.push(Token::Int(strtoull(&s[i..i + d]) as i64));
                i += d;
            }
        } else if c == b'\'' {
            // The real lexer runs an unanchored regex and advances by the match *length*,
            // so a broken string may swallow later text.
            match search_string(s, i) {
                Some((a, b)) => {
                    let len = b - a;
                    out.push(Token::Str(s[i + 1..i + len - 1].to_vec()));
                    i += len;
                }
                None => return Err(i),
            }
        } else if c == b'|' {
            if s.get(i + 1) == Some(&b'>') {
                out.push(Token::Pipe);
                i += 2;
            } else {
                return Err(i);
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let n = s[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                .count();
            let id = String::from_utf8_lossy(&s[i..i + n]).to_ascii_uppercase();
            out.push(Token::Id(id));
            i += n;
        } else {
            return Err(i);
        }
    }
}

fn type_name(t: &Token) -> &'static str {
    match t {
        Token::Time(_) => "time",
        Token::Float(_) => "float",
        Token::Int(_) => "int",
        Token::Str(_) => "string",
        Token::Pipe => "pipe",
        Token::Id(_) => "id",
    }
}

/// Parse a command string (cut at its first NUL) into a pipeline.
pub fn parse(s: &[u8]) -> Parsed {
    let toks = match tokenize(s) {
        Ok(t) => t,
        Err(off) => return Parsed::Error(format!("Invalid token at {off}")),
    };
    let mut it = toks.into_iter().peekable();
    // Leading pipes are ignored.
    while it.peek() == Some(&Token::Pipe) {
        it.next();
    }
    if it.peek().is_none() {
        return Parsed::Empty;
    }
    let mut cmds = Vec::new();
    loop {
        let name = match it.next() {
            Some(Token::Id(name)) => name,
            Some(Token::Pipe) | None => return Parsed::Error(ERR_EMPTY_PIPE.to_string()),
            Some(t) => {
                return Parsed::Error(format!(
                    "Token type '{}' is not a valid command.",
                    type_name(&t)
                ))
            }
        };
        let mut args = Vec::new();
        loop {
            match it.next() {
                None => {
                    cmds.push(Command { name, args });
                    return Parsed::Pipeline(cmds);
                }
                Some(Token::Pipe) => {
                    cmds.push(Command { name, args });
                    break;
                }
                Some(Token::Id(_)) => {
                    return Parsed::Error("Token type 'id' is not a valid argument.".to_string())
                }
                Some(Token::Time(v)) => args.push(Arg::Time(v)),
                Some(Token::Float(v)) => args.push(Arg::Float(v)),
                Some(Token::Int(v)) => args.push(Arg::Int(v)),
                Some(Token::Str(v)) => args.push(Arg::Str(v)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        match parse(s.as_bytes()) {
            Parsed::Error(e) => e,
            other => panic!("expected error for {s:?}, got {other:?}"),
        }
    }

    #[test]
    fn tokens() {
        assert_eq!(tokenize(b"1.").unwrap(), vec![Token::Float(1.0)]);
        assert_eq!(tokenize(b"0044100").unwrap(), vec![Token::Int(44100)]);
        assert_eq!(
            tokenize(b"18446744073709551615").unwrap(),
            vec![Token::Int(-1)]
        );
        assert_eq!(
            tokenize(b"99999999999999999999999").unwrap(),
            vec![Token::Int(-1)]
        );
        assert_eq!(
            tokenize(b"'it\\'s'").unwrap(),
            vec![Token::Str(b"it\\'s".to_vec())]
        );
        assert_eq!(tokenize(b"''").unwrap(), vec![Token::Str(vec![])]);
        assert_eq!(tokenize(b"\"x\""), Err(0));
        assert_eq!(tokenize(b"PING |"), Err(5));
        assert_eq!(tokenize(b"-1"), Err(0));
        assert_eq!(tokenize(b".5"), Err(0));
        assert_eq!(
            tokenize(b"2025-11-05T12:14:14.608Z").unwrap(),
            vec![Token::Time(1762344854608)]
        );
        assert_eq!(
            tokenize(b"2025-11-05T12:14:14.5Z").unwrap(),
            vec![Token::Time(1762344854005)]
        );
        assert_eq!(
            tokenize(b"2025-11-05T12:14:14+05:00").unwrap(),
            vec![Token::Time(1762344854000)]
        );
        assert_eq!(
            tokenize(b"2025-11-05T12:14:14.608000Z").unwrap(),
            vec![Token::Time(1762344854000 + 608000)]
        );
        assert_eq!(tokenize(b"2025-11-05T12:14:14:608Z"), Err(4));
        assert_eq!(tokenize(b"2025-11-05t12:14:14Z"), Err(4));
    }

    #[test]
    fn grammar() {
        assert_eq!(
            parse(b"CREATE'n4'8000 1 16"),
            Parsed::Pipeline(vec![Command {
                name: "CREATE".into(),
                args: vec![
                    Arg::Str(b"n4".to_vec()),
                    Arg::Int(8000),
                    Arg::Int(1),
                    Arg::Int(16)
                ]
            }])
        );
        match parse(b"CREATE 'a\\b' 8000 1 16 'z'") {
            Parsed::Pipeline(c) => assert_eq!(c[0].args.len(), 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(err("5 PING"), "Token type 'int' is not a valid command.");
        assert_eq!(
            err("PING |> 'x'"),
            "Token type 'string' is not a valid command."
        );
        assert_eq!(err("INFO x"), "Token type 'id' is not a valid argument.");
        assert_eq!(err("PING |>"), ERR_EMPTY_PIPE);
        assert_eq!(err("PING |> |> PING"), ERR_EMPTY_PIPE);
        assert_eq!(parse(b"   \t\n"), Parsed::Empty);
        assert!(matches!(parse(b"|> PING"), Parsed::Pipeline(_)));
        assert!(matches!(parse(b"PING|>PING"), Parsed::Pipeline(c) if c.len() == 2));
    }
}
