// SPDX-License-Identifier: MPL-2.0
//! The `racs://host:port/stream-id?key=value&...` form of both elements' settings.

/// What a URI sets: the address, the stream, and `key=value` pairs named like properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RacsUri {
    pub host: String,
    pub port: Option<u16>,
    pub stream_id: String,
    pub params: Vec<(String, String)>,
}

/// Decodes `%XX` escapes (GLib's `g_uri_unescape_bytes`); the result must be UTF-8.
pub fn percent_decode(s: &str, what: &str) -> Result<String, String> {
    let bytes = glib::Uri::unescape_bytes(s, None).map_err(|_| {
        let at = s
            .char_indices()
            .find(|(i, c)| {
                *c == '%'
                    && !s
                        .get(i + 1..i + 3)
                        .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
            })
            .map_or(0, |(i, _)| i);
        format!(
            "bad percent escape at byte {at} of the {what} {s:?} (expected %XX with two hex digits)"
        )
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| format!("the {what} {s:?} does not decode to UTF-8"))
}

/// Escapes everything but unreserved characters (GLib's `g_uri_escape_string`).
pub fn percent_encode(s: &str) -> String {
    glib::Uri::escape_string(s, None, false).into()
}

/// Parses `racs://host[:port]/stream-id[?key=value&...]` with GLib's URI parser (RFC 3986).
/// IPv6 hosts go in brackets.
pub fn parse(uri: &str) -> Result<RacsUri, String> {
    let form = "the form is racs://host:port/stream-id";
    if !uri
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("racs://"))
    {
        return Err(format!(
            "{uri:?} is not a racs:// URI (racs://host:port/stream-id)"
        ));
    }
    let parsed =
        glib::Uri::parse(uri, glib::UriFlags::ENCODED | glib::UriFlags::NON_DNS).map_err(|e| {
            match e.kind::<glib::UriError>() {
                _ if !uri.to_ascii_lowercase().starts_with("racs://") => {
                    format!("{uri:?} is not a racs:// URI (racs://host:port/stream-id)")
                }
                Some(glib::UriError::BadPort) => {
                    format!(
                        "{uri:?}: the port is not a number in 1..=65535 ({})",
                        e.message()
                    )
                }
                Some(glib::UriError::BadPath | glib::UriError::BadQuery)
                    if e.message().contains('%') =>
                {
                    format!(
                        "{uri:?} has a bad percent escape (expected %XX with two hex digits): {}",
                        e.message()
                    )
                }
                Some(glib::UriError::BadHost) if uri.contains('[') => {
                    format!(
                        "{uri:?}: an IPv6 host needs a closing ']' ({})",
                        e.message()
                    )
                }
                _ => format!("{uri:?} is not a valid URI: {} ({form})", e.message()),
            }
        })?;
    if !parsed.scheme().eq_ignore_ascii_case("racs") {
        return Err(format!(
            "{uri:?} is not a racs:// URI (racs://host:port/stream-id)"
        ));
    }
    let host = percent_decode(parsed.host().as_deref().unwrap_or_default(), "host")?;
    if host.is_empty() {
        return Err(format!("{uri:?} names no host: {form}"));
    }
    let port = match parsed.port() {
        -1 => None,
        p => Some(
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{uri:?}: the port {p} is not a number in 1..=65535"))?,
        ),
    };
    let path = parsed.path();
    let stream_id = percent_decode(path.strip_prefix('/').unwrap_or(&path), "stream id")?;
    if stream_id.is_empty() {
        return Err(format!("{uri:?} names no stream: {form}"));
    }
    let mut params = Vec::new();
    for pair in parsed
        .query()
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{uri:?}: the query part {pair:?} is not key=value"))?;
        params.push((
            percent_decode(key, "query key")?,
            percent_decode(value, "query value")?,
        ));
    }
    Ok(RacsUri {
        host,
        port,
        stream_id,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form() {
        let u = parse("racs://example.org:7000/Beethoven%20Piano%20Sonata%20No.1?chunk-size=4096&takeover=true").unwrap();
        assert_eq!(u.host, "example.org");
        assert_eq!(u.port, Some(7000));
        assert_eq!(u.stream_id, "Beethoven Piano Sonata No.1");
        assert_eq!(
            u.params,
            [
                ("chunk-size".to_string(), "4096".to_string()),
                ("takeover".to_string(), "true".to_string())
            ]
        );
        let u = parse("RACS://[::1]:6381/chopin").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", Some(6381)));
        let u = parse("racs://localhost/a/b").unwrap();
        assert_eq!((u.port, u.stream_id.as_str()), (None, "a/b"));
        assert_eq!(parse("racs://h/caf%C3%A9").unwrap().stream_id, "café");
    }

    #[test]
    fn rejects_broken_uris_with_a_reason() {
        for (uri, needle) in [
            ("file:///tmp/x", "not a racs://"),
            ("racs:host/x", "not a racs://"),
            ("racs://host:6381", "names no stream"),
            ("racs://host:6381/", "names no stream"),
            ("racs://:6381/x", "names no host"),
            ("racs://host:99999/x", "1..=65535"),
            ("racs://host:0/x", "1..=65535"),
            ("racs://host/x%2", "percent escape"),
            ("racs://host/x%ff", "UTF-8"),
            ("racs://host/x?takeover", "key=value"),
            ("racs://[::1/x", "closing ']'"),
            ("racs://host:x1/x", "1..=65535"),
        ] {
            let err = parse(uri).unwrap_err();
            assert!(err.contains(needle), "{uri}: {err}");
        }
    }

    #[test]
    fn addresses_bracket_ipv6_hosts() {
        use crate::client::{bracket_host, host_port};
        assert_eq!(host_port("::1", 6381), "[::1]:6381");
        assert_eq!(host_port("[::1]", 6381), "[::1]:6381");
        assert_eq!(host_port("localhost", 1), "localhost:1");
        assert_eq!(bracket_host("fe80::1"), "[fe80::1]");
    }

    #[test]
    fn encoding_round_trips() {
        for id in ["chopin", "a b/c?d&e=f%g", "café", "x+y"] {
            let enc = percent_encode(id);
            assert!(!enc.contains(' ') && !enc.contains('/') && !enc.contains('?'));
            assert_eq!(percent_decode(&enc, "x").unwrap(), id);
        }
    }
}
