// SPDX-License-Identifier: MPL-2.0
//! Command text: literals validated so that nothing a user types can change the command,
//! times sent as integer epoch milliseconds, every command NUL-terminated.

use super::error::{Error, Result};
use super::frame::StreamFormat;

/// The stream attributes INFO can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoAttr {
    SampleRate,
    Channels,
    BitDepth,
    /// Bytes appended so far.
    Size,
    /// Wall-clock time of the first sample, ms since the epoch.
    Ref,
}

impl InfoAttr {
    pub fn name(self) -> &'static str {
        match self {
            InfoAttr::SampleRate => "sample_rate",
            InfoAttr::Channels => "channels",
            InfoAttr::BitDepth => "bit_depth",
            InfoAttr::Size => "size",
            InfoAttr::Ref => "ref",
        }
    }
}

/// Checks that `value` can be sent inside a `'...'` literal and means exactly what it says.
///
/// The server takes string literals raw: a `'` ends the literal, a `\` changes how the rest is
/// lexed, and `|>` may start a new command once a literal is broken. Control characters are
/// rejected too, because the lexer treats some of them as separators.
pub fn validate_literal(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} must not be empty")));
    }
    for (pos, c) in value.char_indices() {
        let bad = match c {
            '\'' => Some("a single quote (')"),
            '\\' => Some("a backslash (\\)"),
            '|' if value[pos + 1..].starts_with('>') => Some("the pipe operator (|>)"),
            c if c.is_control() => Some("a control character"),
            _ => None,
        };
        if let Some(name) = bad {
            return Err(Error::InvalidArgument(format!(
                "{what} {value:?} contains {name} at byte {pos}; RACS cannot quote it. Use letters, \
                 digits, spaces and punctuation other than ' \\ and |>"
            )));
        }
    }
    Ok(())
}

/// Checks a stream id. Allowed: any non-empty UTF-8 text without `'`, `\`, `|>` or control
/// characters.
pub fn validate_stream_id(id: &str) -> Result<()> {
    validate_literal("stream-id", id)
}

/// One command line, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    text: String,
}

impl Command {
    fn new(text: String) -> Self {
        Command { text }
    }

    pub fn ping() -> Self {
        Command::new("PING".into())
    }

    pub fn create(id: &str, format: &StreamFormat) -> Result<Self> {
        validate_stream_id(id)?;
        Ok(Command::new(format!(
            "CREATE '{id}' {} {} {}",
            format.sample_rate, format.channels, format.bit_depth
        )))
    }

    pub fn open(id: &str) -> Result<Self> {
        validate_stream_id(id)?;
        Ok(Command::new(format!("OPEN '{id}'")))
    }

    pub fn close(id: &str) -> Result<Self> {
        validate_stream_id(id)?;
        Ok(Command::new(format!("CLOSE '{id}'")))
    }

    pub fn info(id: &str, attr: InfoAttr) -> Result<Self> {
        validate_stream_id(id)?;
        Ok(Command::new(format!("INFO '{id}' '{}'", attr.name())))
    }

    pub fn search(pattern: &str) -> Result<Self> {
        validate_literal("search pattern", pattern)?;
        Ok(Command::new(format!("SEARCH '{pattern}'")))
    }

    /// Whole blocks whose start time `t` satisfies `from_ms <= t <= to_ms`.
    pub fn extract(id: &str, from_ms: u64, to_ms: u64) -> Result<Self> {
        validate_stream_id(id)?;
        Ok(Command::new(format!("EXTRACT '{id}' {from_ms} {to_ms}")))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The payload as sent: the text and its terminating NUL.
    pub fn payload(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(self.text.len() + 1);
        payload.extend_from_slice(self.text.as_bytes());
        payload.push(0);
        payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_nul_terminated() {
        assert_eq!(Command::ping().payload(), b"PING\0");
        let fmt = StreamFormat::new(44100, 2, 16).unwrap();
        assert_eq!(
            Command::create("chopin", &fmt).unwrap().payload(),
            b"CREATE 'chopin' 44100 2 16\0"
        );
        assert_eq!(
            Command::extract("air", 0, 1767952800250).unwrap().as_str(),
            "EXTRACT 'air' 0 1767952800250"
        );
        assert_eq!(
            Command::info("a b", InfoAttr::Size).unwrap().as_str(),
            "INFO 'a b' 'size'"
        );
        assert_eq!(
            Command::open("Beethoven Piano Sonata No.1")
                .unwrap()
                .as_str(),
            "OPEN 'Beethoven Piano Sonata No.1'"
        );
    }

    #[test]
    fn injection_is_rejected_with_the_character_named() {
        for (id, named) in [
            ("it's", "single quote"),
            ("a\\b", "backslash"),
            ("x' |> SHUTDOWN |> PING '", "single quote"),
            ("a |> b", "pipe operator"),
            ("line\nbreak", "control character"),
            ("nul\0", "control character"),
        ] {
            let err = Command::open(id).unwrap_err().to_string();
            assert!(err.contains(named), "{id:?}: {err}");
            assert!(err.contains("stream-id"), "{err}");
        }
        assert!(Command::open("").unwrap_err().to_string().contains("empty"));
        // A lone pipe or '>' is harmless inside a literal.
        assert!(Command::open("a|b>c").is_ok());
        assert!(Command::open("séance * 1").is_ok());
    }
}

#[cfg(test)]
mod more_command_tests {
    use super::*;

    #[test]
    fn every_command_quotes_its_literals() {
        assert_eq!(Command::close("a b").unwrap().as_str(), "CLOSE 'a b'");
        assert_eq!(
            Command::search("air-*").unwrap().payload(),
            b"SEARCH 'air-*'\0"
        );
        for (attr, name) in [
            (InfoAttr::SampleRate, "sample_rate"),
            (InfoAttr::Channels, "channels"),
            (InfoAttr::BitDepth, "bit_depth"),
            (InfoAttr::Size, "size"),
            (InfoAttr::Ref, "ref"),
        ] {
            assert_eq!(attr.name(), name);
            assert_eq!(
                Command::info("s", attr).unwrap().as_str(),
                format!("INFO 's' '{name}'")
            );
        }
        let f = StreamFormat::new(48000, 6, 24).unwrap();
        assert_eq!(
            Command::create("x", &f).unwrap().as_str(),
            "CREATE 'x' 48000 6 24"
        );
    }

    #[test]
    fn every_command_refuses_what_it_cannot_quote() {
        let f = StreamFormat::new(8000, 1, 16).unwrap();
        for result in [
            Command::create("a'b", &f),
            Command::open("a'b"),
            Command::close("a'b"),
            Command::info("a'b", InfoAttr::Ref),
            Command::extract("a'b", 0, 1),
        ] {
            let e = result.unwrap_err().to_string();
            assert!(
                e.contains("stream-id \"a'b\"") && e.contains("single quote"),
                "{e}"
            );
        }
        let e = Command::search("x\\*").unwrap_err().to_string();
        assert!(e.starts_with("search pattern"), "{e}");
        assert!(e.contains("backslash"), "{e}");
    }

    #[test]
    fn the_refusal_names_the_byte_and_says_what_is_allowed() {
        // 'é' takes two bytes: the quote is at byte 2.
        let e = validate_stream_id("é'x").unwrap_err().to_string();
        assert!(e.contains("at byte 2"), "{e}");
        assert!(
            e.contains("Use letters, digits, spaces and punctuation other than ' \\ and |>"),
            "{e}"
        );
        let e = validate_literal("what", "tab\there")
            .unwrap_err()
            .to_string();
        assert!(e.contains("control character at byte 3"), "{e}");
        assert!(
            validate_stream_id("a|").is_ok(),
            "a pipe at the end is harmless"
        );
        assert!(validate_stream_id(">|").is_ok());
    }
}
