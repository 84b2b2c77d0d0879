//! Writes one RACS stream: CREATE/INFO/OPEN, fixed-size frames with one request in flight,
//! and recovery from broken connections and server restarts without losing or duplicating a
//! sample. No GStreamer types: `racssink` drives it, and the tests drive it directly.
//!
//! The writer keeps one [`SessionId`] for its whole run. After its own reconnect, frames from
//! that session still pass on a server that kept running, so it does not OPEN again; only when
//! a frame is refused (`Stream is closed or currently in use.`) does it try OPEN: success means
//! the server forgot the open state (a restart), `Stream is already open` means another writer
//! holds the stream now.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::command::{validate_stream_id, InfoAttr};
use super::error::Error;
use super::frame::{stream_hash, SessionId, StreamFormat, MAX_BLOCK_BYTES};
use super::pool::{block_on, Canceller, Pool};

/// The default number of PCM bytes per frame.
pub const DEFAULT_CHUNK_BYTES: usize = 32768;

const STREAM_IN_USE: &str = "Stream is closed or currently in use.";
const ALREADY_OPEN: &str = "Stream is already open";

const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What the writer needs to know besides the format, which arrives later (with the caps).
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub stream_id: String,
    /// Wanted PCM bytes per frame; rounded down to whole sample frames, at most 65535, and
    /// raised to 1 ms of audio (see [`chunk_bytes_for`]).
    pub chunk_bytes: usize,
    pub create_if_missing: bool,
    /// Close and reopen a stream that is already open instead of failing.
    pub takeover: bool,
    /// Bound on each request, and on each connect.
    pub timeout: Duration,
    /// How long to keep reconnecting after a connection error before giving up; 0 gives up at
    /// once.
    pub retry_timeout: Duration,
}

impl WriterConfig {
    pub fn new(stream_id: impl Into<String>) -> Self {
        WriterConfig {
            stream_id: stream_id.into(),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            create_if_missing: true,
            takeover: false,
            timeout: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of one writer's run. `bytes_sent`/`frames_sent` count every transmission,
/// retransmissions included; `*_acked` count what the server is known to have stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub frames_sent: u64,
    pub frames_acked: u64,
    /// Recoveries: a broken connection replaced, or the stream reopened after a server restart.
    pub reconnects: u64,
    pub silence_bytes: u64,
    /// Acknowledged bytes the server no longer has (it restarted after a crash).
    pub lost_acked_bytes: u64,
    pub rtt_total_us: u64,
    pub rtt_max_us: u64,
    /// Bytes per second of the stream's format, 0 until known.
    pub bytes_per_second: u64,
}

impl WriterStats {
    /// Mean round-trip time of acknowledged frames, in microseconds.
    pub fn rtt_avg_us(&self) -> u64 {
        self.rtt_total_us
            .checked_div(self.frames_acked)
            .unwrap_or_default()
    }

    /// The inserted silence as a duration, in nanoseconds.
    pub fn silence_ns(&self) -> u64 {
        if self.bytes_per_second == 0 {
            return 0;
        }
        (u128::from(self.silence_bytes) * 1_000_000_000 / u128::from(self.bytes_per_second)) as u64
    }
}

/// Things worth telling the user about, reported as they happen.
#[derive(Debug, Clone, PartialEq)]
pub enum WriterEvent {
    /// A request failed with a connection error; the writer keeps trying until `retry_for`
    /// has passed since the first failure.
    Retrying { error: String, retry_for: Duration },
    /// The writer is writing again after `Retrying` or after a server restart.
    Recovered,
    /// The server has fewer bytes than it acknowledged: it lost `lost_bytes` (a restart after
    /// a crash). The stream continues from `server_size`.
    LostAcknowledged { lost_bytes: u64, server_size: u64 },
    /// The first frame of the run (or the first after the server lost the whole stream) is
    /// stored: the stream's reference time in epoch ms, and its size after that frame.
    Reference { ref_ms: i64, size: u64 },
}

/// Why writing failed. The `Display` text is meant for the person running the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteError {
    /// A wait was cancelled (flushing or a state change); nothing is lost, the data is held.
    Cancelled,
    InvalidSettings(String),
    NotFound {
        stream: String,
        addr: String,
    },
    FormatMismatch {
        stream: String,
        addr: String,
        stored: String,
        wanted: StreamFormat,
    },
    AlreadyOpen {
        stream: String,
        addr: String,
    },
    TakenOver {
        stream: String,
        addr: String,
    },
    /// The stream grew by bytes this writer did not send.
    ForeignData {
        stream: String,
        addr: String,
        bytes: u64,
    },
    /// Connection errors outlasted `retry-timeout`; `bytes` of audio were not stored.
    Unstored {
        stream: String,
        bytes: u64,
        seconds: f64,
        retry_for: Duration,
        last: Error,
    },
    /// Any other error from the client layer (connect failure, server error reply...).
    Client(Error),
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        match e {
            Error::Cancelled => WriteError::Cancelled,
            e => WriteError::Client(e),
        }
    }
}

impl WriteError {
    /// Errors worth retrying: the connection, not the request, was the problem.
    fn is_retryable(&self) -> bool {
        matches!(self, WriteError::Client(e) if e.is_connection_error())
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Cancelled => f.write_str("cancelled"),
            WriteError::InvalidSettings(msg) => f.write_str(msg),
            WriteError::NotFound { stream, addr } => write!(
                f,
                "stream '{stream}' does not exist on the RACS server at {addr}; create it first \
                 or set create-if-missing=true"
            ),
            WriteError::FormatMismatch {
                stream,
                addr,
                stored,
                wanted,
            } => write!(
                f,
                "stream '{stream}' on the RACS server at {addr} stores {stored}, but the \
                 pipeline delivers {wanted}; convert to the stored format (audioconvert ! \
                 audioresample before racssink negotiates it) or use another stream-id"
            ),
            WriteError::AlreadyOpen { stream, addr } => write!(
                f,
                "stream '{stream}' on the RACS server at {addr} is already open: another writer \
                 is using it, or one crashed without closing it. If no other writer is running, \
                 set takeover=true to close it and take it over"
            ),
            WriteError::TakenOver { stream, addr } => write!(
                f,
                "stream '{stream}' on the RACS server at {addr} was taken over by another writer \
                 (the server answered \"{STREAM_IN_USE}\" and the stream is open elsewhere); \
                 this writer stopped"
            ),
            WriteError::ForeignData {
                stream,
                addr,
                bytes,
            } => write!(
                f,
                "stream '{stream}' on the RACS server at {addr} grew by {bytes} bytes that this \
                 writer did not send while it was reconnecting: another writer is appending to it"
            ),
            WriteError::Unstored {
                stream,
                bytes,
                seconds,
                retry_for,
                last,
            } => write!(
                f,
                "gave up after {} ms of retrying (retry-timeout): {last}. {seconds:.3} s of audio \
                 ({bytes} bytes) were not stored in stream '{stream}'",
                retry_for.as_millis()
            ),
            WriteError::Client(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for WriteError {}

/// The fixed frame size for `format`: `wanted` rounded down to whole sample frames and to at
/// most 65535 bytes, raised to 1 ms of audio when smaller (smaller blocks share millisecond
/// keys on the server, which then loses some of them).
pub fn chunk_bytes_for(format: &StreamFormat, wanted: usize) -> Result<usize, WriteError> {
    let min = format.min_chunk_bytes();
    if min > MAX_BLOCK_BYTES {
        return Err(WriteError::InvalidSettings(format!(
            "1 ms of {format} is {min} bytes, more than the {MAX_BLOCK_BYTES} bytes a RACS frame \
             can carry; use fewer channels or a lower rate"
        )));
    }
    Ok(format.chunk_bytes(wanted).unwrap_or(0).max(min))
}

/// What a fresh `INFO size` says about a frame whose fate is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconcile {
    /// The server does not have the frame: send it.
    Resend,
    /// The server stored the frame; its acknowledgement was lost.
    Stored,
    /// The server has `lost` fewer bytes than it acknowledged; send the frame after them.
    Lost { lost: u64 },
    /// The stream holds `extra` bytes this writer never sent.
    Foreign { extra: u64 },
}

/// Compares the server's `size` with the `acked` bytes and the `frame_len` in doubt.
pub fn reconcile(acked: u64, frame_len: u64, size: u64) -> Reconcile {
    if size == acked {
        Reconcile::Resend
    } else if size == acked + frame_len {
        Reconcile::Stored
    } else if size < acked {
        Reconcile::Lost { lost: acked - size }
    } else {
        Reconcile::Foreign {
            extra: size - acked,
        }
    }
}

/// What the server said about the stream at `prepare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// The stream did not exist and was created.
    pub created: bool,
    /// Bytes already in the stream.
    pub size: u64,
    /// The stream's reference time (epoch ms), 0 if it holds no data yet.
    pub ref_ms: i64,
    /// It was left open by another writer and taken over.
    pub took_over: bool,
}

/// The pieces of a writer an attempt needs, borrowed so the attempt can run on the runtime
/// while the writer's counters stay with the caller.
struct Ctx<'a> {
    pool: &'a Arc<Pool>,
    id: &'a str,
    hash: u64,
    session: &'a SessionId,
    timeout: Duration,
    stats: &'a Mutex<WriterStats>,
}

#[derive(Debug, Default)]
struct Outcome {
    /// The frame was already stored (found by INFO size); it was not sent again.
    already_stored: bool,
    /// `(lost, server_size)` when the server lost acknowledged data.
    lost: Option<(u64, u64)>,
    reopened: bool,
    /// The server's size after the frame.
    size_after: u64,
    rtt: Option<Duration>,
    ref_ms: Option<i64>,
}

impl Ctx<'_> {
    fn addr(&self) -> String {
        self.pool.addr().to_string()
    }

    fn taken_over(&self) -> WriteError {
        WriteError::TakenOver {
            stream: self.id.to_string(),
            addr: self.addr(),
        }
    }

    fn foreign(&self, bytes: u64) -> WriteError {
        WriteError::ForeignData {
            stream: self.id.to_string(),
            addr: self.addr(),
            bytes,
        }
    }

    fn count_send(&self, len: usize) {
        let mut stats = self.stats.lock().unwrap();
        stats.frames_sent += 1;
        stats.bytes_sent += len as u64;
    }

    async fn prepare(
        &self,
        format: &StreamFormat,
        create_if_missing: bool,
        takeover: bool,
    ) -> Result<Prepared, WriteError> {
        let mut conn = self.pool.checkout(self.timeout).await?;
        let created = if create_if_missing {
            conn.create(self.id, format).await?
        } else {
            false
        };
        let mut prepared = Prepared {
            created,
            size: 0,
            ref_ms: 0,
            took_over: false,
        };
        if !created {
            let Some(info) = conn.stream_info(self.id).await? else {
                if create_if_missing {
                    // CREATE said it exists, but its sample rate reads as 0.
                    return Err(WriteError::FormatMismatch {
                        stream: self.id.to_string(),
                        addr: self.addr(),
                        stored: "an unreadable format (sample rate 0)".into(),
                        wanted: *format,
                    });
                }
                return Err(WriteError::NotFound {
                    stream: self.id.to_string(),
                    addr: self.addr(),
                });
            };
            if info.format().ok().as_ref() != Some(format) {
                return Err(WriteError::FormatMismatch {
                    stream: self.id.to_string(),
                    addr: self.addr(),
                    stored: format!(
                        "{} Hz, {} channel{}, {}-bit",
                        info.sample_rate,
                        info.channels,
                        if info.channels == 1 { "" } else { "s" },
                        info.bit_depth
                    ),
                    wanted: *format,
                });
            }
            prepared.size = info.size;
            prepared.ref_ms = info.ref_ms;
        }
        match conn.open(self.id).await {
            Ok(()) => {}
            Err(Error::Server(msg)) if msg == ALREADY_OPEN => {
                if !takeover {
                    return Err(WriteError::AlreadyOpen {
                        stream: self.id.to_string(),
                        addr: self.addr(),
                    });
                }
                conn.close(self.id).await?;
                conn.open(self.id).await?;
                prepared.took_over = true;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(prepared)
    }

    /// One try at getting `frame` stored. `check` is the acknowledged size when the fate of an
    /// earlier try is unknown, so INFO size must decide whether to send at all.
    async fn deliver(
        &self,
        frame: &[u8],
        acked: u64,
        check: bool,
        want_ref: bool,
    ) -> Result<Outcome, WriteError> {
        let mut conn = self.pool.checkout(self.timeout).await?;
        let mut out = Outcome::default();
        let mut base = acked;
        let len = frame.len() as u64;
        let mut checked = false;
        if check {
            let size = conn.info(self.id, InfoAttr::Size).await?.unwrap_or(0) as u64;
            checked = true;
            match reconcile(acked, len, size) {
                Reconcile::Resend => {}
                Reconcile::Stored => {
                    out.already_stored = true;
                    out.size_after = size;
                }
                Reconcile::Lost { lost } => {
                    out.lost = Some((lost, size));
                    base = size;
                }
                Reconcile::Foreign { extra } => return Err(self.foreign(extra)),
            }
        }
        if !out.already_stored {
            self.count_send(frame.len());
            let mut started = Instant::now();
            match conn.send_frame(self.session, self.hash, frame).await {
                Ok(()) => {}
                Err(Error::Server(msg)) if msg == STREAM_IN_USE => {
                    // Not open (the server restarted, or someone closed it) or bound to
                    // another session. OPEN tells the two apart.
                    match conn.open(self.id).await {
                        Ok(()) => out.reopened = true,
                        Err(Error::Server(msg)) if msg == ALREADY_OPEN => {
                            return Err(self.taken_over())
                        }
                        Err(e) => return Err(e.into()),
                    }
                    if !checked {
                        // A restart may have lost acknowledged data.
                        let size = conn.info(self.id, InfoAttr::Size).await?.unwrap_or(0) as u64;
                        match reconcile(acked, len, size) {
                            Reconcile::Resend | Reconcile::Stored => {
                                // The frame was refused, so `size == acked + len` can only
                                // mean foreign bytes; treat everything above `acked` so.
                                if size != acked {
                                    return Err(self.foreign(size - acked));
                                }
                            }
                            Reconcile::Lost { lost } => {
                                out.lost = Some((lost, size));
                                base = size;
                            }
                            Reconcile::Foreign { extra } => return Err(self.foreign(extra)),
                        }
                    }
                    self.count_send(frame.len());
                    started = Instant::now();
                    match conn.send_frame(self.session, self.hash, frame).await {
                        Ok(()) => {}
                        Err(Error::Server(msg)) if msg == STREAM_IN_USE => {
                            return Err(self.taken_over())
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
            out.rtt = Some(started.elapsed());
            out.size_after = base + len;
        }
        if want_ref {
            // Best effort: the frame is stored whatever happens here.
            out.ref_ms = conn.info(self.id, InfoAttr::Ref).await.ok().flatten();
        }
        Ok(out)
    }
}

/// Writes one stream. Create it with [`StreamWriter::new`], call [`prepare`] once the format is
/// known, then [`write`]/[`write_silence`], and [`finish`] at the end.
///
/// Every network wait runs through [`block_on`] with the writer's [`Canceller`], so it must be
/// called from a plain thread (never from inside the runtime), and `cancel()` interrupts it at
/// once with [`WriteError::Cancelled`]; the data stays held and a later call resumes.
///
/// [`prepare`]: StreamWriter::prepare
/// [`write`]: StreamWriter::write
/// [`write_silence`]: StreamWriter::write_silence
/// [`finish`]: StreamWriter::finish
pub struct StreamWriter {
    pool: Arc<Pool>,
    canceller: Canceller,
    config: WriterConfig,
    hash: u64,
    session: SessionId,
    format: Option<StreamFormat>,
    chunk: usize,
    /// Bytes waiting for a full chunk.
    held: Vec<u8>,
    /// A frame handed to the network whose fate is not known yet.
    pending: Vec<u8>,
    has_pending: bool,
    /// The last try failed or was cancelled half-way: ask INFO size before sending again.
    suspect: bool,
    /// The server's size as far as this writer knows (all acknowledged bytes included).
    server_size: u64,
    ref_reported: bool,
    open: bool,
    failed: bool,
    stats: Arc<Mutex<WriterStats>>,
    observer: Option<Box<dyn FnMut(WriterEvent) + Send>>,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("addr", &self.pool.addr())
            .field("stream_id", &self.config.stream_id)
            .field("format", &self.format)
            .field("chunk", &self.chunk)
            .field("held", &self.held.len())
            .field("has_pending", &self.has_pending)
            .field("server_size", &self.server_size)
            .field("open", &self.open)
            .field("failed", &self.failed)
            .finish()
    }
}

impl StreamWriter {
    /// A writer for `config.stream_id` on the pool's server; no network traffic yet.
    pub fn new(
        pool: Arc<Pool>,
        config: WriterConfig,
        canceller: Canceller,
        stats: Arc<Mutex<WriterStats>>,
    ) -> Result<Self, WriteError> {
        validate_stream_id(&config.stream_id)
            .map_err(|e| WriteError::InvalidSettings(e.to_string()))?;
        Ok(StreamWriter {
            hash: stream_hash(config.stream_id.as_bytes()),
            pool,
            canceller,
            config,
            session: SessionId::random(),
            format: None,
            chunk: 0,
            held: Vec::new(),
            pending: Vec::new(),
            has_pending: false,
            suspect: false,
            server_size: 0,
            ref_reported: false,
            open: false,
            failed: false,
            stats,
            observer: None,
        })
    }

    /// Receives [`WriterEvent`]s, on the thread that called the writer.
    pub fn set_observer(&mut self, observer: impl FnMut(WriterEvent) + Send + 'static) {
        self.observer = Some(Box::new(observer));
    }

    pub fn session(&self) -> SessionId {
        self.session
    }

    pub fn format(&self) -> Option<StreamFormat> {
        self.format
    }

    pub fn addr(&self) -> &str {
        self.pool.addr()
    }

    pub fn stream_id(&self) -> &str {
        &self.config.stream_id
    }

    /// The fixed frame size, known after `prepare`.
    pub fn chunk_bytes(&self) -> usize {
        self.chunk
    }

    /// Whether the stream is open for this writer (after `prepare`, before `finish`).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Bytes accepted but not yet acknowledged by the server.
    pub fn unacked_bytes(&self) -> u64 {
        (self.held.len()
            + if self.has_pending {
                self.pending.len()
            } else {
                0
            }) as u64
    }

    /// The server's size of the stream as far as this writer knows.
    pub fn server_size(&self) -> u64 {
        self.server_size
    }

    pub fn stats(&self) -> WriterStats {
        self.stats.lock().unwrap().clone()
    }

    fn emit(&mut self, event: WriterEvent) {
        if let Some(observer) = self.observer.as_mut() {
            observer(event);
        }
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            pool: &self.pool,
            id: &self.config.stream_id,
            hash: self.hash,
            session: &self.session,
            timeout: self.config.timeout,
            stats: &self.stats,
        }
    }

    /// Creates the stream if needed (and allowed), checks an existing stream's format, and
    /// opens it. One try, bounded by `timeout` per request: a server that is down is reported
    /// at once, not retried.
    pub fn prepare(&mut self, format: StreamFormat) -> Result<Prepared, WriteError> {
        if self.open {
            if self.format == Some(format) {
                return Ok(Prepared {
                    created: false,
                    size: self.server_size,
                    ref_ms: 0,
                    took_over: false,
                });
            }
            return Err(WriteError::InvalidSettings(format!(
                "the format changed from {} to {format} in the middle of the stream; a RACS \
                 stream has one fixed format",
                self.format.expect("set when open")
            )));
        }
        let chunk = chunk_bytes_for(&format, self.config.chunk_bytes)?;
        let ctx = self.ctx();
        let prepared = run(&self.canceller, async {
            ctx.prepare(&format, self.config.create_if_missing, self.config.takeover)
                .await
        })?;
        self.format = Some(format);
        self.chunk = chunk;
        self.held.reserve(chunk);
        self.pending.reserve(chunk);
        self.server_size = prepared.size;
        self.open = true;
        self.failed = false;
        self.suspect = false;
        self.stats.lock().unwrap().bytes_per_second = format.bytes_per_second();
        Ok(prepared)
    }

    fn ensure_writable(&self) -> Result<(), WriteError> {
        if self.failed {
            return Err(WriteError::InvalidSettings(
                "the writer failed earlier and cannot continue".into(),
            ));
        }
        if !self.open {
            return Err(WriteError::InvalidSettings(
                "the stream is not open (no format yet)".into(),
            ));
        }
        Ok(())
    }

    /// Appends PCM; every full chunk is sent and acknowledged before this returns.
    pub fn write(&mut self, mut pcm: &[u8]) -> Result<(), WriteError> {
        self.ensure_writable()?;
        self.deliver_pending(true)
            .map_err(|e| self.add_unstored(e, pcm.len()))?;
        while !pcm.is_empty() {
            if self.held.is_empty() && pcm.len() >= self.chunk && !self.suspect {
                // A whole chunk in the caller's buffer goes out without being copied first.
                let (frame, rest) = pcm.split_at(self.chunk);
                self.send_direct(frame)
                    .map_err(|e| self.add_unstored(e, rest.len()))?;
                pcm = rest;
                continue;
            }
            let take = (self.chunk - self.held.len()).min(pcm.len());
            self.held.extend_from_slice(&pcm[..take]);
            pcm = &pcm[take..];
            if self.held.len() == self.chunk {
                self.send_held(true)
                    .map_err(|e| self.add_unstored(e, pcm.len()))?;
            }
        }
        Ok(())
    }

    /// One try at sending `frame` from where it is; if that fails it becomes the pending
    /// frame (copied) and recovers like any other.
    fn send_direct(&mut self, frame: &[u8]) -> Result<(), WriteError> {
        debug_assert!(!self.has_pending && !self.suspect);
        let want_ref = !self.ref_reported;
        let ctx = self.ctx();
        let acked = self.server_size;
        match run(&self.canceller, async {
            ctx.deliver(frame, acked, false, want_ref).await
        }) {
            Ok(out) => {
                self.apply(out, false, frame.len() as u64);
                Ok(())
            }
            Err(e) => {
                self.pending.clear();
                self.pending.extend_from_slice(frame);
                self.has_pending = true;
                match e {
                    WriteError::Cancelled => {
                        self.suspect = true;
                        Err(WriteError::Cancelled)
                    }
                    e if e.is_retryable() => {
                        self.suspect = true;
                        self.deliver_pending(true)
                    }
                    e => {
                        self.failed = true;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Counts the rest of a write that failed half-way as not stored too.
    fn add_unstored(&self, err: WriteError, rest: usize) -> WriteError {
        match err {
            WriteError::Unstored {
                stream,
                bytes,
                retry_for,
                last,
                ..
            } => {
                let bytes = bytes + rest as u64;
                let bps = self.format.map(|f| f.bytes_per_second()).unwrap_or(1);
                WriteError::Unstored {
                    stream,
                    bytes,
                    seconds: bytes as f64 / bps as f64,
                    retry_for,
                    last,
                }
            }
            other => other,
        }
    }

    /// Appends `bytes` of silence (zero samples); counted in the stats.
    pub fn write_silence(&mut self, bytes: u64) -> Result<(), WriteError> {
        self.ensure_writable()?;
        self.stats.lock().unwrap().silence_bytes += bytes;
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Sends what is held (a partial last frame may be shorter than 1 ms) and CLOSEs the
    /// stream. With `retry`, connection errors are retried within `retry_timeout`; without,
    /// the first one ends it (for stopping, which must not wait long).
    pub fn finish(&mut self, retry: bool) -> Result<(), WriteError> {
        if !self.open || self.failed {
            self.open = false;
            return Ok(());
        }
        self.deliver_pending(retry)?;
        if !self.held.is_empty() {
            self.send_held(retry)?;
        }
        self.close(retry)?;
        self.open = false;
        Ok(())
    }

    fn close(&mut self, retry: bool) -> Result<(), WriteError> {
        let deadline = Instant::now()
            + if retry {
                self.config.retry_timeout
            } else {
                Duration::ZERO
            };
        let mut backoff = FIRST_BACKOFF;
        loop {
            let ctx = self.ctx();
            let result = block_on(&self.canceller, async {
                let mut conn = ctx.pool.checkout(ctx.timeout).await?;
                conn.close(ctx.id).await
            });
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_connection_error() && Instant::now() < deadline => {
                    self.pause(&mut backoff, deadline)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn pause(&self, backoff: &mut Duration, deadline: Instant) -> Result<(), WriteError> {
        let pause = (*backoff).min(deadline.saturating_duration_since(Instant::now()));
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        block_on(&self.canceller, async {
            tokio::time::sleep(pause).await;
            Ok(())
        })
        .map_err(WriteError::from)
    }

    fn send_held(&mut self, retry: bool) -> Result<(), WriteError> {
        debug_assert!(!self.has_pending);
        std::mem::swap(&mut self.held, &mut self.pending);
        self.held.clear();
        self.has_pending = true;
        self.deliver_pending(retry)
    }

    /// Gets the pending frame stored, reconnecting within the retry policy.
    fn deliver_pending(&mut self, retry: bool) -> Result<(), WriteError> {
        if !self.has_pending {
            return Ok(());
        }
        let budget = if retry {
            self.config.retry_timeout
        } else {
            Duration::ZERO
        };
        let mut deadline = None;
        let mut failures = 0u32;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let want_ref = !self.ref_reported;
            let ctx = self.ctx();
            let result = run(&self.canceller, async {
                ctx.deliver(&self.pending, self.server_size, self.suspect, want_ref)
                    .await
            });
            match result {
                Ok(out) => {
                    let len = self.pending.len() as u64;
                    self.has_pending = false;
                    self.pending.clear();
                    self.apply(out, failures > 0, len);
                    return Ok(());
                }
                Err(WriteError::Cancelled) => {
                    self.suspect = true;
                    return Err(WriteError::Cancelled);
                }
                Err(e) if e.is_retryable() => {
                    self.suspect = true;
                    failures += 1;
                    let now = Instant::now();
                    let deadline = *deadline.get_or_insert(now + budget);
                    if now >= deadline {
                        self.failed = true;
                        let bytes = self.unacked_bytes();
                        let bps = self.format.map(|f| f.bytes_per_second()).unwrap_or(1);
                        let WriteError::Client(last) = e else {
                            unreachable!("retryable errors are client errors")
                        };
                        return Err(WriteError::Unstored {
                            stream: self.config.stream_id.clone(),
                            bytes,
                            seconds: bytes as f64 / bps as f64,
                            retry_for: budget,
                            last,
                        });
                    }
                    if failures == 1 {
                        self.emit(WriterEvent::Retrying {
                            error: e.to_string(),
                            retry_for: budget,
                        });
                    }
                    self.pause(&mut backoff, deadline)?;
                }
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
    }

    fn apply(&mut self, out: Outcome, after_failures: bool, len: u64) {
        self.suspect = false;
        {
            let mut stats = self.stats.lock().unwrap();
            stats.frames_acked += 1;
            stats.bytes_acked += len;
            if let Some((lost, _)) = out.lost {
                stats.lost_acked_bytes += lost;
            }
            if after_failures || out.reopened {
                stats.reconnects += 1;
            }
            if let Some(rtt) = out.rtt {
                let us = rtt.as_micros() as u64;
                stats.rtt_total_us += us;
                stats.rtt_max_us = stats.rtt_max_us.max(us);
            }
        }
        if let Some((lost_bytes, server_size)) = out.lost {
            self.emit(WriterEvent::LostAcknowledged {
                lost_bytes,
                server_size,
            });
            if server_size == 0 {
                // The server starts a new timeline (a new ref) with the next frame.
                self.ref_reported = false;
            }
        }
        self.server_size = out.size_after;
        if after_failures || out.reopened {
            self.emit(WriterEvent::Recovered);
        }
        if let Some(ref_ms) = out.ref_ms {
            if !self.ref_reported {
                self.ref_reported = true;
                self.emit(WriterEvent::Reference {
                    ref_ms,
                    size: self.server_size,
                });
            }
        }
    }
}

/// [`block_on`] for futures that fail with a [`WriteError`]: the writer's error travels inside
/// `Ok`, so only a cancel comes back as the client's `Error`.
fn run<T>(
    canceller: &Canceller,
    fut: impl std::future::Future<Output = Result<T, WriteError>>,
) -> Result<T, WriteError> {
    block_on(canceller, async { Ok(fut.await) })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_decides_from_the_servers_size() {
        assert_eq!(reconcile(1000, 100, 1000), Reconcile::Resend);
        assert_eq!(reconcile(1000, 100, 1100), Reconcile::Stored);
        assert_eq!(reconcile(1000, 100, 0), Reconcile::Lost { lost: 1000 });
        assert_eq!(reconcile(1000, 100, 400), Reconcile::Lost { lost: 600 });
        assert_eq!(reconcile(1000, 100, 1050), Reconcile::Foreign { extra: 50 });
        assert_eq!(
            reconcile(1000, 100, 5000),
            Reconcile::Foreign { extra: 4000 }
        );
        assert_eq!(reconcile(0, 100, 0), Reconcile::Resend);
    }

    #[test]
    fn chunks_are_whole_frames_between_1ms_and_65535_bytes() {
        let s16x2 = StreamFormat::new(44100, 2, 16).unwrap();
        assert_eq!(chunk_bytes_for(&s16x2, 32768).unwrap(), 32768);
        assert_eq!(chunk_bytes_for(&s16x2, 65535).unwrap(), 65532);
        assert_eq!(chunk_bytes_for(&s16x2, 1).unwrap(), 45 * 4);
        let s24x6 = StreamFormat::new(192000, 6, 24).unwrap();
        assert_eq!(chunk_bytes_for(&s24x6, 32768).unwrap(), 32760);
        assert_eq!(chunk_bytes_for(&s24x6, 100).unwrap(), 192 * 18);
        let s24x1 = StreamFormat::new(8000, 1, 24).unwrap();
        assert_eq!(chunk_bytes_for(&s24x1, 1000).unwrap(), 999);
        let wide = StreamFormat::new(48000, 1000, 24).unwrap();
        let err = chunk_bytes_for(&wide, 32768).unwrap_err().to_string();
        assert!(
            err.contains("144000 bytes") && err.contains("65535"),
            "{err}"
        );
    }

    #[test]
    fn error_texts_say_what_to_do() {
        let fmt = StreamFormat::new(48000, 1, 16).unwrap();
        let e = WriteError::FormatMismatch {
            stream: "s".into(),
            addr: "h:1".into(),
            stored: "44100 Hz, 2 channels, 16-bit".into(),
            wanted: fmt,
        }
        .to_string();
        assert!(e.contains("44100 Hz, 2 channels, 16-bit"), "{e}");
        assert!(e.contains("48000 Hz, 1 channel, 16-bit"), "{e}");
        let e = WriteError::AlreadyOpen {
            stream: "s".into(),
            addr: "h:1".into(),
        }
        .to_string();
        assert!(e.contains("takeover=true"), "{e}");
        let e = WriteError::NotFound {
            stream: "s".into(),
            addr: "h:1".into(),
        }
        .to_string();
        assert!(e.contains("'s'") && e.contains("h:1") && e.contains("create-if-missing"));
        let e = WriteError::Unstored {
            stream: "s".into(),
            bytes: 17640,
            seconds: 0.1,
            retry_for: Duration::from_millis(250),
            last: Error::Connect {
                addr: "h:1".into(),
                reason: "refused".into(),
            },
        }
        .to_string();
        assert!(
            e.contains("0.100 s") && e.contains("17640 bytes") && e.contains("250 ms"),
            "{e}"
        );
    }

    #[test]
    fn invalid_stream_ids_are_refused_before_any_traffic() {
        let pool = Pool::get("127.0.0.1", 9, 1);
        let stats = Arc::default();
        let err = StreamWriter::new(pool, WriterConfig::new("it's"), Canceller::new(), stats)
            .unwrap_err();
        assert!(matches!(err, WriteError::InvalidSettings(_)));
        assert!(err.to_string().contains("single quote"), "{err}");
    }

    #[test]
    fn stats_derive_averages() {
        let stats = WriterStats {
            frames_acked: 4,
            rtt_total_us: 1000,
            silence_bytes: 17640,
            bytes_per_second: 176400,
            ..Default::default()
        };
        assert_eq!(stats.rtt_avg_us(), 250);
        assert_eq!(stats.silence_ns(), 100_000_000);
        assert_eq!(WriterStats::default().rtt_avg_us(), 0);
    }

    // Against racs-lite: paths the element cannot steer precisely.

    use crate::client::{runtime, Connection};

    struct Fixture {
        srv: racs_lite::TestServer,
        writer: StreamWriter,
        events: Arc<Mutex<Vec<WriterEvent>>>,
        canceller: Canceller,
    }

    fn fixture(id: &str, chunk: usize) -> Fixture {
        let srv = racs_lite::TestServer::start();
        let pool = Pool::get(&srv.host(), srv.port(), 2);
        let canceller = Canceller::new();
        let mut config = WriterConfig::new(id);
        config.chunk_bytes = chunk;
        config.timeout = Duration::from_secs(2);
        config.retry_timeout = Duration::from_secs(5);
        let mut writer =
            StreamWriter::new(pool, config, canceller.clone(), Arc::default()).unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        writer.set_observer(move |e| sink.lock().unwrap().push(e));
        Fixture {
            srv,
            writer,
            events,
            canceller,
        }
    }

    fn stored(srv: &racs_lite::TestServer, id: &str) -> Vec<u8> {
        runtime().block_on(async {
            let mut conn = Connection::connect(&srv.addr().to_string(), Duration::from_secs(2))
                .await
                .unwrap();
            let s32 = conn.extract(id, 0, 4_102_444_800_000).await.unwrap();
            s32.chunks_exact(4).flat_map(|s| s[..2].to_vec()).collect()
        })
    }

    fn pcm(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    const S16_MONO_8K: StreamFormat = StreamFormat {
        sample_rate: 8000,
        channels: 1,
        bit_depth: 16,
    };

    #[test]
    fn writes_whole_chunks_then_the_tail_and_closes() {
        let mut f = fixture("w-basic", 1600);
        let prepared = f.writer.prepare(S16_MONO_8K).unwrap();
        assert!(prepared.created);
        let data = pcm(1600 * 3 + 10, 1);
        f.writer.write(&data).unwrap();
        assert_eq!(f.writer.stats().frames_acked, 3);
        assert_eq!(f.writer.unacked_bytes(), 10);
        f.writer.finish(true).unwrap();
        assert_eq!(stored(&f.srv, "w-basic"), data);
        let stats = f.writer.stats();
        assert_eq!(
            (stats.frames_acked, stats.bytes_acked),
            (4, data.len() as u64)
        );
        // Closed: a new OPEN succeeds.
        runtime().block_on(async {
            let mut conn = Connection::connect(&f.srv.addr().to_string(), Duration::from_secs(2))
                .await
                .unwrap();
            conn.open("w-basic").await.unwrap();
        });
        let events = f.events.lock().unwrap();
        assert!(
            matches!(events[..], [WriterEvent::Reference { size: 1600, ref_ms }] if ref_ms > 0),
            "{events:?}"
        );
    }

    #[test]
    fn a_frame_whose_ack_was_lost_is_not_sent_again() {
        let mut f = fixture("w-lost-ack", 1600);
        f.writer.prepare(S16_MONO_8K).unwrap();
        let first = pcm(1600, 2);
        f.writer.write(&first).unwrap();
        // Pretend the reply to that frame never came: it is pending again and in doubt.
        f.writer.pending = first.clone();
        f.writer.has_pending = true;
        f.writer.suspect = true;
        f.writer.server_size = 0;
        let second = pcm(1600, 3);
        f.writer.write(&second).unwrap();
        f.writer.finish(true).unwrap();
        let mut all = first.clone();
        all.extend_from_slice(&second);
        assert_eq!(stored(&f.srv, "w-lost-ack"), all, "stored once, not twice");
        // Two transmissions: the frame in doubt was found stored (INFO size) and not resent.
        assert_eq!(f.writer.stats().frames_sent, 2);
    }

    #[test]
    fn a_cancelled_write_resumes_without_loss_or_duplicates() {
        let mut f = fixture("w-cancel", 1600);
        f.writer.prepare(S16_MONO_8K).unwrap();
        let a = pcm(2000, 4);
        f.writer.write(&a).unwrap();
        f.canceller.cancel();
        let b = pcm(1600, 5);
        assert_eq!(f.writer.write(&b), Err(WriteError::Cancelled));
        f.canceller.reset();
        // The frame in doubt is reconciled with INFO size before anything is sent.
        f.writer.finish(true).unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b[..1600 - 400]);
        assert_eq!(stored(&f.srv, "w-cancel"), all);
    }

    #[test]
    fn a_stream_closed_behind_the_writers_back_is_reopened() {
        let mut f = fixture("w-reopen", 1600);
        f.writer.prepare(S16_MONO_8K).unwrap();
        let a = pcm(1600, 6);
        f.writer.write(&a).unwrap();
        runtime().block_on(async {
            let mut conn = Connection::connect(&f.srv.addr().to_string(), Duration::from_secs(2))
                .await
                .unwrap();
            conn.close("w-reopen").await.unwrap();
        });
        let b = pcm(1600, 7);
        f.writer.write(&b).unwrap();
        f.writer.finish(true).unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        assert_eq!(stored(&f.srv, "w-reopen"), all);
        assert_eq!(f.writer.stats().reconnects, 1);
        assert!(f.events.lock().unwrap().contains(&WriterEvent::Recovered));
    }

    #[test]
    fn prepare_checks_the_stored_format_and_the_open_state() {
        let mut f = fixture("w-prep", 1600);
        f.writer.prepare(S16_MONO_8K).unwrap();
        // A second writer on the same stream: already open.
        let pool = Pool::get(&f.srv.host(), f.srv.port(), 2);
        let mut other = StreamWriter::new(
            pool.clone(),
            WriterConfig::new("w-prep"),
            Canceller::new(),
            Arc::default(),
        )
        .unwrap();
        let err = other.prepare(S16_MONO_8K).unwrap_err();
        assert!(matches!(err, WriteError::AlreadyOpen { .. }), "{err:?}");
        // Another format: a mismatch naming both.
        let err = other
            .prepare(StreamFormat::new(48000, 2, 24).unwrap())
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("stores 8000 Hz, 1 channel, 16-bit"), "{text}");
        assert!(
            text.contains("delivers 48000 Hz, 2 channels, 24-bit"),
            "{text}"
        );
        // Takeover closes and reopens; the first writer's next frame is then refused.
        let mut config = WriterConfig::new("w-prep");
        config.takeover = true;
        config.chunk_bytes = 1600;
        let mut thief = StreamWriter::new(pool, config, Canceller::new(), Arc::default()).unwrap();
        assert!(thief.prepare(S16_MONO_8K).unwrap().took_over);
        thief.write(&pcm(1600, 8)).unwrap();
        let err = f.writer.write(&pcm(1600, 9)).unwrap_err();
        assert!(matches!(err, WriteError::TakenOver { .. }), "{err:?}");
    }

    #[test]
    fn a_cancelled_direct_send_is_kept_and_delivered_once() {
        let mut f = fixture("w-direct", 1600);
        f.writer.prepare(S16_MONO_8K).unwrap();
        let a = pcm(1600 * 2, 10); // whole chunks: sent straight from this buffer
        f.writer.write(&a).unwrap();
        assert_eq!(f.writer.stats().frames_acked, 2);
        f.canceller.cancel();
        let b = pcm(1600 + 100, 11);
        assert_eq!(f.writer.write(&b), Err(WriteError::Cancelled));
        assert_eq!(
            f.writer.unacked_bytes(),
            1600,
            "the chunk is kept as the pending frame"
        );
        f.canceller.reset();
        f.writer.write(&b[1600..]).unwrap();
        f.writer.finish(true).unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        assert_eq!(stored(&f.srv, "w-direct"), all);
    }
}
