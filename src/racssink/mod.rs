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

/// Where re-sent and held audio goes after the server restarted (the server alone picks the
/// times: after a kill, the next frame starts a new timeline at its arrival).
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRacsSinkRecoveryPolicy")]
pub enum RecoveryPolicy {
    /// keep-time for live sources, keep-audio for everything else.
    #[default]
    #[enum_value(
        name = "Auto: keep-time for live sources, keep-audio otherwise",
        nick = "auto"
    )]
    Auto = 0,
    /// Store all audio, in order: what the server lost is re-sent from the replay window, then
    /// what was held, later than its capture time.
    #[enum_value(
        name = "Keep audio: re-send what the server lost, store everything in order, later than \
                captured",
        nick = "keep-audio"
    )]
    KeepAudio = 1,
    /// Store every sample within 50 ms of its capture time: drop a live backlog up to the live
    /// edge and re-send nothing; dropped and lost audio is reported.
    #[enum_value(
        name = "Keep time: every stored sample within 50 ms of its capture time, a backlog is \
                dropped",
        nick = "keep-time"
    )]
    KeepTime = 2,
}

/// How the stored time of each sample is kept.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRacsSinkTimeline")]
pub enum Timeline {
    /// wall-clock for live sources, samples otherwise.
    #[default]
    #[enum_value(
        name = "Auto: wall-clock for live sources, samples otherwise",
        nick = "auto"
    )]
    Auto = 0,
    /// Samples back to back: the stored time follows the byte count (right for imports).
    #[enum_value(
        name = "Samples: stored back to back, time follows the byte count",
        nick = "samples"
    )]
    Samples = 1,
    /// The stored time of every sample within max-drift of its capture time (UTC): silence
    /// where the stored timeline falls behind, whole sample frames left out where it runs ahead.
    #[enum_value(
        name = "Wall clock: every sample stored within max-drift of its capture time",
        nick = "wall-clock"
    )]
    WallClock = 2,
}

/// What racssink does when the stream it is to write already exists.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRacsSinkIfExists")]
pub enum IfExists {
    /// Append to it (its format must match).
    #[default]
    #[enum_value(name = "Append: add to the existing stream", nick = "append")]
    Append = 0,
    /// Fail before writing anything, so that an import run twice cannot append a duplicate.
    #[enum_value(
        name = "Error: fail if the stream exists, write nothing",
        nick = "error"
    )]
    Error = 1,
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    GapPolicy::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    RecoveryPolicy::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Timeline::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    IfExists::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "racssink",
        gst::Rank::NONE,
        RacsSink::static_type(),
    )
}
