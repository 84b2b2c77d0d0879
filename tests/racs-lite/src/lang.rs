// SPDX-License-Identifier: MPL-2.0
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

/// A command argument. A time literal is an `Int` holding its ms value, as on the real server.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
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
    if secs == -1 {
        // timegm's error value: the real server returns -1 whatever the fraction.
        return -1;
    }
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

/// The lexer: yields one token at a time, like the real server's `racs_parser_next_token`, so
/// that an error is reported only when the parser reaches it.
pub struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(s: &'a [u8]) -> Self {
        Lexer { s, i: 0 }
    }

    /// The next token, `Ok(None)` at the end, or `Err(offset)` for `Invalid token at <offset>`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Token>, usize> {
        let s = self.s;
        let mut i = self.i;
        while i < s.len() && is_c_space(s[i]) {
            i += 1;
        }
        self.i = i;
        if i >= s.len() {
            return Ok(None);
        }
        let c = s[i];
        let tok = if c.is_ascii_digit() {
            if let Some(n) = match_time(s, i) {
                self.i = i + n;
                Token::Time(decode_time(&s[i..i + n]))
            } else {
                let d = digits(s, i);
                if s.get(i + d) == Some(&b'.') {
                    let d2 = digits(s, i + d + 1);
                    let text = std::str::from_utf8(&s[i..i + d + 1 + d2]).unwrap_or("0");
                    self.i = i + d + 1 + d2;
                    Token::Float(text.parse::<f64>().unwrap_or(0.0))
                } else {
                    self.i = i + d;
                    Token::Int(strtoull(&s[i..i + d]) as i64)
                }
            }
        } else if c == b'\'' {
            // The real lexer runs an unanchored regex and advances by the match *length*,
            // so a broken string may swallow later text.
            match search_string(s, i) {
                Some((a, b)) => {
                    let len = b - a;
                    self.i = i + len;
                    Token::Str(s[i + 1..i + len - 1].to_vec())
                }
                None => return Err(i),
            }
        } else if c == b'|' {
            // Unanchored too: a `|>` anywhere later makes this `|` a pipe token of length 2,
            // so `PING |a PONG |> PING` lexes as PING, pipe, PONG, pipe, PING.
            if s[i..].windows(2).any(|w| w == b"|>") {
                self.i = i + 2;
                Token::Pipe
            } else {
                return Err(i);
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let n = s[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                .count();
            self.i = i + n;
            Token::Id(String::from_utf8_lossy(&s[i..i + n]).to_ascii_uppercase())
        } else {
            return Err(i);
        };
        Ok(Some(tok))
    }
}

/// Tokenize a whole command string (already cut at its NUL).
/// On error returns the 0-based byte offset for `Invalid token at N`.
pub fn tokenize(s: &[u8]) -> Result<Vec<Token>, usize> {
    let mut lx = Lexer::new(s);
    let mut out = Vec::new();
    while let Some(t) = lx.next()? {
        out.push(t);
    }
    Ok(out)
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
///
/// Follows the real server's plan builder token by token: the first error met (a lexer error
/// or a grammar error) is the reply, so `'x' "y"` reports the string, not the invalid token.
/// A time literal becomes an int argument (the real server stores it as one). Two pipes
/// without a command between them, or a trailing pipe, would add one command to the plan twice
/// (a double free on the real server): racs-lite answers [`ERR_EMPTY_PIPE`] instead.
pub fn parse(s: &[u8]) -> Parsed {
    let mut lx = Lexer::new(s);
    let mut cmds: Vec<Command> = Vec::new();
    // The command being built, and whether it is already in `cmds` (pushed at a pipe).
    let mut cur: Option<Command> = None;
    let mut pushed = false;
    // Previous token: None at the start, Some(true) after a pipe, Some(false) otherwise.
    let mut after_pipe: Option<bool> = None;
    loop {
        let tok = match lx.next() {
            Ok(Some(t)) => t,
            Ok(None) => break,
            Err(off) => return Parsed::Error(format!("Invalid token at {off}")),
        };
        let at_command = after_pipe != Some(false);
        after_pipe = Some(tok == Token::Pipe);
        match tok {
            Token::Id(name) => {
                if !at_command {
                    return Parsed::Error("Token type 'id' is not a valid argument.".to_string());
                }
                // Any previous command was pushed by the pipe before this id.
                cur = Some(Command {
                    name,
                    args: Vec::new(),
                });
                pushed = false;
            }
            Token::Pipe => {
                if let Some(c) = &cur {
                    if pushed {
                        return Parsed::Error(ERR_EMPTY_PIPE.to_string());
                    }
                    cmds.push(c.clone());
                    pushed = true;
                }
            }
            t => {
                if at_command {
                    return Parsed::Error(format!(
                        "Token type '{}' is not a valid command.",
                        type_name(&t)
                    ));
                }
                let arg = match t {
                    Token::Time(v) | Token::Int(v) => Arg::Int(v),
                    Token::Float(v) => Arg::Float(v),
                    Token::Str(v) => Arg::Str(v),
                    Token::Pipe | Token::Id(_) => unreachable!("handled above"),
                };
                if let Some(c) = cur.as_mut() {
                    c.args.push(arg);
                }
            }
        }
    }
    match cur {
        Some(_) if pushed => Parsed::Error(ERR_EMPTY_PIPE.to_string()),
        Some(c) => {
            cmds.push(c);
            Parsed::Pipeline(cmds)
        }
        None => Parsed::Empty,
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
        // Token by token: the grammar error comes before the later invalid token.
        assert_eq!(
            err("'x' \"y\""),
            "Token type 'string' is not a valid command."
        );
        assert_eq!(err("PING \"y\" 'x' |> 5"), "Invalid token at 5");
        // The pipe pattern is unanchored: `|a` lexes as a pipe when a `|>` follows.
        match parse(b"PING |a PONG |> PING") {
            Parsed::Pipeline(c) => assert_eq!(
                c.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                ["PING", "PONG", "PING"]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(err("PING |a"), "Invalid token at 5");
        // A time literal is an int argument.
        match parse(b"CREATE 'x' 1970-01-01T00:00:01.5Z 1 16") {
            Parsed::Pipeline(c) => assert_eq!(c[0].args[1], Arg::Int(1005)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            tokenize(b"1969-12-31T23:59:59.500Z").unwrap(),
            vec![Token::Time(-1)]
        );
    }
}
