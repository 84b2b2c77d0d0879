// SPDX-License-Identifier: MPL-2.0
//! `racssrc`: extracts a time range of a RACS stream as raw S16LE/S24LE audio.

use gst::glib;
use gst::prelude::*;

mod imp;
pub mod narrow;

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

glib::wrapper! {
    pub struct RacsSrc(ObjectSubclass<imp::RacsSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object,
        @implements gst::URIHandler;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    HolePolicy::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "racssrc",
        gst::Rank::NONE,
        RacsSrc::static_type(),
    )
}
