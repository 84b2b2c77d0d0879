// SPDX-License-Identifier: MPL-2.0
//! The `racs://host:port/stream-id?key=value&...` form of both elements' settings: parsed with
//! GLib's URI parser, applied through the elements' property definitions ([`apply`]) and written
//! back from them ([`format`]), so the URI, the properties and their checks are one layer.

use gst::glib;
use gst::prelude::*;

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

/// Properties the URI does not carry as query keys: the authority and path, and itself.
const IN_PLACE: [&str; 4] = ["host", "port", "stream-id", "uri"];

/// The properties a URI carries as query keys: the element's own (not a base class's) that are
/// readable and writable, in the order the element lists them.
fn query_properties(obj: &glib::Object) -> Vec<glib::ParamSpec> {
    obj.list_properties()
        .iter()
        .filter(|p| {
            p.owner_type() == obj.type_()
                && p.flags().contains(glib::ParamFlags::READWRITE)
                && !IN_PLACE.contains(&p.name())
        })
        .cloned()
        .collect()
}

/// A property value as a URI writes it (before percent-encoding): numbers and booleans as
/// `gst-launch-1.0` takes them, enums by nick, strings as they are; `None` for an unset string.
fn value_text(v: &glib::Value) -> Option<String> {
    use gst::prelude::*;
    if let Ok(b) = v.get::<bool>() {
        return Some(b.to_string());
    }
    if let Ok(n) = v.get::<u32>() {
        return Some(n.to_string());
    }
    if let Ok(n) = v.get::<u64>() {
        return Some(n.to_string());
    }
    if let Ok(n) = v.get::<i32>() {
        return Some(n.to_string());
    }
    if let Ok(n) = v.get::<i64>() {
        return Some(n.to_string());
    }
    if let Some((_, e)) = glib::EnumValue::from_value(v) {
        return Some(e.nick().to_string());
    }
    if let Ok(s) = v.get::<Option<String>>() {
        return s;
    }
    v.serialize().ok().map(|s| s.to_string())
}

/// Reads the URI value `text` of property `key` the way its definition says: booleans as
/// `true`/`false` (or `1`/`0`, `yes`/`no`), numbers within the property's range, enums by nick,
/// strings as they are, anything else as `gst-launch-1.0` would.
fn parse_value(pspec: &glib::ParamSpec, key: &str, text: &str) -> Result<glib::Value, String> {
    use gst::prelude::*;
    fn ranged<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display + ToValue>(
        key: &str,
        text: &str,
        min: T,
        max: T,
    ) -> Result<glib::Value, String> {
        text.parse::<T>()
            .ok()
            .filter(|v| *v >= min && *v <= max)
            .map(|v| v.to_value())
            .ok_or_else(|| format!("{key}={text:?}: expected a number in {min}..={max}"))
    }
    if pspec.downcast_ref::<glib::ParamSpecBoolean>().is_some() {
        return match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true.to_value()),
            "false" | "0" | "no" => Ok(false.to_value()),
            _ => Err(format!("{key}={text:?}: expected true or false")),
        };
    }
    if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt>() {
        return ranged(key, text, p.minimum(), p.maximum());
    }
    if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt64>() {
        return ranged(key, text, p.minimum(), p.maximum());
    }
    if let Some(p) = pspec.downcast_ref::<glib::ParamSpecInt>() {
        return ranged(key, text, p.minimum(), p.maximum());
    }
    if let Some(p) = pspec.downcast_ref::<glib::ParamSpecInt64>() {
        return ranged(key, text, p.minimum(), p.maximum());
    }
    if let Some(p) = pspec.downcast_ref::<glib::ParamSpecEnum>() {
        let class = p.enum_class();
        if let Some(v) = class.to_value_by_nick(text) {
            return Ok(v);
        }
        let nicks: Vec<&str> = class.values().iter().map(|v| v.nick()).collect();
        return Err(format!("{key}={text:?}: expected {}", one_of(&nicks, "or")));
    }
    if pspec.value_type() == glib::Type::STRING {
        return Ok(Some(text).to_value());
    }
    glib::Value::deserialize(text, pspec.value_type())
        .map_err(|_| format!("{key}={text:?}: not a valid {}", pspec.value_type().name()))
}

/// `a, b and c`.
fn one_of(items: &[&str], last: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., end] => format!("{} {last} {end}", rest.join(", ")),
    }
}

/// Applies `uri` to `obj` through its property definitions: `host`, `port` (`default_port`
/// when the URI has none) and `stream-id` from the URI's authority and path, and each query key
/// as the property of that name. `check` validates a property's text beyond its type (a stream
/// id's characters, a size's syntax) and gives the reason when it fails. Everything is checked
/// before anything is set, so a URI that fails changes nothing.
pub fn apply(
    obj: &impl IsA<glib::Object>,
    uri: &str,
    element: &str,
    default_port: u16,
    check: impl Fn(&str, &str) -> Result<(), String>,
) -> Result<(), String> {
    let obj = obj.upcast_ref::<glib::Object>();
    let parsed = parse(uri)?;
    check("stream-id", &parsed.stream_id).map_err(|e| format!("{uri}: {e}"))?;
    let mut values: Vec<(String, glib::Value)> = vec![
        ("host".into(), parsed.host.to_value()),
        (
            "port".into(),
            u32::from(parsed.port.unwrap_or(default_port)).to_value(),
        ),
        ("stream-id".into(), Some(parsed.stream_id).to_value()),
    ];
    let carried = query_properties(obj);
    for (key, text) in parsed.params {
        let Some(pspec) = carried.iter().find(|p| p.name() == key) else {
            let names: Vec<&str> = carried.iter().map(|p| p.name()).collect();
            return Err(format!(
                "{uri}: unknown URI parameter {key:?}; {element} takes {}",
                one_of(&names, "and")
            ));
        };
        let value = parse_value(pspec, &key, &text).map_err(|e| format!("{uri}: {e}"))?;
        check(&key, &text).map_err(|e| format!("{uri}: {e}"))?;
        values.push((key, value));
    }
    for (key, value) in values {
        obj.set_property_from_value(&key, &value);
    }
    Ok(())
}

/// The URI of `obj`'s settings: `racs://host:port/stream-id`, with every property a URI
/// carries that differs from its default as a query key, so that [`apply`] on the result gives
/// the same settings. `None` without a stream id.
pub fn format(obj: &impl IsA<glib::Object>) -> Option<String> {
    let obj = obj.upcast_ref::<glib::Object>();
    let id = obj.property::<Option<String>>("stream-id")?;
    let host = obj.property::<String>("host");
    let port = obj.property::<u32>("port");
    let mut uri = format!(
        "racs://{}/{}",
        crate::client::host_port(&host, port),
        percent_encode(&id)
    );
    let params: Vec<String> = query_properties(obj)
        .iter()
        .filter_map(|p| {
            let text = value_text(&obj.property_value(p.name()))?;
            (Some(&text) != value_text(p.default_value()).as_ref())
                .then(|| format!("{}={}", p.name(), percent_encode(&text)))
        })
        .collect();
    if !params.is_empty() {
        uri.push('?');
        uri.push_str(&params.join("&"));
    }
    Some(uri)
}

/// The `uri` property both elements have.
pub fn property() -> glib::ParamSpec {
    glib::ParamSpecString::builder("uri")
        .nick("URI")
        .blurb(
            "racs://host:port/stream-id?key=value&...: the server, the stream and any other \
             property in one; read back, it holds every property that differs from its default",
        )
        .mutable_ready()
        .build()
}

/// `set_uri` of both elements: the bare `racs://` that gst_element_make_from_uri() probes a
/// handler with is accepted as it is; anything else goes through [`apply`], with the stream
/// id checked and `check` for the element's own keys.
pub fn set(
    obj: &impl IsA<glib::Object>,
    uri: &str,
    element: &str,
    check: impl Fn(&str, &str) -> Result<(), String>,
) -> Result<(), glib::Error> {
    if uri.eq_ignore_ascii_case("racs://") {
        return Ok(());
    }
    let check = |key: &str, text: &str| match key {
        "stream-id" => crate::client::validate_stream_id(text).map_err(|e| e.to_string()),
        _ => check(key, text),
    };
    apply(obj, uri, element, crate::props::DEFAULT_PORT as u16, check)
        .map_err(|msg| glib::Error::new(gst::URIError::BadUri, &msg))
}

/// The `uri` property set: through the element's URI handler (which sets the other
/// properties). Why it was refused, if it was: the element keeps that so starting fails with it.
pub fn set_property(obj: &impl IsA<gst::URIHandler>, value: &glib::Value) -> Option<String> {
    let text = value.get::<Option<String>>().ok().flatten()?;
    obj.set_uri(&text).err().map(|e| e.to_string())
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

#[cfg(test)]
mod value_tests {
    use super::*;

    #[test]
    fn lists_read_as_prose() {
        assert_eq!(one_of(&[], "or"), "");
        assert_eq!(one_of(&["auto"], "or"), "auto");
        assert_eq!(one_of(&["a", "b"], "or"), "a or b");
        assert_eq!(
            one_of(&["auto", "samples", "wall-clock"], "or"),
            "auto, samples or wall-clock"
        );
    }

    #[test]
    fn values_are_read_the_way_their_property_says() {
        let boolean = glib::ParamSpecBoolean::builder("takeover").build();
        for (text, want) in [("true", true), ("YES", true), ("1", true), ("no", false)] {
            let v = parse_value(&boolean, "takeover", text).unwrap();
            assert_eq!(v.get::<bool>().unwrap(), want, "{text}");
        }
        let e = parse_value(&boolean, "takeover", "maybe").unwrap_err();
        assert_eq!(e, "takeover=\"maybe\": expected true or false");

        let uint = glib::ParamSpecUInt::builder("chunk-size")
            .minimum(1)
            .maximum(65535)
            .default_value(4096)
            .build();
        let v = parse_value(&uint, "chunk-size", "65535").unwrap();
        assert_eq!(v.get::<u32>().unwrap(), 65535);
        for bad in ["0", "65536", "-1", "4k", ""] {
            let e = parse_value(&uint, "chunk-size", bad).unwrap_err();
            assert_eq!(
                e,
                format!("chunk-size={bad:?}: expected a number in 1..=65535")
            );
        }
        let uint64 = glib::ParamSpecUInt64::builder("duration").build();
        let v = parse_value(&uint64, "duration", "18446744073709551615").unwrap();
        assert_eq!(v.get::<u64>().unwrap(), u64::MAX);
        let int = glib::ParamSpecInt::builder("i")
            .minimum(-5)
            .maximum(5)
            .build();
        assert_eq!(
            parse_value(&int, "i", "-5").unwrap().get::<i32>().unwrap(),
            -5
        );
        assert!(parse_value(&int, "i", "-6").is_err());
        let int64 = glib::ParamSpecInt64::builder("j").build();
        assert_eq!(
            parse_value(&int64, "j", "-9000000000")
                .unwrap()
                .get::<i64>()
                .unwrap(),
            -9_000_000_000
        );
        let string = glib::ParamSpecString::builder("start").build();
        let v = parse_value(&string, "start", "2026-01-09T10:00:00Z").unwrap();
        assert_eq!(
            v.get::<Option<String>>().unwrap().as_deref(),
            Some("2026-01-09T10:00:00Z")
        );
    }

    #[test]
    fn enums_are_read_and_written_by_nick() {
        let state = glib::ParamSpecEnum::builder_with_default("state", gst::State::Null).build();
        let v = parse_value(&state, "state", "paused").unwrap();
        assert_eq!(v.get::<gst::State>().unwrap(), gst::State::Paused);
        assert_eq!(value_text(&v).as_deref(), Some("paused"));
        let e = parse_value(&state, "state", "Paused").unwrap_err();
        assert_eq!(
            e,
            "state=\"Paused\": expected void-pending, null, ready, paused or playing"
        );
    }

    #[test]
    fn values_are_written_as_gst_launch_takes_them() {
        assert_eq!(value_text(&true.to_value()).as_deref(), Some("true"));
        assert_eq!(value_text(&4096u32.to_value()).as_deref(), Some("4096"));
        assert_eq!(
            value_text(&u64::MAX.to_value()).as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(value_text(&(-3i32).to_value()).as_deref(), Some("-3"));
        assert_eq!(value_text(&(-3i64).to_value()).as_deref(), Some("-3"));
        assert_eq!(value_text(&"a b".to_value()).as_deref(), Some("a b"));
        assert_eq!(value_text(&None::<String>.to_value()), None, "unset");
    }
}
