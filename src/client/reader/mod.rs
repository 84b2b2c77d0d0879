// SPDX-License-Identifier: MPL-2.0
//! Reads a range of one RACS stream as consecutive pages of its stored samples, exactly, or stops
//! with an error before anything doubtful is handed out. No GStreamer types: `racssrc` drives it,
//! and so do the tests and the benchmark.
//!
//! # What the server gives
//!
//! `EXTRACT 'id' a c` returns the samples of whole blocks, without their timestamps. A block is
//! returned iff its key and the name of the table holding it both lie in `[a, c]` (the in-memory
//! table has no name and always qualifies); the answer lists tables in name order, then the
//! in-memory table, and a table's blocks in arrival order. Table names are the key of the table's
//! first entry, often another stream's, so they can lie before or after the keys of our blocks,
//! and a table created later can carry a smaller name. A table being written is briefly hidden.
//! Blocks the server lost (an unflushed table at a crash or SHUTDOWN) are gone.
//!
//! # How the reader stays exact
//!
//! Alignment never rests on content. The reader reads the stream as *runs*: consecutive blocks of
//! one table, each obtained from answers whose composition is fixed by their lengths and by the
//! server's rules (see [`split`]):
//!
//! 1. `Q(k, k)` for the key `k` of the block at the cursor returns exactly that block when its
//!    table is named after it (or it is in the in-memory table).
//! 2. For a table named `x` that holds the block at the cursor, the first
//!    `|Q(x, Y)| - |Q(x + 1, Y)|` bytes of `Q(x, Y)` are that table's blocks from the cursor on
//!    (up to key `Y`), in order.
//! 3. The name of a table that is not named after the cursor's block is found with narrow probes
//!    whose answers can only hold that block (and blocks already read, which are subtracted).
//! 4. A table named after a *later* time (a stream written ahead of the clock started it) is
//!    read as the piece by which `Q(k, N)` exceeds `Q(k, N - 1)`; where that piece sits is
//!    tried at every place both answers allow, and accepted only when all places give the same
//!    samples.
//!
//! Offsets follow from the stream's `ref` and byte counts only. A block's key puts it within one
//! millisecond, never to the sample; so where a range starts far from the stream's first byte,
//! the reader finds a *keyframe* (the last table start before the range) and proves its offset
//! by counting: the bytes from it to the stream's end, subtracted from the stream's size, when
//! that stretch is shorter than the one before it; else it counts from the stream's first byte.
//! A lost stretch's end is proven the same way. Near the newest blocks,
//! answers are asked twice around the main one, so a table that is hidden or flushed meanwhile
//! cannot make them disagree unnoticed. Whatever cannot be proven stops the read with an error
//! naming the stream, the position and the cause.

macro_rules! trace {
    ($($t:tt)*) => {
        if std::env::var_os("RACS_READER_TRACE").is_some() {
            eprintln!($($t)*);
        }
    };
}

pub mod arith;
mod epochs;
pub mod known;
pub mod split;
pub(crate) mod steps;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::command::InfoAttr;
use super::error::Error;
use super::frame::StreamFormat;
use super::pool::Pool;
use super::wire::StreamInfo;

pub use arith::{format_unix_ms, format_unix_ns, Timeline};

/// Audio asked for per EXTRACT unless configured otherwise.
pub const DEFAULT_PAGE_MS: u64 = 10_000;
/// How often follow mode asks for the stream's size unless configured otherwise (racssrc's
/// `poll-interval` default).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The shortest wait between two polls of the stream's size: below it a follower costs the
/// server more requests than it saves latency.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Asked for a little after a block is due, so the poll does not come just before it lands.
const DUE_MARGIN: Duration = Duration::from_millis(2);
const NO_STREAM: &str = "The stream-id does not exist";

/// One end of the wanted range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The stream's beginning (as a start) or its end as it is when reading starts (as a stop;
    /// in follow mode: no end).
    Open,
    /// The stream's end as it is when reading starts (as a start: the live edge, where the
    /// next block the writer sends begins; as a stop: the same as `Open` without follow).
    End,
    /// A sample frame counted from the stream's first sample.
    Frame(u64),
    /// A wall-clock time in nanoseconds since the Unix epoch (UTC).
    UnixNs(i128),
}

#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub stream_id: String,
    /// First wanted sample (inclusive).
    pub start: Bound,
    /// End of the range (exclusive).
    pub stop: Bound,
    /// Audio per EXTRACT, in milliseconds; bounds memory.
    pub page_ms: u64,
    /// After the end, keep waiting for appended audio.
    pub follow: bool,
    /// Bound on every request and connect.
    pub timeout: Duration,
    /// How often follow mode asks for the stream's size once a block is overdue (at least
    /// [`MIN_POLL_INTERVAL`]). Until then, when the writer's block size and timeline are known,
    /// it waits for the time the next block is due, but never longer than one block.
    pub poll_interval: Duration,
    /// Pause before asking again when the newest blocks are not all visible yet.
    pub retry_delay: Duration,
    /// Such pauses allowed for one position before giving up (follow mode allows five times
    /// as many: the newest blocks are the ones that are briefly invisible).
    pub retries: u32,
    /// Follow mode: how long a table being written can stay hidden (with margin). A block
    /// missed for that long is looked for again from the start of the table holding it.
    pub hidden_window: Duration,
}

impl ReaderConfig {
    pub fn new(stream_id: impl Into<String>) -> Self {
        ReaderConfig {
            stream_id: stream_id.into(),
            start: Bound::Open,
            stop: Bound::Open,
            page_ms: DEFAULT_PAGE_MS,
            follow: false,
            timeout: Duration::from_secs(5),
            poll_interval: DEFAULT_POLL_INTERVAL,
            retry_delay: Duration::from_millis(300),
            retries: 4,
            hidden_window: Duration::from_secs(1),
        }
    }
}

/// What can stop a read.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadError {
    /// The stream does not exist on that server.
    NotFound { stream: String, addr: String },
    /// The stream's format cannot be read (not 16 or 24-bit, no channels, rate 0).
    Format(String),
    /// The server's answers do not determine the samples at a position (blocks left out, filed
    /// where no answer can order them, or a hole the caller asked to treat as an error). The text
    /// names the stream, the position and the cause.
    Missing(String),
    /// The stream started over (the server restarted and lost its size and `ref`): offsets on
    /// the old timeline mean nothing on the new one. [`Follower`] goes on with the new
    /// recording; a [`RangeReader`] alone stops.
    StartedOver(String),
    /// Connecting, a request, a timeout, a cancel, or an error reply.
    Client(Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotFound { stream, addr } => write!(
                f,
                "stream '{stream}' does not exist on the RACS server at {addr} (check stream-id, \
                 host and port)"
            ),
            ReadError::Format(msg) | ReadError::Missing(msg) | ReadError::StartedOver(msg) => {
                f.write_str(msg)
            }
            ReadError::Client(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReadError {}

impl From<Error> for ReadError {
    fn from(e: Error) -> Self {
        ReadError::Client(e)
    }
}

impl ReadError {
    pub fn is_cancelled(&self) -> bool {
        matches!(self, ReadError::Client(Error::Cancelled))
    }
}

/// Consecutive samples of the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Index of the first sample frame, counted from the stream's first sample.
    pub frame: u64,
    /// Interleaved samples as int32 LE (sign-extended), whole sample frames.
    pub data: Vec<u8>,
}

/// What the reader hands out, in time order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Stored samples.
    Audio {
        /// Index of the first sample frame, counted from the stream's first sample.
        frame: u64,
        /// Wall-clock time of the first sample (ns since the Unix epoch).
        unix_ns: i128,
        /// Interleaved int32 LE samples, whole sample frames.
        data: Vec<u8>,
    },
    /// Samples the server lost: nothing is stored for `frames` sample frames from `frame`.
    Gap {
        frame: u64,
        unix_ns: i128,
        frames: u64,
        /// Who and where, for a warning.
        reason: String,
    },
}

/// Counters for tests, the benchmark and racssrc's `stats` property.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// EXTRACT requests.
    pub queries: u64,
    /// INFO requests.
    pub infos: u64,
    /// Requests beyond the pages themselves: probes for where a table is filed, and checks.
    pub fallbacks: u64,
    /// Positions asked again because the newest blocks were not all visible or answers changed
    /// between two requests.
    pub retries: u64,
    /// Pauses (before asking again, or waiting for new audio in follow mode).
    pub waits: u64,
    /// int32 bytes received from the server.
    pub bytes: u64,
    /// Stretches the server lost, reported as gaps.
    pub holes: u64,
    /// Follow mode: positions located again from a table start after a block stayed missing
    /// (each reads again from there, up to the whole stream).
    pub relocations: u64,
}

/// The next block boundary to read from: its stream offset lies in `[off, off + unc]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    off: u64,
    unc: u64,
}

/// A table whose run may continue past the cursor (the last answer stopped at its key bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OpenTable {
    name: i64,
    /// Offset of the run's first block (the first of the table with a key at or after `name`).
    start: u64,
    first_key: i64,
    kind: known::Kind,
}

/// Reads one range of one stream; see the module documentation.
pub struct RangeReader {
    pool: Arc<Pool>,
    cfg: ReaderConfig,
    format: StreamFormat,
    tl: Timeline,
    ref_ms: i64,
    size: u64,
    /// Start and end resolved against `ref` (needs the first audio).
    resolved: bool,
    first_frame: u64,
    end_frame: Option<u64>,
    /// Stream offset of the next byte to hand out.
    next_out: u64,
    /// Where reading goes on; `None` until the start is located.
    cursor: Option<Cursor>,
    known: known::Known,
    open_table: Option<OpenTable>,
    /// Recordings after the one being read (after a crash the server starts a stream over at a
    /// new `ref`); `ref_ms` and `size` are those of the one being read.
    later: VecDeque<epochs::Epoch>,
    /// The first frame of the recording being read on the stream's timeline.
    base: u64,
    /// Wall-clock time of the stream's first sample (of its earliest recording).
    origin_ms: i64,
    /// A counting pass is under way (see `steps::count_to_end`): positions are relative, and
    /// a lost stretch ends the pass instead of being reported.
    counting: bool,
    /// The last run was one block that its own key returned, and reading it as a table gave
    /// nothing more: the in-memory table, read one block per request.
    singles: bool,
    /// How long (in key ms) the runs of this stream's tables last, from those read whole:
    /// bounds the next page to about one table, so the request for what follows it stays small.
    table_ms: i64,
    /// Misses in a row at the cursor (a table being written is hidden for a moment).
    misses: u32,
    /// Follow mode: where the start was located again after misses, so it is done once there.
    relocated: Option<u64>,
    /// The smallest growth of the stream seen between two polls (at most one writer's block,
    /// when its blocks are of one size): a hint for when to poll.
    growth: Option<u64>,
    /// The longest of the last size polls' round trips (decaying): one request's time.
    rtt: Duration,
    /// When growth was seen, relative to the wall-clock time of the stream's new end (ns), for
    /// the last few polls that saw it: the smallest is how long after its timeline the writer's
    /// blocks land (negative for a writer whose timestamps run ahead of the clock).
    lags: VecDeque<i128>,
    pending: VecDeque<Piece>,
    empty: Option<String>,
    notice: Option<String>,
    done: bool,
    stats: ReaderStats,
}

impl std::fmt::Debug for RangeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeReader")
            .field("stream", &self.cfg.stream_id)
            .field("format", &self.format)
            .field("ref_ms", &self.ref_ms)
            .field("size", &self.size)
            .field("cursor", &self.cursor)
            .field("next_out", &self.next_out)
            .finish()
    }
}

impl RangeReader {
    /// Reads the stream's INFO and locates the start of the range.
    pub async fn open(pool: Arc<Pool>, cfg: ReaderConfig) -> Result<Self, ReadError> {
        let info = {
            let mut conn = pool.checkout(cfg.timeout).await?;
            conn.stream_info(&cfg.stream_id).await?
        };
        let Some(info) = info else {
            return Err(ReadError::NotFound {
                stream: cfg.stream_id.clone(),
                addr: pool.addr().to_string(),
            });
        };
        let format = info.format().map_err(|e| {
            ReadError::Format(format!("stream '{}' cannot be read: {e}", cfg.stream_id))
        })?;
        let mut reader = RangeReader {
            pool,
            format,
            tl: Timeline::new(&format),
            ref_ms: 0,
            size: 0,
            resolved: false,
            first_frame: 0,
            end_frame: None,
            next_out: 0,
            cursor: None,
            known: known::Known::new(i64::MIN),
            open_table: None,
            later: VecDeque::new(),
            base: 0,
            origin_ms: 0,
            counting: false,
            singles: false,
            table_ms: 0,
            misses: 0,
            relocated: None,
            growth: None,
            rtt: Duration::ZERO,
            lags: VecDeque::new(),
            pending: VecDeque::new(),
            empty: None,
            notice: None,
            done: false,
            stats: ReaderStats {
                infos: 5,
                ..ReaderStats::default()
            },
            cfg,
        };
        reader.apply_info(&info);
        if reader.ref_ms != 0 {
            if !reader.cfg.follow {
                reader.find_earlier_recordings().await?;
            }
            reader.resolve();
            reader.start_at_live_edge();
            reader.skip_to_first_recording();
            if !reader.done && reader.next_out < reader.size {
                reader.locate().await?;
            }
        } else if !reader.cfg.follow {
            reader.set_empty(format!(
                "stream '{}' on {} holds no audio yet",
                reader.cfg.stream_id,
                reader.pool.addr()
            ));
        }
        Ok(reader)
    }

    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// Wall-clock time of the stream's first sample (ms since the epoch); 0 until known. For a
    /// stream the server started over after a crash, that of its earliest recording.
    pub fn ref_ms(&self) -> i64 {
        if self.origin_ms != 0 {
            self.origin_ms
        } else {
            self.ref_ms
        }
    }

    /// The stream's size in bytes when last asked: on its timeline, the bytes from its first
    /// sample to its last (the time between recordings counts).
    pub fn size(&self) -> u64 {
        self.timeline_bytes()
    }

    /// The first sample frame of the range (from the stream's start), once known.
    pub fn first_frame(&self) -> u64 {
        self.first_frame
    }

    /// The end of the range (exclusive), if it has one.
    pub fn end_frame(&self) -> Option<u64> {
        self.end_frame
    }

    /// Whether start and stop are known (follow mode on an empty stream waits for audio).
    pub fn is_resolved(&self) -> bool {
        self.resolved
    }

    /// Why the range is empty, when it is (outside the stream, or no audio yet).
    pub fn empty_reason(&self) -> Option<&str> {
        self.empty.as_deref()
    }

    /// Something the user should know that is not an error (a range clipped to the stream).
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    pub fn stream_id(&self) -> &str {
        &self.cfg.stream_id
    }

    pub fn addr(&self) -> &str {
        self.pool.addr()
    }

    /// Whether the position of the samples handed out is known to the sample (otherwise to
    /// within a millisecond: a start located by a block's key in a stream of mixed block sizes).
    pub fn is_exact(&self) -> bool {
        self.cursor.is_none_or(|c| c.unc == 0)
    }

    fn page_ms(&self) -> i64 {
        self.cfg.page_ms.clamp(1, 1 << 40) as i64
    }

    fn apply_info(&mut self, info: &StreamInfo) {
        self.size = info.size;
        if self.ref_ms == 0 {
            self.ref_ms = info.ref_ms;
        }
    }

    fn set_empty(&mut self, reason: String) {
        self.empty = Some(reason);
        self.done = true;
    }

    fn key(&self, offset: u64) -> i64 {
        self.tl.key(self.ref_ms, offset)
    }

    /// "stream 'x' on host:port"
    fn who(&self) -> String {
        format!("stream '{}' on {}", self.cfg.stream_id, self.pool.addr())
    }

    /// "byte B (T)" for a position in the stream.
    fn at(&self, offset: u64) -> String {
        format!(
            "byte {offset} ({})",
            format_unix_ns(self.tl.unix_ns(self.ref_ms, offset))
        )
    }

    fn describe_stream(&self) -> String {
        let frames = self.timeline_bytes() / self.tl.bpf;
        let end_ms = self.ref_ms()
            + (frames as f64 * 1000.0 / f64::from(self.format.sample_rate)).round() as i64;
        format!(
            "{} holds {} to {} ({:.3} s)",
            self.who(),
            format_unix_ms(self.ref_ms()),
            format_unix_ms(end_ms),
            frames as f64 / f64::from(self.format.sample_rate)
        )
    }

    /// Follow mode, the block at the cursor missed: the blocks read from the in-memory table
    /// (the trailing runs that start at their own key) are filed, once that table is handed
    /// over, under the name of its first block, and so is a block that was still in it. Finds
    /// that table among them: the newest run whose first key `k` gives a non-empty `Q(k, kcur)`
    /// (the tables named in `[k, kcur]` hold none of this stream's blocks but those runs' and
    /// the cursor's), holding more than those runs, and naming a table of its own (`Q(k, k)`
    /// holds its block). Reading goes on from
    /// that table's start, as for a table left open; its run is checked as any other.
    async fn reach_back(&mut self) -> Result<bool, ReadError> {
        let Some(cur) = self.cursor.filter(|c| c.unc == 0) else {
            return Ok(false);
        };
        if self.open_table.is_some() {
            return Ok(false);
        }
        let mut singles: Vec<known::Run> = self
            .known
            .runs()
            .rev()
            // Runs read from a table's first block on (one block of the in-memory table, or
            // several); a table named before its blocks or after them ends the search.
            .take_while(|r| {
                r.kind == known::Kind::Single
                    || (r.kind == known::Kind::Head && r.name == r.first_key)
            })
            .copied()
            .collect();
        singles.reverse();
        if singles.is_empty() {
            return Ok(false);
        }
        let kcur = self.key(cur.off);
        // The newest run whose key names a visible table: `Q(k_a, k_b - 1)` (keys of runs
        // a..b only, so an answer holds at most those runs' blocks, and nothing where no table
        // is named among them) is non-empty iff a visible table is named in that window. Gallop
        // back from the newest run in growing windows, then halve the window that has one.
        let n = singles.len();
        let key_at = |i: usize| if i < n { singles[i].first_key } else { kcur };
        let mut b = n;
        let mut size = 1;
        let (mut lo, mut hi) = loop {
            let a = b.saturating_sub(size);
            let found = self.qlen(key_at(a), key_at(b) - 1).await? > 0;
            self.stats.fallbacks += 1;
            if found {
                break (a, b);
            }
            if a == 0 || size >= 4096 {
                return Ok(false);
            }
            b = a;
            size *= 2;
        };
        // A table is named in [k_lo, k_hi - 1]: find the newest such run.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let found = self.qlen(key_at(mid), key_at(hi) - 1).await? > 0;
            self.stats.fallbacks += 1;
            if found {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let i = lo;
        // The table holds the cursor's block only if it answers for more than the runs read
        // from it (otherwise the newest table is still hidden, and this is the one before).
        let lo_len = self.qlen(singles[i].first_key, kcur).await?;
        self.stats.fallbacks += 1;
        let known: u64 = singles[i..].iter().map(|r| r.len).sum();
        if lo_len <= known {
            return Ok(false);
        }
        let r = singles[i];
        let own = self.q(r.first_key, r.first_key).await?;
        self.stats.fallbacks += 1;
        if own.is_empty() {
            return Ok(false);
        }
        trace!(
            "follow: the cursor's block may be in the table named {} from {}",
            r.first_key - self.ref_ms,
            r.start
        );
        self.open_table = Some(OpenTable {
            name: r.first_key,
            start: r.start,
            first_key: r.first_key,
            kind: known::Kind::Head,
        });
        Ok(true)
    }

    /// What polls learned of the writer's timing, for a reader of the same stream that
    /// replaces `old`.
    fn inherit_timing(&mut self, old: &RangeReader) {
        self.growth = self.growth.or(old.growth);
        self.lags = old.lags.clone();
        self.rtt = self.rtt.max(old.rtt);
    }

    /// A start at the stream's end: the next block the writer sends begins exactly at the size
    /// just asked, so the cursor goes there without a search.
    fn start_at_live_edge(&mut self) {
        if self.cfg.start != Bound::End || self.done || !self.resolved || self.cursor.is_some() {
            return;
        }
        let off = self.first_frame * self.tl.bpf;
        if off != self.size {
            return;
        }
        self.cursor = Some(Cursor { off, unc: 0 });
        self.known = known::Known::new(if off == 0 { self.ref_ms } else { self.key(off) });
        self.open_table = None;
    }

    /// Turns start and stop into frames once `ref` is known.
    fn resolve(&mut self) {
        self.resolved = true;
        let frames = self.timeline_bytes() / self.tl.bpf;
        let start = match self.cfg.start {
            Bound::Open => 0,
            Bound::End => i128::from(frames),
            Bound::Frame(f) => i128::from(f),
            Bound::UnixNs(t) => self.timeline_frame_of(t),
        };
        let stop = match self.cfg.stop {
            Bound::Open => None,
            Bound::End if self.cfg.follow => None,
            Bound::End => Some(i128::from(frames)),
            Bound::Frame(f) => Some(i128::from(f)),
            Bound::UnixNs(t) => Some(self.timeline_frame_of(t)),
        };
        if let Some(stop) = stop {
            if stop <= 0 || stop <= start {
                let reason = format!(
                    "the asked range ends before it starts or before the stream does; {}",
                    self.describe_stream()
                );
                self.set_empty(reason);
                return;
            }
        }
        if start < 0 {
            self.notice = Some(format!(
                "the asked start lies before the stream's first sample; reading from there \
                 ({})",
                self.describe_stream()
            ));
        }
        let start = start.max(0) as u64;
        let stop = stop.map(|s| u64::try_from(s).unwrap_or(u64::MAX));
        self.first_frame = start;
        if self.cfg.follow {
            self.end_frame = stop;
        } else {
            let end = stop.unwrap_or(frames).min(frames);
            if start >= end {
                let reason = format!(
                    "the asked range lies after the end of the stream; {}",
                    self.describe_stream()
                );
                self.set_empty(reason);
                return;
            }
            if stop.is_some_and(|s| s > frames) {
                self.notice = Some(format!(
                    "the asked stop lies after the end of the stream; reading to the end ({})",
                    self.describe_stream()
                ));
            }
            self.end_frame = Some(end);
        }
        self.next_out = start.saturating_sub(self.base) * self.tl.bpf;
    }

    /// One EXTRACT, counted.
    async fn q(&mut self, from: i64, to: i64) -> Result<Vec<u8>, ReadError> {
        if from > to || to < 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.checkout(self.cfg.timeout).await?;
        self.stats.queries += 1;
        let (rf, rt) = (from - self.ref_ms, to - self.ref_ms);
        match conn
            .extract(&self.cfg.stream_id, from.max(0) as u64, to as u64)
            .await
        {
            Ok(data) => {
                trace!(
                    "  Q({rf}, {rt}) -> {} frames",
                    data.len() as u64 / self.tl.wide_bpf
                );
                self.stats.bytes += data.len() as u64;
                if !data.len().is_multiple_of(self.tl.wide_bpf as usize) {
                    return Err(ReadError::Missing(format!(
                        "{}: the server returned {} bytes for EXTRACT [{from}, {to}], not whole \
                         sample frames of {} channels",
                        self.who(),
                        data.len(),
                        self.format.channels
                    )));
                }
                Ok(data)
            }
            Err(Error::Server(msg)) if msg == NO_STREAM => Err(ReadError::NotFound {
                stream: self.cfg.stream_id.clone(),
                addr: self.pool.addr().to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Stream bytes of one EXTRACT answer.
    async fn qlen(&mut self, from: i64, to: i64) -> Result<u64, ReadError> {
        let n = self.q(from, to).await?.len();
        Ok(self.tl.wide_to_stream(n))
    }

    async fn refresh_size(&mut self) -> Result<(), ReadError> {
        if !self.later.is_empty() {
            // An earlier recording: the server no longer writes to it.
            return Ok(());
        }
        let asked = std::time::Instant::now();
        let res = self.refresh_size_once().await;
        if res.is_ok() {
            let took = asked.elapsed();
            // Rises at once, falls slowly: the latency reported must cover a slow request.
            self.rtt = if took >= self.rtt {
                took
            } else {
                (self.rtt * 15 + took) / 16
            };
        }
        res
    }

    /// How long one request takes (the longest of the last polls, decaying).
    pub fn request_time(&self) -> Duration {
        self.rtt
    }

    /// Stored audio after what was handed out, as the stream's size was last asked: how far
    /// behind the writer the reader is.
    pub fn backlog(&self) -> Duration {
        let bytes = self.size.saturating_sub(self.next_out);
        Duration::from_nanos(self.tl.frames_to_ns(bytes / self.tl.bpf))
    }

    /// Wall-clock time (ns since the epoch) of the next sample to hand out.
    pub fn next_unix_ns(&self) -> i128 {
        self.tl.unix_ns(self.ref_ms, self.next_out)
    }

    async fn refresh_size_once(&mut self) -> Result<(), ReadError> {
        let mut conn = self.pool.checkout(self.cfg.timeout).await?;
        if self.ref_ms == 0 {
            self.stats.infos += 5;
            let info = conn.stream_info(&self.cfg.stream_id).await?;
            drop(conn);
            match info {
                Some(info) => self.apply_info(&info),
                None => {
                    return Err(ReadError::NotFound {
                        stream: self.cfg.stream_id.clone(),
                        addr: self.pool.addr().to_string(),
                    })
                }
            }
        } else {
            self.stats.infos += 1;
            let size = conn.info(&self.cfg.stream_id, InfoAttr::Size).await?;
            let size = size.map_or(0, |s| s.max(0) as u64);
            if size < self.size {
                // A stream never shrinks, unless the server restarted after a crash and lost
                // its metadata: then its `ref` changes too (to 0, then to the time of the next
                // frame), and offsets on the old timeline mean nothing on the new one.
                self.stats.infos += 1;
                let ref_ms = conn.info(&self.cfg.stream_id, InfoAttr::Ref).await?;
                if ref_ms.unwrap_or(0) != self.ref_ms {
                    return Err(ReadError::StartedOver(format!(
                        "{} started over: its size went back from {} to {size} bytes and its \
                         reference time changed, so the server restarted and lost data. Start \
                         racssrc again to read the stream as it is now",
                        self.who(),
                        self.size
                    )));
                }
            }
            // A size that reads as unknown (0) with the same ref: keep what we know.
            if size > self.size && self.size > 0 {
                let grown = size - self.size;
                self.growth = Some(self.growth.map_or(grown, |g| g.min(grown)));
                if self.lags.len() == 16 {
                    self.lags.pop_front();
                }
                self.lags
                    .push_back(unix_now_ns() - self.tl.unix_ns(self.ref_ms, size));
            }
            self.size = self.size.max(size);
        }
        Ok(())
    }

    /// The size of the writer's blocks, as far as it is known: the smallest growth seen
    /// between two polls (a timing hint for polling, never used to place audio).
    pub fn block_bytes(&self) -> Option<u64> {
        self.growth.filter(|&b| b >= self.tl.bpf)
    }

    /// Audio in one of the writer's blocks, when known.
    pub fn block_duration(&self) -> Option<Duration> {
        self.block_bytes()
            .map(|b| Duration::from_nanos(self.tl.frames_to_ns(b / self.tl.bpf)))
    }

    /// How long follow mode waits before asking for the stream's size again: until the next
    /// block is due by the stream's wall-clock timeline (a writer that keeps to the clock, as
    /// racssink does, sends it then), at most one block; the poll interval once it is overdue,
    /// or when the block size or the timeline is not known.
    pub fn poll_wait(&self) -> Duration {
        let p = self.cfg.poll_interval.max(MIN_POLL_INTERVAL);
        let (Some(block), true) = (self.block_bytes(), self.ref_ms != 0) else {
            trace!("poll: block size not known");
            return p;
        };
        let lag = self.lags.iter().copied().min().unwrap_or(0);
        let due = self.tl.unix_ns(self.ref_ms, self.size + block) + lag;
        let ahead = due - unix_now_ns();
        let block_ns = i128::from(self.tl.frames_to_ns(block / self.tl.bpf));
        trace!(
            "poll: block {block} bytes, lands {} ms after its time, next due in {} ms",
            lag / 1_000_000,
            ahead / 1_000_000
        );
        if ahead <= 0 {
            return p;
        }
        // Never more often than the poll interval: blocks shorter than it are taken several
        // at a time (each request costs the server about as much as a block's worth of
        // audio is worth; see docs/racssrc.md, "Server cost").
        let wait = ahead.min(block_ns);
        (Duration::from_nanos(wait as u64) + DUE_MARGIN).max(p)
    }

    async fn pause(&mut self, d: Duration) {
        self.stats.waits += 1;
        tokio::time::sleep(d).await;
    }

    /// The next page of the range, `None` at its end; gaps (lost samples) are skipped. In
    /// follow mode this waits for new audio.
    pub async fn next_page(&mut self) -> Result<Option<Page>, ReadError> {
        loop {
            match self.next_piece().await? {
                Some(Piece::Audio { frame, data, .. }) => return Ok(Some(Page { frame, data })),
                Some(Piece::Gap { .. }) => continue,
                None => return Ok(None),
            }
        }
    }

    /// The next piece of the range (samples or a gap), `None` at its end. In follow mode this
    /// waits for new audio.
    pub async fn next_piece(&mut self) -> Result<Option<Piece>, ReadError> {
        loop {
            if let Some(p) = self.pending.pop_front() {
                return Ok(Some(p));
            }
            if self.done {
                return Ok(None);
            }
            if !self.resolved || self.cursor.is_none() {
                // Follow mode: waiting for the first audio, or for the start to be written.
                self.refresh_size().await?;
                if self.ref_ms != 0 && !self.resolved {
                    self.resolve();
                    self.start_at_live_edge();
                    continue;
                }
                if self.resolved && self.size / self.tl.bpf >= self.first_frame.max(1) {
                    self.locate().await?;
                    continue;
                }
                let d = self.cfg.poll_interval.max(MIN_POLL_INTERVAL);
                self.pause(d).await;
                continue;
            }
            let end = self
                .end_frame
                .map(|f| f.saturating_sub(self.base) * self.tl.bpf);
            if end.is_some_and(|e| self.next_out >= e) {
                self.done = true;
                return Ok(None);
            }
            if self.cursor.is_some_and(|c| c.off >= self.size) && self.next_recording() {
                if self.next_out < self.size {
                    self.locate().await?;
                }
                continue;
            }
            let cur = self.cursor.expect("located");
            if cur.off >= self.size {
                if !self.cfg.follow {
                    self.done = true;
                    return Ok(None);
                }
                // Everything the last poll announced is read: wait before asking again.
                let d = self.poll_wait();
                self.pause(d).await;
                self.refresh_size().await?;
                continue;
            }
            match self.step().await? {
                steps::Step::Run { start, data } => {
                    self.misses = 0;
                    self.cut_audio(start, data, end);
                }
                steps::Step::Gap { start, len, reason } => {
                    self.misses = 0;
                    self.cut_gap(start, len, end, reason);
                }
                steps::Step::End => {
                    if self.next_recording() {
                        if self.next_out < self.size {
                            self.locate().await?;
                        }
                        continue;
                    }
                    if !self.cfg.follow {
                        self.done = true;
                        return Ok(None);
                    }
                    let d = self.poll_wait();
                    self.pause(d).await;
                    self.refresh_size().await?;
                }
                steps::Step::Retry(why) => {
                    let at = self.cursor.expect("located");
                    let quick = self.quick_miss(at);
                    self.misses += 1;
                    self.stats.retries += 1;
                    // Near the live edge the searches start after the quick misses.
                    let m = if self.live(at) {
                        self.misses.saturating_sub(self.quick_misses())
                    } else {
                        self.misses
                    };
                    if self.cfg.follow
                        && !quick
                        && m >= 1
                        && (m <= 2 || m.is_multiple_of(4))
                        && self.reach_back().await?
                    {
                        self.misses = 0;
                        continue;
                    }
                    if self.cfg.follow
                        && self.relocated != Some(self.next_out)
                        && self.cfg.retry_delay * self.misses >= self.cfg.hidden_window
                    {
                        // The blocks a follower reads one by one from the in-memory table are
                        // filed, once that table is written, under the name of its first
                        // block: a block missed at the moment its table was handed over is
                        // found there only by a request that reaches back to that name. Once
                        // the table can no longer be hidden, start again from the table start
                        // at or before the next sample (what is before it is not handed out
                        // again).
                        trace!(
                            "follow: relocating at {} after {} misses",
                            self.next_out,
                            self.misses
                        );
                        self.relocated = Some(self.next_out);
                        self.stats.fallbacks += 1;
                        self.stats.relocations += 1;
                        self.locate().await?;
                        self.misses = 0;
                        continue;
                    }
                    let allowed = if self.cfg.follow {
                        self.cfg.retries.saturating_mul(5)
                    } else {
                        self.cfg.retries
                    };
                    if self.misses > allowed {
                        let cur = self.cursor.expect("located");
                        return Err(ReadError::Missing(format!(
                            "{}: cannot read on from {}: {why} (asked {} times)",
                            self.who(),
                            self.at(cur.off),
                            self.misses
                        )));
                    }
                    let d = self.cfg.retry_delay;
                    self.pause(d).await;
                    self.refresh_size().await?;
                }
            }
        }
    }

    /// Queues the wanted part of a run that starts at stream offset `start`.
    fn cut_audio(&mut self, start: u64, mut data: Vec<u8>, end: Option<u64>) {
        let run_end = start + self.tl.wide_to_stream(data.len());
        let from = start.max(self.next_out);
        let to = end.map_or(run_end, |e| e.min(run_end));
        if to <= from {
            return;
        }
        let skip = self.tl.stream_to_wide(from - start);
        let keep = self.tl.stream_to_wide(to - from);
        data.truncate(skip + keep);
        data.drain(..skip);
        self.next_out = to;
        self.pending.push_back(Piece::Audio {
            frame: self.base + from / self.tl.bpf,
            unix_ns: self.tl.unix_ns(self.ref_ms, from),
            data,
        });
    }

    /// Queues the wanted part of a stretch of `len` lost bytes at stream offset `start`.
    fn cut_gap(&mut self, start: u64, len: u64, end: Option<u64>, reason: String) {
        let from = start.max(self.next_out);
        let to = end.map_or(start + len, |e| e.min(start + len));
        if to <= from {
            return;
        }
        self.stats.holes += 1;
        self.next_out = to;
        self.pending.push_back(Piece::Gap {
            frame: self.base + from / self.tl.bpf,
            unix_ns: self.tl.unix_ns(self.ref_ms, from),
            frames: (to - from) / self.tl.bpf,
            reason,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Following a live stream.

/// What follow mode adds to the reader: noticing that it fell behind the writer, and going on
/// after the server restarted.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// Stored audio not yet handed out beyond which the follower is behind the writer.
    pub behind_limit: Duration,
    /// Once behind: go on from the live edge, leaving out what lies before it (otherwise hand
    /// out every sample and only say so).
    pub drop_to_live_edge: bool,
    /// How long to keep trying when the server cannot be reached, before giving up with the
    /// error (zero: at once).
    pub retry_timeout: Duration,
}

impl Default for FollowConfig {
    fn default() -> Self {
        FollowConfig {
            behind_limit: Duration::MAX,
            drop_to_live_edge: false,
            retry_timeout: Duration::from_secs(10),
        }
    }
}

/// What a [`Follower`] hands out, in time order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    Piece(Piece),
    /// Fell behind the writer: `behind` of stored audio is not handed out yet. Said once each
    /// time it happens (again only after catching up).
    Behind {
        behind: Duration,
        unix_ns: i128,
    },
    /// Went on from the live edge: `frames` sample frames from `frame` (stored, at `unix_ns`)
    /// are left out.
    Skipped {
        frame: u64,
        frames: u64,
        unix_ns: i128,
    },
    /// The server restarted and the stream started a new recording at `ref_ms` (ms since the
    /// epoch). The wall-clock time from the end of what was handed out (`from_unix_ns`) to the
    /// new recording's start, `missing_ns`, is not delivered. Frames from here on count from
    /// the new recording's first sample.
    Restarted {
        ref_ms: i64,
        from_unix_ns: i128,
        missing_ns: u64,
        reason: String,
    },
}

/// Follows one stream: a [`RangeReader`] in follow mode, reopened at the live edge when it falls
/// behind (if asked to) and at the new recording when the server restarts and the stream starts
/// over. Unlike the reader alone, it waits out a server that cannot be reached for up to
/// [`FollowConfig::retry_timeout`].
pub struct Follower {
    cfg: ReaderConfig,
    fcfg: FollowConfig,
    reader: RangeReader,
    /// Counters of the readers replaced so far.
    past: ReaderStats,
    behind: bool,
}

/// Errors after which the stream may be read on once the server answers again.
fn recoverable(e: &ReadError) -> bool {
    match e {
        ReadError::StartedOver(_) => true,
        ReadError::Client(e) => e.is_connection_error(),
        _ => false,
    }
}

fn sum(a: ReaderStats, b: ReaderStats) -> ReaderStats {
    ReaderStats {
        queries: a.queries + b.queries,
        infos: a.infos + b.infos,
        fallbacks: a.fallbacks + b.fallbacks,
        retries: a.retries + b.retries,
        waits: a.waits + b.waits,
        bytes: a.bytes + b.bytes,
        holes: a.holes + b.holes,
        relocations: a.relocations + b.relocations,
    }
}

/// The error a connection failure becomes once `retry_timeout` has passed.
fn gave_up(e: Error, after: Duration) -> ReadError {
    let note = |reason: String| {
        format!(
            "{reason}; still failing after retrying for {} ms (retry-timeout)",
            after.as_millis()
        )
    };
    ReadError::Client(match e {
        Error::Connect { addr, reason } => Error::Connect {
            addr,
            reason: note(reason),
        },
        Error::Io { addr, reason } => Error::Io {
            addr,
            reason: note(reason),
        },
        Error::Protocol { addr, reason } => Error::Protocol {
            addr,
            reason: note(reason),
        },
        other => other,
    })
}

impl Follower {
    /// Follows with `reader` (opened in follow mode).
    pub fn new(reader: RangeReader, fcfg: FollowConfig) -> Follower {
        Follower {
            cfg: reader.cfg.clone(),
            fcfg,
            reader,
            past: ReaderStats::default(),
            behind: false,
        }
    }

    /// Opens a reader for `cfg` (in follow mode) and follows with it.
    pub async fn open(
        pool: Arc<Pool>,
        mut cfg: ReaderConfig,
        fcfg: FollowConfig,
    ) -> Result<Follower, ReadError> {
        cfg.follow = true;
        Ok(Follower::new(RangeReader::open(pool, cfg).await?, fcfg))
    }

    /// The reader of the current recording.
    pub fn reader(&self) -> &RangeReader {
        &self.reader
    }

    /// Counters of every reader used so far.
    pub fn stats(&self) -> ReaderStats {
        sum(self.past, self.reader.stats())
    }

    /// The next piece, or what happened instead; `None` at the end of the range (with a stop).
    pub async fn next(&mut self) -> Result<Option<Followed>, ReadError> {
        loop {
            if self.reader.pending.is_empty() && self.reader.cursor.is_some() {
                let behind = self.reader.backlog();
                if behind > self.fcfg.behind_limit {
                    if self.fcfg.drop_to_live_edge {
                        if let Some(f) = self.skip().await? {
                            return Ok(Some(f));
                        }
                    } else if !self.behind {
                        self.behind = true;
                        return Ok(Some(Followed::Behind {
                            behind,
                            unix_ns: self.reader.next_unix_ns(),
                        }));
                    }
                } else if behind <= self.fcfg.behind_limit / 2 {
                    self.behind = false;
                }
            }
            match self.reader.next_piece().await {
                Ok(p) => return Ok(p.map(Followed::Piece)),
                Err(e) if recoverable(&e) => {
                    if let Some(f) = self.recover(e).await? {
                        return Ok(Some(f));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The stop of the range for a reader of another recording: wall-clock, since frames count
    /// from a recording's start.
    fn stop_as_time(&self) -> Bound {
        match self.cfg.stop {
            Bound::Frame(f) => Bound::UnixNs(
                self.reader
                    .tl
                    .unix_ns(self.reader.ref_ms, f.saturating_mul(self.reader.tl.bpf)),
            ),
            other => other,
        }
    }

    /// Reopens at the live edge; `None` when that is not ahead of the cursor after all.
    async fn skip(&mut self) -> Result<Option<Followed>, ReadError> {
        let mut cfg = self.cfg.clone();
        cfg.start = Bound::End;
        let pool = self.reader.pool.clone();
        let reader = match RangeReader::open(pool, cfg).await {
            Ok(r) => r,
            Err(e) if recoverable(&e) => return self.recover(e).await,
            Err(e) => return Err(e),
        };
        if reader.ref_ms != self.reader.ref_ms {
            return self
                .recover(ReadError::StartedOver(format!(
                    "{} started over",
                    self.reader.who()
                )))
                .await;
        }
        let from = self.reader.next_out / self.reader.tl.bpf;
        let to = reader.first_frame;
        if !reader.resolved || to <= from {
            return Ok(None);
        }
        let unix_ns = self.reader.next_unix_ns();
        self.past = sum(self.past, self.reader.stats());
        let mut reader = reader;
        reader.inherit_timing(&self.reader);
        self.reader = reader;
        self.behind = false;
        Ok(Some(Followed::Skipped {
            frame: from,
            frames: to - from,
            unix_ns,
        }))
    }

    /// After an error that a restart or a broken connection explains: waits for the server
    /// (up to the retry timeout while it cannot be reached), then reads on with the same
    /// recording (`None`) or with the stream's new one.
    async fn recover(&mut self, first: ReadError) -> Result<Option<Followed>, ReadError> {
        let pool = self.reader.pool.clone();
        let deadline = std::time::Instant::now() + self.fcfg.retry_timeout;
        let old_ref = self.reader.ref_ms;
        let mut pause = Duration::from_millis(20);
        trace!("follower: {first}");
        loop {
            let asked = async {
                let mut conn = pool.checkout(self.cfg.timeout).await?;
                conn.stream_info(&self.cfg.stream_id).await
            }
            .await;
            self.reader.stats.infos += 5;
            let info = match asked {
                Ok(Some(info)) => info,
                Ok(None) => {
                    return Err(ReadError::NotFound {
                        stream: self.cfg.stream_id.clone(),
                        addr: pool.addr().to_string(),
                    })
                }
                Err(e) if e.is_connection_error() => {
                    if std::time::Instant::now() >= deadline {
                        return Err(gave_up(e, self.fcfg.retry_timeout));
                    }
                    self.reader.pause(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if info.ref_ms == old_ref {
                if info.size >= self.reader.size {
                    // The same recording: the connection broke, the stream did not.
                    return Ok(None);
                }
                // Same `ref`, fewer bytes: the server fell back to older metadata and the
                // writer appends at offsets that held other audio.
                return Err(ReadError::StartedOver(format!(
                    "{} went back from {} to {} bytes with the same reference time after the server restarted: offsets no longer match the audio. Start racssrc again",
                    self.reader.who(),
                    self.reader.size,
                    info.size
                )));
            }
            if info.ref_ms == 0 {
                // Started over, no audio yet: the server is up, so wait as follow mode does.
                let d = self.cfg.poll_interval.max(MIN_POLL_INTERVAL);
                self.reader.pause(d).await;
                continue;
            }
            let format = info.format().map_err(|e| {
                ReadError::Format(format!(
                    "stream '{}' cannot be read after the server restarted: {e}",
                    self.cfg.stream_id
                ))
            })?;
            if format != self.reader.format {
                return Err(ReadError::Format(format!(
                    "{} started over as {format} after the server restarted, no longer {}: start racssrc again",
                    self.reader.who(),
                    self.reader.format
                )));
            }
            let from_unix_ns = self.reader.next_unix_ns();
            let new_start = i128::from(info.ref_ms) * 1_000_000;
            // `ref` is whole milliseconds: a recording that starts within the millisecond the
            // last one ended in follows it.
            if new_start + 1_000_000 <= from_unix_ns {
                return Err(ReadError::StartedOver(format!(
                    "{} started over after the server restarted, with a new recording from {} that overlaps what was already read (up to {}): blocks of both answer for the same times and racssrc cannot tell them apart. Start racssrc again",
                    self.reader.who(),
                    format_unix_ms(info.ref_ms),
                    format_unix_ns(from_unix_ns)
                )));
            }
            let missing_ns = u64::try_from((new_start - from_unix_ns).max(0)).unwrap_or(u64::MAX);
            let mut cfg = self.cfg.clone();
            cfg.start = Bound::Open;
            cfg.stop = self.stop_as_time();
            let reader = match RangeReader::open(pool.clone(), cfg.clone()).await {
                Ok(r) => r,
                Err(e) if recoverable(&e) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(e);
                    }
                    self.reader.pause(pause).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if reader.ref_ms != info.ref_ms {
                // Restarted once more meanwhile.
                continue;
            }
            let reason = format!(
                "{} started over: the server restarted and the stream's new recording begins at {}; {:.3} s from {} (the end of what was read) are missing (lost by the server, or written before the restart and not readable across it)",
                self.reader.who(),
                format_unix_ms(info.ref_ms),
                missing_ns as f64 / 1e9,
                format_unix_ns(from_unix_ns)
            );
            self.past = sum(self.past, self.reader.stats());
            let mut reader = reader;
            reader.inherit_timing(&self.reader);
            self.reader = reader;
            self.cfg = cfg;
            self.behind = false;
            return Ok(Some(Followed::Restarted {
                ref_ms: info.ref_ms,
                from_unix_ns,
                missing_ns,
                reason,
            }));
        }
    }
}

/// The wall clock, in ns since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}
