//! Reads a range of one RACS stream as consecutive pages of samples that join with no gap and
//! no duplicate, on top of an EXTRACT that returns whole blocks without their timestamps and
//! that can silently skip blocks (contract sections 3, 5 and 7). No GStreamer types:
//! `racssrc` drives it, and so do the tests and the benchmark.
//!
//! The model: a stream is a run of bytes; the block appended after `size_before` bytes gets the
//! key `ref + trunc(size_before / bytes_per_second * 1000)`. The reader keeps a *cursor*, the
//! byte offset of a block boundary, and asks for the blocks whose keys lie in
//! `[key(cursor), key(cursor) + page - 1]`. Whatever comes back starts at the cursor and ends at
//! the next block boundary, so the cursor advances by exactly what the server returned.
//!
//! A page is checked before it is used: it must reach the first byte whose key lies past the
//! page (or the end of the stream). A short page missed blocks: a table named before the page
//! (often after another stream's block), or a table still being flushed. The reader then asks
//! again from further back (`from` = the cursor's key minus 1, 4, 16… pages, then 0) and finds
//! where the new data starts by matching the last bytes it already returned (the *tail*) in the
//! longer answer; from 0 it can also count from the stream's first byte. If nothing works it
//! waits and retries (flush invisibility lasts about half a second on the real server), and
//! gives up with [`ReadError::Missing`] rather than return audio with a hole in it.
//!
//! One more case is handled at the stream's start: a stream begun right after another one was
//! imported ahead of the wall clock has its first blocks in a table filed under the import's
//! future key, returned only by ranges reaching that key and then after later blocks. The reader
//! finds that key, splits those blocks out of two answers, verifies them as the stream's head,
//! and reads on from there (see `RangeReader::recover_head`).
//!
//! Where the range starts inside the stream, the reader bisects with narrow EXTRACTs for the key
//! of the block holding the first wanted sample. The key gives the block's offset only to within
//! a millisecond of audio, so the first sample is within 1 ms of the one asked for; after that,
//! pages join exactly. Ranges that start within one page of the stream's beginning are read
//! from offset 0 and are exact.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::command::InfoAttr;
use super::error::Error;
use super::frame::{StreamFormat, MAX_BLOCK_BYTES};
use super::pool::Pool;
use super::wire::StreamInfo;

/// Audio asked for per EXTRACT unless configured otherwise.
pub const DEFAULT_PAGE_MS: u64 = 10_000;
/// Bytes at the end of a stream that may sit in a table the server is still flushing: the
/// newest flush holds at most one table (40 blocks by default) of the newest blocks of all streams.
const RECENT_BYTES: u64 = 128 * MAX_BLOCK_BYTES as u64;
/// Bytes of the last returned samples (as int32) kept to find the seam in a wider answer.
const TAIL_BYTES: usize = 4096;
const NO_STREAM: &str = "The stream-id does not exist";

/// One end of the wanted range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The stream's beginning (as a start) or its end as it is when reading starts (as a stop;
    /// in follow mode: no end).
    Open,
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
    /// How often follow mode asks for the stream's size.
    pub poll_interval: Duration,
    /// Pause before asking again for a page that came back short.
    pub retry_delay: Duration,
    /// Short answers tolerated for one page before giving up (follow mode allows five times
    /// as many: the newest blocks are the ones that are briefly invisible).
    pub retries: u32,
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
            poll_interval: Duration::from_millis(150),
            retry_delay: Duration::from_millis(300),
            retries: 4,
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
    /// The server kept leaving out blocks that must exist.
    Missing(String),
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
            ReadError::Format(msg) | ReadError::Missing(msg) => f.write_str(msg),
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

/// Counters for tests and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    pub queries: u64,
    /// Wider queries made because a page came back short.
    pub fallbacks: u64,
    /// Waits before asking again.
    pub retries: u64,
    /// int32 bytes received from the server.
    pub bytes: u64,
}

/// Formats ms since the epoch as RFC 3339 UTC with milliseconds.
pub fn format_unix_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// The stream's first bytes, returned only by ranges reaching a later key (see
/// `RangeReader::recover_head`).
struct Hidden {
    /// Their length in stream bytes: the stream offset of the first block after them.
    bytes: u64,
    /// The name-time of the table holding them.
    key: i64,
    /// Their samples, as int32.
    data: Vec<u8>,
}

enum Seam {
    None,
    One(usize),
    Many,
}

/// Reads one range of one stream; see the module documentation.
pub struct RangeReader {
    pool: Arc<Pool>,
    cfg: ReaderConfig,
    format: StreamFormat,
    /// Stream bytes per sample frame.
    bpf: u64,
    /// int32 bytes per sample frame.
    wide_bpf: u64,
    ref_ms: i64,
    size: u64,
    /// Start and end resolved against `ref` (needs the first audio).
    resolved: bool,
    /// The cursor points at a block boundary (the range start has been located).
    located: bool,
    first_frame: u64,
    end_frame: Option<u64>,
    /// Stream offset of the next block boundary to ask from.
    cursor: u64,
    /// The true cursor may lie up to this many bytes after `cursor` (below 1 ms of audio).
    uncertainty: u64,
    /// Stream offset of the next byte to hand out.
    next_out: u64,
    tail: Vec<u8>,
    /// The first samples of the block at the cursor, when known (after a locate).
    head: Vec<u8>,
    /// How far before a page's first key the server's tables may begin, in ms, as learned.
    margin: i64,
    /// The stream's first blocks sit in a table named after a later key.
    hidden: Option<Hidden>,
    /// Times `recover_head` was tried.
    head_searches: u32,
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
        let bpf = format.bytes_per_frame() as u64;
        let mut reader = RangeReader {
            pool,
            format,
            bpf,
            wide_bpf: 4 * u64::from(format.channels),
            ref_ms: 0,
            size: 0,
            resolved: false,
            located: false,
            first_frame: 0,
            end_frame: None,
            cursor: 0,
            uncertainty: 0,
            next_out: 0,
            tail: Vec::new(),
            head: Vec::new(),
            margin: 0,
            hidden: None,
            head_searches: 0,
            empty: None,
            notice: None,
            done: false,
            stats: ReaderStats::default(),
            cfg,
        };
        reader.apply_info(&info);
        if reader.ref_ms != 0 {
            reader.resolve();
            if !reader.done && reader.size / bpf > reader.first_frame {
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

    /// Wall-clock time of the stream's first sample (ms since the epoch); 0 until known.
    pub fn ref_ms(&self) -> i64 {
        self.ref_ms
    }

    /// The stream's size in bytes when last asked.
    pub fn size(&self) -> u64 {
        self.size
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

    fn key(&self, offset: u64) -> i64 {
        self.format.block_time_ms(self.ref_ms, offset)
    }

    /// The smallest whole-frame offset whose key is at least `key`.
    fn first_offset_at(&self, key: i64) -> u64 {
        if key <= self.ref_ms {
            return 0;
        }
        let rate = f64::from(self.format.sample_rate);
        let mut frames = ((key - self.ref_ms) as f64 / 1000.0 * rate).ceil() as u64;
        while self.key(frames * self.bpf) < key {
            frames += 1;
        }
        while frames > 0 && self.key((frames - 1) * self.bpf) >= key {
            frames -= 1;
        }
        frames * self.bpf
    }

    fn max_block_ms(&self) -> i64 {
        (MAX_BLOCK_BYTES as f64 / self.format.bytes_per_second() as f64 * 1000.0).ceil() as i64 + 1
    }

    /// The narrowest look-back that still holds the tail: one block plus the tail's length.
    fn min_margin_ms(&self) -> i64 {
        let tail_frames = (TAIL_BYTES as u64).div_ceil(self.wide_bpf);
        let tail_ms = (tail_frames * 1000).div_ceil(u64::from(self.format.sample_rate)) as i64;
        self.max_block_ms() + tail_ms + 1
    }

    fn page_ms(&self) -> i64 {
        self.cfg.page_ms.clamp(1, 1 << 40) as i64
    }

    fn wide_to_stream(&self, wide: usize) -> u64 {
        wide as u64 / self.wide_bpf * self.bpf
    }

    fn stream_to_wide(&self, bytes: u64) -> usize {
        (bytes / self.bpf * self.wide_bpf) as usize
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

    /// Frame index of a wall-clock time, rounded to the nearest frame; may be negative.
    fn frame_of(&self, unix_ns: i128) -> i128 {
        let rel = unix_ns - i128::from(self.ref_ms) * 1_000_000;
        let rate = i128::from(self.format.sample_rate);
        let num = rel * rate;
        (num + num.signum() * 500_000_000) / 1_000_000_000
    }

    fn describe_stream(&self) -> String {
        let frames = self.size / self.bpf;
        let end_ms = self.ref_ms
            + (frames as f64 * 1000.0 / f64::from(self.format.sample_rate)).round() as i64;
        format!(
            "stream '{}' on {} holds {} to {} ({:.3} s)",
            self.cfg.stream_id,
            self.pool.addr(),
            format_unix_ms(self.ref_ms),
            format_unix_ms(end_ms),
            frames as f64 / f64::from(self.format.sample_rate)
        )
    }

    /// Turns start and stop into frames once `ref` is known.
    fn resolve(&mut self) {
        self.resolved = true;
        let frames = self.size / self.bpf;
        let start = match self.cfg.start {
            Bound::Open => 0,
            Bound::Frame(f) => i128::from(f),
            Bound::UnixNs(t) => self.frame_of(t),
        };
        let stop = match self.cfg.stop {
            Bound::Open => None,
            Bound::Frame(f) => Some(i128::from(f)),
            Bound::UnixNs(t) => Some(self.frame_of(t)),
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
        self.next_out = start * self.bpf;
    }

    async fn extract(&mut self, from: i64, to: i64) -> Result<Vec<u8>, ReadError> {
        let mut conn = self.pool.checkout(self.cfg.timeout).await?;
        self.stats.queries += 1;
        match conn
            .extract(&self.cfg.stream_id, from.max(0) as u64, to.max(0) as u64)
            .await
        {
            Ok(data) => {
                self.stats.bytes += data.len() as u64;
                Ok(data)
            }
            Err(Error::Server(msg)) if msg == NO_STREAM => Err(ReadError::NotFound {
                stream: self.cfg.stream_id.clone(),
                addr: self.pool.addr().to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn refresh_size(&mut self) -> Result<(), ReadError> {
        let mut conn = self.pool.checkout(self.cfg.timeout).await?;
        if self.ref_ms == 0 {
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
            let size = conn.info(&self.cfg.stream_id, InfoAttr::Size).await?;
            let size = size.map_or(0, |s| s.max(0) as u64);
            if size < self.size {
                // A stream never shrinks, unless the server restarted after a crash and lost
                // its metadata: then its `ref` changes too (to 0, then to the time of the next
                // frame), and offsets on the old timeline mean nothing on the new one.
                let ref_ms = conn.info(&self.cfg.stream_id, InfoAttr::Ref).await?;
                if ref_ms.unwrap_or(0) != self.ref_ms {
                    return Err(ReadError::Missing(format!(
                        "stream '{}' on the RACS server at {} started over: its size went back                          from {} to {size} bytes and its reference time changed, so the server                          restarted and lost data. Start racssrc again to read the stream as it                          is now",
                        self.cfg.stream_id,
                        self.pool.addr(),
                        self.size
                    )));
                }
            }
            // A size that reads as unknown (0) with the same ref: keep what we know.
            self.size = self.size.max(size);
        }
        Ok(())
    }

    /// Finds the block boundary to start from: exact from offset 0 near the stream's start or
    /// at its current end, otherwise the block whose key is the largest at or before the
    /// wanted sample's key.
    async fn locate(&mut self) -> Result<(), ReadError> {
        let target = self.next_out;
        // Set only once the cursor is right: a cancelled locate starts again.
        self.located = false;
        self.head.clear();
        self.tail.clear();
        let near_start =
            target / self.bpf <= u64::from(self.format.sample_rate) * self.page_ms() as u64 / 1000;
        if target == 0 || near_start {
            self.cursor = 0;
            self.uncertainty = 0;
            self.located = true;
            return Ok(());
        }
        if target >= self.size {
            // Follow mode starting at the current end: the next block starts right there.
            self.cursor = self.size;
            self.uncertainty = 0;
            self.located = true;
            return Ok(());
        }
        let t = self.key(target);
        let mut span = self.max_block_ms();
        let mut lo = (t - span).max(self.ref_ms);
        let mut head;
        loop {
            head = self.extract(lo, t).await?;
            if !head.is_empty() {
                break;
            }
            if lo <= self.ref_ms {
                // Nothing visible near the start point: count from the stream's first byte.
                self.cursor = 0;
                self.uncertainty = 0;
                self.located = true;
                return Ok(());
            }
            span = span.saturating_mul(4);
            lo = (t - span).max(self.ref_ms);
        }
        // The largest key y in [lo, t] for which [y, t] still returns a block.
        let mut hi = t + 1;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let probe = self.extract(mid, t).await?;
            if probe.is_empty() {
                hi = mid;
            } else {
                lo = mid;
                head = probe;
            }
        }
        // `lo` is the key of the block holding the target, or the name of the table holding
        // that block when the table was named after another stream's block just before it.
        // Either way the block starts in [first_offset_at(lo), target].
        let first_in_ms = self.first_offset_at(lo).min(target);
        self.cursor = first_in_ms;
        // Most streams are written in blocks of one size (racssink does that). If that size puts
        // the first block with a key of at least `lo` (the first block the probe returned) at or
        // before the target, start exactly there.
        // The probe's length must match that block size too, which rules out most streams
        // written in other sizes.
        if let Some(block) = self.block_guess().await? {
            let guess = first_in_ms.div_ceil(block) * block;
            let mut expected = 0;
            let mut o = guess;
            while o < self.size && self.key(o) <= t {
                expected += block.min(self.size - o);
                o += block;
            }
            if guess <= target
                && self.key(guess) >= lo
                && self.key(guess) <= t
                && expected == self.wide_to_stream(head.len())
            {
                self.cursor = guess;
            }
        }
        self.uncertainty = target - self.cursor;
        head.truncate(TAIL_BYTES);
        self.head = head;
        self.tail.clear();
        self.located = true;
        Ok(())
    }

    /// The length of the stream's first block, if the server shows it.
    async fn block_guess(&mut self) -> Result<Option<u64>, ReadError> {
        let first = self.extract(0, self.ref_ms).await?;
        let block = self.wide_to_stream(first.len());
        Ok((block > 0).then_some(block))
    }

    /// The next page of the range, `None` at its end. In follow mode this waits for new audio.
    pub async fn next_page(&mut self) -> Result<Option<Page>, ReadError> {
        let mut misses = 0u32;
        let mut first_miss: Option<Instant> = None;
        loop {
            if self.done {
                return Ok(None);
            }
            if !self.resolved || !self.located {
                // Follow mode: waiting for the first audio, or for the start to be written.
                self.refresh_size().await?;
                if self.ref_ms != 0 && !self.resolved {
                    self.resolve();
                    continue;
                }
                if self.resolved && self.size / self.bpf >= self.first_frame.max(1) {
                    self.locate().await?;
                    continue;
                }
                tokio::time::sleep(self.cfg.poll_interval).await;
                continue;
            }
            let end = self.end_frame.map(|f| f * self.bpf);
            if end.is_some_and(|e| self.next_out >= e) {
                self.done = true;
                return Ok(None);
            }
            if self.cursor >= self.size {
                if !self.cfg.follow {
                    self.done = true;
                    return Ok(None);
                }
                self.refresh_size().await?;
                if self.cursor >= self.size {
                    tokio::time::sleep(self.cfg.poll_interval).await;
                }
                continue;
            }
            // A short page has two causes. A table filed under an earlier time (the name-time
            // filter) is found by asking from further back, at once. A table being flushed
            // (hidden for about half a second on the real server) is found by waiting, and a
            // wider query would only make each miss cost a read of the stream. Only the newest
            // blocks can sit in a table being flushed, so near the end of the stream a short
            // page is asked again as it was, and widened only after two misses.
            let near_end = self.size.saturating_sub(self.cursor) <= RECENT_BYTES;
            match self.fetch(end, misses >= 2 || !near_end).await? {
                Some((start, data)) => {
                    if let Some(page) = self.cut(start, data, end) {
                        return Ok(Some(page));
                    }
                    misses = 0;
                    first_miss = None;
                }
                None => {
                    misses += 1;
                    let since = *first_miss.get_or_insert_with(Instant::now);
                    let allowed = if self.cfg.follow {
                        self.cfg.retries.saturating_mul(5)
                    } else {
                        self.cfg.retries
                    };
                    // Short from 0 even when asked again: not a table being flushed, but the
                    // stream's first blocks filed under a later key (see `recover_head`).
                    if self.cursor == 0 && misses >= 2 && self.head_searches < 2 {
                        self.head_searches += 1;
                        if let Some((start, data)) = self.recover_head(end).await? {
                            if let Some(page) = self.cut(start, data, end) {
                                return Ok(Some(page));
                            }
                            misses = 0;
                            first_miss = None;
                            continue;
                        }
                    }
                    if misses > allowed {
                        return Err(ReadError::Missing(format!(
                            "the RACS server at {} keeps leaving out blocks of stream '{}' after \
                             byte {} (asked again for {} ms, {} times); the stream's tables may \
                             be damaged or lost",
                            self.pool.addr(),
                            self.cfg.stream_id,
                            self.cursor,
                            since.elapsed().as_millis(),
                            misses
                        )));
                    }
                    self.stats.retries += 1;
                    tokio::time::sleep(self.cfg.retry_delay).await;
                    self.refresh_size().await?;
                }
            }
        }
    }

    /// Keeps the wanted part of a page that starts at stream offset `start`.
    fn cut(&mut self, start: u64, mut data: Vec<u8>, end: Option<u64>) -> Option<Page> {
        let page_end = start + self.wide_to_stream(data.len());
        let from = start.max(self.next_out);
        let to = end.map_or(page_end, |e| e.min(page_end));
        if to <= from {
            return None;
        }
        let skip = self.stream_to_wide(from - start);
        let keep = self.stream_to_wide(to - from);
        data.truncate(skip + keep);
        data.drain(..skip);
        self.next_out = to;
        Some(Page {
            frame: from / self.bpf,
            data,
        })
    }

    /// Checks a page whose samples from `skip` on start at the cursor; on success advances the
    /// cursor and returns the page's start offset and samples.
    fn accept(
        &mut self,
        mut data: Vec<u8>,
        skip: usize,
        need: u64,
        upper: i64,
    ) -> Option<(u64, Vec<u8>)> {
        if skip > data.len() {
            return None;
        }
        let len = self.wide_to_stream(data.len() - skip);
        let end = self.cursor + len;
        if end + self.uncertainty < need {
            return None;
        }
        let limit = self.first_offset_at(upper + 1) + MAX_BLOCK_BYTES as u64 + self.bpf;
        if end > limit && self.cursor > 0 {
            return None;
        }
        if end < need {
            // The true cursor lies later than estimated by at least this much.
            let shift = need - end;
            // The data is unchanged; only its position is better known now.
            self.cursor += shift;
            self.uncertainty -= shift;
        }
        let start = self.cursor;
        self.cursor += len;
        data.drain(..skip);
        self.keep_tail(&data);
        self.head.clear();
        Some((start, data))
    }

    fn keep_tail(&mut self, data: &[u8]) {
        if data.len() >= TAIL_BYTES {
            self.tail.clear();
            self.tail
                .extend_from_slice(&data[data.len() - TAIL_BYTES..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(TAIL_BYTES);
            self.tail.drain(..excess);
        }
    }

    /// Where in `data` the samples at the cursor begin: right after the tail of what was
    /// returned before, or where the known head of the cursor's block is.
    fn find_seam(&self, data: &[u8]) -> Seam {
        let (pattern, after) = if self.tail.is_empty() {
            (&self.head, false)
        } else {
            (&self.tail, true)
        };
        let n = pattern.len();
        if n < 4 || data.len() < n {
            return Seam::None;
        }
        let step = self.wide_bpf as usize;
        let first = u32::from_le_bytes(pattern[..4].try_into().unwrap());
        let mut found = None;
        let mut start = 0;
        while start + n <= data.len() {
            if u32::from_le_bytes(data[start..start + 4].try_into().unwrap()) == first
                && data[start..start + n] == pattern[..]
            {
                if found.is_some() {
                    return Seam::Many;
                }
                found = Some(if after { start + n } else { start });
            }
            start += step;
        }
        found.map_or(Seam::None, Seam::One)
    }

    /// The last key of a page that starts at `c`.
    fn page_upper(&self, c: u64, end: Option<u64>) -> i64 {
        let mut upper = self.key(c).saturating_add(self.page_ms() - 1);
        if let Some(e) = end {
            upper = upper.min(self.key(e.max(c + self.bpf) - self.bpf));
        }
        // Never ask past the newest block we know of: blocks newer than that may sit behind a
        // table that is still being flushed, and could not be told from a hole.
        upper.min(self.key(self.size.max(c + self.bpf) - self.bpf))
    }

    /// EXTRACT for a page: without the stream's hidden first blocks, wherever the server put
    /// them. `None` when they cannot be told apart from the rest (repetitive audio).
    async fn extract_page(&mut self, from: i64, to: i64) -> Result<Option<Vec<u8>>, ReadError> {
        let mut data = self.extract(from, to).await?;
        let Some(h) = &self.hidden else {
            return Ok(Some(data));
        };
        // The answer holds the blocks of X whose keys lie in [from, to]; X's block boundaries
        // are unknown, so only none or all of it can be taken out.
        let last_key = self.key(h.bytes - self.bpf);
        if from.max(0) > h.key || to < h.key || from > last_key {
            return Ok(Some(data));
        }
        if from > self.ref_ms {
            return Ok(None);
        }
        let n = h.data.len();
        let step = self.wide_bpf as usize;
        let mut found = None;
        let mut start = 0;
        while start + n <= data.len() {
            if data[start..start + n] == h.data[..] {
                if found.is_some() {
                    return Ok(None);
                }
                found = Some(start);
            }
            start += step;
        }
        match found {
            Some(p) => {
                data.drain(p..p + n);
                Ok(Some(data))
            }
            None => Ok(None),
        }
    }

    /// Answers to EXTRACT [0, to] as stream bytes: whether it holds every block up to `to`.
    fn complete_to(&self, to: i64, data: &[u8]) -> bool {
        self.wide_to_stream(data.len()) >= self.first_offset_at(to.saturating_add(1)).min(self.size)
    }

    /// The stream's first blocks when no range over its own timeline returns them, even from 0.
    ///
    /// All streams share one in-memory table, filed under the key of its first block. When a
    /// stream written ahead of the wall clock (an import) ends with `m` blocks in that table, the
    /// next stream's first `entries - m` blocks (X) go into it and are filed under the import's
    /// future key N: EXTRACT returns them only for ranges that reach N, and then after the
    /// blocks from tables named before N. This finds N (the smallest `to` for which [0, to] is
    /// complete), takes A1 = [0, N-1] = P ++ S and A2 = [0, N] = P ++ X ++ S, splits X out
    /// and checks that it is the stream's head before returning it as the page at offset 0.
    /// `None` when any of that does not hold: the caller then keeps reporting the miss.
    async fn recover_head(
        &mut self,
        end: Option<u64>,
    ) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        if self.cursor != 0 || self.hidden.is_some() || self.size < self.bpf {
            return Ok(None);
        }
        self.stats.fallbacks += 1;
        let size = self.size;
        let base = self.page_upper(0, end);
        let limit = self.key(size - self.bpf).saturating_add(86_400_000);
        // One query first: a table being flushed, or lost blocks, stay missing from any range,
        // and then the search below would only cost reads of the stream.
        let all = self.extract(0, limit).await?;
        if !self.complete_to(limit, &all) {
            return Ok(None);
        }
        drop(all);
        // Widen until complete; each answer holds at most the stream up to `to`.
        let mut lo = base;
        let mut d = self.page_ms();
        let (hi, a2) = loop {
            if lo >= limit {
                return Ok(None);
            }
            let to = base.saturating_add(d).min(limit);
            let data = self.extract(0, to).await?;
            if self.complete_to(to, &data) {
                break (to, data);
            }
            lo = to;
            d = d.saturating_mul(2);
        };
        let (hi, a2) = self.bisect_complete(lo, hi, a2).await?;
        let a1 = self.extract(0, hi - 1).await?;
        let Some((_, p, xw)) = self.split_head(&a1, &a2) else {
            return Ok(None);
        };
        Ok(self.take_head(hi, &a1, &a2, p, xw).await?.map(|x| (0, x)))
    }

    /// The smallest `to` in (lo, hi] for which [0, to] is complete, given that [0, lo] is not
    /// and [0, hi] is (answer `a2`), with that answer.
    async fn bisect_complete(
        &mut self,
        mut lo: i64,
        mut hi: i64,
        mut a2: Vec<u8>,
    ) -> Result<(i64, Vec<u8>), ReadError> {
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let data = self.extract(0, mid).await?;
            if self.complete_to(mid, &data) {
                hi = mid;
                a2 = data;
            } else {
                lo = mid;
            }
        }
        Ok((hi, a2))
    }

    /// Splits A2 = P ++ X ++ S given A1 = P ++ S: `(q, p, |X|)` in int32 bytes, where every
    /// split point in [q, p] fits and all of them give the same X. `None` when the answers do
    /// not fit that shape, or when the possible splits give different X.
    fn split_head(&self, a1: &[u8], a2: &[u8]) -> Option<(usize, usize, usize)> {
        let w = self.wide_bpf as usize;
        if a2.len() <= a1.len() || !a1.len().is_multiple_of(w) || !a2.len().is_multiple_of(w) {
            return None;
        }
        let xw = a2.len() - a1.len();
        let common = a1.iter().zip(a2).take_while(|(a, b)| a == b).count();
        let p = (common / w * w).min(a1.len());
        if a2[p + xw..] != a1[p..] {
            return None;
        }
        // Every split q <= p with A2 = A1[..q] ++ A2[q..q + |X|] ++ A1[q..] fits the answers;
        // they reach down from p while A1's frame before q equals A2's frame before q + |X|.
        // Accept only if all of them give the same X: A2[q..p + |X|] is one frame repeated.
        let mut q = p;
        while q >= w && a1[q - w..q] == a2[q - w + xw..q + xw] {
            q -= w;
        }
        if q < p && a2[q..p + xw].chunks_exact(w).any(|fr| fr != &a2[q..q + w]) {
            return None;
        }
        Some((q, p, xw))
    }

    /// Checks that X = A2[p..p + |X|] is the stream's head and, if so, makes it the page at
    /// offset 0 and continues after it; `n` is the name-time of X's table.
    async fn take_head(
        &mut self,
        n: i64,
        a1: &[u8],
        a2: &[u8],
        p: usize,
        xw: usize,
    ) -> Result<Option<Vec<u8>>, ReadError> {
        let x = self.wide_to_stream(xw);
        // X must be the stream's head: the block after it starts at offset |X| with key
        // key(|X|), is visible on its own, and is where A1 (everything but X) begins.
        if x == 0 || x >= self.size || x + self.wide_to_stream(a1.len()) > self.size {
            return Ok(None);
        }
        let kx = self.key(x);
        if kx >= n {
            return Ok(None);
        }
        let next = self.extract(kx, kx).await?;
        if next.is_empty() || !a1.starts_with(&next) {
            return Ok(None);
        }
        let data = a2[p..p + xw].to_vec();
        self.hidden = Some(Hidden {
            bytes: x,
            key: n,
            data: data.clone(),
        });
        self.cursor = x;
        self.uncertainty = 0;
        self.tail.clear();
        self.head = next;
        self.head.truncate(TAIL_BYTES);
        Ok(Some(data))
    }

    /// A complete answer from 0 may still hold the stream's head out of place: after the
    /// blocks of tables named before the head's table (see `recover_head`). Then [0, ref] (the
    /// first block's key) is incomplete. `Ok(true)` when the answer starts with the stream's
    /// first block; `Ok(false)` when it cannot be told, and the page is then a miss. When the
    /// head was out of place and is verified, it is taken out (as `recover_head` does) and
    /// returned in `head`.
    async fn check_head(
        &mut self,
        upper: i64,
        data: &[u8],
        head: &mut Option<Vec<u8>>,
    ) -> Result<bool, ReadError> {
        let first = self.extract(0, self.ref_ms).await?;
        if self.ref_ms >= upper || self.complete_to(self.ref_ms, &first) {
            return Ok(true);
        }
        self.stats.fallbacks += 1;
        let (n, a2) = self
            .bisect_complete(self.ref_ms, upper, data.to_vec())
            .await?;
        let a1 = self.extract(0, n - 1).await?;
        if a1.is_empty() {
            // Nothing comes before the table holding the first block.
            return Ok(true);
        }
        let Some((q, p, xw)) = self.split_head(&a1, &a2) else {
            return Ok(false);
        };
        if q == 0 {
            // A2 = X ++ A1: in place.
            return Ok(true);
        }
        *head = self.take_head(n, &a1, &a2, p, xw).await?;
        Ok(head.is_some())
    }

    /// One page from the cursor, checked; `None` when the server left blocks out (with `widen`:
    /// even when asked from further back).
    async fn fetch(
        &mut self,
        end: Option<u64>,
        widen: bool,
    ) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        let c = self.cursor;
        let kc = self.key(c);
        let mut upper = self.page_upper(c, end);
        if let Some(h) = &self.hidden {
            // Pages before the table holding the stream's first blocks stop short of it.
            if kc < h.key {
                upper = upper.min(h.key - 1);
            }
        }
        let need = self.first_offset_at(upper + 1).min(self.size);
        // Without anything returned before, the page is asked from its own first key and must
        // start with the block found by `locate` (if any). After that, pages are asked from far
        // enough back to include the last samples already returned, and are aligned on them:
        // a page whose first blocks sit in a table named earlier cannot go unnoticed.
        if c == 0 || self.tail.is_empty() {
            let from = if c == 0 { 0 } else { kc };
            if let Some(data) = self.extract_page(from, upper).await? {
                let starts_right = self.head.is_empty() || data.starts_with(&self.head);
                let complete = self.wide_to_stream(data.len()) >= need.saturating_sub(c);
                if c == 0 && complete && self.hidden.is_none() {
                    let mut head = None;
                    if !self.check_head(upper, &data, &mut head).await? {
                        return Ok(None);
                    }
                    if let Some(head) = head {
                        return Ok(Some((0, head)));
                    }
                }
                if starts_right {
                    if let Some(page) = self.accept(data, 0, need, upper) {
                        return Ok(Some(page));
                    }
                }
            }
            if c == 0 {
                return Ok(None);
            }
        }
        let mut span = self.margin.max(self.min_margin_ms());
        loop {
            let from = kc.saturating_sub(span);
            let origin = from <= self.ref_ms;
            let from = if origin { 0 } else { from };
            if span > self.margin.max(self.min_margin_ms()) {
                self.stats.fallbacks += 1;
            }
            let Some(data) = self.extract_page(from, upper).await? else {
                if origin || !widen {
                    return Ok(None);
                }
                span = span.saturating_mul(2);
                continue;
            };
            match self.find_seam(&data) {
                Seam::One(p) => {
                    if let Some(page) = self.accept(data, p, need, upper) {
                        if !origin {
                            self.margin = span;
                        }
                        return Ok(Some(page));
                    }
                }
                Seam::Many if !origin => {
                    // Repetitive audio (silence, a pure tone) cannot be aligned by content. The
                    // same query stopped just before the cursor's key returns what precedes the
                    // cursor in this answer: when it is a prefix of the answer, the rest is the
                    // page, and the completeness check in `accept` still applies. Only when that
                    // fails, count from the stream's first byte.
                    let before = self.extract_page(from, kc - 1).await?;
                    if let Some(before) =
                        before.filter(|b| data.len() >= b.len() && data[..b.len()] == b[..])
                    {
                        if let Some(page) = self.accept(data, before.len(), need, upper) {
                            self.margin = span;
                            return Ok(Some(page));
                        }
                    }
                    if !widen {
                        return Ok(None);
                    }
                    span = i64::MAX;
                    continue;
                }
                Seam::Many | Seam::None if origin => {
                    // From 0 the answer is the stream from its first byte, less the hidden
                    // first blocks (left out before their table's name, stripped after it).
                    let hidden = self.hidden.as_ref().map_or(0, |h| h.bytes);
                    let skip = self.stream_to_wide(c.saturating_sub(hidden));
                    return Ok(self.accept(data, skip, need, upper));
                }
                _ => {}
            }
            if origin || !widen {
                return Ok(None);
            }
            span = span.saturating_mul(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_unix_ms() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_unix_ms(1_767_952_800_250),
            "2026-01-09T10:00:00.250Z"
        );
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
