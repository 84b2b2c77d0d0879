//! Shared by the integration tests: GStreamer set-up with the plugin registered statically.
#![allow(dead_code)]

use std::sync::Once;

/// Initialises GStreamer once and registers the `racs` plugin from this crate.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer failed to initialise");
        gstracs::plugin_register_static().expect("the racs plugin failed to register");
    });
}
