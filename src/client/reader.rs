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

    /// One page from the cursor, checked; `None` when the server left blocks out (with `widen`:
    /// even when asked from further back).
    async fn fetch(
        &mut self,
        end: Option<u64>,
        widen: bool,
    ) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        let c = self.cursor;
        let kc = self.key(c);
        let mut upper = kc.saturating_add(self.page_ms() - 1);
        if let Some(e) = end {
            upper = upper.min(self.key(e.max(c + self.bpf) - self.bpf));
        }
        // Never ask past the newest block we know of: blocks newer than that may sit behind a
        // table that is still being flushed, and could not be told from a hole.
        upper = upper.min(self.key(self.size.max(c + self.bpf) - self.bpf));
        let need = self.first_offset_at(upper + 1).min(self.size);
        // Without anything returned before, the page is asked from its own first key and must
        // start with the block found by `locate` (if any). After that, pages are asked from far
        // enough back to include the last samples already returned, and are aligned on them:
        // a page whose first blocks sit in a table named earlier cannot go unnoticed.
        if c == 0 || self.tail.is_empty() {
            let from = if c == 0 { 0 } else { kc };
            let data = self.extract(from, upper).await?;
            let starts_right = self.head.is_empty() || data.starts_with(&self.head);
            if starts_right {
                if let Some(page) = self.accept(data, 0, need, upper) {
                    return Ok(Some(page));
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
            let data = self.extract(from, upper).await?;
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
                    let before = self.extract(from, kc - 1).await?;
                    if data.len() >= before.len() && data[..before.len()] == before[..] {
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
                    let skip = self.stream_to_wide(c);
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
