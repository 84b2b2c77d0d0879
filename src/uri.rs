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

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes; the result must be UTF-8.
pub fn percent_decode(s: &str, what: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val);
            let lo = bytes.get(i + 2).copied().and_then(hex_val);
            match (hi, lo) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => {
                    return Err(format!(
                        "bad percent escape at byte {i} of the {what} {s:?} (expected %XX with two \
                         hex digits)"
                    ))
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("the {what} {s:?} does not decode to UTF-8"))
}

/// Escapes everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses `racs://host[:port]/stream-id[?key=value&...]`. IPv6 hosts go in brackets.
pub fn parse(uri: &str) -> Result<RacsUri, String> {
    let rest = uri
        .split_once("://")
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("racs"))
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("{uri:?} is not a racs:// URI (racs://host:port/stream-id)"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').ok_or_else(|| {
        format!("{uri:?} names no stream: the form is racs://host:port/stream-id")
    })?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{uri:?}: an IPv6 host needs a closing ']'"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                format!("{uri:?}: expected ':port' after the IPv6 host, got {p:?}")
            })?),
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!(
            "{uri:?} names no host: the form is racs://host:port/stream-id"
        ));
    }
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{uri:?}: the port {p:?} is not a number in 1..=65535"))?,
        ),
    };
    let stream_id = percent_decode(path, "stream id")?;
    if stream_id.is_empty() {
        return Err(format!(
            "{uri:?} names no stream: the form is racs://host:port/stream-id"
        ));
    }
    let mut params = Vec::new();
    for pair in query
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
            ("racs://host:6381", "names no stream"),
            ("racs://host:6381/", "names no stream"),
            ("racs://:6381/x", "names no host"),
            ("racs://host:99999/x", "1..=65535"),
            ("racs://host:0/x", "1..=65535"),
            ("racs://host/x%2", "percent escape"),
            ("racs://host/x%ff", "UTF-8"),
            ("racs://host/x?takeover", "key=value"),
            ("racs://[::1/x", "closing ']'"),
        ] {
            let err = parse(uri).unwrap_err();
            assert!(err.contains(needle), "{uri}: {err}");
        }
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
