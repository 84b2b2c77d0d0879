// SPDX-License-Identifier: MPL-2.0
//! racssink: a thin BaseSink over [`StreamWriter`]. GStreamer's world (caps, segments, GAP
//! events, EOS, flushing, state changes) is translated into writer calls here; the protocol
//! and the reconnect logic live in `client::writer`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use once_cell::sync::Lazy;

use super::{GapPolicy, RecoveryPolicy};
use crate::client::reader::format_unix_ms;
use crate::client::writer::{
    self, Loss, LossKind, ReplayWindow, Restart, StreamWriter, WriteError, WriterConfig,
    WriterEvent, WriterStats, DEFAULT_CHUNK_BYTES, DEFAULT_SETTLE,
};
use crate::client::{block_on, validate_stream_id, Canceller, Error, Pool, StreamFormat};
use crate::props::{
    DEFAULT_HOST, DEFAULT_POOL_SIZE, DEFAULT_PORT, DEFAULT_TIMEOUT_MS, MAX_POOL_SIZE,
};
use crate::uri;

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

#[derive(Debug, Clone, PartialEq)]
struct Settings {
    host: String,
    port: u16,
    stream_id: Option<String>,
    pool_size: u32,
    chunk_size: u32,
    create_if_missing: bool,
    takeover: bool,
    timeout_ms: u32,
    retry_timeout_ms: u32,
    gap_policy: GapPolicy,
    /// As set; parsed when the element starts (an invalid value is a settings error then).
    replay_window: String,
    recovery_policy: RecoveryPolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host: DEFAULT_HOST.into(),
            port: DEFAULT_PORT as u16,
            stream_id: None,
            pool_size: DEFAULT_POOL_SIZE,
            chunk_size: DEFAULT_CHUNK_SIZE,
            create_if_missing: DEFAULT_CREATE_IF_MISSING,
            takeover: DEFAULT_TAKEOVER,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            retry_timeout_ms: DEFAULT_RETRY_TIMEOUT_MS,
            gap_policy: GapPolicy::default(),
            replay_window: DEFAULT_REPLAY_WINDOW.into(),
            recovery_policy: RecoveryPolicy::default(),
        }
    }
}

impl Settings {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.into())
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Applies one `key=value` from a URI's query part.
    fn apply_param(&mut self, key: &str, value: &str) -> Result<(), String> {
        fn num(key: &str, value: &str, min: u32, max: u32) -> Result<u32, String> {
            value
                .parse::<u32>()
                .ok()
                .filter(|v| (min..=max).contains(v))
                .ok_or_else(|| format!("{key}={value:?}: expected a number in {min}..={max}"))
        }
        fn boolean(key: &str, value: &str) -> Result<bool, String> {
            match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(format!("{key}={value:?}: expected true or false")),
            }
        }
        match key {
            "pool-size" => self.pool_size = num(key, value, 1, MAX_POOL_SIZE)?,
            "chunk-size" => self.chunk_size = num(key, value, 1, 65535)?,
            "timeout" => self.timeout_ms = num(key, value, 1, u32::MAX)?,
            "retry-timeout" => self.retry_timeout_ms = num(key, value, 0, u32::MAX)?,
            "create-if-missing" => self.create_if_missing = boolean(key, value)?,
            "takeover" => self.takeover = boolean(key, value)?,
            "gap-policy" => {
                self.gap_policy = match value {
                    "silence" => GapPolicy::Silence,
                    "none" => GapPolicy::None,
                    _ => return Err(format!("gap-policy={value:?}: expected silence or none")),
                }
            }
            "replay-window" => {
                ReplayWindow::parse(value)?;
                self.replay_window = value.to_string();
            }
            "recovery-policy" => {
                self.recovery_policy = match value {
                    "auto" => RecoveryPolicy::Auto,
                    "keep-audio" => RecoveryPolicy::KeepAudio,
                    "keep-time" => RecoveryPolicy::KeepTime,
                    _ => {
                        return Err(format!(
                            "recovery-policy={value:?}: expected auto, keep-audio or keep-time"
                        ))
                    }
                }
            }
            _ => {
                return Err(format!(
                    "unknown URI parameter {key:?}; racssink takes pool-size, chunk-size, \
                     timeout, retry-timeout, create-if-missing, takeover, gap-policy, \
                     replay-window and recovery-policy"
                ))
            }
        }
        Ok(())
    }

    fn to_uri(&self) -> Option<String> {
        let id = self.stream_id.as_ref()?;
        let d = Settings::default();
        let mut params = Vec::new();
        if self.pool_size != d.pool_size {
            params.push(format!("pool-size={}", self.pool_size));
        }
        if self.chunk_size != d.chunk_size {
            params.push(format!("chunk-size={}", self.chunk_size));
        }
        if self.timeout_ms != d.timeout_ms {
            params.push(format!("timeout={}", self.timeout_ms));
        }
        if self.retry_timeout_ms != d.retry_timeout_ms {
            params.push(format!("retry-timeout={}", self.retry_timeout_ms));
        }
        if self.create_if_missing != d.create_if_missing {
            params.push(format!("create-if-missing={}", self.create_if_missing));
        }
        if self.takeover != d.takeover {
            params.push(format!("takeover={}", self.takeover));
        }
        if self.gap_policy != d.gap_policy {
            params.push("gap-policy=none".to_string());
        }
        if self.replay_window != d.replay_window {
            params.push(format!(
                "replay-window={}",
                uri::percent_encode(&self.replay_window)
            ));
        }
        if self.recovery_policy != d.recovery_policy {
            let nick = match self.recovery_policy {
                RecoveryPolicy::Auto => "auto",
                RecoveryPolicy::KeepAudio => "keep-audio",
                RecoveryPolicy::KeepTime => "keep-time",
            };
            params.push(format!("recovery-policy={nick}"));
        }
        let mut uri = format!("racs://{}/{}", self.addr(), uri::percent_encode(id));
        if !params.is_empty() {
            uri.push('?');
            uri.push_str(&params.join("&"));
        }
        Some(uri)
    }
}

/// One run, from the first caps to stop.
#[derive(Debug, Default)]
struct State {
    /// Created at the first caps with the settings of that moment.
    writer: Option<StreamWriter>,
    format: Option<StreamFormat>,
    gap_policy: GapPolicy,
    segment: Option<gst::FormattedSegment<gst::ClockTime>>,
    /// Running time of the first byte counted in `bytes_since_base`.
    base: Option<gst::ClockTime>,
    bytes_since_base: u64,
    /// Upstream is live (asked at the first buffer): buffers carry capture times.
    live: Option<bool>,
    recovery_policy: RecoveryPolicy,
}

impl State {
    /// The running time the next sample should have.
    fn expected(&self, format: &StreamFormat) -> Option<gst::ClockTime> {
        let frames = self.bytes_since_base / format.bytes_per_frame() as u64;
        let offset = (u128::from(frames) * 1_000_000_000 / u128::from(format.sample_rate)) as u64;
        self.base
            .map(|base| base + gst::ClockTime::from_nseconds(offset))
    }
}

#[derive(Debug, Clone, PartialEq)]
struct CapsCache {
    key: (String, u16, String),
    format: Option<StreamFormat>,
}

pub struct RacsSink {
    settings: Mutex<Settings>,
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
            state: Mutex::new(State::default()),
            canceller: Canceller::new(),
            stats: Arc::default(),
            caps_cache: Mutex::new(None),
            recovery: Mutex::new((writer::RecoveryPolicy::KeepAudio, 0)),
        }
    }
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
            WriterEvent::Retrying { error, retry_for } => gst::warning!(
                CAT,
                imp = self,
                "{error}; reconnecting for up to {} ms",
                retry_for.as_millis()
            ),
            WriterEvent::Recovered => gst::info!(CAT, imp = self, "writing again"),
            WriterEvent::Restarted(r) => self.on_restart(r),
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
        self.settings
            .lock()
            .unwrap()
            .stream_id
            .clone()
            .unwrap_or_default()
    }

    fn post_element(&self, s: gst::Structure) {
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
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
                .build(),
        );
    }

    fn describe_bytes(&self, bytes: u64) -> (String, String, f64) {
        let settings = self.settings.lock().unwrap().clone();
        let bps = self.stats.lock().unwrap().bytes_per_second.max(1);
        (
            settings.stream_id.clone().unwrap_or_default(),
            settings.addr(),
            bytes as f64 / bps as f64,
        )
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
        let key = (settings.host.clone(), settings.port, id.clone());
        if let Some(cache) = self.caps_cache.lock().unwrap().as_ref() {
            if cache.key == key {
                return cache.format;
            }
        }
        let pool = Pool::get(&settings.host, settings.port, settings.pool_size as usize);
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
        if settings.host.is_empty() {
            return Some("The host property is empty".into());
        }
        if let Err(e) = ReplayWindow::parse(&settings.replay_window) {
            return Some(format!("Invalid {e}"));
        }
        None
    }

    fn new_writer(&self, settings: &Settings) -> Result<StreamWriter, WriteError> {
        if let Some(msg) = self.settings_error(settings) {
            return Err(WriteError::InvalidSettings(msg));
        }
        let pool = Pool::get(&settings.host, settings.port, settings.pool_size as usize);
        let config = WriterConfig {
            stream_id: settings.stream_id.clone().unwrap_or_default(),
            chunk_bytes: settings.chunk_size as usize,
            create_if_missing: settings.create_if_missing,
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

    /// Opens the stream for `format` (creating the writer at the first caps).
    fn open(&self, state: &mut State, format: StreamFormat) -> Result<(), WriteError> {
        if state.writer.is_none() {
            let settings = self.settings.lock().unwrap().clone();
            state.gap_policy = settings.gap_policy;
            state.recovery_policy = settings.recovery_policy;
            state.writer = Some(self.new_writer(&settings)?);
        }
        let writer = state.writer.as_mut().expect("just set");
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
                if let Some(id) = settings.stream_id {
                    *self.caps_cache.lock().unwrap() = Some(CapsCache {
                        key: (settings.host, settings.port, id),
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
        let mut state = self.state.lock().unwrap();
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
    fn settle_policy(&self, state: &mut State) {
        if state.live.is_some() {
            return;
        }
        let mut q = gst::query::Latency::new();
        let live = self.obj().sink_pad().peer_query(&mut q) && q.result().0;
        state.live = Some(live);
        let policy = match state.recovery_policy {
            RecoveryPolicy::KeepTime => writer::RecoveryPolicy::KeepTime,
            RecoveryPolicy::KeepAudio => writer::RecoveryPolicy::KeepAudio,
            RecoveryPolicy::Auto if live => writer::RecoveryPolicy::KeepTime,
            RecoveryPolicy::Auto => writer::RecoveryPolicy::KeepAudio,
        };
        if let Some(w) = state.writer.as_mut() {
            w.set_policy(policy);
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
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_micros() as i64;
        let now = clock.time().nseconds() as i64;
        let at = (base + running_time).nseconds() as i64;
        Some(wall - (now - at) / 1000)
    }

    /// Fills the timeline up to running time `until` with silence (gap-policy=silence).
    fn fill_until(&self, state: &mut State, until: gst::ClockTime) -> Result<(), WriteError> {
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
        let frames = (u128::from(gap.nseconds()) * u128::from(format.sample_rate) + 500_000_000)
            / 1_000_000_000;
        let bytes = frames as u64 * format.bytes_per_frame() as u64;
        if bytes == 0 {
            return Ok(());
        }
        gst::debug!(
            CAT,
            imp = self,
            "gap of {gap} at {expected}: inserting {frames} frames of silence"
        );
        // Whole sample frames only, even if a buffer ended mid-frame.
        let misaligned = state.bytes_since_base % format.bytes_per_frame() as u64;
        let pad = if misaligned == 0 {
            0
        } else {
            format.bytes_per_frame() as u64 - misaligned
        };
        let capture = if state.live == Some(true) {
            self.capture_us(expected)
        } else {
            None
        };
        state
            .writer
            .as_mut()
            .expect("a format implies a writer")
            .write_silence_at(bytes + pad, capture)?;
        state.bytes_since_base += bytes + pad;
        Ok(())
    }

    /// Checks a buffer's running time against the samples written so far.
    fn track(&self, state: &mut State, running_time: gst::ClockTime) -> Result<(), WriteError> {
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
            let mut props = crate::props::server_properties().to_vec();
            props.extend([
                glib::ParamSpecString::builder("stream-id")
                    .nick("Stream ID")
                    .blurb(
                        "Name of the RACS stream to write (required). Any text except ', \\, |> \
                         and control characters",
                    )
                    .mutable_ready()
                    .build(),
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
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "racssink-stats: bytes-sent, bytes-acked, frames-sent, frames-acked, \
                         reconnects, silence-bytes, silence-duration (ns), rtt-avg-us, \
                         rtt-max-us, lost-acked-bytes, server-lost-bytes, replayed-bytes, \
                         dropped-bytes, dropped-duration (ns)",
                    )
                    .read_only()
                    .build(),
            ]);
            props
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "host" => {
                settings.host = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| DEFAULT_HOST.into());
            }
            "port" => settings.port = value.get::<u32>().expect("type checked upstream") as u16,
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
            "pool-size" => settings.pool_size = value.get().expect("type checked upstream"),
            "chunk-size" => settings.chunk_size = value.get().expect("type checked upstream"),
            "create-if-missing" => {
                settings.create_if_missing = value.get().expect("type checked upstream")
            }
            "takeover" => settings.takeover = value.get().expect("type checked upstream"),
            "timeout" => settings.timeout_ms = value.get().expect("type checked upstream"),
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
            name => unimplemented!("property {name}"),
        }
        gst::debug!(CAT, imp = self, "{} set", pspec.name());
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            let s = self.stats.lock().unwrap().clone();
            return gst::Structure::builder("racssink-stats")
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
                .build()
                .to_value();
        }
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "host" => settings.host.to_value(),
            "port" => u32::from(settings.port).to_value(),
            "stream-id" => settings.stream_id.to_value(),
            "pool-size" => settings.pool_size.to_value(),
            "chunk-size" => settings.chunk_size.to_value(),
            "create-if-missing" => settings.create_if_missing.to_value(),
            "takeover" => settings.takeover.to_value(),
            "timeout" => settings.timeout_ms.to_value(),
            "retry-timeout" => settings.retry_timeout_ms.to_value(),
            "gap-policy" => settings.gap_policy.to_value(),
            "replay-window" => settings.replay_window.to_value(),
            "recovery-policy" => settings.recovery_policy.to_value(),
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

impl ElementImpl for RacsSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: Lazy<gst::subclass::ElementMetadata> = Lazy::new(|| {
            gst::subclass::ElementMetadata::new(
                "RACS sink",
                "Sink/Audio/Network",
                "Stores raw S16LE/S24LE audio in a stream of a RACS (Remote Audio Caching \
                 Server) server",
                "gst-plugin-racs developers",
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
        let _ = Pool::get(&settings.host, settings.port, settings.pool_size as usize);
        self.canceller.reset();
        *self.stats.lock().unwrap() = WriterStats::default();
        *self.caps_cache.lock().unwrap() = None;
        *self.state.lock().unwrap() = State::default();
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
        *self.state.lock().unwrap() = State::default();
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
                return Err(gst::loggable_error!(CAT, "{e}"));
            }
        };
        let mut state = self.state.lock().unwrap();
        match self.open(&mut state, format) {
            Ok(()) => Ok(()),
            Err(WriteError::Cancelled) => Err(gst::loggable_error!(CAT, "cancelled")),
            Err(e) => {
                self.post_write_error(&e, true);
                Err(gst::loggable_error!(CAT, "{e}"))
            }
        }
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut state = self.state.lock().unwrap();
        let Some(format) = state.format else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ("received data before the format (caps)")
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        if !state.writer.as_ref().is_some_and(|w| w.is_open()) {
            // Data after EOS (after a flushing seek, say): open the stream again to append.
            self.open(&mut state, format)
                .map_err(|e| self.flow_error(e, true))?;
        }
        self.settle_policy(&mut state);
        let running_time = match (buffer.pts(), state.segment.as_ref()) {
            (Some(pts), Some(segment)) => segment.to_running_time(pts),
            _ => None,
        };
        if state.gap_policy == GapPolicy::Silence {
            if let Some(running_time) = running_time {
                self.track(&mut state, running_time)
                    .map_err(|e| self.flow_error(e, false))?;
            }
        }
        let capture = running_time
            .filter(|_| state.live == Some(true))
            .and_then(|rt| self.capture_us(rt));
        let map = buffer.map_readable().map_err(|_| {
            gst::element_imp_error!(self, gst::CoreError::Failed, ("cannot map a buffer"));
            gst::FlowError::Error
        })?;
        gst::trace!(CAT, imp = self, "rendering {} bytes", map.len());
        state
            .writer
            .as_mut()
            .expect("open above")
            .write_at(&map, capture)
            .map_err(|e| self.flow_error(e, false))?;
        state.bytes_since_base += map.len() as u64;
        Ok(gst::FlowSuccess::Ok)
    }

    fn event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Segment(e) => {
                let segment = e.segment().downcast_ref::<gst::ClockTime>().cloned();
                self.state.lock().unwrap().segment = segment;
            }
            gst::EventView::FlushStop(_) => {
                // Running times may restart: take the next buffer as the new base.
                self.state.lock().unwrap().base = None;
            }
            gst::EventView::Gap(e) => {
                let mut state = self.state.lock().unwrap();
                let (ts, duration) = e.get();
                let end = state
                    .segment
                    .as_ref()
                    .and_then(|s| s.to_running_time(ts))
                    .zip(duration)
                    .map(|(rt, d)| (rt, rt + d));
                let open = state.writer.as_ref().is_some_and(|w| w.is_open());
                if open {
                    self.settle_policy(&mut state);
                }
                if let (Some((start, end)), true, GapPolicy::Silence) =
                    (end, open, state.gap_policy)
                {
                    if state.base.is_none() {
                        state.base = Some(start);
                        state.bytes_since_base = 0;
                    }
                    if let Err(e) = self.fill_until(&mut state, end) {
                        if e != WriteError::Cancelled {
                            self.post_write_error(&e, false);
                        }
                        return false;
                    }
                }
            }
            gst::EventView::Eos(_) => {
                let mut state = self.state.lock().unwrap();
                if let Some(writer) = state.writer.as_mut() {
                    match writer.finish(true) {
                        Ok(()) => gst::info!(CAT, imp = self, "EOS: all data stored, closed"),
                        Err(WriteError::Cancelled) => return false,
                        Err(e) => {
                            self.post_write_error(&e, false);
                            return false;
                        }
                    }
                }
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
        self.settings.lock().unwrap().to_uri()
    }

    fn set_uri(&self, uri: &str) -> Result<(), glib::Error> {
        if self.state.lock().unwrap().writer.is_some() {
            return Err(glib::Error::new(
                gst::URIError::BadState,
                "Changing the URI of racssink while it is writing is not supported",
            ));
        }
        // Used by gst_element_make_from_uri() to probe for a handler.
        if uri.eq_ignore_ascii_case("racs://") {
            return Ok(());
        }
        let bad = |msg: String| glib::Error::new(gst::URIError::BadUri, &msg);
        let parsed = uri::parse(uri).map_err(bad)?;
        validate_stream_id(&parsed.stream_id).map_err(|e| bad(format!("{uri}: {e}")))?;
        let mut settings = self.settings.lock().unwrap();
        let mut new = settings.clone();
        new.host = parsed.host;
        new.port = parsed.port.unwrap_or(DEFAULT_PORT as u16);
        new.stream_id = Some(parsed.stream_id);
        for (key, value) in &parsed.params {
            new.apply_param(key, value)
                .map_err(|e| bad(format!("{uri}: {e}")))?;
        }
        gst::info!(CAT, imp = self, "URI {uri} sets {new:?}");
        *settings = new;
        Ok(())
    }
}
