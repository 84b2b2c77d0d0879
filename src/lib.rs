// SPDX-License-Identifier: MPL-2.0
//! GStreamer plugin `racs`: `racssink` stores PCM in a RACS stream, `racssrc` extracts it again.

pub mod client;
mod props;
mod racssink;
mod racssrc;
mod uri;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    racssink::register(plugin)?;
    racssrc::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    racs,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("RACS_PLUGIN_ORIGIN"),
    env!("BUILD_REL_DATE")
);
