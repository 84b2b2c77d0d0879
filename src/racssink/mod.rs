// SPDX-License-Identifier: MPL-2.0
//! `racssink`: stores raw S16LE/S24LE audio in a RACS stream.

use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct RacsSink(ObjectSubclass<imp::RacsSink>)
        @extends gst_base::BaseSink, gst::Element, gst::Object,
        @implements gst::URIHandler;
}

/// What racssink does about holes in the timeline.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRacsSinkGapPolicy")]
pub enum GapPolicy {
    /// Fill timestamp gaps and GAP events with silence, so the stored timeline (whose block
    /// times are derived from the byte count) stays on real time.
    #[default]
    #[enum_value(
        name = "Silence: fill timestamp gaps and GAP events with silence",
        nick = "silence"
    )]
    Silence = 0,
    /// Store the samples back to back and ignore timestamps and GAP events.
    #[enum_value(
        name = "None: store samples back to back, ignore timestamps",
        nick = "none"
    )]
    None = 1,
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    GapPolicy::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "racssink",
        gst::Rank::NONE,
        RacsSink::static_type(),
    )
}
