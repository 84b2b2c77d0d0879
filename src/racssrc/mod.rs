// SPDX-License-Identifier: MPL-2.0
//! `racssrc`: extracts a time range of a RACS stream as raw S16LE/S24LE audio.

use gst::glib;
use gst::prelude::*;

mod imp;
pub mod narrow;

glib::wrapper! {
    pub struct RacsSrc(ObjectSubclass<imp::RacsSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object,
        @implements gst::URIHandler;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "racssrc",
        gst::Rank::NONE,
        RacsSrc::static_type(),
    )
}
