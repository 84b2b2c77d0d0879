// SPDX-License-Identifier: MPL-2.0
//! The properties both elements share: where the server is, how many connections the
//! plugin-global pool may open to it, and how long to wait for it.

use gst::glib;
use gst::prelude::*;

pub const DEFAULT_HOST: &str = "localhost";
pub const DEFAULT_PORT: u32 = 6381;
pub const DEFAULT_POOL_SIZE: u32 = 3;
/// The real server serves at most 199 clients at once (contract section 1).
pub const MAX_POOL_SIZE: u32 = 199;
pub const DEFAULT_TIMEOUT_MS: u32 = 5000;

/// `host`, `port`, `pool-size` and `timeout`, in that order.
pub fn server_properties() -> [glib::ParamSpec; 4] {
    [
        glib::ParamSpecString::builder("host")
            .nick("Host")
            .blurb("Host name or IP address of the RACS server")
            .default_value(Some(DEFAULT_HOST))
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("port")
            .nick("Port")
            .blurb("TCP port of the RACS server")
            .minimum(1)
            .maximum(65535)
            .default_value(DEFAULT_PORT)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("pool-size")
            .nick("Pool size")
            .blurb(
                "Most connections open at once to this server, shared by every racssink and \
                 racssrc in the process (the largest value asked for wins)",
            )
            .minimum(1)
            .maximum(MAX_POOL_SIZE)
            .default_value(DEFAULT_POOL_SIZE)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("timeout")
            .nick("Timeout")
            .blurb("Milliseconds to wait for a connection or for each reply")
            .minimum(1)
            .default_value(DEFAULT_TIMEOUT_MS)
            .mutable_ready()
            .build(),
    ]
}

/// The settings behind [`server_properties`] and the `uri` property's refusal, as both elements
/// keep them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub pool_size: u32,
    pub timeout_ms: u32,
    /// Why the last `uri` set as a property was refused: starting fails with it.
    pub uri_error: Option<String>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            host: DEFAULT_HOST.into(),
            port: DEFAULT_PORT as u16,
            pool_size: DEFAULT_POOL_SIZE,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            uri_error: None,
        }
    }
}

impl Server {
    /// Sets one of [`server_properties`]; false for any other property.
    pub fn set(&mut self, name: &str, value: &glib::Value) -> bool {
        match name {
            "host" => {
                self.host = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| DEFAULT_HOST.into())
            }
            "port" => self.port = value.get::<u32>().map_or(self.port, |p| p as u16),
            "pool-size" => self.pool_size = value.get().unwrap_or(self.pool_size),
            "timeout" => self.timeout_ms = value.get().unwrap_or(self.timeout_ms),
            _ => return false,
        }
        true
    }

    /// One of [`server_properties`]; `None` for any other property.
    pub fn get(&self, name: &str) -> Option<glib::Value> {
        Some(match name {
            "host" => self.host.to_value(),
            "port" => u32::from(self.port).to_value(),
            "pool-size" => self.pool_size.to_value(),
            "timeout" => self.timeout_ms.to_value(),
            _ => return None,
        })
    }

    /// The plugin-global pool for this server.
    pub fn pool(&self) -> std::sync::Arc<crate::client::Pool> {
        crate::client::Pool::get(&self.host, self.port, self.pool_size as usize)
    }

    /// The limit for connecting and for each request.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.timeout_ms.max(1)))
    }
}

/// An element's settings, which hold a [`Server`].
pub trait HasServer {
    fn server(&mut self) -> &mut Server;
}

/// Sets a property both elements share: one of [`server_properties`], or `uri` (which sets the
/// others through the element's own property definitions; a refused URI is kept, so that
/// starting fails with it). False for the element's own properties.
pub fn set_shared<S: HasServer>(
    obj: &(impl IsA<gst::URIHandler> + IsA<gst::Object>),
    cat: gst::DebugCategory,
    settings: &std::sync::Mutex<S>,
    pspec: &glib::ParamSpec,
    value: &glib::Value,
) -> bool {
    if pspec.name() == "uri" {
        // Not under the settings lock: the URI sets properties one by one.
        let refused = crate::uri::set_property(obj, value);
        if let Some(e) = &refused {
            gst::error!(cat, obj = obj, "{e}");
        }
        settings.lock().unwrap().server().uri_error = refused;
        return true;
    }
    settings.lock().unwrap().server().set(pspec.name(), value)
}

/// A property both elements share (see [`set_shared`]); `None` for the element's own.
pub fn get_shared<S: HasServer>(
    obj: &impl IsA<glib::Object>,
    settings: &std::sync::Mutex<S>,
    pspec: &glib::ParamSpec,
) -> Option<glib::Value> {
    if pspec.name() == "uri" {
        return Some(crate::uri::format(obj).to_value());
    }
    settings.lock().unwrap().server().get(pspec.name())
}

/// `URIHandler::set_uri` of both elements: refused while the element runs, else the URI's
/// settings applied through the property definitions (`check` refuses a value the element
/// would only refuse at start), and an earlier refused `uri` property forgotten.
pub fn set_uri<S: HasServer>(
    obj: &(impl IsA<gst::URIHandler> + IsA<gst::Object>),
    cat: gst::DebugCategory,
    settings: &std::sync::Mutex<S>,
    uri: &str,
    element: &str,
    running: bool,
    check: impl Fn(&str, &str) -> Result<(), String>,
) -> Result<(), glib::Error> {
    if running {
        return Err(glib::Error::new(
            gst::URIError::BadState,
            &format!("cannot change the URI of a running {element}: set it before starting"),
        ));
    }
    crate::uri::set(obj.upcast_ref::<gst::Object>(), uri, element, check)?;
    settings.lock().unwrap().server().uri_error = None;
    gst::info!(cat, obj = obj, "URI {uri} applied");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value of one of these properties as text, for comparing.
    fn text(v: &glib::Value) -> String {
        match v.get::<Option<String>>() {
            Ok(s) => format!("{s:?}"),
            Err(_) => v.get::<u32>().unwrap().to_string(),
        }
    }

    #[test]
    fn the_shared_properties_are_listed_with_their_defaults_and_ranges() {
        let specs = server_properties();
        let names: Vec<&str> = specs.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["host", "port", "pool-size", "timeout"]);
        let s = Server::default();
        for p in &specs {
            assert!(
                p.flags().contains(glib::ParamFlags::READWRITE),
                "{}",
                p.name()
            );
            // The default the property advertises is the one the settings start with.
            let default = p.default_value();
            let start = s.get(p.name()).unwrap();
            assert_eq!(text(default), text(&start), "{}", p.name());
        }
        let pool = specs[2].downcast_ref::<glib::ParamSpecUInt>().unwrap();
        assert_eq!((pool.minimum(), pool.maximum()), (1, MAX_POOL_SIZE));
        let port = specs[1].downcast_ref::<glib::ParamSpecUInt>().unwrap();
        assert_eq!((port.minimum(), port.maximum()), (1, 65535));
    }

    #[test]
    fn settings_round_trip_through_values() {
        let mut s = Server::default();
        for (name, value) in [
            ("host", "::1".to_value()),
            ("port", 7000u32.to_value()),
            ("pool-size", 8u32.to_value()),
            ("timeout", 250u32.to_value()),
        ] {
            assert!(s.set(name, &value), "{name}");
            assert_eq!(text(&s.get(name).unwrap()), text(&value), "{name}");
        }
        assert_eq!(
            (s.host.as_str(), s.port, s.pool_size, s.timeout_ms),
            ("::1", 7000, 8, 250)
        );
        assert_eq!(s.timeout(), std::time::Duration::from_millis(250));
        // Other properties are not these settings'.
        assert!(!s.set("stream-id", &"x".to_value()));
        assert!(s.get("stream-id").is_none());
        // An unset host is the default one.
        assert!(s.set("host", &None::<String>.to_value()));
        assert_eq!(s.host, DEFAULT_HOST);
        // A zero timeout (no property allows it) still waits a millisecond, never forever.
        s.timeout_ms = 0;
        assert_eq!(s.timeout(), std::time::Duration::from_millis(1));
    }
}
