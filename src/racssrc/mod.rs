// SPDX-License-Identifier: MPL-2.0
//! `racssrc`: extracts a time range of a RACS stream as raw S16LE/S24LE audio.

use gst::glib;
use gst::prelude::*;

mod imp;

/// What racssrc does where the server lost blocks (a table it had not written when it crashed or
/// shut down): the samples there are gone.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRacsSrcHolePolicy")]
pub enum HolePolicy {
    /// Warn (naming the position and the length) and send a GAP event covering the hole, so
    /// the timeline downstream stays true.
    #[default]
    #[enum_value(
        name = "Gap: warn and send a GAP event over the lost samples",
        nick = "gap"
    )]
    Gap = 0,
    /// Stop with an error at the hole.
    #[enum_value(name = "Error: stop with an error at the lost samples", nick = "error")]
    Error = 1,
}

/// What a live-edge follower does when it falls behind the writer (a stall of the server, the
/// network, the CPU or downstream).
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRacsSrcCatchUp")]
pub enum CatchUp {
    /// Post a QoS message and a warning, and go on from the live edge: the audio in between is
    /// left out and the next buffer is a DISCONT, its timestamp still its capture time.
    #[default]
    #[enum_value(
        name = "Drop: say so and go on from the live edge, leaving out what lies before it",
        nick = "drop"
    )]
    Drop = 0,
    /// Post a QoS message and a warning, and deliver every sample (late).
    #[enum_value(name = "Keep: say so and deliver every sample, late", nick = "keep")]
    Keep = 1,
}

glib::wrapper! {
    pub struct RacsSrc(ObjectSubclass<imp::RacsSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object,
        @implements gst::URIHandler;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    HolePolicy::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    CatchUp::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "racssrc",
        gst::Rank::NONE,
        RacsSrc::static_type(),
    )
}
