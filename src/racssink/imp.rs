// SPDX-License-Identifier: MPL-2.0
//! racssink: a thin BaseSink over [`StreamWriter`]. GStreamer's world (caps, segments, GAP
//! events, EOS, flushing, state changes) is translated into writer calls here; the protocol
//! and the reconnect logic live in `client::writer`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use once_cell::sync::Lazy;

use super::{GapPolicy, IfExists, RecoveryPolicy, Timeline};
use crate::client::frame::{frames_to_ns, ns_to_frames_up};
use crate::client::pcm::pad_to_frame;
use crate::client::reader::format_unix_ms;
use crate::client::rotation::Rotation;
use crate::client::timeline::{Correction, WallClock};
use crate::client::writer::{
    self, Loss, LossKind, ReplayWindow, Restart, StreamWriter, WriteError, WriterConfig,
    WriterEvent, WriterStats, DEFAULT_CHUNK_BYTES, DEFAULT_SETTLE,
};
use crate::client::{block_on, host_port, validate_stream_id, Canceller, Error, StreamFormat};
use crate::{props, uri};

static CAT: Lazy<gst::DebugCategory> = Lazy::new(|| {
    gst::DebugCategory::new(
        "racssink",
        gst::DebugColorFlags::empty(),
        Some("RACS audio sink"),
    )
});

const DEFAULT_CHUNK_SIZE: u32 = DEFAULT_CHUNK_BYTES as u32;
const DEFAULT_CREATE_IF_MISSING: bool = true;
const DEFAULT_TAKEOVER: bool = false;
const DEFAULT_RETRY_TIMEOUT_MS: u32 = 10000;
const DEFAULT_REPLAY_WINDOW: &str = "auto";
/// The server's fixed connection table holds about 200 clients.
/// The caps query asks the server for a stored format; it must not hold up negotiation long.
const CAPS_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// A buffer that starts later than the samples written so far reach by more than this is a
/// gap (filled with silence under gap-policy=silence). Well under a frame of compressed audio,
/// well above timestamp rounding.
const GAP_THRESHOLD: gst::ClockTime = gst::ClockTime::from_useconds(500);
const DEFAULT_MAX_DRIFT_NS: u64 = 20_000_000;
const DEFAULT_MAX_FILL_NS: u64 = 600_000_000_000;
/// How often the timeline message is posted when nothing was corrected.
const TIMELINE_REPORT_EVERY: Duration = Duration::from_secs(10);
/// `racssink-timeline` after a correction comes at most this often (the counts it carries are
/// running totals): hundreds of sinks posting at every buffer of an overloaded machine keep
/// GStreamer's bus busy-waiting, every posting thread spinning behind a preempted one.
const TIMELINE_REPORT_MIN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
struct Settings {
    server: props::Server,
    stream_id: Option<String>,
    chunk_size: u32,
    create_if_missing: bool,
    if_exists: IfExists,
    takeover: bool,
    retry_timeout_ms: u32,
    gap_policy: GapPolicy,
    /// As set; parsed when the element starts (an invalid value is a settings error then).
    replay_window: String,
    recovery_policy: RecoveryPolicy,
    timeline: Timeline,
    max_drift_ns: u64,
    max_fill_ns: u64,
    /// Seconds per rotated stream; 0: no fixed period.
    rotate_s: u32,
}

impl props::HasServer for Settings {
    fn server(&mut self) -> &mut props::Server {
        &mut self.server
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server: Default::default(),
            stream_id: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            create_if_missing: DEFAULT_CREATE_IF_MISSING,
            if_exists: IfExists::default(),
            takeover: DEFAULT_TAKEOVER,
            retry_timeout_ms: DEFAULT_RETRY_TIMEOUT_MS,
            gap_policy: GapPolicy::default(),
            replay_window: DEFAULT_REPLAY_WINDOW.into(),
            recovery_policy: RecoveryPolicy::default(),
            timeline: Timeline::default(),
            max_drift_ns: DEFAULT_MAX_DRIFT_NS,
            max_fill_ns: DEFAULT_MAX_FILL_NS,
            rotate_s: 0,
        }
    }
}

impl Settings {
    fn timeout(&self) -> Duration {
        self.server.timeout()
    }

    /// The rotation asked for by strftime fields in the stream id or by `rotate`.
    fn rotation(&self) -> Result<Option<Rotation>, String> {
        let Some(id) = self.stream_id.as_deref() else {
            return Ok(None);
        };
        let pattern = Rotation::from_pattern(id).map_err(|e| format!("Invalid stream-id: {e}"))?;
        match (pattern, self.rotate_s) {
            (p, 0) => Ok(p),
            (Some(_), s) => Err(format!(
                "stream-id {id:?} has strftime fields and rotate={s} is set too: rotate \
                 streams either by the stream-id's time fields or by a fixed period, not both"
            )),
            (None, s) => Rotation::every(id, i64::from(s) * 1000)
                .map(Some)
                .map_err(|e| format!("Invalid rotate: {e}")),
        }
    }

    fn addr(&self) -> String {
        host_port(&self.server.host, self.server.port)
    }
}

/// The element's state: nothing between runs, a [`Run`] from start to stop.
#[derive(Debug, Default)]
enum State {
    #[default]
    Stopped,
    Started(Box<Run>),
}

/// What upstream is, settled at the first data (it must be linked to be asked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Upstream {
    #[default]
    Unknown,
    Settled {
        /// Upstream is live: buffers carry capture times.
        live: bool,
        /// The writers' recovery policy.
        policy: writer::RecoveryPolicy,
        /// The wall-clock timeline is in force.
        wall_clock: bool,
    },
}

/// One run, from start to stop.
#[derive(Debug, Default)]
struct Run {
    /// Created at the first caps with the settings of that moment.
    writer: Option<StreamWriter>,
    format: Option<StreamFormat>,
    gap_policy: GapPolicy,
    segment: Option<gst::FormattedSegment<gst::ClockTime>>,
    /// Running time of the first byte counted in `bytes_since_base`.
    base: Option<gst::ClockTime>,
    bytes_since_base: u64,
    upstream: Upstream,
    recovery_policy: RecoveryPolicy,
    /// Copied at start.
    timeline: Timeline,
    max_drift_ns: u64,
    max_fill_ns: u64,
    rotation: Option<Rotation>,
    /// Where the current rotated stream ends (epoch ms).
    next_boundary_ms: Option<i64>,
    /// The stream id of the period being written (the stream id when not rotating). The
    /// writer's own stream is a continuation of it after a pause beyond max-fill.
    period: Option<String>,
    /// samples timeline: the wall-clock time (ns) of the run's first sample and the sample
    /// frames stored since, which give every later sample's time.
    anchor_ns: Option<i128>,
    frames_total: u64,
    last_report: Option<std::time::Instant>,
    /// Caps refused with an error: basesink offers the sticky caps event again with the next
    /// buffer or event, which must not post the error (or connect) again.
    refused: Option<gst::Caps>,
    /// A correction since the last `racssink-timeline` message.
    report_due: bool,
}

impl Run {
    /// Upstream is live (known from the first data on).
    fn live(&self) -> bool {
        matches!(self.upstream, Upstream::Settled { live: true, .. })
    }

    /// The wall-clock timeline is in force (known from the first data on).
    fn wall_clock(&self) -> bool {
        matches!(
            self.upstream,
            Upstream::Settled {
                wall_clock: true,
                ..
            }
        )
    }

    /// The running time the next sample should have.
    fn expected(&self, format: &StreamFormat) -> Option<gst::ClockTime> {
        let frames = self.bytes_since_base / format.bytes_per_frame() as u64;
        let offset = format.frames_to_ns(frames);
        self.base
            .map(|base| base + gst::ClockTime::from_nseconds(offset))
    }
}

/// What [`RacsSink::correct`] did before a buffer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Corrected {
    /// Within max-drift: nothing.
    Kept,
    /// Silence inserted or sample frames left out.
    Done,
    /// A rotated stream's pause is longer than max-fill: continue in a new stream.
    NewStream { pause_ns: u128 },
}

#[derive(Debug, Clone, PartialEq)]
struct CapsCache {
    key: (String, u16, String),
    format: Option<StreamFormat>,
}

/// Counts of the wall-clock timeline, for stats and the `racssink-timeline` message.
#[derive(Debug, Default, Clone)]
struct TimelineStats {
    filled_frames: u64,
    dropped_frames: u64,
    corrections: u64,
    /// Stored minus capture time (ns) of the last buffer, before its correction.
    drift_ns: i64,
    max_abs_drift_ns: u64,
    rotations: u64,
}

/// A reconnect under way: from the first sign of it until the writer is writing again.
#[derive(Debug)]
struct Outage {
    since: Instant,
    /// What happened, as first seen.
    reason: String,
    server_restarted: bool,
}

pub struct RacsSink {
    settings: Mutex<Settings>,
    outage: Mutex<Option<Outage>>,
    timeline: Mutex<TimelineStats>,
    /// The stream being written (the name of the current period when rotating).
    current_id: Mutex<Option<String>>,
    state: Mutex<State>,
    /// Internally synchronised; `unlock()` touches nothing else.
    canceller: Canceller,
    stats: Arc<Mutex<WriterStats>>,
    caps_cache: Mutex<Option<CapsCache>>,
    /// The policy in force and the replay window in bytes, for the loss messages.
    recovery: Mutex<(writer::RecoveryPolicy, u64)>,
}

impl Default for RacsSink {
    fn default() -> Self {
        RacsSink {
            settings: Mutex::new(Settings::default()),
            outage: Mutex::new(None),
            timeline: Mutex::new(TimelineStats::default()),
            current_id: Mutex::new(None),
            state: Mutex::new(State::default()),
            canceller: Canceller::new(),
            stats: Arc::default(),
            caps_cache: Mutex::new(None),
            recovery: Mutex::new((writer::RecoveryPolicy::KeepAudio, 0)),
        }
    }
}

/// A write with no stream open: [`RacsSink::ensure_stream`] opens one first, so this is a bug
/// reported as an error rather than a panic.
fn not_open() -> WriteError {
    WriteError::InvalidSettings("racssink has no stream open to write to (a bug)".into())
}

fn bit_depth_of(format: gst_audio::AudioFormat) -> Option<u16> {
    match format {
        gst_audio::AudioFormat::S16le => Some(16),
        gst_audio::AudioFormat::S24le => Some(24),
        _ => None,
    }
}

fn audio_format_of(bit_depth: u16) -> gst_audio::AudioFormat {
    if bit_depth == 24 {
        gst_audio::AudioFormat::S24le
    } else {
        gst_audio::AudioFormat::S16le
    }
}

impl RacsSink {
    /// Posts `err` as an error message in the domain that fits it.
    fn post_write_error(&self, err: &WriteError, opening: bool) {
        let msg = err.to_string();
        match err {
            WriteError::InvalidSettings(_) => {
                gst::element_imp_error!(self, gst::ResourceError::Settings, ("{}", msg))
            }
            WriteError::Exists { .. } => {
                gst::element_imp_error!(self, gst::ResourceError::OpenWrite, ("{}", msg))
            }
            WriteError::NotFound { .. } => {
                gst::element_imp_error!(self, gst::ResourceError::NotFound, ("{}", msg))
            }
            WriteError::FormatMismatch { .. } => {
                gst::element_imp_error!(self, gst::StreamError::Format, ("{}", msg))
            }
            WriteError::AlreadyOpen { .. } | WriteError::TakenOver { .. } => {
                gst::element_imp_error!(self, gst::ResourceError::Busy, ("{}", msg))
            }
            _ if opening => {
                gst::element_imp_error!(self, gst::ResourceError::OpenWrite, ("{}", msg))
            }
            _ => gst::element_imp_error!(self, gst::ResourceError::Write, ("{}", msg)),
        }
    }

    fn on_writer_event(&self, event: WriterEvent) {
        match event {
            WriterEvent::Retrying { error, retry_for } => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "{error}; reconnecting for up to {} ms",
                    retry_for.as_millis()
                );
                if self.outage.lock().unwrap().is_some() {
                    return;
                }
                let (id, addr, _) = self.describe_bytes(0);
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "Lost the connection to the RACS server at {} while writing stream '{}' \
                         ({}); reconnecting for up to {} ms (retry-timeout), holding the audio \
                         meanwhile",
                        addr,
                        id,
                        error,
                        retry_for.as_millis()
                    )
                );
                *self.outage.lock().unwrap() = Some(Outage {
                    since: Instant::now(),
                    reason: error,
                    server_restarted: false,
                });
            }
            WriterEvent::Recovered => self.on_reconnected(),
            WriterEvent::Restarted(r) => {
                let first = {
                    let mut outage = self.outage.lock().unwrap();
                    match outage.as_mut() {
                        Some(o) => {
                            o.server_restarted = true;
                            false
                        }
                        None => {
                            *outage = Some(Outage {
                                since: Instant::now(),
                                reason: "the server no longer had the stream open: it \
                                         restarted"
                                    .into(),
                                server_restarted: true,
                            });
                            true
                        }
                    }
                };
                if first {
                    // The connection was replaced without an error (between two frames):
                    // nothing said so yet.
                    let (id, addr, _) = self.describe_bytes(0);
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Write,
                        (
                            "The RACS server at {} restarted while stream '{}' was being \
                             written (it no longer had the stream open); racssink reconnected, \
                             reopened it and checked what the server still holds",
                            addr,
                            id
                        )
                    );
                }
                self.on_restart(r)
            }
            WriterEvent::Loss(loss) => self.on_loss(loss),
            WriterEvent::Lag { lag_us } => {
                let id = self.stream_id();
                gst::info!(
                    CAT,
                    imp = self,
                    "after the restart, new audio of '{id}' is stored {:.3} s after its capture",
                    lag_us as f64 / 1e6
                );
                self.post_element(
                    gst::Structure::builder("racssink-lag")
                        .field("stream-id", id)
                        .field("lag-us", lag_us)
                        .build(),
                );
            }
            WriterEvent::Overlap {
                now_ms,
                kept_until_ms,
            } => {
                let (id, addr, _) = self.describe_bytes(0);
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "The RACS server at {} restarted the timeline of stream '{}' at {}, \
                         inside the time range of blocks it kept from before its crash (up to \
                         {}: this audio was written ahead of the wall clock); reading that range \
                         by time interleaves the two timelines",
                        addr,
                        id,
                        format_unix_ms(now_ms),
                        format_unix_ms(kept_until_ms)
                    )
                );
            }
            WriterEvent::TimeOffset { offset_us } => {
                let (id, addr, _) = self.describe_bytes(0);
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "recovery-policy=keep-time: stream '{}' on the RACS server at {} already \
                         has a timeline, on which this audio is stored {:.3} s {} its capture \
                         time; racssink keeps that difference constant (a new stream, or one \
                         that ended just before, stores it at its capture time)",
                        id,
                        addr,
                        (offset_us as f64 / 1e6).abs(),
                        if offset_us > 0 { "after" } else { "before" }
                    )
                );
            }
            WriterEvent::Reference { ref_ms, size } => {
                let id = self.stream_id();
                gst::info!(
                    CAT,
                    imp = self,
                    "stream '{id}' has ref {ref_ms} ms, size {size}"
                );
                let policy = match self.recovery.lock().unwrap().0 {
                    writer::RecoveryPolicy::KeepAudio => "keep-audio",
                    writer::RecoveryPolicy::KeepTime => "keep-time",
                };
                self.post_element(
                    gst::Structure::builder("racssink-ref")
                        .field("stream-id", id)
                        .field("ref-ms", ref_ms)
                        .field("size", size)
                        .field("recovery-policy", policy)
                        .build(),
                );
            }
        }
    }

    fn stream_id(&self) -> String {
        if let Some(id) = self.current_id.lock().unwrap().clone() {
            return id;
        }
        self.settings
            .lock()
            .unwrap()
            .stream_id
            .clone()
            .unwrap_or_default()
    }

    /// `racssink-stats`: the `stats` property, and the element message posted at EOS.
    fn stats_structure(&self) -> gst::Structure {
        let s = self.stats.lock().unwrap().clone();
        let t = self.timeline.lock().unwrap().clone();
        gst::Structure::builder("racssink-stats")
            .field("bytes-sent", s.bytes_sent)
            .field("bytes-acked", s.bytes_acked)
            .field("frames-sent", s.frames_sent)
            .field("frames-acked", s.frames_acked)
            .field("reconnects", s.reconnects)
            .field("silence-bytes", s.silence_bytes)
            .field("silence-duration", s.silence_ns())
            .field("rtt-avg-us", s.rtt_avg_us())
            .field("rtt-max-us", s.rtt_max_us)
            .field("lost-acked-bytes", s.lost_acked_bytes)
            .field("server-lost-bytes", s.server_lost_bytes)
            .field("replayed-bytes", s.replayed_bytes)
            .field("dropped-bytes", s.dropped_bytes)
            .field("dropped-duration", s.ns_of(s.dropped_bytes))
            .field("timeline-filled-frames", t.filled_frames)
            .field("timeline-dropped-frames", t.dropped_frames)
            .field("timeline-corrections", t.corrections)
            .field("timeline-drift", t.drift_ns)
            .field("rotations", t.rotations)
            .build()
    }

    fn post_element(&self, s: gst::Structure) {
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
    }

    /// Writing again after a reconnect: `racssink-reconnect` says what happened.
    fn on_reconnected(&self) {
        let outage = self.outage.lock().unwrap().take();
        let (id, addr, _) = self.describe_bytes(0);
        let (reason, restarted, took) = match outage {
            Some(o) => (o.reason, o.server_restarted, o.since.elapsed()),
            None => ("unknown".to_string(), false, Duration::ZERO),
        };
        gst::info!(
            CAT,
            imp = self,
            "writing '{id}' to {addr} again after {} ms ({reason})",
            took.as_millis()
        );
        let reconnects = self.stats.lock().unwrap().reconnects;
        self.post_element(
            gst::Structure::builder("racssink-reconnect")
                .field("stream-id", id)
                .field("address", addr)
                .field("reason", reason)
                .field("server-restarted", restarted)
                .field("outage", took.as_nanos() as u64)
                .field("reconnects", reconnects)
                .build(),
        );
    }

    fn on_restart(&self, r: Restart) {
        let (id, addr, lost_s) = self.describe_bytes(r.server_lost);
        gst::info!(
            CAT,
            imp = self,
            "stream '{id}' reopened on {addr}: the server lost {} acknowledged bytes ({lost_s:.3} \
             s), {} re-sent, new timeline: {}, server size {}",
            r.server_lost,
            r.replayed,
            r.new_epoch,
            r.server_size
        );
        if r.server_lost > 0 && r.replayed == r.server_lost {
            gst::element_imp_info!(
                self,
                gst::ResourceError::Write,
                (
                    "The RACS server at {} lost {} bytes ({:.3} s) of stream '{}' that it had \
                     acknowledged (it restarted after a crash); all of it is re-sent from the \
                     replay window, so the stream keeps every sample, stored later than it was \
                     captured",
                    addr,
                    r.server_lost,
                    lost_s,
                    id
                )
            );
        }
        self.post_element(
            gst::Structure::builder("racssink-restart")
                .field("stream-id", id)
                .field("server-lost-bytes", r.server_lost)
                .field("replayed-bytes", r.replayed)
                .field("new-timeline", r.new_epoch)
                .field("server-size", r.server_size)
                .build(),
        );
    }

    fn on_loss(&self, loss: Loss) {
        let (id, addr, seconds) = self.describe_bytes(loss.bytes);
        let start_ms = loss.start_us.div_euclid(1000);
        let start = format_unix_ms(start_ms);
        let end = format_unix_ms(start_ms + (loss.duration_ns / 1_000_000) as i64);
        let (policy, window) = *self.recovery.lock().unwrap();
        match loss.kind {
            // Counted in stats and racssink-timeline: a drifting source is no failure.
            LossKind::Dropped if loss.correction => gst::debug!(
                CAT,
                imp = self,
                "timeline=wall-clock left out {} bytes captured at {start} to stay within \
                 max-drift",
                loss.bytes
            ),
            LossKind::Lost => {
                let why = if policy == writer::RecoveryPolicy::KeepTime {
                    "recovery-policy=keep-time re-sends nothing, as re-sent audio would be stored \
                     away from its capture time"
                        .to_string()
                } else {
                    format!(
                        "it was older than the replay-window kept for re-sending ({window} bytes)"
                    )
                };
                let place = if loss.placed {
                    format!("the audio stored from {start} to {end} is missing from the stream")
                } else {
                    "they are not its newest blocks, so where they were in the stream is unknown"
                        .to_string()
                };
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "The RACS server at {} lost {} bytes ({:.3} s) of stream '{}' that it had \
                         acknowledged (it restarted after a crash): {}; {}",
                        addr,
                        loss.bytes,
                        seconds,
                        id,
                        place,
                        why
                    )
                );
            }
            LossKind::Dropped => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "recovery-policy=keep-time dropped {} bytes ({:.3} s) of stream '{}', \
                         captured from {} to {}: after the RACS server at {} came back it could \
                         no longer be stored within 50 ms of its capture time",
                        loss.bytes,
                        seconds,
                        id,
                        start,
                        end,
                        addr
                    )
                );
            }
        }
        self.post_element(
            gst::Structure::builder("racssink-loss")
                .field("stream-id", id)
                .field("kind", loss.kind.nick())
                .field("start", start)
                .field("start-us", loss.start_us)
                .field("duration", loss.duration_ns)
                .field("bytes", loss.bytes)
                .field("input-offset", loss.input_offset)
                .field("placed", loss.placed)
                .field("correction", loss.correction)
                .build(),
        );
    }

    fn describe_bytes(&self, bytes: u64) -> (String, String, f64) {
        let settings = self.settings.lock().unwrap().clone();
        let bps = self.stats.lock().unwrap().bytes_per_second.max(1);
        (self.stream_id(), settings.addr(), bytes as f64 / bps as f64)
    }

    fn progress(&self, kind: gst::ProgressType, text: &str) {
        let obj = self.obj();
        let _ = obj.post_message(
            gst::message::Progress::builder(kind, "open", text)
                .src(&*obj)
                .build(),
        );
    }

    /// The stored format of the configured stream, asked once per run with a short timeout;
    /// `None` when it does not exist or the server cannot be asked.
    fn stored_format(&self) -> Option<StreamFormat> {
        let settings = self.settings.lock().unwrap().clone();
        let id = settings.stream_id.clone()?;
        validate_stream_id(&id).ok()?;
        if !matches!(settings.rotation(), Ok(None)) {
            // Rotated: the stream id is a pattern; each period's stream takes the caps.
            return None;
        }
        let key = (
            settings.server.host.clone(),
            settings.server.port,
            id.clone(),
        );
        if let Some(cache) = self.caps_cache.lock().unwrap().as_ref() {
            if cache.key == key {
                return cache.format;
            }
        }
        let pool = settings.server.pool();
        let timeout = settings.timeout().min(CAPS_QUERY_TIMEOUT);
        let result = block_on(&self.canceller, async {
            let mut conn = pool.checkout(timeout).await?;
            conn.stream_info(&id).await
        });
        let format = match result {
            Ok(Some(info)) => match info.format() {
                Ok(format) => Some(format),
                Err(e) => {
                    gst::warning!(CAT, imp = self, "stream '{id}': {e}");
                    None
                }
            },
            Ok(None) => None,
            Err(Error::Cancelled) => return None,
            Err(e) => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "cannot ask for the stored format of '{id}': {e}"
                );
                None
            }
        };
        gst::debug!(CAT, imp = self, "stored format of '{id}': {format:?}");
        *self.caps_cache.lock().unwrap() = Some(CapsCache { key, format });
        format
    }

    fn settings_error(&self, settings: &Settings) -> Option<String> {
        if let Some(e) = &settings.server.uri_error {
            return Some(format!("Invalid uri: {e}"));
        }
        let Some(id) = settings.stream_id.as_ref() else {
            return Some(
                "No stream-id set: racssink needs the name of the RACS stream to write \
                 (stream-id=NAME, or the URI racs://host:port/NAME)"
                    .into(),
            );
        };
        if let Err(e) = validate_stream_id(id) {
            return Some(format!("Invalid stream-id: {e}"));
        }
        if settings.server.host.is_empty() {
            return Some("The host property is empty".into());
        }
        if let Err(e) = ReplayWindow::parse(&settings.replay_window) {
            return Some(format!("Invalid {e}"));
        }
        if let Err(e) = settings.rotation() {
            return Some(e);
        }
        if settings.if_exists == IfExists::Error && !settings.create_if_missing {
            return Some(format!(
                "if-exists=error and create-if-missing=false together refuse stream '{id}' \
                 whether it exists or not: set create-if-missing=true to have it created (and \
                 refused if it already exists), or if-exists=append to append to an existing \
                 stream"
            ));
        }
        None
    }

    fn new_writer(&self, settings: &Settings, id: &str) -> Result<StreamWriter, WriteError> {
        if let Some(msg) = self.settings_error(settings) {
            return Err(WriteError::InvalidSettings(msg));
        }
        let pool = settings.server.pool();
        let config = WriterConfig {
            stream_id: id.to_string(),
            chunk_bytes: settings.chunk_size as usize,
            create_if_missing: settings.create_if_missing,
            if_exists: match settings.if_exists {
                IfExists::Append => writer::IfExists::Append,
                IfExists::Error => writer::IfExists::Error,
            },
            takeover: settings.takeover,
            timeout: settings.timeout(),
            retry_timeout: Duration::from_millis(settings.retry_timeout_ms.into()),
            replay_window: ReplayWindow::parse(&settings.replay_window)
                .map_err(WriteError::InvalidSettings)?,
            // `auto` is settled at the first buffer, when upstream can say whether it is live.
            policy: match settings.recovery_policy {
                RecoveryPolicy::KeepTime => writer::RecoveryPolicy::KeepTime,
                _ => writer::RecoveryPolicy::KeepAudio,
            },
            settle: DEFAULT_SETTLE,
        };
        let mut writer =
            StreamWriter::new(pool, config, self.canceller.clone(), self.stats.clone())?;
        let weak = self.obj().downgrade();
        writer.set_observer(move |event| {
            if let Some(obj) = weak.upgrade() {
                obj.imp().on_writer_event(event);
            }
        });
        Ok(writer)
    }

    /// Opens stream `id` for `format` (creating its writer when there is none).
    fn open(&self, state: &mut Run, format: StreamFormat, id: &str) -> Result<(), WriteError> {
        let writer = match state.writer.take() {
            Some(w) => w,
            None => {
                let settings = self.settings.lock().unwrap().clone();
                state.gap_policy = settings.gap_policy;
                state.recovery_policy = settings.recovery_policy;
                let mut w = self.new_writer(&settings, id)?;
                if let Upstream::Settled { policy, live, .. } = state.upstream {
                    w.set_policy(policy);
                    // Back to back from a non-live source: each frame's acknowledgement is
                    // collected while the next one is gathered.
                    w.set_pipelined(!live);
                }
                *self.current_id.lock().unwrap() = Some(id.to_string());
                w
            }
        };
        let writer = state.writer.insert(writer);
        if writer.is_open() {
            writer.prepare(format)?;
            state.format = Some(format);
            return Ok(());
        }
        let what = format!(
            "stream '{}' on the RACS server at {}",
            writer.stream_id(),
            writer.addr()
        );
        self.progress(
            gst::ProgressType::Start,
            &format!("Connecting to {what} ({format})"),
        );
        match writer.prepare(format) {
            Ok(prepared) => {
                let how = if prepared.created {
                    "created".to_string()
                } else {
                    format!("appending after {} bytes", prepared.size)
                };
                let took_over = if prepared.took_over {
                    ", taken over"
                } else {
                    ""
                };
                gst::info!(
                    CAT,
                    imp = self,
                    "{what} open ({how}{took_over}), {} bytes per frame",
                    writer.chunk_bytes()
                );
                self.progress(
                    gst::ProgressType::Complete,
                    &format!("Opened {what} ({how}{took_over})"),
                );
                state.format = Some(format);
                let settings = self.settings.lock().unwrap().clone();
                if let Some(id) = settings.stream_id.filter(|_| state.rotation.is_none()) {
                    *self.caps_cache.lock().unwrap() = Some(CapsCache {
                        key: (settings.server.host, settings.server.port, id),
                        format: Some(format),
                    });
                }
                Ok(())
            }
            Err(WriteError::Cancelled) => {
                self.progress(gst::ProgressType::Canceled, &format!("Opening {what}"));
                Err(WriteError::Cancelled)
            }
            Err(e) => {
                self.progress(gst::ProgressType::Error, &format!("Opening {what}: {e}"));
                Err(e)
            }
        }
    }

    /// Stopping without EOS: sends what is held and CLOSEs, trying once (bounded by the
    /// timeout); a failure is a warning saying how much audio was not stored.
    fn store_held_and_close(&self) {
        let mut guard = self.state.lock().unwrap();
        let State::Started(state) = &mut *guard else {
            return;
        };
        state.base = None;
        let Some(writer) = state.writer.as_mut().filter(|w| w.is_open()) else {
            return;
        };
        // unlock_stop() has run by now; reset anyway, the waits here are bounded.
        self.canceller.reset();
        let unacked = writer.unacked_bytes();
        match writer.finish(false) {
            Ok(()) => gst::info!(CAT, imp = self, "stopped without EOS, stream closed"),
            Err(e) => {
                let (id, addr, seconds) = self.describe_bytes(unacked);
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "Stopping without EOS: could not store the last {} bytes ({:.3} s) of \
                         stream '{}' or close it on the RACS server at {}: {}",
                        unacked,
                        seconds,
                        id,
                        addr,
                        e
                    )
                );
            }
        }
    }

    fn flow_error(&self, err: WriteError, opening: bool) -> gst::FlowError {
        match err {
            WriteError::Cancelled => gst::FlowError::Flushing,
            err => {
                self.post_write_error(&err, opening);
                gst::FlowError::Error
            }
        }
    }

    /// Settles `recovery-policy=auto` at the first data: keep-time when upstream is live (its
    /// buffers carry capture times), keep-audio otherwise.
    fn settle_policy(&self, state: &mut Run) {
        if state.upstream != Upstream::Unknown {
            return;
        }
        let mut q = gst::query::Latency::new();
        let live = self.obj().sink_pad().peer_query(&mut q) && q.result().0;
        let policy = match state.recovery_policy {
            RecoveryPolicy::KeepTime => writer::RecoveryPolicy::KeepTime,
            RecoveryPolicy::KeepAudio => writer::RecoveryPolicy::KeepAudio,
            RecoveryPolicy::Auto if live => writer::RecoveryPolicy::KeepTime,
            RecoveryPolicy::Auto => writer::RecoveryPolicy::KeepAudio,
        };
        let wall_clock = match state.timeline {
            Timeline::Samples => false,
            // keep-audio asked for explicitly means "store all of it": no samples left out.
            Timeline::Auto => live && policy == writer::RecoveryPolicy::KeepTime,
            Timeline::WallClock if live => true,
            Timeline::WallClock => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Settings,
                    ("timeline=wall-clock needs a live source (its buffers carry capture \
                         times); upstream is not live, so samples are stored back to back")
                );
                false
            }
        };
        state.upstream = Upstream::Settled {
            live,
            policy,
            wall_clock,
        };
        gst::info!(
            CAT,
            imp = self,
            "timeline: {}",
            if wall_clock { "wall-clock" } else { "samples" }
        );
        if let Some(w) = state.writer.as_mut() {
            w.set_policy(policy);
            w.set_pipelined(!live);
            *self.recovery.lock().unwrap() = (policy, w.replay_window_bytes());
            gst::info!(
                CAT,
                imp = self,
                "upstream is {}live: recovery policy {policy:?}, replay window {} bytes",
                if live { "" } else { "not " },
                w.replay_window_bytes()
            );
        }
    }

    /// The wall-clock time (µs since the Unix epoch) at which the sample at `running_time` was
    /// captured, through the pipeline clock (meaningful for live sources only).
    fn capture_us(&self, running_time: gst::ClockTime) -> Option<i64> {
        let obj = self.obj();
        let clock = obj.clock()?;
        let base = obj.base_time()?;
        // The wall clock read between two readings of the pipeline clock: a thread preempted
        // in between (hundreds of streaming threads on a few cores) would shift the capture
        // time by as long as it waited, and a timeline corrected against that jitter flips
        // between leaving out and filling in at every buffer. The closest pair of a few tries
        // is used, the wall clock taken at its midpoint.
        let mut best: Option<(i64, i64, i64)> = None;
        for _ in 0..4 {
            let before = clock.time().nseconds() as i64;
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()?
                .as_micros() as i64;
            let after = clock.time().nseconds() as i64;
            let gap = after - before;
            if best.is_none_or(|b| gap < b.0) {
                best = Some((gap, before + gap / 2, wall));
            }
            if gap <= 200_000 {
                break;
            }
        }
        let (_, now, wall) = best?;
        let at = (base + running_time).nseconds() as i64;
        Some(wall - (now - at) / 1000)
    }

    /// Fills the timeline up to running time `until` with silence (gap-policy=silence).
    fn fill_until(&self, state: &mut Run, until: gst::ClockTime) -> Result<(), WriteError> {
        let Some(format) = state.format else {
            return Ok(());
        };
        let Some(expected) = state.expected(&format) else {
            state.base = Some(until);
            state.bytes_since_base = 0;
            return Ok(());
        };
        if until <= expected {
            return Ok(());
        }
        let gap = until - expected;
        let frames = format.ns_to_frames(gap.nseconds());
        let bytes = frames * format.bytes_per_frame() as u64;
        if bytes == 0 {
            return Ok(());
        }
        gst::debug!(
            CAT,
            imp = self,
            "gap of {gap} at {expected}: inserting {frames} frames of silence"
        );
        // Whole sample frames only, even if a buffer ended mid-frame.
        let pad = pad_to_frame(state.bytes_since_base, format.bytes_per_frame() as u64);
        let capture = if state.live() {
            self.capture_us(expected)
        } else {
            None
        };
        state
            .writer
            .as_mut()
            .ok_or_else(not_open)?
            .write_silence_at(bytes + pad, capture)?;
        state.bytes_since_base += bytes + pad;
        state.frames_total += (bytes + pad) / format.bytes_per_frame() as u64;
        Ok(())
    }

    /// Makes sure the stream for time `t_ns` (ns since the epoch) is open: the configured
    /// stream, or the rotated stream of the period holding `t_ns`. On a rotation the next
    /// stream is opened (and its timeline started) before the old one is closed.
    fn ensure_stream(
        &self,
        state: &mut Run,
        format: StreamFormat,
        t_ns: i128,
    ) -> Result<bool, WriteError> {
        if state.rotation.is_none() {
            // The common case, per buffer and without allocating: one stream, open.
            if let Some(w) = state.writer.as_ref().filter(|w| w.is_open()) {
                let settings = self.settings.lock().unwrap();
                let want = settings.stream_id.as_deref().unwrap_or_default();
                if state.period.as_deref().unwrap_or(w.stream_id()) == want {
                    return Ok(false);
                }
            }
        }
        let t_ms = t_ns.div_euclid(1_000_000) as i64;
        let want = match &state.rotation {
            Some(r) => r.name_at(t_ms),
            None => self
                .settings
                .lock()
                .unwrap()
                .stream_id
                .clone()
                .unwrap_or_default(),
        };
        let open = state.writer.as_ref().is_some_and(|w| w.is_open());
        // A writer opened at the caps (no rotation) serves its own stream.
        let period = state
            .period
            .clone()
            .or_else(|| state.writer.as_ref().map(|w| w.stream_id().to_string()));
        if period.as_deref() == Some(want.as_str()) && open {
            return Ok(false);
        }
        let old = if state.writer.is_some() && period.as_deref() != Some(want.as_str()) {
            state.writer.take()
        } else {
            None
        };
        self.open(state, format, &want)?;
        state.period = Some(want.clone());
        if let Some(r) = &state.rotation {
            state.next_boundary_ms = Some(r.next_boundary(t_ms));
        }
        let wall_clock = state.wall_clock();
        if let Some(w) = state.writer.as_mut().filter(|_| wall_clock) {
            w.bind_timeline()?;
        }
        if let Some(mut old) = old {
            let from = old.stream_id().to_string();
            old.finish(true)?;
            self.timeline.lock().unwrap().rotations += 1;
            gst::info!(
                CAT,
                imp = self,
                "rotated from '{from}' to '{want}' at {t_ms}"
            );
            self.post_element(
                gst::Structure::builder("racssink-rotate")
                    .field("from", from)
                    .field("to", want.clone())
                    .field("boundary-ms", t_ms)
                    .field("boundary", format_unix_ms(t_ms))
                    .field("reason", "period")
                    .build(),
            );
        }
        Ok(true)
    }

    /// Rotation after a pause longer than max-fill inside a period: the rest of the period
    /// goes to a new stream named after the period's and this first sample's time (`t_ns`),
    /// which racssrc joins after the period's stream.
    fn continue_in_new_stream(
        &self,
        state: &mut Run,
        format: StreamFormat,
        t_ns: i128,
        pause_ns: u128,
    ) -> Result<(), WriteError> {
        let t_ms = t_ns.div_euclid(1_000_000) as i64;
        let period = state.period.clone().unwrap_or_default();
        let name = Rotation::continuation_name(&period, t_ms);
        let mut old = state.writer.take();
        let from = old.as_ref().map(|w| w.stream_id().to_string());
        let stored_to = old
            .as_ref()
            .and_then(|w| w.next_stored_us())
            .map(|us| format_unix_ms(us.div_euclid(1000)));
        self.open(state, format, &name)?;
        let wall_clock = state.wall_clock();
        if let Some(w) = state.writer.as_mut().filter(|_| wall_clock) {
            w.bind_timeline()?;
        }
        if let Some(old) = old.as_mut() {
            old.finish(true)?;
        }
        let from = from.unwrap_or_default();
        self.timeline.lock().unwrap().rotations += 1;
        let (_, addr, _) = self.describe_bytes(0);
        gst::element_imp_info!(
            self,
            gst::ResourceError::Write,
            (
                "Stream '{}' on the RACS server at {} is stored up to {}, {:.3} s before this \
                 audio was captured ({}): more than max-fill, so the rest of its period goes to \
                 the new stream '{}' (racssrc reads the two as one)",
                from,
                addr,
                stored_to.as_deref().unwrap_or("its end"),
                pause_ns as f64 / 1e9,
                format_unix_ms(t_ms),
                name
            )
        );
        self.post_element(
            gst::Structure::builder("racssink-rotate")
                .field("from", from)
                .field("to", name)
                .field("boundary-ms", t_ms)
                .field("boundary", format_unix_ms(t_ms))
                .field("reason", "pause")
                .build(),
        );
        Ok(())
    }

    /// wall-clock timeline: before `pcm`, whose first sample was captured at `*t_ns`, is
    /// written, brings the stored time of the next sample within max-drift of it: silence
    /// where the stored timeline is behind, sample frames left out of `pcm` where it is ahead.
    fn correct(
        &self,
        state: &mut Run,
        format: StreamFormat,
        t_ns: &mut i128,
        pcm: &mut &[u8],
    ) -> Result<Corrected, WriteError> {
        let bpf = format.bytes_per_frame() as u64;
        let rate = format.sample_rate;
        let (max_drift_ns, max_fill_ns) = (state.max_drift_ns, state.max_fill_ns);
        let rotating = state.rotation.is_some();
        let writer = state.writer.as_mut().ok_or_else(not_open)?;
        writer.bind_timeline()?;
        let Some(stored_us) = writer.next_stored_us() else {
            return Ok(Corrected::Kept);
        };
        let stored_ns = i128::from(stored_us) * 1000;
        let wc = WallClock { rate, max_drift_ns };
        let drift = stored_ns - *t_ns;
        let correction = wc.correct(stored_ns, *t_ns);
        {
            let mut t = self.timeline.lock().unwrap();
            t.drift_ns = drift.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
            t.max_abs_drift_ns = t
                .max_abs_drift_ns
                .max(drift.unsigned_abs().min(u64::MAX.into()) as u64);
        }
        match correction {
            Correction::Keep => return Ok(Corrected::Kept),
            Correction::Fill(n) => {
                let ns = u128::from(frames_to_ns(n, rate));
                if ns > u128::from(max_fill_ns) && rotating {
                    return Ok(Corrected::NewStream { pause_ns: ns });
                }
                if ns > u128::from(max_fill_ns) {
                    let stored_ms = stored_us.div_euclid(1000);
                    let capture_ms = t_ns.div_euclid(1_000_000) as i64;
                    return Err(WriteError::InvalidSettings(format!(
                        "stream '{}' on the RACS server at {} is stored up to {}, {:.3} s before \
                         this audio was captured ({}): filling that pause with silence would \
                         exceed max-fill ({:.3} s); raise max-fill, write to another stream-id, \
                         or rotate streams (strftime fields in stream-id, or rotate), which \
                         starts a new stream after such a pause",
                        writer.stream_id(),
                        writer.addr(),
                        format_unix_ms(stored_ms),
                        ns as f64 / 1e9,
                        format_unix_ms(capture_ms),
                        max_fill_ns as f64 / 1e9,
                    )));
                }
                gst::debug!(
                    CAT,
                    imp = self,
                    "stored timeline {drift} ns behind capture: {n} frames of silence"
                );
                let from_us = ((*t_ns - ns as i128) / 1000) as i64;
                writer.write_silence_at(n * bpf, Some(from_us))?;
                state.frames_total += n;
                self.timeline.lock().unwrap().filled_frames += n;
            }
            Correction::Drop(n) => {
                // The oldest audio not sent yet goes first (what is held), then the start of
                // this buffer, so what is stored stays contiguous around the hole.
                let rest = writer.drop_for_timeline(n * bpf) / bpf;
                let have = pcm.len() as u64 / bpf;
                let from_pcm = rest.min(have);
                gst::debug!(
                    CAT,
                    imp = self,
                    "stored timeline {drift} ns ahead of capture: leaving out {} frames",
                    n - rest + from_pcm
                );
                writer.skip_input(from_pcm * bpf, Some((*t_ns / 1000) as i64));
                *pcm = &pcm[(from_pcm * bpf) as usize..];
                *t_ns += i128::from(frames_to_ns(from_pcm, rate));
                self.timeline.lock().unwrap().dropped_frames += n - rest + from_pcm;
            }
        }
        self.timeline.lock().unwrap().corrections += 1;
        state.report_due = true;
        Ok(Corrected::Done)
    }

    /// Posts `racssink-timeline` after a correction and every 10 s.
    fn report_timeline(&self, state: &mut Run) {
        let due = match state.last_report.map(|t| t.elapsed()) {
            None => true,
            Some(e) => e >= TIMELINE_REPORT_EVERY || (state.report_due && e >= TIMELINE_REPORT_MIN),
        };
        if !due {
            return;
        }
        state.report_due = false;
        state.last_report = Some(std::time::Instant::now());
        let t = self.timeline.lock().unwrap().clone();
        self.post_element(
            gst::Structure::builder("racssink-timeline")
                .field("stream-id", self.stream_id())
                .field("drift", t.drift_ns)
                .field("max-drift-seen", t.max_abs_drift_ns)
                .field("filled-frames", t.filled_frames)
                .field("dropped-frames", t.dropped_frames)
                .field("corrections", t.corrections)
                .field("rotations", t.rotations)
                .build(),
        );
    }

    /// Writes one buffer's audio, whose first sample is at `t_ns` (capture time with the
    /// wall-clock timeline, the sample count's time otherwise): corrected to the wall clock,
    /// and cut at every rotation boundary it spans, the sample at the boundary first in the
    /// next stream.
    fn write_timed(
        &self,
        state: &mut Run,
        format: StreamFormat,
        mut t_ns: i128,
        capture_us: Option<i64>,
        mut pcm: &[u8],
    ) -> Result<(), WriteError> {
        let bpf = format.bytes_per_frame() as u64;
        let mut capture = capture_us;
        loop {
            let rotated = self.ensure_stream(state, format, t_ns)?;
            let fresh_cut = rotated && state.frames_total > 0;
            // Right after a cut into a new stream nothing is left out, so the seam keeps every
            // sample; the next buffer corrects what remains.
            if state.wall_clock() && capture.is_some() && !fresh_cut {
                let before = pcm.len();
                match self.correct(state, format, &mut t_ns, &mut pcm)? {
                    Corrected::NewStream { pause_ns } => {
                        self.continue_in_new_stream(state, format, t_ns, pause_ns)?;
                        continue;
                    }
                    Corrected::Kept | Corrected::Done => {}
                }
                if pcm.len() != before {
                    capture = Some((t_ns / 1000) as i64);
                }
            }
            let frames = pcm.len() as u64 / bpf;
            let cut = state.next_boundary_ms.map(|b| {
                let to = i128::from(b) * 1_000_000 - t_ns;
                // The first sample at or after the boundary.
                ns_to_frames_up(to.clamp(0, u64::MAX.into()) as u64, format.sample_rate)
            });
            let head = match cut {
                Some(k) if k < frames => k,
                _ => frames,
            };
            let bytes = if head == frames {
                pcm.len()
            } else {
                (head * bpf) as usize
            };
            let writer = state.writer.as_mut().ok_or_else(not_open)?;
            writer.write_at(&pcm[..bytes], capture)?;
            state.frames_total += head;
            if bytes == pcm.len() {
                return Ok(());
            }
            pcm = &pcm[bytes..];
            t_ns += i128::from(format.frames_to_ns(head));
            // Exactly on the boundary, whatever the rounding above.
            if let Some(b) = state.next_boundary_ms {
                t_ns = t_ns.max(i128::from(b) * 1_000_000);
            }
            capture = capture.map(|_| (t_ns / 1000) as i64);
        }
    }

    /// Checks a buffer's running time against the samples written so far.
    fn track(&self, state: &mut Run, running_time: gst::ClockTime) -> Result<(), WriteError> {
        let Some(format) = state.format else {
            return Ok(());
        };
        match state.expected(&format) {
            None => {
                state.base = Some(running_time);
                state.bytes_since_base = 0;
            }
            Some(expected) if running_time > expected + GAP_THRESHOLD => {
                if state.gap_policy == GapPolicy::Silence {
                    self.fill_until(state, running_time)?;
                }
            }
            Some(expected) if running_time + GAP_THRESHOLD < expected => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "buffer at {running_time} overlaps what was written up to {expected}; \
                     writing it anyway"
                );
            }
            Some(_) => {}
        }
        Ok(())
    }
}

#[glib::object_subclass]
impl ObjectSubclass for RacsSink {
    const NAME: &'static str = "GstRacsSink";
    type Type = super::RacsSink;
    type ParentType = gst_base::BaseSink;
    type Interfaces = (gst::URIHandler,);
}

impl ObjectImpl for RacsSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: Lazy<Vec<glib::ParamSpec>> = Lazy::new(|| {
            let mut props = props::server_properties().to_vec();
            props.extend([
                glib::ParamSpecString::builder("stream-id")
                    .nick("Stream ID")
                    .blurb(
                        "Name of the RACS stream to write (required). Any text except ', \\, |> \
                         and control characters",
                    )
                    .mutable_ready()
                    .build(),
                uri::property(),
                glib::ParamSpecUInt::builder("chunk-size")
                    .nick("Chunk size")
                    .blurb(
                        "Bytes of PCM per frame sent to the server, rounded down to whole sample \
                         frames and raised to at least 1 ms of audio; each frame is one stored \
                         block",
                    )
                    .minimum(1)
                    .maximum(65535)
                    .default_value(DEFAULT_CHUNK_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("create-if-missing")
                    .nick("Create if missing")
                    .blurb(
                        "Create the stream with the negotiated format if it does not exist; \
                         otherwise a missing stream is an error",
                    )
                    .default_value(DEFAULT_CREATE_IF_MISSING)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("if-exists", IfExists::default())
                    .nick("If exists")
                    .blurb(
                        "What to do when the stream already exists: append to it (its format \
                         must match), or error: fail before writing anything, so an import run \
                         twice cannot append a duplicate (needs create-if-missing=true)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("takeover")
                    .nick("Take over")
                    .blurb(
                        "Close and reopen a stream that is already open (left open by a writer \
                         that crashed). Without it, such a stream is an error; with it, a live \
                         writer on the same stream is cut off",
                    )
                    .default_value(DEFAULT_TAKEOVER)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("retry-timeout")
                    .nick("Retry timeout")
                    .blurb(
                        "Milliseconds to keep reconnecting after the connection or the server \
                         fails mid-stream before giving up with an error (0 = give up at once). \
                         Data is held meanwhile and nothing is lost or duplicated",
                    )
                    .default_value(DEFAULT_RETRY_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("gap-policy", GapPolicy::default())
                    .nick("Gap policy")
                    .blurb(
                        "What to store for timestamp gaps and GAP events: silence keeps the \
                         stored timeline on real time, none stores samples back to back",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("replay-window")
                    .nick("Replay window")
                    .blurb(
                        "Acknowledged audio kept to re-send what the server loses in a crash \
                         (keep-audio): auto (two server tables: 80 frames of chunk-size), a \
                         size (1048576, 512KiB, 4MiB) or a time (500ms, 10s); 0 keeps nothing",
                    )
                    .default_value(Some(DEFAULT_REPLAY_WINDOW))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(
                    "recovery-policy",
                    RecoveryPolicy::default(),
                )
                .nick("Recovery policy")
                .blurb(
                    "Where audio goes after the server restarted: keep-audio stores all of it in \
                     order (re-sending what the server lost), later than captured; keep-time \
                     stores every sample within 50 ms of its capture time, dropping a backlog; \
                     auto is keep-time for live sources, keep-audio otherwise",
                )
                .mutable_ready()
                .build(),
                glib::ParamSpecEnum::builder_with_default("timeline", Timeline::default())
                    .nick("Timeline")
                    .blurb(
                        "How stored times are kept: samples stores audio back to back (imports); \
                         wall-clock keeps every sample's stored time within max-drift of its \
                         capture time (UTC), inserting silence or leaving out sample frames; \
                         auto is wall-clock for live sources, samples otherwise",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("max-drift")
                    .nick("Maximum drift")
                    .blurb(
                        "wall-clock timeline: nanoseconds the stored time of a sample may differ \
                         from its capture time before racssink corrects it (at least 1 ms)",
                    )
                    .minimum(1_000_000)
                    .default_value(DEFAULT_MAX_DRIFT_NS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("max-fill")
                    .nick("Maximum fill")
                    .blurb(
                        "wall-clock timeline: the longest pause (ns) filled with silence, e.g. \
                         when appending to a stream after a restart; a longer one is an error, \
                         or with rotation starts a new stream for the rest of the period",
                    )
                    .default_value(DEFAULT_MAX_FILL_NS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("rotate")
                    .nick("Rotate")
                    .blurb(
                        "Start a new stream every this many seconds, aligned on the epoch (3600: \
                         on the hour), named stream-id-YYYYMMDDTHHMMSSZ; 0 = no fixed period \
                         (strftime fields in stream-id, UTC, also rotate)",
                    )
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "racssink-stats: bytes-sent, bytes-acked, frames-sent, frames-acked, \
                         reconnects, silence-bytes, silence-duration (ns), rtt-avg-us, \
                         rtt-max-us, lost-acked-bytes, server-lost-bytes, replayed-bytes, \
                         dropped-bytes, dropped-duration (ns), timeline-filled-frames, \
                         timeline-dropped-frames, timeline-corrections, timeline-drift (ns), \
                         rotations",
                    )
                    .read_only()
                    .build(),
            ]);
            props
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        if props::set_shared(&*self.obj(), *CAT, &self.settings, pspec, value) {
            return;
        }
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "stream-id" => {
                let id = value
                    .get::<Option<String>>()
                    .expect("type checked upstream");
                if let Some(Err(e)) = id.as_deref().map(validate_stream_id) {
                    // Kept so that starting fails with a clear message.
                    gst::error!(CAT, imp = self, "Invalid stream-id: {e}");
                }
                settings.stream_id = id;
            }
            "chunk-size" => settings.chunk_size = value.get().expect("type checked upstream"),
            "create-if-missing" => {
                settings.create_if_missing = value.get().expect("type checked upstream")
            }
            "takeover" => settings.takeover = value.get().expect("type checked upstream"),
            "if-exists" => settings.if_exists = value.get().expect("type checked upstream"),
            "retry-timeout" => {
                settings.retry_timeout_ms = value.get().expect("type checked upstream")
            }
            "gap-policy" => settings.gap_policy = value.get().expect("type checked upstream"),
            "replay-window" => {
                let text = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| DEFAULT_REPLAY_WINDOW.into());
                if let Err(e) = ReplayWindow::parse(&text) {
                    // Kept so that starting fails with a clear message.
                    gst::error!(CAT, imp = self, "Invalid {e}");
                }
                settings.replay_window = text;
            }
            "recovery-policy" => {
                settings.recovery_policy = value.get().expect("type checked upstream")
            }
            "timeline" => settings.timeline = value.get().expect("type checked upstream"),
            "max-drift" => settings.max_drift_ns = value.get().expect("type checked upstream"),
            "max-fill" => settings.max_fill_ns = value.get().expect("type checked upstream"),
            "rotate" => settings.rotate_s = value.get().expect("type checked upstream"),
            name => unimplemented!("property {name}"),
        }
        gst::debug!(CAT, imp = self, "{} set", pspec.name());
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.stats_structure().to_value();
        }
        if let Some(v) = props::get_shared(&*self.obj(), &self.settings, pspec) {
            return v;
        }
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "stream-id" => settings.stream_id.to_value(),
            "chunk-size" => settings.chunk_size.to_value(),
            "create-if-missing" => settings.create_if_missing.to_value(),
            "takeover" => settings.takeover.to_value(),
            "if-exists" => settings.if_exists.to_value(),
            "retry-timeout" => settings.retry_timeout_ms.to_value(),
            "gap-policy" => settings.gap_policy.to_value(),
            "replay-window" => settings.replay_window.to_value(),
            "recovery-policy" => settings.recovery_policy.to_value(),
            "timeline" => settings.timeline.to_value(),
            "max-drift" => settings.max_drift_ns.to_value(),
            "max-fill" => settings.max_fill_ns.to_value(),
            "rotate" => settings.rotate_s.to_value(),
            name => unimplemented!("property {name}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        // Storing is not playback: write as fast as data comes.
        self.obj().set_sync(false);
    }
}

impl GstObjectImpl for RacsSink {}

/// One racssink message on its way into a bus at a time, process-wide, each waiting at most
/// [`POST_GATE_WAIT`] for its turn.
///
/// A GStreamer bus queues messages in a lock-free queue whose writers busy-wait for every
/// earlier writer to finish: with hundreds of streaming threads posting at once on a few
/// cores (1,000 sinks starting together), each poster spins behind one that was preempted, and
/// the process stays at full CPU for minutes without a message getting through. Posters that
/// sleep here instead leave the CPU to the one posting. The wait is bounded, so a bus handler
/// that posts again, or waits for another racssink, delays a message at most that long and
/// never hangs it.
static POST_GATE: (Mutex<bool>, std::sync::Condvar) =
    (Mutex::new(false), std::sync::Condvar::new());
const POST_GATE_WAIT: Duration = Duration::from_millis(100);

fn gated<R>(post: impl FnOnce() -> R) -> R {
    let (lock, turn) = &POST_GATE;
    let took = {
        let deadline = Instant::now() + POST_GATE_WAIT;
        let mut busy = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if !*busy {
                *busy = true;
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            busy = turn
                .wait_timeout(busy, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    };
    let out = post();
    if took {
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = false;
        turn.notify_one();
    }
    out
}

impl ElementImpl for RacsSink {
    fn post_message(&self, msg: gst::Message) -> bool {
        gated(|| self.parent_post_message(msg))
    }

    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: Lazy<gst::subclass::ElementMetadata> = Lazy::new(|| {
            gst::subclass::ElementMetadata::new(
                "RACS sink",
                "Sink/Audio/Network",
                "Stores raw S16LE/S24LE audio in a stream on a RACS (Remote Audio Caching \
                 Server)",
                "gst-plugin-racs contributors",
            )
        });
        Some(&*METADATA)
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        let ret = self.parent_change_state(transition)?;
        if transition == gst::StateChange::PausedToReady {
            // The streaming thread has stopped. Store what is held and close now, while the
            // bus still delivers the warning if that fails (it is flushed on the way to NULL).
            self.store_held_and_close();
        }
        Ok(ret)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: Lazy<Vec<gst::PadTemplate>> = Lazy::new(|| {
            let caps = gst_audio::AudioCapsBuilder::new_interleaved()
                .format_list([gst_audio::AudioFormat::S16le, gst_audio::AudioFormat::S24le])
                .rate_range(1..=i32::MAX)
                .channels_range(1..=i32::from(u16::MAX))
                .build();
            vec![gst::PadTemplate::new(
                "sink",
                gst::PadDirection::Sink,
                gst::PadPresence::Always,
                &caps,
            )
            .expect("valid pad template")]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for RacsSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        if let Some(msg) = self.settings_error(&settings) {
            return Err(gst::error_msg!(gst::ResourceError::Settings, ("{}", msg)));
        }
        // Creates the shared pool now; connections are made lazily at the first caps.
        let _ = settings.server.pool();
        self.canceller.reset();
        *self.stats.lock().unwrap() = WriterStats::default();
        *self.outage.lock().unwrap() = None;
        *self.caps_cache.lock().unwrap() = None;
        *self.timeline.lock().unwrap() = TimelineStats::default();
        *self.current_id.lock().unwrap() = None;
        *self.state.lock().unwrap() = State::Started(Box::new(Run {
            timeline: settings.timeline,
            max_drift_ns: settings.max_drift_ns,
            max_fill_ns: settings.max_fill_ns,
            rotation: settings.rotation().ok().flatten(),
            ..Run::default()
        }));
        gst::info!(
            CAT,
            imp = self,
            "started for stream {:?} on {}",
            settings.stream_id,
            settings.addr()
        );
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // Normally done at PAUSED->READY already (see change_state).
        self.store_held_and_close();
        *self.state.lock().unwrap() = State::Stopped;
        Ok(())
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        self.canceller.cancel();
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        self.canceller.reset();
        Ok(())
    }

    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let template = self.obj().sink_pad().pad_template_caps();
        let stored = self.stored_format().map(|format| {
            gst_audio::AudioCapsBuilder::new_interleaved()
                .format(audio_format_of(format.bit_depth))
                .rate(format.sample_rate as i32)
                .channels(i32::from(format.channels))
                .build()
        });
        // The stored format is what a converter upstream should produce; converters ask
        // with a filter (what they can make). When the filter cannot meet the stored format,
        // or there is none (gst-launch checks links that way), answer the template: a
        // mismatching format then reaches set_caps and fails there with both formats named,
        // not as a bare "could not link".
        let caps = match (stored, filter) {
            (Some(stored), Some(filter)) if filter.can_intersect(&stored) => stored,
            _ => template,
        };
        Some(match filter {
            Some(filter) => filter.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
            None => caps,
        })
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::AcceptCaps(q) = query.view_mut() {
            // Anything the template allows is accepted, so that a format that does not match
            // an existing stream reaches set_caps and fails there with both formats named,
            // instead of a bare not-negotiated.
            let template = self.obj().sink_pad().pad_template_caps();
            let ok = q.caps().is_subset(&template);
            q.set_result(ok);
            return true;
        }
        BaseSinkImplExt::parent_query(self, query)
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        // Read the fields directly: AudioInfo refuses more than 2 channels without a
        // channel-mask, which RACS neither stores nor needs.
        let s = caps
            .structure(0)
            .ok_or_else(|| gst::loggable_error!(CAT, "empty caps"))?;
        let parsed = (
            s.get::<&str>("format").ok(),
            s.get::<i32>("rate").ok(),
            s.get::<i32>("channels").ok(),
        );
        let (Some(audio_format), Some(rate), Some(channels)) = parsed else {
            return Err(gst::loggable_error!(CAT, "incomplete caps {caps}"));
        };
        if let State::Started(run) = &*self.state.lock().unwrap() {
            if run.refused.as_ref() == Some(caps) {
                return Err(gst::loggable_error!(CAT, "{caps} refused already"));
            }
        }
        let Some(bit_depth) = bit_depth_of(gst_audio::AudioFormat::from_string(audio_format))
        else {
            return Err(gst::loggable_error!(CAT, "unsupported format in {caps}"));
        };
        let format = match u16::try_from(channels)
            .map_err(|_| Error::InvalidArgument(format!("{channels} channels is too many")))
            .and_then(|channels| StreamFormat::new(rate.max(0) as u32, channels, bit_depth))
        {
            Ok(format) => format,
            Err(e) => {
                gst::element_imp_error!(self, gst::StreamError::Format, ("{}", e));
                if let State::Started(run) = &mut *self.state.lock().unwrap() {
                    run.refused = Some(caps.clone());
                }
                return Err(gst::loggable_error!(CAT, "{e}"));
            }
        };
        let mut guard = self.state.lock().unwrap();
        let State::Started(state) = &mut *guard else {
            return Err(gst::loggable_error!(CAT, "caps before start"));
        };
        let res = if state.rotation.is_some() {
            // Each period's stream is opened when its first sample arrives.
            let prepared = match state.writer.as_mut() {
                Some(w) => w.prepare(format).map(|_| ()),
                None => Ok(()),
            };
            if prepared.is_ok() {
                state.format = Some(format);
            }
            prepared
        } else {
            let id = self.stream_id();
            self.open(state, format, &id)
        };
        match res {
            Ok(()) => Ok(()),
            Err(WriteError::Cancelled) => Err(gst::loggable_error!(CAT, "cancelled")),
            Err(e) => {
                state.refused = Some(caps.clone());
                self.post_write_error(&e, true);
                Err(gst::loggable_error!(CAT, "{e}"))
            }
        }
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut guard = self.state.lock().unwrap();
        let State::Started(state) = &mut *guard else {
            return Err(gst::FlowError::Flushing);
        };
        let Some(format) = state.format else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ("received data before the format (caps)")
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        self.settle_policy(state);
        let running_time = match (buffer.pts(), state.segment.as_ref()) {
            (Some(pts), Some(segment)) => segment.to_running_time(pts),
            _ => None,
        };
        let capture = running_time
            .filter(|_| state.live())
            .and_then(|rt| self.capture_us(rt));
        let wall = state.wall_clock() && capture.is_some();
        if state.rotation.is_none() && !state.writer.as_ref().is_some_and(|w| w.is_open()) {
            // Data after EOS (after a flushing seek, say): open the stream again to append.
            let id = self.stream_id();
            self.open(state, format, &id)
                .map_err(|e| self.flow_error(e, true))?;
        }
        // With the wall-clock timeline, gaps show in the capture times and are corrected there.
        if state.gap_policy == GapPolicy::Silence && !wall && state.writer.is_some() {
            if let Some(running_time) = running_time {
                self.track(state, running_time)
                    .map_err(|e| self.flow_error(e, false))?;
            }
        }
        let t_ns = match capture.filter(|_| wall) {
            Some(c) => i128::from(c) * 1000,
            None => {
                let anchor = *state.anchor_ns.get_or_insert_with(|| {
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as i128)
                });
                anchor + i128::from(format.frames_to_ns(state.frames_total))
            }
        };
        let map = buffer.map_readable().map_err(|_| {
            gst::element_imp_error!(self, gst::CoreError::Failed, ("cannot map a buffer"));
            gst::FlowError::Error
        })?;
        gst::trace!(CAT, imp = self, "rendering {} bytes", map.len());
        let opening = state.writer.is_none();
        self.write_timed(state, format, t_ns, capture, &map)
            .map_err(|e| self.flow_error(e, opening))?;
        state.bytes_since_base += map.len() as u64;
        if wall {
            self.report_timeline(state);
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Segment(e) => {
                let segment = e.segment().downcast_ref::<gst::ClockTime>().cloned();
                if let State::Started(state) = &mut *self.state.lock().unwrap() {
                    state.segment = segment;
                }
            }
            gst::EventView::FlushStop(_) => {
                // Running times may restart: take the next buffer as the new base.
                if let State::Started(state) = &mut *self.state.lock().unwrap() {
                    state.base = None;
                }
            }
            gst::EventView::Gap(e) => {
                let mut guard = self.state.lock().unwrap();
                let State::Started(state) = &mut *guard else {
                    return false;
                };
                let (ts, duration) = e.get();
                let end = state
                    .segment
                    .as_ref()
                    .and_then(|s| s.to_running_time(ts))
                    .zip(duration)
                    .map(|(rt, d)| (rt, rt + d));
                let open = state.writer.as_ref().is_some_and(|w| w.is_open());
                if open {
                    self.settle_policy(state);
                }
                if let (Some((start, end)), true, GapPolicy::Silence) =
                    (end, open, state.gap_policy)
                {
                    if state.base.is_none() {
                        state.base = Some(start);
                        state.bytes_since_base = 0;
                    }
                    if let Err(e) = self.fill_until(state, end) {
                        if e != WriteError::Cancelled {
                            self.post_write_error(&e, false);
                        }
                        return false;
                    }
                }
            }
            gst::EventView::Eos(_) => {
                let mut guard = self.state.lock().unwrap();
                let writer = match &mut *guard {
                    State::Started(state) => state.writer.as_mut(),
                    State::Stopped => None,
                };
                if let Some(writer) = writer {
                    match writer.finish(true) {
                        Ok(()) => gst::info!(CAT, imp = self, "EOS: all data stored, closed"),
                        Err(WriteError::Cancelled) => return false,
                        Err(e) => {
                            self.post_write_error(&e, false);
                            return false;
                        }
                    }
                }
                drop(guard);
                // The run's final figures, on the bus before EOS.
                self.post_element(self.stats_structure());
            }
            _ => {}
        }
        self.parent_event(event)
    }
}

impl URIHandlerImpl for RacsSink {
    const URI_TYPE: gst::URIType = gst::URIType::Sink;

    fn protocols() -> &'static [&'static str] {
        &["racs"]
    }

    fn uri(&self) -> Option<String> {
        uri::format(&*self.obj())
    }

    fn set_uri(&self, uri: &str) -> Result<(), glib::Error> {
        let running =
            matches!(&*self.state.lock().unwrap(), State::Started(run) if run.writer.is_some());
        props::set_uri(
            &*self.obj(),
            *CAT,
            &self.settings,
            uri,
            "racssink",
            running,
            |key, text| match key {
                "replay-window" => ReplayWindow::parse(text).map(|_| ()),
                _ => Ok(()),
            },
        )
    }
}
