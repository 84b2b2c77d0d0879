// SPDX-License-Identifier: MPL-2.0
//! racssrc: a PushSrc in TIME format. All protocol work happens in
//! [`crate::client::reader::RangeReader`]; this file translates GStreamer's world (caps,
//! segments, seeks, flushing, state changes) into reader calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use once_cell::sync::Lazy;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;

use super::{CatchUp, HolePolicy};
use crate::client::frame::{frames_to_ns, ns_to_frames};
use crate::client::pcm::narrow_in_place;
use crate::client::reader::{
    unix_now_ns, Bound, FollowConfig, Followed, Follower, Piece, RangeReader, ReadError,
    ReaderConfig, ReaderStats,
};
use crate::client::rotation::{AnyRange, RotatedRange, Rotation};
use crate::client::{block_on, runtime, validate_stream_id, Canceller, Error, Pool, StreamFormat};
use crate::{props, uri};

static CAT: Lazy<gst::DebugCategory> = Lazy::new(|| {
    gst::DebugCategory::new(
        "racssrc",
        gst::DebugColorFlags::empty(),
        Some("RACS source"),
    )
});

const DEFAULT_START_OFFSET: u64 = 0;
const DEFAULT_DURATION: u64 = u64::MAX;
const DEFAULT_CHUNK_DURATION: u64 = 10 * 1_000_000_000;
const MIN_CHUNK_DURATION: u64 = 10_000_000;
const DEFAULT_FOLLOW: bool = false;
const DEFAULT_POLL_INTERVAL_MS: u32 = 20;
const MIN_POLL_INTERVAL_MS: u32 = 5;
const DEFAULT_LATENCY_MS: u32 = 0;
const DEFAULT_LIVE_EDGE: bool = false;
const DEFAULT_RETRY_TIMEOUT_MS: u32 = 10_000;
/// How much later than the reported minimum latency a live-edge follower may deliver before it
/// counts as behind (and, with catch-up=drop, goes on from the live edge).
const LATE_SLACK: Duration = Duration::from_millis(100);
/// Audio per output buffer.
const BUFFER_MS: u64 = 100;
const TIME_FORM: &str = "YYYY-MM-DDTHH:MM:SS[.fff]Z (RFC 3339, UTC), e.g. 2026-01-09T10:00:00.250Z";

#[derive(Debug, Clone)]
struct Settings {
    server: props::Server,
    stream_id: Option<String>,
    start: Option<String>,
    stop: Option<String>,
    start_offset: u64,
    duration: u64,
    chunk_duration: u64,
    follow: bool,
    poll_interval: u32,
    live_edge: bool,
    catch_up: CatchUp,
    latency: u32,
    retry_timeout: u32,
    hole_policy: HolePolicy,
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
            start: None,
            stop: None,
            start_offset: DEFAULT_START_OFFSET,
            duration: DEFAULT_DURATION,
            chunk_duration: DEFAULT_CHUNK_DURATION,
            follow: DEFAULT_FOLLOW,
            poll_interval: DEFAULT_POLL_INTERVAL_MS,
            live_edge: DEFAULT_LIVE_EDGE,
            catch_up: CatchUp::default(),
            latency: DEFAULT_LATENCY_MS,
            retry_timeout: DEFAULT_RETRY_TIMEOUT_MS,
            hole_policy: HolePolicy::default(),
        }
    }
}

/// Parses an RFC 3339 time into ns since the epoch; the error names the expected form.
fn parse_time(what: &str, value: &str) -> Result<i128, String> {
    let t = chrono::DateTime::parse_from_rfc3339(value.trim())
        .map_err(|e| format!("{what} '{value}' is not a time of the form {TIME_FORM}: {e}"))?;
    Ok(i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos()))
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl Settings {
    /// Follow mode: `follow`, or a live-edge start (which follows).
    fn follows(&self) -> bool {
        self.follow || self.live_edge
    }

    fn poll(&self) -> Duration {
        Duration::from_millis(u64::from(self.poll_interval.max(MIN_POLL_INTERVAL_MS)))
    }

    /// What follow mode needs beyond the reader's configuration.
    fn follow_config(&self) -> FollowConfig {
        let mut f = FollowConfig {
            retry_timeout: Duration::from_millis(u64::from(self.retry_timeout)),
            ..FollowConfig::default()
        };
        if self.live_edge {
            // Normally at most a poll interval of blocks is stored and not yet read; more than
            // that plus the headroom asked for (and a slack against jitter) is late.
            f.behind_limit =
                self.poll() + Duration::from_millis(u64::from(self.latency)) + LATE_SLACK;
            f.drop_to_live_edge = self.catch_up == CatchUp::Drop;
        }
        f
    }

    /// Checks the settings and turns them into the reader's configuration.
    fn reader_config(&self) -> Result<ReaderConfig, String> {
        let id = self.stream_id.as_deref().unwrap_or("");
        if id.is_empty() {
            return Err("no stream-id set: racssrc needs the name of the stream to read".into());
        }
        validate_stream_id(id).map_err(|e| e.to_string())?;
        let start = non_empty(&self.start);
        let stop = non_empty(&self.stop);
        let relative =
            self.start_offset != DEFAULT_START_OFFSET || self.duration != DEFAULT_DURATION;
        if relative && (start.is_some() || stop.is_some()) {
            return Err(
                "start/stop (wall-clock times) and start-offset/duration (relative to the stream's \
                 start) are two ways to give the range; set only one of them"
                    .into(),
            );
        }
        if self.live_edge && (start.is_some() || relative) {
            return Err(
                "live-edge=true starts at the stream's end as it is when racssrc starts: leave start, start-offset and duration unset (stop may be given)"
                    .into(),
            );
        }
        let mut cfg = ReaderConfig::new(id);
        cfg.page_ms = (self.chunk_duration / 1_000_000).max(1);
        cfg.follow = self.follows();
        cfg.poll_interval = self.poll();
        if cfg.follow {
            // A table being written is hidden for a moment (about half a second on a loaded
            // real server): ask again soon and for long enough, so the follower is neither
            // slowed by more than that window nor mistakes it for lost blocks.
            cfg.retry_delay = cfg.poll_interval.max(Duration::from_millis(20));
            let window = Duration::from_secs(3).as_millis() as u32;
            cfg.retries = (window / cfg.retry_delay.as_millis().max(1) as u32 / 5).max(4);
        }
        cfg.timeout = self.server.timeout();
        if relative {
            // Frames need the rate, which only INFO tells; the reader gets ns offsets as
            // wall-clock times later. Keep them here as relative marks.
            return Ok(cfg);
        }
        let start_ns = start.map(|s| parse_time("start", s)).transpose()?;
        let stop_ns = stop.map(|s| parse_time("stop", s)).transpose()?;
        if let (Some(a), Some(b)) = (start_ns, stop_ns) {
            if b <= a {
                return Err(format!(
                    "stop {} is not after start {}: the range would be empty",
                    stop.unwrap_or_default(),
                    start.unwrap_or_default()
                ));
            }
        }
        cfg.start = start_ns.map_or(
            if self.live_edge {
                Bound::End
            } else {
                Bound::Open
            },
            Bound::UnixNs,
        );
        cfg.stop = stop_ns.map_or(Bound::Open, Bound::UnixNs);
        Ok(cfg)
    }
}

/// A page narrowed to the stream's sample width, in one buffer that output buffers share.
struct OutPage {
    /// Wall-clock time of its first sample (ns since the Unix epoch), from its own recording's
    /// `ref` (a stream the server started over after a crash has more than one).
    unix_ns: i128,
    buffer: gst::Buffer,
}

/// What the fetch task hands to the streaming thread.
enum Fetched {
    /// The next page.
    Page(OutPage),
    /// Samples the server lost: `frames` sample frames from `frame`, and who and where.
    Gap {
        frame: u64,
        frames: u64,
        reason: String,
    },
    /// The end of the range; the reason when there was nothing to read at all.
    End(Option<String>),
    Failed(ReadError),
    /// Follow mode: behind the live edge by this much stored audio (catch-up=keep).
    Behind(Duration),
    /// Follow mode: went on from the live edge, leaving out `frames` from `unix_ns`.
    Skipped {
        frames: u64,
        unix_ns: i128,
    },
    /// Follow mode: the server restarted and the stream started a new recording.
    Restarted {
        missing_ns: u64,
        reason: String,
    },
}

/// What the reader knows of the timing of a followed stream, for the latency it reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Timing {
    /// Audio in one of the writer's blocks.
    block: Option<Duration>,
    /// One request's round trip.
    request: Duration,
    /// Stored audio not read yet, as the stream's size was last asked (the `live-lag` stat).
    lag: Duration,
}

/// A range (of one stream, or across rotated streams), or a followed stream.
enum Source {
    Range(Box<AnyRange>),
    Follow(Box<Follower>),
}

impl Source {
    fn format(&self) -> StreamFormat {
        match self {
            Source::Range(r) => r.format(),
            Source::Follow(f) => f.reader().format(),
        }
    }

    fn stats(&self) -> ReaderStats {
        match self {
            Source::Range(r) => r.stats(),
            Source::Follow(f) => f.stats(),
        }
    }

    fn empty_reason(&self) -> Option<String> {
        match self {
            Source::Range(r) => r.empty_reason().map(str::to_string),
            Source::Follow(f) => f.reader().empty_reason().map(str::to_string),
        }
    }

    fn timing(&self) -> Timing {
        match self {
            Source::Range(_) => Timing::default(),
            Source::Follow(f) => Timing {
                block: f.reader().block_duration(),
                request: f.reader().request_time(),
                lag: f.reader().backlog(),
            },
        }
    }

    async fn next(&mut self) -> Result<Option<Followed>, ReadError> {
        match self {
            Source::Range(r) => Ok(r.next_piece().await?.map(Followed::Piece)),
            Source::Follow(f) => f.next().await,
        }
    }
}

/// Reads pages on the I/O runtime one page ahead of the streaming thread, so that fetching the
/// next page overlaps with pushing the current one downstream. Dropping it stops the task.
struct Fetcher {
    rx: tokio::sync::mpsc::Receiver<Fetched>,
    task: tokio::task::JoinHandle<()>,
}

/// Adds `now - before` (a reader's counters, which only grow) to `total`.
fn add_stats(total: &mut ReaderStats, before: ReaderStats, now: ReaderStats) {
    total.queries += now.queries - before.queries;
    total.infos += now.infos - before.infos;
    total.fallbacks += now.fallbacks - before.fallbacks;
    total.retries += now.retries - before.retries;
    total.waits += now.waits - before.waits;
    total.bytes += now.bytes - before.bytes;
    total.holes += now.holes - before.holes;
}

impl Fetcher {
    fn spawn(
        mut reader: Source,
        stats: Arc<Mutex<ReaderStats>>,
        timing: Arc<Mutex<Timing>>,
    ) -> Fetcher {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let bytes_per_sample = usize::from(reader.format().bit_depth / 8);
        let task = runtime().spawn(async move {
            let mut seen = ReaderStats::default();
            add_stats(&mut stats.lock().unwrap(), seen, reader.stats());
            seen = reader.stats();
            loop {
                let item = match reader.next().await {
                    Ok(Some(Followed::Piece(Piece::Audio {
                        unix_ns, mut data, ..
                    }))) => {
                        // Narrowed in place here, while the streaming thread pushes the page
                        // before: no copy, and the streaming thread only slices.
                        narrow_in_place(&mut data, bytes_per_sample);
                        let page = OutPage {
                            unix_ns,
                            buffer: gst::Buffer::from_mut_slice(data),
                        };
                        Fetched::Page(page)
                    }
                    Ok(Some(Followed::Piece(Piece::Gap {
                        frame,
                        frames,
                        reason,
                        ..
                    }))) => Fetched::Gap {
                        frame,
                        frames,
                        reason,
                    },
                    Ok(Some(Followed::Behind { behind, .. })) => Fetched::Behind(behind),
                    Ok(Some(Followed::Skipped {
                        frames, unix_ns, ..
                    })) => Fetched::Skipped { frames, unix_ns },
                    Ok(Some(Followed::Restarted {
                        missing_ns, reason, ..
                    })) => Fetched::Restarted { missing_ns, reason },
                    Ok(None) => Fetched::End(reader.empty_reason()),
                    Err(e) => Fetched::Failed(e),
                };
                *timing.lock().unwrap() = reader.timing();
                add_stats(&mut stats.lock().unwrap(), seen, reader.stats());
                seen = reader.stats();
                let last = matches!(item, Fetched::End(_) | Fetched::Failed(_));
                if tx.send(item).await.is_err() || last {
                    break;
                }
            }
        });
        Fetcher { rx, task }
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The element's state: nothing before `start()`; after it, the range to read and, from the
/// first negotiation on, the reading.
#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started(Box<Started>),
}

impl State {
    /// The started element's state; flushing when stopped (a state change under way).
    fn started(&mut self) -> Result<&mut Started, gst::FlowError> {
        match self {
            State::Started(s) => Ok(s),
            State::Stopped => Err(gst::FlowError::Flushing),
        }
    }

    /// The open reading, once the stream's format is known.
    fn open(&self) -> Option<&Open> {
        match self {
            State::Started(s) => match &s.reading {
                Reading::Open(o) => Some(o),
                Reading::Unopened => None,
            },
            State::Stopped => None,
        }
    }
}

struct Started {
    pool: Arc<Pool>,
    base: ReaderConfig,
    /// start-offset/duration in ns, resolved to frames once the rate is known.
    relative: Option<(u64, u64)>,
    /// A seek waiting for the streaming thread: start and stop in ns from the range start.
    seek: Option<(u64, Option<u64>)>,
    out: Output,
    reading: Reading,
}

enum Reading {
    /// The stream is opened (and its format learnt) at the first negotiation.
    Unopened,
    Open(Open),
}

/// A stream (or a range of rotated streams) being read.
struct Open {
    format: StreamFormat,
    caps: gst::Caps,
    /// The range as first resolved, in frames from the stream's start.
    range_first: u64,
    range_end: Option<u64>,
    feed: Feed,
    /// The reader still starts at the range start and has delivered nothing.
    fresh: bool,
}

impl Open {
    /// The range's length, when it has an end.
    fn duration(&self) -> Option<gst::ClockTime> {
        let frames = self.range_end?.saturating_sub(self.range_first);
        Some(gst::ClockTime::from_nseconds(
            self.format.frames_to_ns(frames),
        ))
    }
}

/// The fetch task's queue, as the streaming thread holds it.
enum Feed {
    Ready(Fetcher),
    /// Taken out while the streaming thread waits on it, so that queries and seeks are never
    /// stuck behind the network.
    Lent,
    /// The range ended or failed.
    Ended,
}

/// What went out of the source pad since the last seek.
#[derive(Default)]
struct Output {
    /// The segment's start (ns from the range start).
    seg_start: u64,
    frames_out: u64,
    /// The page being cut into buffers, and how many of its bytes went out.
    page: Option<(OutPage, usize)>,
    /// Live edge: the running time of the range's first sample, fixed at the first buffer.
    anchor: Option<u64>,
    /// The next buffer follows a jump (audio left out or lost).
    discont: bool,
    /// The "nothing to read" warning went out.
    warned: bool,
    /// The minimum latency last announced (a LATENCY message asks the pipeline again).
    latency_told: Option<Duration>,
    /// The stream's tags went out (before the first buffer).
    tagged: bool,
}

impl Output {
    /// Passes over `frames` sample frames that are not sent as audio (lost, left out, missing
    /// across a restart): the next buffer is a DISCONT. Returns their PTS span.
    fn skip(&mut self, rate: u32, frames: u64) -> (u64, u64) {
        let span = self.pts_span(rate, frames);
        self.frames_out += frames;
        self.discont = true;
        span
    }

    /// The PTS of the next sample out, and of the sample `frames` after it.
    fn pts_span(&self, rate: u32, frames: u64) -> (u64, u64) {
        let base = self.anchor.unwrap_or(self.seg_start);
        (
            base + frames_to_ns(self.frames_out, rate),
            base + frames_to_ns(self.frames_out + frames, rate),
        )
    }
}

#[derive(Default)]
pub struct RacsSrc {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    canceller: Mutex<Canceller>,
    /// The readers' counters since the element started (the `stats` property).
    stats: Arc<Mutex<ReaderStats>>,
    /// Follow mode: the writer's block duration and a request's time, as the reader sees them.
    timing: Arc<Mutex<Timing>>,
}

#[glib::object_subclass]
impl ObjectSubclass for RacsSrc {
    const NAME: &'static str = "GstRacsSrc";
    type Type = super::RacsSrc;
    type ParentType = gst_base::PushSrc;
    type Interfaces = (gst::URIHandler,);
}

impl RacsSrc {
    fn canceller(&self) -> Canceller {
        self.canceller.lock().unwrap().clone()
    }

    fn post_read_error(&self, err: &ReadError) {
        let msg = err.to_string();
        match err {
            ReadError::NotFound { .. } => {
                gst::element_imp_error!(self, gst::ResourceError::NotFound, ("{}", msg))
            }
            ReadError::Format(_) => {
                gst::element_imp_error!(self, gst::StreamError::Format, ("{}", msg))
            }
            ReadError::Client(Error::Connect { .. }) => {
                gst::element_imp_error!(self, gst::ResourceError::OpenRead, ("{}", msg))
            }
            ReadError::Client(Error::PoolBusy { .. }) => {
                gst::element_imp_error!(self, gst::ResourceError::Busy, ("{}", msg))
            }
            ReadError::Client(Error::InvalidArgument(_)) => {
                gst::element_imp_error!(self, gst::ResourceError::Settings, ("{}", msg))
            }
            _ => gst::element_imp_error!(self, gst::ResourceError::Read, ("{}", msg)),
        }
    }

    /// Runs a reader future from the streaming thread; `Err(Flushing)` when cancelled.
    fn wait<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ReadError>>,
    ) -> Result<T, gst::FlowError> {
        let canceller = self.canceller();
        let res = block_on(&canceller, async { Ok::<_, Error>(fut.await) });
        match res {
            Err(_) => Err(gst::FlowError::Flushing),
            Ok(Err(e)) if e.is_cancelled() => Err(gst::FlowError::Flushing),
            Ok(Err(e)) => {
                gst::debug!(CAT, imp = self, "read failed: {e}");
                self.post_read_error(&e);
                Err(gst::FlowError::Error)
            }
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Opens the reader for the configured range (first use) and learns the format.
    fn ensure_open(&self) -> Result<(), gst::FlowError> {
        if self.settings.lock().unwrap().rotated() {
            return self.open_rotated();
        }
        let (pool, mut cfg, relative) = {
            let mut state = self.state.lock().unwrap();
            let s = state.started()?;
            if let Reading::Open(_) = s.reading {
                return Ok(());
            }
            (s.pool.clone(), s.base.clone(), s.relative)
        };
        let mut reader = self.wait(RangeReader::open(pool.clone(), cfg.clone()))?;
        if let Some((offset, duration)) = relative {
            // The relative form needs the rate: reopen with frames.
            let rate = reader.format().sample_rate;
            let first = ns_to_frames(offset, rate);
            cfg.start = Bound::Frame(first);
            cfg.stop = if duration == u64::MAX {
                Bound::Open
            } else {
                Bound::Frame(first + ns_to_frames(duration, rate).max(1))
            };
            reader = self.wait(RangeReader::open(pool, cfg))?;
        }
        let format = reader.format();
        gst::info!(
            CAT,
            imp = self,
            "stream '{}' on {}: {format}, ref {}, {} bytes; range from frame {} to {:?}",
            reader.stream_id(),
            reader.addr(),
            reader.ref_ms(),
            reader.size(),
            reader.first_frame(),
            reader.end_frame()
        );
        if let Some(notice) = reader.notice() {
            gst::element_imp_warning!(self, gst::ResourceError::Read, ("{}", notice));
        }
        let (first, end) = (reader.first_frame(), reader.end_frame());
        let settings = self.settings.lock().unwrap().clone();
        let source = if settings.follows() {
            Source::Follow(Box::new(Follower::new(reader, settings.follow_config())))
        } else {
            Source::Range(Box::new(AnyRange::One(reader)))
        };
        self.set_open(format, first, end, source)
    }

    /// The stream is open: its format and range, and the task that fetches its pages.
    fn set_open(
        &self,
        format: StreamFormat,
        range_first: u64,
        range_end: Option<u64>,
        source: Source,
    ) -> Result<(), gst::FlowError> {
        let mut state = self.state.lock().unwrap();
        state.started()?.reading = Reading::Open(Open {
            format,
            caps: caps_for(&format),
            range_first,
            range_end,
            feed: Feed::Ready(Fetcher::spawn(
                source,
                self.stats.clone(),
                self.timing.clone(),
            )),
            fresh: true,
        });
        Ok(())
    }

    /// A new reader for a seek, `start` and `stop` in ns from the range start.
    fn reopen(&self, start: u64, stop: Option<u64>) -> Result<(), gst::FlowError> {
        let (pool, mut cfg, rate, first, end) = {
            let mut state = self.state.lock().unwrap();
            let s = state.started()?;
            let Reading::Open(o) = &s.reading else {
                return Err(gst::FlowError::Flushing);
            };
            let rate = o.format.sample_rate;
            (
                s.pool.clone(),
                s.base.clone(),
                rate,
                o.range_first,
                o.range_end,
            )
        };
        let from = first + ns_to_frames(start, rate);
        let mut to = end;
        if let Some(stop) = stop {
            let s = first + ns_to_frames(stop, rate);
            to = Some(to.map_or(s, |e| e.min(s)));
        }
        cfg.start = Bound::Frame(from);
        cfg.stop = to.map_or(Bound::Open, Bound::Frame);
        let reader = self.wait(RangeReader::open(pool, cfg))?;
        let mut state = self.state.lock().unwrap();
        let Reading::Open(o) = &mut state.started()?.reading else {
            return Err(gst::FlowError::Flushing);
        };
        o.feed = Feed::Ready(Fetcher::spawn(
            Source::Range(Box::new(AnyRange::One(reader))),
            self.stats.clone(),
            self.timing.clone(),
        ));
        o.fresh = start == 0 && stop.is_none();
        Ok(())
    }
}

/// The latency a follower adds, and how much it can hold back (`None`: no bound, since the
/// server keeps what is not read yet). The minimum is one poll interval (a block can land just
/// after a poll), one of the writer's blocks (its first sample waited that long for the block
/// to be sent), one request, and the headroom asked for with `latency`. A live-edge follower
/// that drops to the live edge delivers nothing later than that plus the slack it allows.
fn latency(settings: &Settings, timing: Timing) -> (Duration, Option<Duration>) {
    let min = settings.poll()
        + timing.block.unwrap_or_default()
        + timing.request.max(Duration::from_millis(1))
        + Duration::from_millis(u64::from(settings.latency));
    let max =
        (settings.live_edge && settings.catch_up == CatchUp::Drop).then_some(min + LATE_SLACK);
    (min, max)
}

impl RacsSrc {
    /// Live edge: the running time of the range's first sample (about to be pushed), so that
    /// buffers carry the running time at which their audio was captured: the running time now,
    /// less the audio's age by the wall clock, at most the minimum latency reported (so the
    /// first buffer is on time even when the writer's clock runs behind this one). `None`
    /// without live-edge, or without a clock.
    fn live_anchor(&self, out: &Output) -> Option<u64> {
        let settings = self.settings.lock().unwrap().clone();
        if !settings.live_edge {
            return None;
        }
        let obj = self.obj();
        let clock = obj.clock()?;
        let base_time = obj.base_time()?;
        let running = clock.time().saturating_sub(base_time).nseconds();
        let (page, _) = out.page.as_ref()?;
        let first = page.unix_ns;
        let age = (unix_now_ns() - first).max(0);
        let (min, _) = latency(&settings, *self.timing.lock().unwrap());
        let min = min.max(out.latency_told.unwrap_or_default());
        // A quarter of it is left for the time the buffer takes to reach the sink.
        let counted = age.min((min - min / 4).as_nanos() as i128) as u64;
        gst::debug!(
            CAT,
            imp = self,
            "live edge: first sample {} ms old by the wall clock; timestamps from running time {}",
            age / 1_000_000,
            gst::ClockTime::from_nseconds(running.saturating_sub(counted))
        );
        Some(running.saturating_sub(counted))
    }

    /// Asks the pipeline to query the latency again when the reader's view of it moved.
    fn tell_latency(&self) {
        let settings = self.settings.lock().unwrap().clone();
        if !settings.follows() {
            return;
        }
        let (min, _) = latency(&settings, *self.timing.lock().unwrap());
        let mut state = self.state.lock().unwrap();
        let Ok(s) = state.started() else {
            return;
        };
        // Only ever raised: buffers already timestamped count on the latency told.
        let moved = s
            .out
            .latency_told
            .is_none_or(|told| min > told + Duration::from_millis(2).max(told / 10));
        if !moved {
            return;
        }
        s.out.latency_told = Some(min);
        drop(state);
        gst::debug!(CAT, imp = self, "minimum latency now {min:?}");
        let _ = self
            .obj()
            .post_message(gst::message::Latency::builder().src(&*self.obj()).build());
    }

    /// A QoS message: the follower is `late` behind the live edge at the buffer of running time
    /// `pts`, having pushed `processed` sample frames and left out `dropped`.
    fn post_qos(&self, pts: u64, late: Duration, processed: u64, dropped: u64) {
        let msg = gst::message::Qos::builder(true)
            .running_time(gst::ClockTime::from_nseconds(pts))
            .timestamp(gst::ClockTime::from_nseconds(pts))
            .values(late.as_nanos().min(i64::MAX as u128) as i64, 1.0, 1_000_000)
            .stats(
                gst::format::Default::from_u64(processed),
                gst::format::Default::from_u64(dropped),
            )
            .src(&*self.obj())
            .build();
        let _ = self.obj().post_message(msg);
    }
}

impl RacsSrc {
    /// The stream's tags, before its first buffer: the title is the stream id, the date and
    /// time is the wall-clock time of the first sample out.
    fn send_tags(&self, unix_ns: i128) {
        let id = self.settings.lock().unwrap().stream_id.clone();
        let mut tags = gst::TagList::new();
        {
            let tags = tags.get_mut().unwrap();
            if let Some(id) = id {
                tags.add::<gst::tags::Title>(&id.as_str(), gst::TagMergeMode::Replace);
            }
            let us = (unix_ns / 1000).clamp(0, i128::from(i64::MAX)) as i64;
            let dt = glib::DateTime::from_unix_utc(us.div_euclid(1_000_000))
                .and_then(|d| d.add(glib::TimeSpan::from_microseconds(us.rem_euclid(1_000_000))));
            if let Ok(dt) = dt {
                let dt = gst::DateTime::from(dt);
                tags.add::<gst::tags::DateTime>(&dt, gst::TagMergeMode::Replace);
            }
        }
        gst::debug!(CAT, imp = self, "tags {tags:?}");
        let _ = self.obj().src_pad().push_event(gst::event::Tag::new(tags));
    }

    /// A GAP event over the PTS span `[pts, next)`, when it is not empty.
    fn push_gap(&self, pts: u64, next: u64) {
        if next > pts {
            let gap = gst::event::Gap::builder(gst::ClockTime::from_nseconds(pts))
                .duration(gst::ClockTime::from_nseconds(next - pts))
                .build();
            self.obj().src_pad().push_event(gap);
        }
    }

    /// At the end of the range: the counters as an element message (the `stats` property's
    /// structure) and a debug line, before EOS.
    fn post_final_stats(&self) {
        let st = *self.stats.lock().unwrap();
        gst::info!(
            CAT,
            imp = self,
            "end of range: {} requests ({} EXTRACT, {} INFO; {} probes and checks), {} bytes \
             received, {} waits, {} retries, {} holes",
            st.queries + st.infos,
            st.queries,
            st.infos,
            st.fallbacks,
            st.bytes,
            st.waits,
            st.retries,
            st.holes
        );
        let timing = *self.timing.lock().unwrap();
        let msg = gst::message::Element::builder(stats_structure(&st, timing))
            .src(&*self.obj())
            .build();
        let _ = self.obj().post_message(msg);
    }
}

fn stats_structure(st: &ReaderStats, timing: Timing) -> gst::Structure {
    gst::Structure::builder("racssrc-stats")
        .field("requests", st.queries + st.infos)
        .field("extra-requests", st.fallbacks)
        .field("bytes", st.bytes)
        .field("waits", st.waits)
        .field("retries", st.retries)
        .field("holes", st.holes)
        .field("live-lag", timing.lag.as_nanos() as u64)
        .build()
}

fn caps_for(format: &StreamFormat) -> gst::Caps {
    let audio_format = if format.bit_depth == 16 {
        gst_audio::AudioFormat::S16le
    } else {
        gst_audio::AudioFormat::S24le
    };
    let mut caps = gst::Caps::builder("audio/x-raw")
        .field("format", audio_format.to_str())
        .field("rate", format.sample_rate as i32)
        .field("channels", i32::from(format.channels))
        .field("layout", "interleaved");
    // RACS stores no channel positions: GStreamer's default layout up to 8 channels, and
    // unpositioned channels (mask 0) above, so that audioconvert can take any count.
    if format.channels > 1 {
        let mask = if format.channels <= 8 {
            gst_audio::AudioChannelPosition::fallback_mask(u32::from(format.channels))
        } else {
            0
        };
        caps = caps.field("channel-mask", gst::Bitmask::new(mask));
    }
    caps.build()
}

impl ObjectImpl for RacsSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: Lazy<Vec<glib::ParamSpec>> = Lazy::new(|| {
            let mut props = props::server_properties().to_vec();
            props.extend([
                glib::ParamSpecString::builder("stream-id")
                    .nick("Stream ID")
                    .blurb("Name of the RACS stream to read (required)")
                    .mutable_ready()
                    .build(),
                uri::property(),
                glib::ParamSpecString::builder("start")
                    .nick("Start")
                    .blurb(
                        "Wall-clock time of the first sample, RFC 3339 UTC such as \
                         2026-01-09T10:00:00.250Z; empty = the stream's start",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("stop")
                    .nick("Stop")
                    .blurb(
                        "Wall-clock time where the range ends (exclusive), RFC 3339 UTC; empty = \
                         the stream's end when the element starts (or no end with follow)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("start-offset")
                    .nick("Start offset")
                    .blurb(
                        "Start of the range in ns from the stream's first sample (instead of \
                         start/stop)",
                    )
                    .default_value(DEFAULT_START_OFFSET)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("duration")
                    .nick("Duration")
                    .blurb(
                        "Length of the range in ns from start-offset; -1 (the default) = to the \
                         end (instead of start/stop)",
                    )
                    .default_value(DEFAULT_DURATION)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("chunk-duration")
                    .nick("Chunk duration")
                    .blurb("Audio fetched per EXTRACT request, in ns (bounds memory)")
                    .minimum(MIN_CHUNK_DURATION)
                    .default_value(DEFAULT_CHUNK_DURATION)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("hole-policy", HolePolicy::default())
                    .nick("Hole policy")
                    .blurb(
                        "Where the server lost blocks (an unflushed table at a crash or \
                         SHUTDOWN): warn and send a GAP event (gap), or stop with an error (error)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "racssrc-stats: requests (EXTRACT and INFO), extra-requests (probes and \
                         checks beyond the pages), bytes (int32 bytes received), waits, retries, \
                         holes, since the element started; live-lag (ns): follow mode, stored \
                         audio not read yet",
                    )
                    .read_only()
                    .build(),
                glib::ParamSpecBoolean::builder("follow")
                    .nick("Follow")
                    .blurb("After the end, keep delivering audio as it is appended (a live source)")
                    .default_value(DEFAULT_FOLLOW)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("poll-interval")
                    .nick("Poll interval")
                    .blurb(
                        "Follow mode: the shortest time in ms between two requests for the stream's size; blocks shorter than that are read several per poll, and a stream written in longer blocks is asked when its next block is due; part of the latency reported",
                    )
                    .minimum(MIN_POLL_INTERVAL_MS)
                    .maximum(60_000)
                    .default_value(DEFAULT_POLL_INTERVAL_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("live-edge")
                    .nick("Live edge")
                    .blurb(
                        "Follow from the stream's end as it is when racssrc starts (implies \
                         follow), with buffers timestamped in running time at their capture, \
                         so the first one is on time for a live sink",
                    )
                    .default_value(DEFAULT_LIVE_EDGE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("catch-up", CatchUp::default())
                    .nick("Catch up")
                    .blurb(
                        "live-edge: when racssrc falls behind the writer, go on from the live edge \
                         leaving out what lies before it (drop), or deliver every sample, late \
                         (keep); both post a QoS message and a warning",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("latency")
                    .nick("Latency")
                    .blurb(
                        "Follow mode: milliseconds of headroom added to the latency racssrc \
                         reports (and, with live-edge, to how far it may fall behind before \
                         catch-up applies)",
                    )
                    .maximum(60_000)
                    .default_value(DEFAULT_LATENCY_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("retry-timeout")
                    .nick("Retry timeout")
                    .blurb(
                        "Follow mode: milliseconds to keep reconnecting when the server cannot be \
                         reached before giving up with an error (0 = at once); after a restart \
                         racssrc goes on with the stream's new recording",
                    )
                    .default_value(DEFAULT_RETRY_TIMEOUT_MS)
                    .mutable_ready()
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
            "stream-id" => settings.stream_id = value.get().unwrap(),
            "start" => settings.start = value.get().unwrap(),
            "stop" => settings.stop = value.get().unwrap(),
            "start-offset" => settings.start_offset = value.get().unwrap(),
            "duration" => settings.duration = value.get().unwrap(),
            "chunk-duration" => settings.chunk_duration = value.get().unwrap(),
            "follow" => settings.follow = value.get().unwrap(),
            "poll-interval" => settings.poll_interval = value.get().unwrap(),
            "live-edge" => settings.live_edge = value.get().unwrap(),
            "catch-up" => settings.catch_up = value.get().unwrap(),
            "latency" => settings.latency = value.get().unwrap(),
            "retry-timeout" => settings.retry_timeout = value.get().unwrap(),
            "hole-policy" => settings.hole_policy = value.get().unwrap(),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            let timing = *self.timing.lock().unwrap();
            return stats_structure(&self.stats.lock().unwrap(), timing).to_value();
        }
        if let Some(v) = props::get_shared(&*self.obj(), &self.settings, pspec) {
            return v;
        }
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "stream-id" => settings.stream_id.to_value(),
            "start" => settings.start.to_value(),
            "stop" => settings.stop.to_value(),
            "start-offset" => settings.start_offset.to_value(),
            "duration" => settings.duration.to_value(),
            "chunk-duration" => settings.chunk_duration.to_value(),
            "follow" => settings.follow.to_value(),
            "poll-interval" => settings.poll_interval.to_value(),
            "live-edge" => settings.live_edge.to_value(),
            "catch-up" => settings.catch_up.to_value(),
            "latency" => settings.latency.to_value(),
            "retry-timeout" => settings.retry_timeout.to_value(),
            "hole-policy" => settings.hole_policy.to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_format(gst::Format::Time);
    }
}

impl GstObjectImpl for RacsSrc {}

impl ElementImpl for RacsSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: Lazy<gst::subclass::ElementMetadata> = Lazy::new(|| {
            gst::subclass::ElementMetadata::new(
                "RACS source",
                "Source/Audio/Network",
                "Extracts a time range of a RACS (Remote Audio Caching Server) stream as raw \
                 audio, seekable, with a live follow mode",
                "gst-plugin-racs contributors",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: Lazy<Vec<gst::PadTemplate>> = Lazy::new(|| {
            let caps = gst::Caps::builder("audio/x-raw")
                .field("format", gst::List::new(["S16LE", "S24LE"]))
                .field("rate", gst::IntRange::new(1, i32::MAX))
                .field("channels", gst::IntRange::new(1, i32::from(u16::MAX)))
                .field("layout", "interleaved")
                .build();
            vec![gst::PadTemplate::new(
                "src",
                gst::PadDirection::Src,
                gst::PadPresence::Always,
                &caps,
            )
            .unwrap()]
        });
        PAD_TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::ReadyToPaused {
            let follow = self.settings.lock().unwrap().follows();
            self.obj().set_live(follow);
        }
        self.parent_change_state(transition)
    }
}

impl URIHandlerImpl for RacsSrc {
    const URI_TYPE: gst::URIType = gst::URIType::Src;

    fn protocols() -> &'static [&'static str] {
        &["racs"]
    }

    fn uri(&self) -> Option<String> {
        uri::format(&*self.obj())
    }

    fn set_uri(&self, uri: &str) -> Result<(), glib::Error> {
        let running = matches!(*self.state.lock().unwrap(), State::Started(_));
        props::set_uri(
            &*self.obj(),
            *CAT,
            &self.settings,
            uri,
            "racssrc",
            running,
            |key, text| match key {
                "start" | "stop" => parse_time(key, text).map(|_| ()),
                _ => Ok(()),
            },
        )
    }
}

impl BaseSrcImpl for RacsSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        if let Some(e) = &settings.server.uri_error {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ("the uri property was refused: {}", e)
            ));
        }
        let cfg = settings
            .reader_config()
            .map_err(|msg| gst::error_msg!(gst::ResourceError::Settings, ("{}", msg)))?;
        settings
            .rotated_range()
            .map_err(|msg| gst::error_msg!(gst::ResourceError::Settings, ("{}", msg)))?;
        let relative = (settings.start_offset != DEFAULT_START_OFFSET
            || settings.duration != DEFAULT_DURATION)
            .then_some((settings.start_offset, settings.duration));
        if settings.duration == 0 {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ("duration is 0: the range would be empty")
            ));
        }
        // The pool connects lazily: nothing here waits on the network.
        let pool = settings.server.pool();
        *self.stats.lock().unwrap() = ReaderStats::default();
        *self.timing.lock().unwrap() = Timing::default();
        *self.state.lock().unwrap() = State::Started(Box::new(Started {
            pool,
            base: cfg,
            relative,
            seek: None,
            out: Output::default(),
            reading: Reading::Unopened,
        }));
        gst::debug!(CAT, imp = self, "started with {settings:?}");
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.state.lock().unwrap() = State::Stopped;
        gst::debug!(CAT, imp = self, "stopped");
        Ok(())
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        self.canceller.lock().unwrap().cancel();
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        self.canceller.lock().unwrap().reset();
        Ok(())
    }

    fn is_seekable(&self) -> bool {
        let settings = self.settings.lock().unwrap();
        !settings.follows() && !settings.rotated()
    }

    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let caps = self
            .state
            .lock()
            .unwrap()
            .open()
            .map(|o| o.caps.clone())
            .unwrap_or_else(|| self.obj().src_pad().pad_template_caps());
        Some(match filter {
            Some(f) => f.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
            None => caps,
        })
    }

    fn negotiate(&self) -> Result<(), gst::LoggableError> {
        if self.ensure_open().is_err() {
            return Err(gst::loggable_error!(CAT, "cannot read the stream's format"));
        }
        let Some(caps) = self.state.lock().unwrap().open().map(|o| o.caps.clone()) else {
            return Err(gst::loggable_error!(
                CAT,
                "stopped before the stream was opened"
            ));
        };
        self.obj()
            .set_caps(&caps)
            .map_err(|_| gst::loggable_error!(CAT, "downstream refused {caps}"))
    }

    fn do_seek(&self, segment: &mut gst::Segment) -> bool {
        let Some(segment) = segment.downcast_mut::<gst::format::Time>() else {
            return false;
        };
        if segment.rate() < 0.0 {
            gst::warning!(CAT, imp = self, "reverse playback is not supported");
            return false;
        }
        let start = segment.start().map_or(0, |t| t.nseconds());
        let stop = segment.stop().map(|t| t.nseconds());
        let follow = self.settings.lock().unwrap().follows();
        if follow && (start != 0 || stop.is_some()) {
            return false;
        }
        let mut state = self.state.lock().unwrap();
        let Ok(s) = state.started() else {
            return false;
        };
        segment.set_time(gst::ClockTime::from_nseconds(start));
        s.seek = Some((start, stop));
        s.out.seg_start = start;
        s.out.frames_out = 0;
        s.out.page = None;
        gst::debug!(CAT, imp = self, "seek to {start} ns, stop {stop:?}");
        true
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        match query.view_mut() {
            gst::QueryViewMut::Duration(q) => {
                if q.format() != gst::Format::Time {
                    return false;
                }
                let Some(duration) = self.state.lock().unwrap().open().and_then(Open::duration)
                else {
                    return false;
                };
                q.set(duration);
                true
            }
            gst::QueryViewMut::Seeking(q) => {
                if q.format() != gst::Format::Time {
                    return false;
                }
                let follow = self.settings.lock().unwrap().follows();
                let duration = self.state.lock().unwrap().open().and_then(Open::duration);
                q.set(!follow, gst::ClockTime::ZERO, duration);
                true
            }
            gst::QueryViewMut::Latency(q) => {
                let settings = self.settings.lock().unwrap().clone();
                if settings.follows() {
                    let timing = *self.timing.lock().unwrap();
                    let (min, max) = latency(&settings, timing);
                    let told = match &*self.state.lock().unwrap() {
                        State::Started(s) => s.out.latency_told.unwrap_or_default(),
                        State::Stopped => Duration::ZERO,
                    };
                    let (min, max) = (min.max(told), max.map(|m| m.max(told + LATE_SLACK)));
                    gst::debug!(CAT, imp = self, "latency {min:?} to {max:?} ({timing:?})");
                    q.set(
                        true,
                        gst::ClockTime::from_nseconds(min.as_nanos() as u64),
                        max.map(|m| gst::ClockTime::from_nseconds(m.as_nanos() as u64)),
                    );
                } else {
                    q.set(false, gst::ClockTime::ZERO, gst::ClockTime::NONE);
                }
                true
            }
            _ => BaseSrcImplExt::parent_query(self, query),
        }
    }
}

impl PushSrcImpl for RacsSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        self.ensure_open()?;
        loop {
            let mut guard = self.state.lock().unwrap();
            let s = guard.started()?;
            let Reading::Open(o) = &mut s.reading else {
                return Err(gst::FlowError::Flushing);
            };
            if let Some((start, stop)) = s.seek.take() {
                if !(o.fresh && start == 0 && stop.is_none()) {
                    drop(guard);
                    self.reopen(start, stop)?;
                    continue;
                }
            }
            let format = o.format;
            let rate = format.sample_rate;
            if s.out.page.is_some() && s.out.anchor.is_none() {
                s.out.anchor = self.live_anchor(&s.out);
            }
            if let Some((buffer, unix_ns)) = cut_buffer(&mut s.out, format)? {
                o.fresh = false;
                let first = !std::mem::replace(&mut s.out.tagged, true);
                drop(guard);
                if first {
                    self.send_tags(unix_ns);
                }
                return Ok(CreateSuccess::NewBuffer(buffer));
            }
            // The page is used up: wait for the next one with the fetcher taken out of the
            // state, so queries and seeks are never stuck behind the network. A cancelled wait
            // leaves the fetcher as it was; it is put back.
            s.out.page = None;
            let mut fetcher = match std::mem::replace(&mut o.feed, Feed::Lent) {
                Feed::Ready(f) => f,
                Feed::Ended => {
                    o.feed = Feed::Ended;
                    return Err(gst::FlowError::Eos);
                }
                Feed::Lent => return Err(gst::FlowError::Flushing),
            };
            drop(guard);
            let canceller = self.canceller();
            let item = block_on(&canceller, async { Ok(fetcher.rx.recv().await) });
            let mut guard = self.state.lock().unwrap();
            let s = guard.started()?;
            let Reading::Open(o) = &mut s.reading else {
                return Err(gst::FlowError::Flushing);
            };
            if let Feed::Lent = o.feed {
                o.feed = Feed::Ready(fetcher);
            }
            let Ok(item) = item else {
                return Err(gst::FlowError::Flushing);
            };
            match item {
                Some(Fetched::Page(page)) => {
                    s.out.page = Some((page, 0));
                    drop(guard);
                    self.tell_latency();
                }
                Some(Fetched::Behind(behind)) => {
                    let (pts, _) = s.out.pts_span(rate, 0);
                    let processed = s.out.frames_out;
                    drop(guard);
                    self.post_qos(pts, behind, processed, 0);
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Read,
                        (
                            "racssrc is {} ms behind the stream's live edge (stored audio not delivered yet); catch-up=keep delivers all of it, late",
                            behind.as_millis()
                        )
                    );
                }
                Some(Fetched::Skipped { frames, unix_ns }) => {
                    let processed = s.out.frames_out;
                    let (pts, _) = s.out.skip(rate, frames);
                    drop(guard);
                    let left_out = Duration::from_nanos(frames_to_ns(frames, rate));
                    self.post_qos(pts, left_out, processed, frames);
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Read,
                        (
                            "racssrc fell behind the stream's live edge and went on from it (catch-up=drop): {:.3} s of audio from {} left out",
                            left_out.as_secs_f64(),
                            crate::client::reader::format_unix_ns(unix_ns)
                        )
                    );
                }
                Some(Fetched::Restarted { missing_ns, reason }) => {
                    let (pts, next) = s.out.skip(rate, ns_to_frames(missing_ns, rate));
                    drop(guard);
                    gst::element_imp_warning!(self, gst::ResourceError::Read, ("{}", reason));
                    self.push_gap(pts, next);
                }
                Some(Fetched::Gap {
                    frame,
                    frames,
                    reason,
                }) => {
                    let (pts, next) = s.out.skip(rate, frames);
                    drop(guard);
                    if self.settings.lock().unwrap().hole_policy == HolePolicy::Error {
                        gst::element_imp_error!(
                            self,
                            gst::ResourceError::Read,
                            ("{}; stopping there (hole-policy=error)", reason)
                        );
                        return Err(gst::FlowError::Error);
                    }
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Read,
                        ("{}; sent as a GAP event", reason),
                        [
                            "frame {frame}: GAP event at {} for {}",
                            gst::ClockTime::from_nseconds(pts),
                            gst::ClockTime::from_nseconds(next - pts)
                        ]
                    );
                    self.push_gap(pts, next);
                }
                Some(Fetched::End(empty)) => {
                    o.feed = Feed::Ended;
                    // The range asked for holds no audio: an error, so that an export fails
                    // instead of writing an empty file. After a seek, the end of the stream.
                    let asked = o.fresh;
                    let warn = match empty {
                        Some(reason) if asked => {
                            drop(guard);
                            gst::element_imp_error!(
                                self,
                                gst::ResourceError::NotFound,
                                (
                                    "nothing to read: {}; ask for a range inside it (start/stop \
                                     or start-offset/duration), or set follow=true to wait for it",
                                    reason
                                )
                            );
                            return Err(gst::FlowError::Error);
                        }
                        Some(reason) if !s.out.warned => {
                            s.out.warned = true;
                            Some(reason)
                        }
                        _ => None,
                    };
                    drop(guard);
                    if let Some(reason) = warn {
                        gst::element_imp_warning!(
                            self,
                            gst::ResourceError::NotFound,
                            ("nothing to read: {}", reason)
                        );
                    }
                    self.post_final_stats();
                    return Err(gst::FlowError::Eos);
                }
                Some(Fetched::Failed(e)) => {
                    o.feed = Feed::Ended;
                    drop(guard);
                    if e.is_cancelled() {
                        return Err(gst::FlowError::Flushing);
                    }
                    self.post_read_error(&e);
                    return Err(gst::FlowError::Error);
                }
                None => {
                    o.feed = Feed::Ended;
                    return Err(gst::FlowError::Eos);
                }
            }
        }
    }
}

/// The next output buffer cut from the current page (sharing its memory, no copy), with the
/// wall-clock time of its first sample; `None` when the page is used up.
fn cut_buffer(
    out: &mut Output,
    format: StreamFormat,
) -> Result<Option<(gst::Buffer, i128)>, gst::FlowError> {
    static UNIX_CAPS: Lazy<gst::Caps> =
        Lazy::new(|| gst::Caps::new_empty_simple("timestamp/x-unix"));
    let rate = format.sample_rate;
    let bpf = format.bytes_per_frame();
    let Some((page, pos)) = &out.page else {
        return Ok(None);
    };
    let (pos, size) = (*pos, page.buffer.size());
    if pos >= size {
        return Ok(None);
    }
    let max = (u64::from(rate) * BUFFER_MS / 1000).max(1) as usize * bpf;
    let n = (size - pos).min(max);
    let frames = (n / bpf) as u64;
    let unix_ns = page.unix_ns + i128::from(frames_to_ns((pos / bpf) as u64, rate));
    let mut buffer = page
        .buffer
        .copy_region(gst::BufferCopyFlags::MEMORY, pos..pos + n)
        .map_err(|_| gst::FlowError::Error)?;
    let (pts, next) = out.pts_span(rate, frames);
    {
        let buf = buffer.make_mut();
        buf.set_pts(gst::ClockTime::from_nseconds(pts));
        buf.set_duration(gst::ClockTime::from_nseconds(next - pts));
        buf.set_offset(out.frames_out);
        buf.set_offset_end(out.frames_out + frames);
        gst::ReferenceTimestampMeta::add(
            buf,
            &UNIX_CAPS,
            gst::ClockTime::from_nseconds(unix_ns.max(0) as u64),
            gst::ClockTime::from_nseconds(next - pts),
        );
        if out.frames_out == 0 || out.discont {
            buf.set_flags(gst::BufferFlags::DISCONT);
        }
    }
    out.discont = false;
    out.frames_out += frames;
    if let Some((_, pos)) = &mut out.page {
        *pos += n;
    }
    Ok(Some((buffer, unix_ns)))
}

// A range across rotated streams (a stream-id with strftime fields, as racssink writes them).
impl Settings {
    /// Whether stream-id names rotated streams (holds strftime fields racssink rotates by).
    fn rotated(&self) -> bool {
        matches!(
            self.stream_id.as_deref().map(Rotation::from_pattern),
            Some(Ok(Some(_)))
        )
    }

    /// The rotation and the wall-clock range (ns) to read across its streams; `None` for a
    /// single stream. Both start and stop are needed: they decide which streams to read.
    fn rotated_range(&self) -> Result<Option<(Rotation, i128, i128)>, String> {
        let Some(id) = self.stream_id.as_deref() else {
            return Ok(None);
        };
        let Ok(Some(rotation)) = Rotation::from_pattern(id) else {
            return Ok(None);
        };
        let (Some(start), Some(stop)) = (non_empty(&self.start), non_empty(&self.stop)) else {
            return Err(format!(
                "stream-id '{id}' names rotated streams (strftime fields): reading them needs \
                 both start and stop, as wall-clock times {TIME_FORM}"
            ));
        };
        if self.follow {
            return Err(format!(
                "stream-id '{id}' names rotated streams (strftime fields), which racssrc reads \
                 between start and stop; follow is not supported with them"
            ));
        }
        Ok(Some((
            rotation,
            parse_time("start", start)?,
            parse_time("stop", stop)?,
        )))
    }
}

impl RacsSrc {
    /// Opens a range across rotated streams: each period's stream in turn, joined sample to
    /// sample, a missing stream or part of one as a gap.
    fn open_rotated(&self) -> Result<(), gst::FlowError> {
        let settings = self.settings.lock().unwrap().clone();
        let Ok(Some((rotation, from, to))) = settings.rotated_range() else {
            return Err(gst::FlowError::Error);
        };
        let (pool, cfg) = {
            let mut state = self.state.lock().unwrap();
            let s = state.started()?;
            if let Reading::Open(_) = s.reading {
                return Ok(());
            }
            (s.pool.clone(), s.base.clone())
        };
        let range = self.wait(RotatedRange::open(pool, cfg, &rotation, from, to))?;
        let format = range.format();
        let frames = range.frames();
        gst::info!(
            CAT,
            imp = self,
            "rotated streams '{}' on {}: {format}, {} s from {} to {}",
            settings.stream_id.as_deref().unwrap_or_default(),
            settings.server.host,
            frames as f64 / f64::from(format.sample_rate),
            crate::client::reader::format_unix_ns(from),
            crate::client::reader::format_unix_ns(to)
        );
        self.set_open(
            format,
            0,
            Some(frames),
            Source::Range(Box::new(AnyRange::Rotated(range))),
        )
    }
}
