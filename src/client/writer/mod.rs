//! Writes one RACS stream: CREATE/INFO/OPEN, fixed-size frames with one request in flight, and
//! recovery from broken connections and server failures that tells the truth about what the
//! server holds. No GStreamer types: `racssink` drives it, and the tests drive it directly.
//!
//! The writer keeps one [`SessionId`] for its whole run. After its own reconnect, frames from
//! that session still pass on a server that kept running, so it does not OPEN again; only when
//! a frame is refused (`Stream is closed or currently in use.`) does it try OPEN: success means
//! the server forgot the open state (a restart, or a CLOSE from elsewhere), `Stream is already
//! open` means another writer holds the stream now.
//!
//! After such a reopen the server's own figures cannot be trusted (contract sections 5 and 6):
//! after a kill, INFO `size` and `ref` fall back to their last persisted values (usually CREATE's
//! zeros: "Failure reading metadata"); after a SHUTDOWN, `size` counts the in-memory blocks the
//! server then lost. So the writer establishes the *ground truth* itself: it knows every block
//! it had acknowledged and the key the server gave each one ([`ledger`]), and asks EXTRACT how
//! many of its newest blocks are still there (see [`Ctx::find_truth`]). What the server lost is
//! re-sent from a *replay window* of recent acknowledged frames, or reported exactly, and the
//! [`RecoveryPolicy`] decides where re-sent and held audio goes on the server's new timeline.

pub mod ledger;

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::command::{validate_stream_id, InfoAttr};
use super::error::Error;
use super::frame::{stream_hash, SessionId, StreamFormat, MAX_BLOCK_BYTES};
use super::pool::{block_on, Canceller, Pool, PooledConnection};
use super::wire::{Connection, Value};
use ledger::{missing_suffix, Block, Ledger};

/// The default number of PCM bytes per frame.
pub const DEFAULT_CHUNK_BYTES: usize = 32768;
/// Blocks in one table of a RACS server with its default configuration (`memtable.entries`):
/// what a kill or a SHUTDOWN can lose at once, across all streams, besides the tables it was
/// still writing.
pub const SERVER_TABLE_FRAMES: u64 = 40;
/// Under keep-time, how much later than its capture a sample may be stored before the writer
/// drops late audio instead (the policy promises 50 ms; the rest is margin for the server's
/// millisecond keys and the clock mapping).
pub const KEEP_TIME_MAX_LAG: Duration = Duration::from_millis(30);
/// How long a table the server is writing can stay invisible to EXTRACT (about 0.5 s observed
/// on a loaded real server): a block missing from a probe is lost only if it stays missing
/// this long.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(1200);

/// The server's refusals the writer acts on. The server has no error codes (contract section
/// 3), so its exact reply texts are told apart here, once; everything else matches the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// OPEN of a stream that is open (for this writer or another).
    AlreadyOpen,
    /// CLOSE of a stream that is not open.
    NotOpen,
    /// A frame for a stream that is not open, or open for another session.
    InUse,
}

impl Refusal {
    fn of(e: &Error) -> Option<Refusal> {
        match e.server_message()? {
            "Stream is already open" => Some(Refusal::AlreadyOpen),
            "Stream is not open" => Some(Refusal::NotOpen),
            "Stream is closed or currently in use." => Some(Refusal::InUse),
            _ => None,
        }
    }
}

/// Whether `e` is the server's refusal `r`.
fn refused(e: &Error, r: Refusal) -> bool {
    Refusal::of(e) == Some(r)
}

const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Far enough in the future to cover every block (year 2100, epoch ms).
const FAR_MS: i64 = 4_102_444_800_000;
/// Newest blocks of the current epoch a ground-truth search considers.
const MAX_CANDIDATES: usize = 4096;
/// Tries at winning a stream from a live writer (`takeover`).
const TAKEOVER_TRIES: u32 = 50;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    now_us() / 1000
}

/// How much acknowledged audio the writer keeps to re-send after the server loses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplayWindow {
    /// Two tables of a server with the default configuration: `2 ×`
    /// [`SERVER_TABLE_FRAMES`] frames of the chunk size.
    #[default]
    Auto,
    Bytes(u64),
    Time(Duration),
}

impl ReplayWindow {
    /// `auto`, a number of bytes (`1048576`, `512KiB`, `4MiB`, `1MB`), or a time (`500ms`,
    /// `10s`); `0` turns re-sending off.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim().to_ascii_lowercase();
        if t == "auto" {
            return Ok(ReplayWindow::Auto);
        }
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        let bad = || {
            format!(
                "replay-window {text:?}: expected auto, a size in bytes (such as 1048576, 512KiB \
                 or 4MiB) or a time (such as 500ms or 10s)"
            )
        };
        let value: f64 = num.parse().map_err(|_| bad())?;
        if !value.is_finite() || value < 0.0 {
            return Err(bad());
        }
        let bytes = |mult: f64| Ok(ReplayWindow::Bytes((value * mult).round() as u64));
        match unit {
            "" | "b" => bytes(1.0),
            "k" | "kb" => bytes(1e3),
            "kib" => bytes(1024.0),
            "m" | "mb" => bytes(1e6),
            "mib" => bytes(1024.0 * 1024.0),
            "ms" => Ok(ReplayWindow::Time(Duration::from_secs_f64(value / 1000.0))),
            "s" => Ok(ReplayWindow::Time(Duration::from_secs_f64(value))),
            _ => Err(bad()),
        }
    }

    /// The window in bytes for a stream of `format` written in frames of `chunk` bytes.
    pub fn bytes(&self, format: &StreamFormat, chunk: usize) -> u64 {
        match *self {
            ReplayWindow::Auto => 2 * SERVER_TABLE_FRAMES * chunk as u64,
            ReplayWindow::Bytes(b) => b,
            ReplayWindow::Time(d) => {
                (d.as_secs_f64() * format.bytes_per_second() as f64).ceil() as u64
            }
        }
    }
}

impl std::fmt::Display for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayWindow::Auto => f.write_str("auto"),
            ReplayWindow::Bytes(b) => write!(f, "{b}"),
            ReplayWindow::Time(d) if d.subsec_micros() % 1000 == 0 && d.as_millis() % 1000 != 0 => {
                write!(f, "{}ms", d.as_millis())
            }
            ReplayWindow::Time(d) => write!(f, "{}s", d.as_secs_f64()),
        }
    }
}

/// Where audio goes after the server restarted, since the server alone picks the keys (a
/// kill starts a new timeline at the arrival of the next frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryPolicy {
    /// Store everything, in order: what the server lost is re-sent (from the replay window),
    /// then what was held; all of it later than its capture time.
    #[default]
    KeepAudio,
    /// Keep every stored sample within 50 ms of its capture time: nothing is re-sent, audio
    /// that can no longer be stored at its time (a live backlog) is dropped up to the live
    /// edge, and both are reported.
    KeepTime,
}

/// What to do when the stream already exists at [`StreamWriter::prepare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IfExists {
    /// Append to it (after checking its format).
    #[default]
    Append,
    /// Refuse it with [`WriteError::Exists`]: an import run twice cannot append a duplicate.
    /// Only the writer's first `prepare` checks; a stream it created or opened itself is
    /// appended to later in the same run.
    Error,
}

/// What the writer needs to know besides the format, which arrives later (with the caps).
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub stream_id: String,
    /// Wanted PCM bytes per frame; rounded down to whole sample frames, at most 65535, and
    /// raised to 1 ms of audio (see [`chunk_bytes_for`]).
    pub chunk_bytes: usize,
    pub create_if_missing: bool,
    pub if_exists: IfExists,
    /// Close and reopen a stream that is already open instead of failing, and claim it at once.
    pub takeover: bool,
    /// Bound on each request, and on each connect.
    pub timeout: Duration,
    /// How long to keep reconnecting after a connection error before giving up; 0 gives up at
    /// once.
    pub retry_timeout: Duration,
    pub replay_window: ReplayWindow,
    pub policy: RecoveryPolicy,
    /// How long a block must stay missing from EXTRACT before it counts as lost.
    pub settle: Duration,
}

impl WriterConfig {
    pub fn new(stream_id: impl Into<String>) -> Self {
        WriterConfig {
            stream_id: stream_id.into(),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            create_if_missing: true,
            if_exists: IfExists::Append,
            takeover: false,
            timeout: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(10),
            replay_window: ReplayWindow::Auto,
            policy: RecoveryPolicy::KeepAudio,
            settle: DEFAULT_SETTLE,
        }
    }
}

/// Counters of one writer's run. `bytes_sent`/`frames_sent` count every transmission,
/// retransmissions included; `*_acked` count input the server acknowledged (once each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub frames_sent: u64,
    pub frames_acked: u64,
    /// Recoveries: a broken connection replaced, or the stream reopened after a server restart.
    pub reconnects: u64,
    pub silence_bytes: u64,
    /// Acknowledged bytes the server lost (found by the ground-truth probes after a failure).
    pub server_lost_bytes: u64,
    /// Of those, the bytes re-sent from the replay window.
    pub replayed_bytes: u64,
    /// Acknowledged bytes that are not in the stream: lost by the server and not re-sent.
    pub lost_acked_bytes: u64,
    /// Bytes dropped under keep-time because they could no longer be stored at their time.
    pub dropped_bytes: u64,
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

    /// `bytes` of this stream's format as nanoseconds.
    pub fn ns_of(&self, bytes: u64) -> u64 {
        if self.bytes_per_second == 0 {
            return 0;
        }
        (u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_second)) as u64
    }

    /// The inserted silence as a duration, in nanoseconds.
    pub fn silence_ns(&self) -> u64 {
        self.ns_of(self.silence_bytes)
    }
}

/// Why audio is missing from the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// The server acknowledged it, then lost it (a kill, a SHUTDOWN), and it was not re-sent.
    Lost,
    /// keep-time dropped it: it could no longer be stored within 50 ms of its capture time.
    Dropped,
}

impl LossKind {
    pub fn nick(self) -> &'static str {
        match self {
            LossKind::Lost => "lost",
            LossKind::Dropped => "dropped",
        }
    }
}

/// One contiguous range of audio missing from the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    pub kind: LossKind,
    pub bytes: u64,
    /// Its duration in nanoseconds.
    pub duration_ns: u64,
    /// Wall-clock time of its first sample, in µs since the Unix epoch: the time the server had
    /// given it (lost), or its capture time (dropped).
    pub start_us: i64,
    /// Bytes of the writer's input before it.
    pub input_offset: u64,
    /// False when the server lacks these bytes in no place the probes could pin down (not its
    /// newest blocks): the count is exact, `start_us` and `input_offset` are only where the
    /// newest block still counted present lies.
    pub placed: bool,
    /// Left out by the wall-clock timeline to keep stored times within its bound (a drifting
    /// source), not because of a server failure.
    pub correction: bool,
}

/// What a recovery after a server restart found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// Acknowledged bytes the server no longer had.
    pub server_lost: u64,
    /// Of those, bytes re-sent from the replay window.
    pub replayed: u64,
    /// The server starts a new timeline (a new `ref`) with the next frame.
    pub new_epoch: bool,
    /// The server's size of the stream after the restart.
    pub server_size: u64,
}

/// Things worth telling the user about, reported as they happen.
#[derive(Debug, Clone, PartialEq)]
pub enum WriterEvent {
    /// A request failed with a connection error; the writer keeps trying until `retry_for`
    /// has passed since the first failure.
    Retrying { error: String, retry_for: Duration },
    /// The writer is writing again after `Retrying` or after a server restart.
    Recovered,
    /// The stream was reopened after the server forgot it: what it had lost, what is re-sent.
    Restarted(Restart),
    /// Audio that will not be in the stream (reported once per contiguous range).
    Loss(Loss),
    /// After a restart, the first new audio is stored `lag_us` later than it was captured
    /// (keep-audio: the outage and the re-sent audio push it back).
    Lag { lag_us: i64 },
    /// keep-time on a stream whose timeline was set before this run: its stored times differ
    /// from the capture times by `offset_us` (kept constant).
    TimeOffset { offset_us: i64 },
    /// The server started a new timeline at about `now_ms`, inside the time range of blocks of
    /// this writer it kept (up to `kept_until_ms`: an import written ahead of the wall clock):
    /// reading by time interleaves the two.
    Overlap { now_ms: i64, kept_until_ms: i64 },
    /// The first frame of a timeline is stored: the stream's reference time in epoch ms, and
    /// its size after that frame. Again after the server started a new timeline.
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
    /// `takeover` could not claim the stream from a writer that keeps binding it first.
    TakeoverFailed {
        stream: String,
        addr: String,
        tries: u32,
    },
    /// The stream grew by bytes this writer did not send.
    ForeignData {
        stream: String,
        addr: String,
        bytes: u64,
    },
    /// The stream exists and `if-exists=error` refuses to append to it.
    Exists {
        stream: String,
        addr: String,
        /// Bytes in it (0 when it holds none).
        size: u64,
        /// Its reference time (epoch ms), 0 when it has none.
        ref_ms: i64,
    },
    /// Connection errors outlasted `retry-timeout`: what is known of the audio of this run.
    Unstored {
        stream: String,
        bytes_per_second: u64,
        /// Acknowledged (and not known lost).
        stored: u64,
        /// A frame sent without an answer: the server may still store it.
        unknown: u64,
        /// Never reached the server.
        bytes: u64,
        retry_for: Duration,
        last: Box<Error>,
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

fn secs(bytes: u64, bps: u64) -> f64 {
    bytes as f64 / bps.max(1) as f64
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
                 (typically a racssink with takeover=true, which closes and reopens the stream \
                 under the writer it replaces); this writer stopped. Everything it had \
                 acknowledged before is stored"
            ),
            WriteError::TakeoverFailed {
                stream,
                addr,
                tries,
            } => write!(
                f,
                "takeover=true could not claim stream '{stream}' on the RACS server at {addr}: \
                 after {tries} tries (CLOSE, OPEN and an immediate frame each) another writer \
                 still bound it first"
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
            WriteError::Exists {
                stream,
                addr,
                size,
                ref_ms,
            } => {
                write!(
                    f,
                    "stream '{stream}' already exists on the RACS server at {addr} ("
                )?;
                if *size == 0 {
                    f.write_str("empty")?;
                } else {
                    write!(
                        f,
                        "{size} bytes from {}",
                        super::reader::format_unix_ms(*ref_ms)
                    )?;
                }
                write!(
                    f,
                    ") and if-exists=error refuses to append to it; write to another stream-id, \
                     or set if-exists=append to add to it"
                )
            }
            WriteError::Unstored {
                stream,
                bytes_per_second,
                stored,
                unknown,
                bytes,
                retry_for,
                last,
            } => {
                let bps = *bytes_per_second;
                write!(
                    f,
                    "gave up after {} ms of retrying (retry-timeout): {last}. {:.3} s of audio \
                     ({bytes} bytes) were not stored in stream '{stream}'",
                    retry_for.as_millis(),
                    secs(*bytes, bps),
                )?;
                if *unknown > 0 {
                    write!(
                        f,
                        "; {:.3} s ({unknown} bytes, the frame in flight when the server stopped \
                         answering) may or may not be stored: the server did not answer for it \
                         and may still execute it",
                        secs(*unknown, bps)
                    )?;
                }
                write!(
                    f,
                    "; {:.3} s ({stored} bytes) before that were stored and acknowledged",
                    secs(*stored, bps)
                )
            }
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

/// What a fresh `INFO size` says about a frame whose fate is unknown, on a server that kept
/// running (after a restart the ground truth decides, not INFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconcile {
    /// The server does not have the frame: send it.
    Resend,
    /// The server stored the frame; its acknowledgement was lost.
    Stored,
    /// The server has fewer bytes than acknowledged: it restarted (ground truth needed).
    Restarted,
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
        Reconcile::Restarted
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

/// The outcome of one try at a frame.
#[derive(Debug)]
enum Delivery {
    /// Stored now.
    Acked { rtt: Duration, ref_ms: Option<i64> },
    /// An earlier try had stored it (INFO size says so); not sent again.
    AlreadyStored { ref_ms: Option<i64> },
    /// The stream had to be opened again: the server restarted (or the stream was closed
    /// from elsewhere). Nothing was sent; the ground truth comes first.
    Reopened,
}

/// What the server holds of this writer's newest blocks after a reopen.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Truth {
    /// INFO size (0 when it fails) and ref (None when it fails) after the restart.
    size: u64,
    ref_ms: Option<i64>,
    /// Server offsets of the acknowledged blocks of the current epoch the server no longer
    /// has, oldest first: its newest blocks, and any older ones in a table it was still
    /// writing when it died.
    lost: Vec<u64>,
    /// The frame in doubt (sent, unanswered) is stored.
    front_stored: bool,
    /// Bytes missing that no suffix of the newest blocks explains (the count is exact, their
    /// place is not).
    unexplained: u64,
}

/// The frame whose fate the ground truth must settle along with the acknowledged blocks.
#[derive(Debug, Clone, Copy)]
struct InDoubt {
    key: i64,
    visible: u64,
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
    /// Set when a checkout for a frame found pooled connections the server had closed.
    dead_idle: &'a Cell<bool>,
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

    /// `CLOSE |> OPEN` in one request (no other request can come between them on the real
    /// server), then a zero-length frame of this session at once, so the stream is bound to
    /// this writer before the writer it takes over sends again. Repeated while that writer
    /// wins the race for the unbound stream.
    ///
    /// A writer sending back to back always has its next frame waiting at the server when the
    /// reopen is answered, so a frame sent after that answer comes too late on a server that
    /// serves one message at a time. A second connection therefore sends a zero-length frame
    /// right behind the reopen, without waiting for its answer; the frame on the first
    /// connection afterwards only confirms (or makes) the binding.
    async fn claim(&self, conn: &mut PooledConnection) -> Result<(), WriteError> {
        let text = format!("CLOSE '{id}' |> OPEN '{id}'", id = self.id);
        let mut payload = text.into_bytes();
        payload.push(0);
        let mut side: Option<Connection> = None;
        for _ in 0..TAKEOVER_TRIES {
            if side.is_none() {
                side = Connection::connect(self.pool.addr(), self.timeout)
                    .await
                    .ok();
            }
            let mut side_broke = false;
            let reopened = match side.as_mut() {
                Some(side) => {
                    let (reopened, early) = tokio::join!(
                        conn.request(&payload),
                        side.send_frame(self.session, self.hash, &[])
                    );
                    side_broke = early.is_err_and(|e| e.is_connection_error());
                    reopened
                }
                None => conn.request(&payload).await,
            };
            if side_broke {
                side = None;
            }
            match reopened?.into_value() {
                Ok(Value::Null) => {}
                Err(e) if refused(&e, Refusal::NotOpen) => match conn.open(self.id).await {
                    Err(e) if refused(&e, Refusal::AlreadyOpen) => continue,
                    other => other?,
                },
                // The other writer reopened between this CLOSE and OPEN: again.
                Err(e) if refused(&e, Refusal::AlreadyOpen) => continue,
                Err(e) => return Err(e.into()),
                Ok(other) => {
                    return Err(Error::Protocol {
                        addr: self.addr(),
                        reason: format!("unexpected reply {other:?} to CLOSE |> OPEN"),
                    }
                    .into())
                }
            }
            match conn.send_frame(self.session, self.hash, &[]).await {
                Ok(()) => return Ok(()),
                Err(e) if refused(&e, Refusal::InUse) => {}
                Err(e) => return Err(e.into()),
            }
            // The other writer's frame came first: on a server that serves one message at a
            // time and the older connection first, it always may. Close the stream under it
            // and give its next frame the time to be refused: a writer whose frame is refused
            // and that cannot reopen the stream stops (racssink does), or is busy finding out
            // what happened instead of sending.
            conn.close(self.id).await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(WriteError::TakeoverFailed {
            stream: self.id.to_string(),
            addr: self.addr(),
            tries: TAKEOVER_TRIES,
        })
    }

    async fn prepare(
        &self,
        format: &StreamFormat,
        create_if_missing: bool,
        if_exists: IfExists,
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
            if if_exists == IfExists::Error {
                return Err(WriteError::Exists {
                    stream: self.id.to_string(),
                    addr: self.addr(),
                    size: info.size,
                    ref_ms: info.ref_ms,
                });
            }
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
            Err(e) if refused(&e, Refusal::AlreadyOpen) => {
                if !takeover {
                    return Err(WriteError::AlreadyOpen {
                        stream: self.id.to_string(),
                        addr: self.addr(),
                    });
                }
                self.claim(&mut conn).await?;
                prepared.took_over = true;
                // The writer cut off may have appended until the claim.
                prepared.size = conn.info(self.id, InfoAttr::Size).await?.unwrap_or(0) as u64;
                prepared.ref_ms = conn.info(self.id, InfoAttr::Ref).await?.unwrap_or(0);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(prepared)
    }

    /// OPEN after a refusal or a size that went down: `Reopened`, or who holds the stream.
    async fn reopen(&self, conn: &mut PooledConnection) -> Result<Delivery, WriteError> {
        match conn.open(self.id).await {
            Ok(()) => Ok(Delivery::Reopened),
            Err(e) if refused(&e, Refusal::AlreadyOpen) => {
                // Open, but for whom? A zero-length frame passes only for this session.
                match conn.send_frame(self.session, self.hash, &[]).await {
                    Ok(()) => Ok(Delivery::Reopened),
                    Err(e) if refused(&e, Refusal::InUse) => Err(self.taken_over()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One try at getting `frame` stored. `check`: an earlier try may have stored it, so INFO
    /// size decides whether to send at all. `sent` is set once the frame may have reached the
    /// server.
    async fn deliver(
        &self,
        frame: &[u8],
        acked: u64,
        check: bool,
        want_ref: bool,
        sent: &Cell<bool>,
    ) -> Result<Delivery, WriteError> {
        let mut conn = self.pool.checkout(self.timeout).await?;
        if conn.replaced_dead() {
            self.dead_idle.set(true);
        }
        let len = frame.len() as u64;
        let want = |r: Option<i64>| if want_ref { r } else { None };
        if check {
            let size = conn.info(self.id, InfoAttr::Size).await?.unwrap_or(0) as u64;
            match reconcile(acked, len, size) {
                Reconcile::Resend => sent.set(false),
                Reconcile::Stored => {
                    let r = if want_ref {
                        conn.info(self.id, InfoAttr::Ref).await.ok().flatten()
                    } else {
                        None
                    };
                    return Ok(Delivery::AlreadyStored { ref_ms: want(r) });
                }
                Reconcile::Restarted => return self.reopen(&mut conn).await,
                Reconcile::Foreign { extra } => return Err(self.foreign(extra)),
            }
        }
        self.count_send(frame.len());
        let started = Instant::now();
        sent.set(true);
        match conn.send_frame(self.session, self.hash, frame).await {
            Ok(()) => {}
            Err(e) if refused(&e, Refusal::InUse) => {
                // Refused: certainly not stored. Not open (a restart, or a CLOSE from
                // elsewhere) or bound to another session; OPEN tells the two apart.
                sent.set(false);
                return match conn.open(self.id).await {
                    Ok(()) => Ok(Delivery::Reopened),
                    Err(e) if refused(&e, Refusal::AlreadyOpen) => Err(self.taken_over()),
                    Err(e) => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        }
        let rtt = started.elapsed();
        // Best effort: the frame is stored whatever happens here.
        let ref_ms = if want_ref {
            conn.info(self.id, InfoAttr::Ref).await.ok().flatten()
        } else {
            None
        };
        Ok(Delivery::Acked { rtt, ref_ms })
    }

    /// Sends `frame` (not in doubt) without waiting for its reply: the connection it went out
    /// on, to [`collect`](Ctx::collect) the reply from.
    async fn start(&self, frame: &[u8], sent: &Cell<bool>) -> Result<PooledConnection, WriteError> {
        let mut conn = self.pool.checkout(self.timeout).await?;
        if conn.replaced_dead() {
            self.dead_idle.set(true);
        }
        self.count_send(frame.len());
        sent.set(true);
        conn.start_frame(self.session, self.hash, frame)?;
        Ok(conn)
    }

    /// The reply to a frame sent with [`start`](Ctx::start), as [`deliver`](Ctx::deliver)
    /// reads it.
    async fn collect(
        &self,
        conn: &mut PooledConnection,
        sent_at: Instant,
        sent: &Cell<bool>,
    ) -> Result<Delivery, WriteError> {
        match conn.finish_frame() {
            Ok(()) => Ok(Delivery::Acked {
                rtt: sent_at.elapsed(),
                ref_ms: None,
            }),
            Err(e) if refused(&e, Refusal::InUse) => {
                sent.set(false);
                match conn.open(self.id).await {
                    Ok(()) => Ok(Delivery::Reopened),
                    Err(e) if refused(&e, Refusal::AlreadyOpen) => Err(self.taken_over()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Bytes of this stream EXTRACT returns for `[from, to]`, in the stream's sample width.
    async fn visible(
        &self,
        conn: &mut PooledConnection,
        format: &StreamFormat,
        from: i64,
        to: i64,
    ) -> Result<u64, WriteError> {
        if to < from {
            return Ok(0);
        }
        let s32 = conn
            .extract(self.id, from.max(0) as u64, to.max(0) as u64)
            .await?;
        Ok((s32.len() / 4 * format.bytes_per_sample()) as u64)
    }

    /// What the server holds of this writer's newest blocks, after it reopened the stream.
    ///
    /// Every block's key is known (the ledger), so an `EXTRACT [from, to]` must return exactly
    /// the visible bytes of this writer's blocks whose keys lie in the range, and a shortfall
    /// is the newest blocks (a server loses its in-memory table and the tables it was still
    /// writing, never older ones). Two traps of the server shape the search:
    /// - a table on disk is read only if its name, the key of its first entry (often another
    ///   stream's), lies in `[from, to]`: the probe starts a little before the newest blocks
    ///   and reaches back further each time (1, 2, 4... blocks, then by time below the
    ///   timeline's start) until two probes agree on which blocks are missing, so a table that
    ///   starts before `from` cannot pass for a loss;
    /// - a table being written is invisible for a moment: a shortfall counts only once it has
    ///   stayed the same for `settle`.
    ///
    /// The server writes each full table from a detached thread, and those threads finish in
    /// any order: a kill can lose a table while a newer one was already renamed into place,
    /// so the blocks missing need not be the newest ones. Every block acknowledged at or after
    /// server offset `verify_from` (those of the last seconds before the failure) is therefore
    /// accounted for, and a loss among them located exactly ([`Probe::holes`]), or the count
    /// is reported without a place.
    async fn find_truth(
        &self,
        ledger: &Ledger,
        in_doubt: Option<InDoubt>,
        settle: Duration,
        verify_from: u64,
    ) -> Result<Truth, WriteError> {
        let format = ledger.format();
        let mut conn = self.pool.checkout(self.timeout).await?;
        let size = conn.info(self.id, InfoAttr::Size).await?.unwrap_or(0) as u64;
        let ref_ms = conn.info(self.id, InfoAttr::Ref).await?;
        let mut truth = Truth {
            size,
            ref_ms,
            lost: Vec::new(),
            front_stored: false,
            unexplained: 0,
        };
        let tail = ledger.tail(MAX_CANDIDATES);
        let mut cands: Vec<(i64, u64)> = tail
            .iter()
            .map(|b| (b.key, ledger.visible(u64::from(b.len))))
            .collect();
        if let Some(d) = in_doubt {
            cands.push((d.key, d.visible));
        }
        if cands.iter().all(|&(_, v)| v == 0) {
            return Ok(truth);
        }
        let n = cands.len();
        let newest = cands[n - 1].0;
        let block_ms = (MAX_BLOCK_BYTES as u64 * 1000 / format.bytes_per_second().max(1)) as i64;
        // Reaches a little before a block: its table may start with a slightly earlier key.
        let slack = cands
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or(block_ms)
            .max(1)
            * 2
            + 100;
        let pre_floor = ledger
            .pre_floor()
            .or_else(|| ledger.foreign_before().then_some(cands[0].0));
        let probe = Probe {
            ctx: self,
            ledger,
            cands: &cands,
            in_doubt,
            pre_floor,
            format,
        };
        let started = Instant::now();
        // Steps needed before a probe reaches below the oldest candidate.
        let steps_in = usize::BITS - (n - 1).leading_zeros();
        let mut last: Option<(usize, i64, i64)> = None;
        let mut accepted: Option<(usize, i64, i64)> = None;
        // (from, shortfall) of every probe, for the check of the suffix found.
        let mut observed: Vec<(i64, u64)> = Vec::new();
        let mut unexplained = 0;
        // Below the oldest candidate the probe reaches back 1 s, 4 s... 17 min: a table holding
        // this writer's first blocks may be named after another stream's block from well
        // before them (a stream written behind the wall clock).
        let below_steps = 6;
        let below_unit = slack.max(1000);
        for step in 0..steps_in + below_steps {
            let last_step = step + 1 == steps_in + below_steps;
            let (from, below) = if step < steps_in {
                (cands[n - (1usize << step)].0 - slack, false)
            } else {
                (cands[0].0 - below_unit * 4i64.pow(step - steps_in), true)
            };
            let from = from.max(0);
            let to = (newest.max(now_ms()) + 60_000 * 4i64.pow(step.min(4))).clamp(newest, FAR_MS);
            let (missing, suffix, in_range) = probe.run(&mut conn, from, to).await?;
            observed.push((from, missing));
            if missing == 0 {
                accepted = Some((0, from, to));
                break;
            }
            match suffix {
                // A suffix with a present block before it inside the probe: it must come out
                // twice in a row (a table named before `from` hides blocks right after it).
                Some(s) if s < in_range => {
                    if last.map(|l| l.0) == Some(s) {
                        accepted = Some((s, from, to));
                        break;
                    }
                    last = Some((s, from, to));
                }
                // All of them missing: only the widest probe may say so.
                Some(s) if below => {
                    last = Some((s, from, to));
                    if last_step || from == 0 {
                        accepted = last;
                        break;
                    }
                }
                _ => {
                    last = None;
                    unexplained = missing;
                }
            }
            if from == 0 {
                break;
            }
        }
        let Some((mut s, from, to)) = accepted.or(last) else {
            // No suffix fits: the count is exact, the place is not.
            truth.unexplained = unexplained;
            return Ok(truth);
        };
        // A table being written hides its blocks for a moment: wait that out before calling
        // anything lost, and take the answer only once it stays the same.
        if s > 0 {
            for round in 0..4 {
                let pause = if round == 0 {
                    settle.saturating_sub(started.elapsed())
                } else {
                    settle / 2
                };
                tokio::time::sleep(pause).await;
                let (missing, suffix, _) = probe.run(&mut conn, from, to).await?;
                observed.push((from, missing));
                let again = if missing == 0 { Some(0) } else { suffix };
                let Some(again) = again else {
                    truth.unexplained = missing;
                    return Ok(truth);
                };
                if again == s {
                    break;
                }
                s = again;
                if s == 0 {
                    break;
                }
            }
        }
        let doubt = usize::from(in_doubt.is_some());
        // The suffix of `s` candidates is missing; every recent candidate older than it must be
        // present, else the loss lies (also) elsewhere.
        let recent = tail
            .iter()
            .position(|b| b.offset >= verify_from)
            .unwrap_or(tail.len());
        let mut gone: Vec<usize> = (n - s..n).collect();
        if recent < n {
            let reach = Reach {
                slack,
                unit: below_unit,
                steps: below_steps,
            };
            match probe
                .holes(
                    &mut conn,
                    recent.min(n - s),
                    s,
                    to,
                    reach,
                    (settle, started),
                    &observed,
                )
                .await?
            {
                Holes::Suffix => {}
                Holes::At(at) => gone = at,
                Holes::Unknown(missing) => {
                    // The count is exact, the place is not: nothing is re-sent, and the frame
                    // in doubt is settled by the suffix search alone.
                    let front = if s > 0 && in_doubt.is_some() {
                        cands[n - 1].1
                    } else {
                        0
                    };
                    truth.front_stored = s == 0 && in_doubt.is_some();
                    truth.unexplained = missing.saturating_sub(front);
                    return Ok(truth);
                }
            }
        }
        truth.front_stored = in_doubt.is_some() && !gone.contains(&(n - 1));
        truth.lost = gone
            .into_iter()
            .filter(|&i| i < n - doubt)
            .map(|i| tail[i].offset)
            .collect();
        Ok(truth)
    }
}

/// How far below a block a probe reaches: a table holding it may be named after an earlier
/// key (another stream's, or an older block's).
#[derive(Debug, Clone, Copy)]
struct Reach {
    slack: i64,
    unit: i64,
    steps: u32,
}

/// What the candidates checked one by one came to.
#[derive(Debug)]
enum Holes {
    /// Exactly the suffix found by the search is missing.
    Suffix,
    /// These candidates (indices, oldest first) are missing, and no other checked one.
    At(Vec<usize>),
    /// This many bytes are missing in no place the probes could pin down.
    Unknown(u64),
}

/// EXTRACT pairs a hole search may spend before it gives the count without a place.
const HOLE_PROBES: u32 = 48;

/// One ground-truth probe's fixed parts.
struct Probe<'a, 'c> {
    ctx: &'a Ctx<'c>,
    ledger: &'a Ledger,
    /// Keys and visible bytes of the newest blocks of the current epoch, oldest first, and
    /// the frame in doubt last.
    cands: &'a [(i64, u64)],
    in_doubt: Option<InDoubt>,
    pre_floor: Option<i64>,
    format: StreamFormat,
}

impl Probe<'_, '_> {
    /// Bytes of this writer's present blocks (and the frame in doubt) with keys in `[lo, hi]`
    /// that `EXTRACT [lo, hi]` does not return. A block is returned only if its table's name
    /// lies in the range too, so this is an upper bound of what is missing there, exact when
    /// no table holding such a block is named outside the range.
    async fn missing_in(
        &self,
        conn: &mut PooledConnection,
        lo: i64,
        hi: i64,
    ) -> Result<u64, WriteError> {
        if hi < lo {
            return Ok(0);
        }
        let mut seen = self.ctx.visible(conn, &self.format, lo, hi).await?;
        let lo = match self.pre_floor {
            Some(p) if lo < p => {
                let before = self
                    .ctx
                    .visible(conn, &self.format, lo, (p - 1).min(hi))
                    .await?;
                seen = seen.saturating_sub(before);
                p
            }
            _ => lo,
        };
        let mut expected = self.ledger.expected_between(lo, hi);
        if let Some(d) = self.in_doubt.filter(|d| d.key >= lo && d.key <= hi) {
            expected += d.visible;
        }
        Ok(expected.saturating_sub(seen))
    }

    /// Which candidates the server lost, given that the suffix search found the newest `s`
    /// missing: candidates `a..n` are checked (those of the last seconds). First the blocks
    /// below the suffix: their shortfall, with the probe reaching back below the oldest
    /// until it is zero (a table named before its blocks hides them from a narrow probe);
    /// zero, and the whole range short by exactly the suffix, confirms the suffix. Otherwise
    /// the shortfall that stays at the widest probe (once more after `settle`: a table being
    /// written is hidden a moment) is placed: for a boundary between two candidates, the
    /// shortfall above it and the one below it are each at least what is missing there, so
    /// when they add up to the whole both are exact; ranges are split (first at the suffix)
    /// until every part is all present or all missing.
    #[allow(clippy::too_many_arguments)]
    async fn holes(
        &self,
        conn: &mut PooledConnection,
        a: usize,
        s: usize,
        to: i64,
        reach: Reach,
        (settle, started): (Duration, Instant),
        observed: &[(i64, u64)],
    ) -> Result<Holes, WriteError> {
        let cands = self.cands;
        let n = cands.len();
        let b = n - s;
        let suffix: u64 = cands[b..].iter().map(|c| c.1).sum();
        // A probe's shortfall is at least what is missing in its range: one short of the
        // suffix's blocks in that range means the loss lies (also) below it.
        let refuted = observed.iter().any(|&(lo, missing)| {
            let predicted: u64 = cands[b..].iter().filter(|c| c.0 >= lo).map(|c| c.1).sum();
            missing < predicted
        });
        // The whole shortfall from the oldest candidate checked, reaching back below it while
        // it exceeds the suffix (a table named before its blocks hides them from a narrow
        // probe); only the widest probe may say that more is missing, and the narrowest that
        // agrees with it is the one the place is searched with.
        let oldest = cands[a].0;
        let mut from = (oldest - reach.slack).max(0);
        let mut whole = self.missing_in(conn, from, to).await?;
        let mut tried = vec![(from, whole)];
        let mut step = 0;
        while whole > suffix && from > 0 && step < reach.steps {
            from = (oldest - reach.unit * 4i64.pow(step)).max(0);
            step += 1;
            whole = self.missing_in(conn, from, to).await?;
            tried.push((from, whole));
        }
        if whole == suffix && !refuted {
            return Ok(Holes::Suffix);
        }
        if let Some(&(f, _)) = tried.iter().find(|&&(_, m)| m == whole) {
            from = f;
        }
        for round in 0..4 {
            let pause = if round == 0 {
                settle.saturating_sub(started.elapsed())
            } else {
                settle / 2
            };
            if pause.is_zero() && round == 0 {
                break;
            }
            tokio::time::sleep(pause).await;
            let again = self.missing_in(conn, from, to).await?;
            if again == whole {
                break;
            }
            whole = again;
        }
        if whole == 0 {
            return Ok(Holes::At(Vec::new()));
        }
        // Every candidate the probes cover, from the oldest at or above `from`.
        let a = cands.iter().position(|c| c.0 >= from).unwrap_or(n).min(a);
        let mut budget = HOLE_PROBES;
        let mut found: Vec<usize> = Vec::new();
        // (first, end, exact shortfall at or above `first`, the same at or above `end`).
        let mut stack: Vec<(usize, usize, u64, u64)> = vec![(a, n, whole, 0)];
        let mut hint = Some(b);
        while let Some((i, j, above_i, above_j)) = stack.pop() {
            if above_i < above_j {
                return Ok(Holes::Unknown(whole));
            }
            let here = above_i - above_j;
            let all: u64 = cands[i..j].iter().map(|c| c.1).sum();
            if here == 0 {
                continue;
            }
            if here == all {
                found.extend(i..j);
                continue;
            }
            if j - i == 1 {
                return Ok(Holes::Unknown(whole));
            }
            // A boundary inside a table named below it (or above) hides that table's blocks on
            // one side: the pair then adds up to more than the whole, by those blocks, and the
            // table's edge lies that many blocks above (or below) the boundary tried.
            let mut m = match hint.take() {
                Some(h) if h > i && h < j => h,
                _ => i + (j - i) / 2,
            };
            let mut tried: Vec<usize> = Vec::new();
            let split = loop {
                if budget == 0 {
                    return Ok(Holes::Unknown(whole));
                }
                budget -= 1;
                tried.push(m);
                let lo = cands[m - 1].0 + 1;
                let above = self.missing_in(conn, lo, to).await?;
                let under = self.missing_in(conn, from, lo - 1).await?;
                if above + under == whole {
                    break Some((m, above));
                }
                let unit = cands[m].1.max(1);
                let e = ((above + under).saturating_sub(whole) / unit).max(1) as usize;
                let next = [m + e, m.saturating_sub(e), m + 1, m - 1]
                    .into_iter()
                    .chain((1..j - i).flat_map(|d| [m + d, m.wrapping_sub(d)]))
                    .find(|&c| c > i && c < j && !tried.contains(&c));
                match next {
                    Some(c) => m = c,
                    None => break None,
                }
            };
            let Some((m, above)) = split else {
                return Ok(Holes::Unknown(whole));
            };
            stack.push((i, m, above_i, above));
            stack.push((m, j, above, above_j));
        }
        found.sort_unstable();
        Ok(Holes::At(found))
    }
    /// The candidates' shortfall in `[from, to]`, the suffix it fits, and how many
    /// candidates the probe covers.
    async fn run(
        &self,
        conn: &mut PooledConnection,
        from: i64,
        to: i64,
    ) -> Result<(u64, Option<usize>, usize), WriteError> {
        let mut seen = self.ctx.visible(conn, &self.format, from, to).await?;
        let lo = match self.pre_floor {
            Some(p) if from < p => {
                // Blocks written before this run lie below its first key: take them out.
                let before = self.ctx.visible(conn, &self.format, from, p - 1).await?;
                seen = seen.saturating_sub(before);
                p
            }
            _ => from,
        };
        let mut expected = self.ledger.expected_from(lo);
        if let Some(d) = self.in_doubt.filter(|d| d.key >= lo) {
            expected += d.visible;
        }
        let missing = expected.saturating_sub(seen);
        let in_range = self.cands.iter().filter(|&&(k, _)| k >= lo).count();
        Ok((missing, missing_suffix(self.cands, lo, missing), in_range))
    }
}

/// Where a writer is in its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not prepared yet, or finished.
    Closed,
    /// Prepared: the stream is open for this writer.
    Open,
    /// An error ended the run; only `finish` (which does nothing then) or a new `prepare`
    /// is left.
    Failed,
}

/// A frame ready to go; the queue holds them in order.
#[derive(Debug)]
struct OutFrame {
    data: Vec<u8>,
    /// Capture time of its first sample (µs since the Unix epoch), when known.
    capture_us: Option<i64>,
    /// Bytes of the writer's input before it.
    input: u64,
    kind: FrameKind,
    /// A try may have reached the server without an answer: its fate is unknown.
    maybe_sent: bool,
}

/// What a queued frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameKind {
    /// Audio sent for the first time.
    Audio,
    /// Audio acknowledged once, lost by the server, re-sent from the replay window.
    Replay,
    /// A zero-length frame that starts the server's new timeline now (keep-time).
    Bind,
}

/// An acknowledged frame kept in the replay window.
#[derive(Debug)]
struct Kept {
    data: Vec<u8>,
    capture_us: Option<i64>,
    input: u64,
    epoch: usize,
}

/// Writes one stream. Create it with [`StreamWriter::new`], call [`prepare`] once the format is
/// known, then [`write`]/[`write_at`]/[`write_silence`], and [`finish`] at the end.
///
/// Every network wait runs through [`block_on`] with the writer's [`Canceller`], so it must be
/// called from a plain thread (never from inside the runtime), and `cancel()` interrupts it at
/// once with [`WriteError::Cancelled`]; the data stays held and a later call resumes.
///
/// [`prepare`]: StreamWriter::prepare
/// [`write`]: StreamWriter::write
/// [`write_at`]: StreamWriter::write_at
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
    /// Bytes waiting for a full chunk, with the input offset and capture time of the first.
    held: Vec<u8>,
    held_input: u64,
    held_capture: Option<i64>,
    /// Frames to send, in order; the first may be in doubt (`maybe_sent`).
    queue: VecDeque<OutFrame>,
    /// The server's size of the stream as far as this writer knows.
    server_size: u64,
    /// Input bytes taken so far (sent, held or dropped).
    input: u64,
    /// The capture time of one input byte, from the last write that gave one.
    capture_base: Option<(u64, i64)>,
    ledger: Option<Ledger>,
    /// The replay window: the newest acknowledged frames, oldest first.
    kept: VecDeque<Kept>,
    kept_bytes: u64,
    window: u64,
    spare: Vec<Vec<u8>>,
    /// The server's size and ref are 0: its next frame starts a new timeline.
    fresh: bool,
    /// The current timeline's ref was reported.
    ref_reported: bool,
    /// keep-time: the difference stored - capture (µs) kept constant, once measured.
    time_offset: Option<i64>,
    /// After a restart under keep-audio: report the lag of the first new audio stored.
    lag_pending: bool,
    /// Consecutive dropped audio not reported yet.
    drops: Option<Loss>,
    /// The stream was reopened; the next acknowledgement completes the recovery.
    recovering: bool,
    /// Drops being noted are wall-clock corrections.
    correcting: bool,
    phase: Phase,
    stats: Arc<Mutex<WriterStats>>,
    observer: Option<Box<dyn FnMut(WriterEvent) + Send>>,
    /// The last frame of a write may go out without waiting for its acknowledgement, which
    /// the next call collects (see [`StreamWriter::set_pipelined`]).
    pipelined: bool,
    /// The queue's front frame, sent on this connection, its reply not read yet.
    in_flight: Option<InFlight>,
    /// Frames acknowledged back to back since the start or the last failure, and when the
    /// last one was: a frame goes ahead only in a long back-to-back run.
    streak: u32,
    last_ack: Option<Instant>,
    /// The streak a frame needs to go ahead ([`AHEAD_AFTER_FRAMES`]; lower in tests).
    ahead_after: u32,
    /// Frames sent ahead so far.
    sent_ahead: u64,
    /// (when, epoch, server offset) of an acknowledged block about once a second, over the
    /// last [`VERIFY_WINDOW`]: the blocks a failure may have lost anywhere, not only at the end.
    marks: VecDeque<(Instant, usize, u64)>,
    /// A frame's checkout found pooled connections the server had closed.
    dead_idle: Cell<bool>,
}

/// After a server restart, every block acknowledged within this time before the last
/// acknowledgement is checked one by one (the server's table writes that were still running
/// when it died may have been any of the tables of that time).
const VERIFY_WINDOW: Duration = Duration::from_secs(10);

/// A frame sent without waiting for its reply: the connection it went out on (held, in
/// lock-step, until the reply is read) and when it was sent.
#[derive(Debug)]
struct InFlight {
    conn: PooledConnection,
    sent_at: Instant,
}

/// How long a frame sent ahead may keep its connection before a call that completes no
/// frame collects its acknowledgement anyway (so a pooled connection is not held while
/// upstream is slow).
const IN_FLIGHT_HOLD: Duration = Duration::from_millis(2);
/// Frames acknowledged back to back (each completed within [`IN_FLIGHT_HOLD`] of the previous
/// acknowledgement) before frames go ahead: a short burst gains nothing from it, and what its
/// writes return stays acknowledged.
const AHEAD_AFTER_FRAMES: u32 = 32;

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("addr", &self.pool.addr())
            .field("stream_id", &self.config.stream_id)
            .field("format", &self.format)
            .field("chunk", &self.chunk)
            .field("held", &self.held.len())
            .field("queued", &self.queue.len())
            .field("server_size", &self.server_size)
            .field("kept_bytes", &self.kept_bytes)
            .field("phase", &self.phase)
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
            held_input: 0,
            held_capture: None,
            queue: VecDeque::new(),
            server_size: 0,
            input: 0,
            capture_base: None,
            ledger: None,
            kept: VecDeque::new(),
            kept_bytes: 0,
            window: 0,
            spare: Vec::new(),
            fresh: false,
            ref_reported: false,
            time_offset: None,
            lag_pending: false,
            drops: None,
            recovering: false,
            correcting: false,
            phase: Phase::Closed,
            stats,
            observer: None,
            pipelined: false,
            in_flight: None,
            streak: 0,
            last_ack: None,
            ahead_after: AHEAD_AFTER_FRAMES,
            sent_ahead: 0,
            marks: VecDeque::new(),
            dead_idle: Cell::new(false),
        })
    }

    /// Receives [`WriterEvent`]s, on the thread that called the writer.
    pub fn set_observer(&mut self, observer: impl FnMut(WriterEvent) + Send + 'static) {
        self.observer = Some(Box::new(observer));
    }

    /// Changes the recovery policy (before the first write: the replay window depends on it).
    pub fn set_policy(&mut self, policy: RecoveryPolicy) {
        self.config.policy = policy;
        self.update_window();
    }

    pub fn policy(&self) -> RecoveryPolicy {
        self.config.policy
    }

    /// With `true`, a write that completes a frame sends it and returns without waiting for
    /// the server's acknowledgement; the next call collects it (before it sends anything else,
    /// so the connection stays in lock-step), which overlaps the server's work on one frame
    /// with the caller gathering the next. Meant for a caller that writes back to back (a
    /// non-live source): the frame's connection stays checked out until the next call, at
    /// most [`IN_FLIGHT_HOLD`] after the send when that call completes no frame. Only under
    /// keep-audio, only when the pool has another free connection at the send, and never for
    /// a frame in doubt, a replay or the first frame of a timeline (those wait as before).
    /// Nothing changes in what is stored or reported: a frame is acknowledged (ledger, replay
    /// window, stats) only once its reply is read, and a reply that does not come is handled
    /// as any lost reply.
    pub fn set_pipelined(&mut self, pipelined: bool) {
        self.pipelined = pipelined;
    }

    /// Collects the acknowledgement of a frame sent ahead, if any (blocking for it).
    pub fn settle(&mut self) -> Result<(), WriteError> {
        if self.in_flight.is_some() {
            self.pump(true, false)?;
        }
        Ok(())
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

    /// The replay window in bytes (0 under keep-time, which never re-sends).
    pub fn replay_window_bytes(&self) -> u64 {
        self.window
    }

    /// Whether the writer is prepared and not finished: the stream is open for it, or it
    /// failed (and refuses to write) and is still to be finished.
    pub fn is_open(&self) -> bool {
        self.phase != Phase::Closed
    }

    /// The stored time (µs since the Unix epoch) the server gives the next byte written, once
    /// the current timeline's `ref` is known: `ref` plus everything acknowledged, queued and
    /// held, at the stream's byte rate.
    pub fn next_stored_us(&self) -> Option<i64> {
        let pending: u64 =
            self.queue.iter().map(|f| f.data.len() as u64).sum::<u64>() + self.held.len() as u64;
        self.stored_us(self.server_size + pending)
    }

    /// Whether the stream has no timeline yet (no `ref`, nothing stored): its next frame, an
    /// empty one too, sets `ref` to the moment it arrives.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Starts a fresh stream's timeline now with a zero-length frame (the server sets `ref` at
    /// its arrival), so that the first sample is stored near its capture time rather than when
    /// its whole frame is full; `ref` is read back. Does nothing on a stream with a timeline.
    pub fn bind_timeline(&mut self) -> Result<(), WriteError> {
        self.ensure_writable()?;
        if self.fresh && self.queue.is_empty() && self.held.is_empty() {
            self.push_bind();
            self.pump(true, false)?;
        }
        Ok(())
    }

    /// The wall-clock timeline runs ahead: leaves out up to `bytes` of the audio not sent
    /// yet, oldest first (queued, then held), so that what remains stays contiguous and no
    /// block spans the hole. Returns how many bytes are still to be left out of the start of
    /// the next write (with [`skip_input`](Self::skip_input)).
    pub fn drop_for_timeline(&mut self, bytes: u64) -> u64 {
        self.correcting = true;
        let dropped = self.drop_unsent(bytes);
        if dropped > 0 {
            self.rechunk();
        }
        self.correcting = false;
        bytes - dropped
    }

    /// Leaves out the next `bytes` of input (captured from `capture_us`) on purpose, and
    /// reports what was left out since the last report as one dropped range marked as a
    /// wall-clock correction (counted in `dropped-bytes`).
    pub fn skip_input(&mut self, bytes: u64, capture_us: Option<i64>) {
        self.correcting = true;
        let input = self.input;
        self.note_drop(input, capture_us, bytes);
        self.input += bytes;
        self.correcting = false;
        self.flush_drops();
    }

    /// Bytes accepted but not yet acknowledged by the server.
    pub fn unacked_bytes(&self) -> u64 {
        self.held.len() as u64 + self.queue.iter().map(|f| f.data.len() as u64).sum::<u64>()
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
            dead_idle: &self.dead_idle,
        }
    }

    fn bps(&self) -> u64 {
        self.format
            .map(|f| f.bytes_per_second())
            .unwrap_or(1)
            .max(1)
    }

    fn bpf(&self) -> u64 {
        self.format.map(|f| f.bytes_per_frame() as u64).unwrap_or(1)
    }

    fn keep_time(&self) -> bool {
        self.config.policy == RecoveryPolicy::KeepTime
    }

    fn update_window(&mut self) {
        self.window = match self.format {
            Some(format) if !self.keep_time() => {
                self.config.replay_window.bytes(&format, self.chunk)
            }
            _ => 0,
        };
        self.trim_window();
    }

    /// The capture time of input byte `at`, when the input carries capture times.
    fn capture_of(&self, at: u64) -> Option<i64> {
        let (base_at, base_us) = self.capture_base?;
        let delta = (at as i128 - base_at as i128) * 1_000_000 / self.bps() as i128;
        Some(base_us + delta as i64)
    }

    /// The current timeline's ref, when known.
    fn current_ref(&self) -> Option<i64> {
        let ledger = self.ledger.as_ref()?;
        ledger.epoch(ledger.current()).ref_ms
    }

    /// The time (µs) the server gives the byte stored after `size` bytes of the current
    /// timeline (its block's key when a block starts there).
    fn stored_us(&self, size: u64) -> Option<i64> {
        let r = self.current_ref()?;
        Some(r * 1000 + (u128::from(size) * 1_000_000 / u128::from(self.bps())) as i64)
    }

    fn take_buffer(&mut self) -> Vec<u8> {
        let mut v = self.spare.pop().unwrap_or_default();
        v.clear();
        v.reserve(self.chunk);
        v
    }

    /// Takes back a frame's buffer once nothing needs its bytes: it becomes the buffer the
    /// next frame is gathered in when there is none yet (so a writer whose frames are
    /// acknowledged before the next bytes arrive owns one buffer, not two), else a spare.
    fn recycle(&mut self, mut v: Vec<u8>) {
        if self.held.capacity() == 0 && v.capacity() >= self.chunk {
            v.clear();
            self.held = v;
            return;
        }
        // Without a replay window (keep-time, live sources) at most one frame waits beside
        // the one being gathered, so one spare is all a timeline correction's re-cut needs;
        // more would stay with each of hundreds of streams.
        let keep = if self.window == 0 { 1 } else { 4 };
        if self.spare.len() < keep && v.capacity() <= 2 * MAX_BLOCK_BYTES {
            v.clear();
            self.spare.push(v);
        }
    }

    /// Creates the stream if needed (and allowed), checks an existing stream's format, and
    /// opens it (claiming it at once with `takeover`). One try, bounded by `timeout` per
    /// request: a server that is down is reported at once, not retried.
    pub fn prepare(&mut self, format: StreamFormat) -> Result<Prepared, WriteError> {
        if self.phase == Phase::Open {
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
                self.format
                    .map_or_else(|| "none".to_string(), |f| f.to_string())
            )));
        }
        let chunk = chunk_bytes_for(&format, self.config.chunk_bytes)?;
        let ctx = self.ctx();
        let prepared = run(&self.canceller, async {
            ctx.prepare(
                &format,
                self.config.create_if_missing,
                self.config.if_exists,
                self.config.takeover,
            )
            .await
        })?;
        // From here on the stream is this run's: opening it again (data after EOS) appends.
        self.config.if_exists = IfExists::Append;
        self.format = Some(format);
        self.chunk = chunk;
        self.held.reserve(chunk);
        self.server_size = prepared.size;
        let ref_ms = (prepared.ref_ms != 0).then_some(prepared.ref_ms);
        let mut ledger = Ledger::new(format, prepared.created);
        ledger.begin_epoch(ref_ms);
        self.ledger = Some(ledger);
        self.fresh = prepared.size == 0 && ref_ms.is_none();
        self.ref_reported = false;
        self.time_offset = None;
        self.lag_pending = false;
        for k in std::mem::take(&mut self.kept) {
            self.recycle(k.data);
        }
        self.kept_bytes = 0;
        self.phase = Phase::Open;
        self.stats.lock().unwrap().bytes_per_second = format.bytes_per_second();
        self.update_window();
        Ok(prepared)
    }

    fn ensure_writable(&self) -> Result<(), WriteError> {
        match self.phase {
            Phase::Open => Ok(()),
            Phase::Failed => Err(WriteError::InvalidSettings(
                "the writer failed earlier and cannot continue".into(),
            )),
            Phase::Closed => Err(WriteError::InvalidSettings(
                "the stream is not open (no format yet)".into(),
            )),
        }
    }

    /// Appends PCM that continues the previous write; every full chunk is sent and
    /// acknowledged before this returns.
    pub fn write(&mut self, pcm: &[u8]) -> Result<(), WriteError> {
        self.write_at(pcm, None)
    }

    /// Appends PCM whose first sample was captured at `capture_us` (wall clock, µs since the
    /// Unix epoch; `None`: it continues the previous write). Under keep-time the capture times
    /// decide what is too late to store.
    pub fn write_at(&mut self, pcm: &[u8], capture_us: Option<i64>) -> Result<(), WriteError> {
        self.ensure_writable()?;
        if let Some(c) = capture_us {
            self.capture_base = Some((self.input, c));
        }
        // A frame sent ahead is collected when the next one is ready, or once it held its
        // connection too long; anything else queued (after a failure) goes out now.
        let ahead_only = self.queue.len() == 1
            && self
                .in_flight
                .as_ref()
                .is_some_and(|f| f.sent_at.elapsed() < IN_FLIGHT_HOLD);
        if !ahead_only {
            self.pump(true, false)
                .map_err(|e| self.add_unstored(e, pcm.len()))?;
        }
        let mut pcm = pcm;
        if self.keep_time() && self.capture_base.is_some() {
            if self.fresh && self.queue.is_empty() {
                // Start the server's timeline now, at the live edge, instead of at the arrival
                // of the first full frame (a chunk later than its first sample).
                self.push_bind();
                self.pump(true, false)
                    .map_err(|e| self.add_unstored(e, pcm.len()))?;
            }
            let late = self.late_bytes(pcm.len() as u64);
            if late > 0 {
                let from_held = self.drop_unsent(late);
                let rest = ((late - from_held) as usize).min(pcm.len());
                if rest > 0 {
                    let (input, capture) = (self.input, self.capture_of(self.input));
                    self.note_drop(input, capture, rest as u64);
                    self.input += rest as u64;
                    pcm = &pcm[rest..];
                }
            } else {
                self.flush_drops();
            }
        }
        while !pcm.is_empty() {
            if self.held.is_empty() {
                self.held_input = self.input;
                self.held_capture = self.capture_of(self.input);
                if self.held.capacity() == 0 {
                    self.held = self.take_buffer();
                }
            }
            let take = (self.chunk - self.held.len()).min(pcm.len());
            self.held.extend_from_slice(&pcm[..take]);
            self.input += take as u64;
            pcm = &pcm[take..];
            if self.held.len() == self.chunk {
                self.queue_held();
                // The last frame of this write may go out ahead of its acknowledgement.
                let ahead = self.pipelined && pcm.is_empty();
                self.pump(true, ahead)
                    .map_err(|e| self.add_unstored(e, pcm.len()))?;
            }
        }
        Ok(())
    }

    /// Moves what is held into the queue as one frame.
    fn queue_held(&mut self) {
        // The buffer moves into the frame (and with it to the replay window): no copy. The
        // next frame's buffer is taken when its first bytes arrive, by then often this one.
        let data = std::mem::take(&mut self.held);
        self.queue.push_back(OutFrame {
            data,
            capture_us: self.held_capture,
            input: self.held_input,
            kind: FrameKind::Audio,
            maybe_sent: false,
        });
    }

    fn push_bind(&mut self) {
        self.queue.push_front(OutFrame {
            data: Vec::new(),
            capture_us: None,
            input: self.input,
            kind: FrameKind::Bind,
            maybe_sent: false,
        });
    }

    /// keep-time: bytes at the head of what is not stored yet (queued, held, then `incoming`
    /// bytes of the current write) that are too late to be stored near their capture time.
    fn late_bytes(&mut self, incoming: u64) -> u64 {
        let queued: u64 = self.queue.iter().map(|f| f.data.len() as u64).sum();
        let capture = match self.queue.iter().find(|f| f.kind != FrameKind::Bind) {
            Some(f) => f.capture_us,
            None if !self.held.is_empty() => self.held_capture,
            None => self.capture_of(self.input),
        };
        let (Some(capture), Some(stored)) = (capture, self.stored_us(self.server_size)) else {
            return 0;
        };
        let lag = stored - capture;
        let max = KEEP_TIME_MAX_LAG.as_micros() as i64;
        let offset = match self.time_offset {
            Some(o) => o,
            None => {
                // A timeline set before this run: keep its difference from capture constant.
                let o = if lag.abs() > max { lag } else { 0 };
                self.time_offset = Some(o);
                if o != 0 {
                    self.emit(WriterEvent::TimeOffset { offset_us: o });
                }
                o
            }
        };
        let excess = lag - offset;
        if excess <= max {
            return 0;
        }
        let bpf = self.bpf();
        let bytes = (i128::from(excess) * i128::from(self.bps()) / 1_000_000) as u64 / bpf * bpf;
        bytes.min(queued + self.held.len() as u64 + incoming / bpf * bpf)
    }

    /// Drops `n` bytes from the front of the queued (not re-sent) frames and then of what is
    /// held, reporting them; returns how many were dropped.
    fn drop_unsent(&mut self, n: u64) -> u64 {
        let mut left = n;
        let bps = self.bps();
        // A frame sent ahead is on its way: it cannot be dropped any more.
        let first = usize::from(self.in_flight.is_some());
        while left > 0 {
            let Some(i) = self
                .queue
                .iter()
                .skip(first)
                .position(|f| f.kind == FrameKind::Audio)
                .map(|i| i + first)
            else {
                break;
            };
            let f = &mut self.queue[i];
            let take = left.min(f.data.len() as u64) as usize;
            let (input, capture) = (f.input, f.capture_us);
            f.data.drain(..take);
            f.input += take as u64;
            f.capture_us = f
                .capture_us
                .map(|c| c + (take as u64 * 1_000_000 / bps) as i64);
            if f.data.is_empty() {
                let f = self.queue.remove(i).expect("found above");
                self.recycle(f.data);
            }
            self.note_drop(input, capture, take as u64);
            left -= take as u64;
        }
        if left > 0 && !self.held.is_empty() {
            let take = left.min(self.held.len() as u64) as usize;
            let (input, capture) = (self.held_input, self.held_capture);
            self.held.drain(..take);
            self.held_input += take as u64;
            self.held_capture = capture.map(|c| c + (take as u64 * 1_000_000 / bps) as i64);
            self.note_drop(input, capture, take as u64);
            left -= take as u64;
        }
        n - left
    }

    /// Records dropped audio, merging it with the previous drop when they touch.
    fn note_drop(&mut self, input: u64, capture: Option<i64>, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.stats.lock().unwrap().dropped_bytes += bytes;
        if let Some(d) = self.drops.as_mut() {
            if d.input_offset + d.bytes == input {
                d.bytes += bytes;
                return;
            }
        }
        self.flush_drops();
        self.drops = Some(Loss {
            kind: LossKind::Dropped,
            bytes,
            duration_ns: 0,
            start_us: capture.unwrap_or(0),
            input_offset: input,
            placed: true,
            correction: self.correcting,
        });
    }

    fn flush_drops(&mut self) {
        if let Some(mut d) = self.drops.take() {
            d.duration_ns = (u128::from(d.bytes) * 1_000_000_000 / u128::from(self.bps())) as u64;
            self.emit(WriterEvent::Loss(d));
        }
    }

    /// Counts the rest of a write that failed half-way as not stored too.
    fn add_unstored(&self, err: WriteError, rest: usize) -> WriteError {
        match err {
            WriteError::Unstored {
                stream,
                bytes_per_second,
                stored,
                unknown,
                bytes,
                retry_for,
                last,
            } => WriteError::Unstored {
                stream,
                bytes_per_second,
                stored,
                unknown,
                bytes: bytes + rest as u64,
                retry_for,
                last,
            },
            other => other,
        }
    }

    /// Appends `bytes` of silence (zero samples) captured from `capture_us` on (or continuing
    /// the input); counted in the stats.
    pub fn write_silence_at(
        &mut self,
        bytes: u64,
        capture_us: Option<i64>,
    ) -> Result<(), WriteError> {
        self.ensure_writable()?;
        self.stats.lock().unwrap().silence_bytes += bytes;
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut left = bytes;
        let mut capture = capture_us;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            self.write_at(&ZEROS[..n], capture.take())?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Appends `bytes` of silence continuing the input.
    pub fn write_silence(&mut self, bytes: u64) -> Result<(), WriteError> {
        self.write_silence_at(bytes, None)
    }

    /// Sends what is held (a partial last frame may be shorter than 1 ms) and CLOSEs the
    /// stream. With `retry`, connection errors are retried within `retry_timeout`; without,
    /// the first one ends it (for stopping, which must not wait long).
    pub fn finish(&mut self, retry: bool) -> Result<(), WriteError> {
        if self.phase != Phase::Open {
            self.phase = Phase::Closed;
            return Ok(());
        }
        self.flush_drops();
        self.pump(retry, false)?;
        if !self.held.is_empty() {
            self.queue_held();
            self.pump(retry, false)?;
        }
        // A CLOSE that finds the stream not open: the server forgot it since the last frame (a
        // restart, whose losses nothing else would reveal now). Reopen, establish the truth,
        // re-send what the policy re-sends, and close again.
        for _ in 0..3 {
            if self.close(retry)? || self.ledger.is_none() {
                break;
            }
            let mut retrier = Retrier::new(if retry {
                self.config.retry_timeout
            } else {
                Duration::ZERO
            });
            loop {
                let ctx = self.ctx();
                match run(&self.canceller, async {
                    let mut conn = ctx.pool.checkout(ctx.timeout).await?;
                    ctx.reopen(&mut conn).await
                }) {
                    Ok(_) => break,
                    Err(e) => self.on_failure(e, &mut retrier)?,
                }
            }
            self.recover(&mut retrier)?;
            self.pump(retry, false)?;
        }
        if self.recovering {
            // Reopened with nothing left to send: the recovery is complete all the same.
            self.recovering = false;
            self.stats.lock().unwrap().reconnects += 1;
            self.emit(WriterEvent::Recovered);
        }
        self.flush_drops();
        self.phase = Phase::Closed;
        Ok(())
    }

    /// CLOSE, retried within the policy: `false` when the stream was not open.
    fn close(&mut self, retry: bool) -> Result<bool, WriteError> {
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
                let mut payload = format!("CLOSE '{}'", ctx.id).into_bytes();
                payload.push(0);
                match conn.request(&payload).await?.into_value() {
                    Ok(_) => Ok(true),
                    Err(e) if refused(&e, Refusal::NotOpen) => Ok(false),
                    Err(e) => Err(e),
                }
            });
            match result {
                Ok(was_open) => return Ok(was_open),
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

    /// Sends the queued frames, reconnecting and recovering within the retry policy. A frame
    /// sent ahead is collected first. With `ahead`, the last frame may be sent without
    /// waiting for its reply (see [`set_pipelined`](Self::set_pipelined)).
    fn pump(&mut self, retry: bool, ahead: bool) -> Result<(), WriteError> {
        let mut retrier = Retrier::new(if retry {
            self.config.retry_timeout
        } else {
            Duration::ZERO
        });
        while let Some(front) = self.queue.front() {
            let want_ref = !self.ref_reported;
            let check = front.maybe_sent && front.kind != FrameKind::Bind;
            let sent = Cell::new(front.maybe_sent);
            if let Some(flight) = self.in_flight.take() {
                let result = self.collect(flight, &sent);
                if let Some(front) = self.queue.front_mut() {
                    front.maybe_sent = sent.get();
                }
                match result {
                    Ok(Delivery::Acked { rtt, ref_ms }) => {
                        let replaced = self.replaced_dead_idle(&retrier);
                        self.ack_front(Some(rtt), ref_ms, retrier.failures > 0 || replaced);
                        retrier = retrier.restart();
                    }
                    Ok(Delivery::AlreadyStored { ref_ms }) => {
                        self.ack_front(None, ref_ms, retrier.failures > 0);
                        retrier = retrier.restart();
                    }
                    Ok(Delivery::Reopened) => {
                        self.dead_idle.set(false);
                        self.recover(&mut retrier)?
                    }
                    Err(e) => self.on_failure(e, &mut retrier)?,
                }
                continue;
            }
            let send_ahead = ahead
                && self.queue.len() == 1
                && front.kind == FrameKind::Audio
                && !check
                && !want_ref
                && !self.recovering
                && !self.keep_time()
                && retrier.failures == 0
                && self.streak >= self.ahead_after
                && self.last_ack.is_some_and(|t| t.elapsed() < IN_FLIGHT_HOLD)
                && self.pool.has_free_slot();
            if let Some(ledger) = self.ledger.as_mut() {
                ledger.note_sent(now_ms());
            }
            let ctx = self.ctx();
            let front = self.queue.front().expect("checked above");
            if send_ahead {
                let started = run(&self.canceller, async {
                    ctx.start(&front.data, &sent).await
                });
                if let Some(front) = self.queue.front_mut() {
                    front.maybe_sent = sent.get();
                }
                match started {
                    Ok(conn) => {
                        self.sent_ahead += 1;
                        self.in_flight = Some(InFlight {
                            conn,
                            sent_at: Instant::now(),
                        });
                        return Ok(());
                    }
                    Err(e) => {
                        self.on_failure(e, &mut retrier)?;
                        continue;
                    }
                }
            }
            let result = run(&self.canceller, async {
                ctx.deliver(&front.data, self.server_size, check, want_ref, &sent)
                    .await
            });
            if let Some(front) = self.queue.front_mut() {
                front.maybe_sent = sent.get() && front.kind != FrameKind::Bind;
            }
            match result {
                Ok(Delivery::Acked { rtt, ref_ms }) => {
                    let replaced = self.replaced_dead_idle(&retrier);
                    self.ack_front(Some(rtt), ref_ms, retrier.failures > 0 || replaced);
                    retrier = retrier.restart();
                }
                Ok(Delivery::AlreadyStored { ref_ms }) => {
                    self.ack_front(None, ref_ms, retrier.failures > 0);
                    retrier = retrier.restart();
                }
                Ok(Delivery::Reopened) => {
                    self.dead_idle.set(false);
                    self.recover(&mut retrier)?;
                }
                Err(e) => self.on_failure(e, &mut retrier)?,
            }
        }
        Ok(())
    }

    /// A frame just acknowledged went out on a new connection because the pooled ones had been
    /// closed by the server while idle: reported as a reconnect (the stream was still open
    /// for this writer, so nothing was lost), like one after a failed try. False when a
    /// failure of this frame already said so.
    fn replaced_dead_idle(&mut self, retrier: &Retrier) -> bool {
        if !self.dead_idle.take() || retrier.failures > 0 || self.recovering {
            return false;
        }
        self.emit(WriterEvent::Retrying {
            error: format!(
                "the pooled connections to {} had been closed by the server while idle",
                self.pool.addr()
            ),
            retry_for: self.config.retry_timeout,
        });
        true
    }

    /// Reads the acknowledgement of the frame sent ahead (the queue's front). Its connection is
    /// dropped, not reused, if the wait does not end in a reply (a cancel, a timeout).
    fn collect(&mut self, flight: InFlight, sent: &Cell<bool>) -> Result<Delivery, WriteError> {
        let InFlight { mut conn, sent_at } = flight;
        let ctx = self.ctx();
        let result = run(&self.canceller, async {
            ctx.collect(&mut conn, sent_at, sent).await
        });
        // A connection whose reply was not read is broken and goes back to no pool.
        drop(conn);
        result
    }

    /// A failed try: retried within the budget, or the error that ends the run.
    fn on_failure(&mut self, e: WriteError, retrier: &mut Retrier) -> Result<(), WriteError> {
        self.streak = 0;
        match e {
            WriteError::Cancelled => Err(WriteError::Cancelled),
            e if e.is_retryable() => {
                if retrier.failed() {
                    self.phase = Phase::Failed;
                    let WriteError::Client(last) = e else {
                        unreachable!("retryable errors are client errors")
                    };
                    return Err(self.give_up(last, retrier.budget));
                }
                if retrier.failures == 1 {
                    self.emit(WriterEvent::Retrying {
                        error: e.to_string(),
                        retry_for: retrier.budget,
                    });
                }
                let deadline = retrier.deadline.expect("set by failed()");
                self.pause(&mut retrier.backoff, deadline)
            }
            e => {
                self.phase = Phase::Failed;
                Err(e)
            }
        }
    }

    /// The error after the retries ran out: what is stored, unknown, and not stored.
    fn give_up(&mut self, last: Error, retry_for: Duration) -> WriteError {
        self.flush_drops();
        let mut unknown = 0;
        let mut bytes = self.held.len() as u64;
        let mut replays = 0;
        for (i, f) in self.queue.iter().enumerate() {
            if i == 0 && f.maybe_sent {
                unknown += f.data.len() as u64;
            } else {
                bytes += f.data.len() as u64;
            }
            if f.kind == FrameKind::Replay {
                replays += f.data.len() as u64;
            }
        }
        let stored = {
            let mut stats = self.stats.lock().unwrap();
            // Re-sends that will not happen: acknowledged audio the stream does not have.
            stats.lost_acked_bytes += replays;
            stats.bytes_acked.saturating_sub(stats.lost_acked_bytes)
        };
        WriteError::Unstored {
            stream: self.config.stream_id.clone(),
            bytes_per_second: self.bps(),
            stored,
            unknown,
            bytes,
            retry_for,
            last: Box::new(last),
        }
    }

    /// The front frame is stored: into the ledger and the replay window.
    fn ack_front(&mut self, rtt: Option<Duration>, ref_ms: Option<i64>, after_failures: bool) {
        let f = self.queue.pop_front().expect("a front frame");
        let len = f.data.len() as u64;
        let offset = self.server_size;
        {
            let mut stats = self.stats.lock().unwrap();
            if len > 0 {
                stats.frames_acked += 1;
                if f.kind == FrameKind::Replay {
                    stats.replayed_bytes += len;
                } else {
                    stats.bytes_acked += len;
                }
            }
            if after_failures || self.recovering {
                stats.reconnects += 1;
            }
            if let Some(rtt) = rtt.filter(|_| len > 0) {
                let us = rtt.as_micros() as u64;
                stats.rtt_total_us += us;
                stats.rtt_max_us = stats.rtt_max_us.max(us);
            }
        }
        self.server_size += len;
        self.fresh = false;
        if len > 0 {
            let now = Instant::now();
            let back_to_back = self
                .last_ack
                .is_some_and(|t| now.duration_since(t) < IN_FLIGHT_HOLD);
            self.streak = if back_to_back && !after_failures && !self.recovering {
                self.streak.saturating_add(1)
            } else {
                0
            };
            self.last_ack = Some(now);
        }
        if after_failures || self.recovering {
            self.recovering = false;
            self.emit(WriterEvent::Recovered);
        }
        if let (Some(r), Some(ledger)) = (ref_ms, self.ledger.as_mut()) {
            let e = ledger.current();
            if ledger.epoch(e).ref_ms.is_none() {
                ledger.set_ref(e, r);
            }
        }
        if let Some(r) = ref_ms.filter(|_| !self.ref_reported) {
            self.ref_reported = true;
            self.emit(WriterEvent::Reference {
                ref_ms: r,
                size: self.server_size,
            });
        }
        if len > 0 {
            let ledger = self.ledger.as_mut().expect("open");
            ledger.push(offset, f.input, len as u32);
            let epoch = ledger.current();
            let now = Instant::now();
            if self
                .marks
                .back()
                .is_none_or(|m| now.duration_since(m.0) >= Duration::from_secs(1))
            {
                while self
                    .marks
                    .get(1)
                    .is_some_and(|m| now.duration_since(m.0) > VERIFY_WINDOW)
                {
                    self.marks.pop_front();
                }
                self.marks.push_back((now, epoch, offset));
            }
            if self.lag_pending && f.kind != FrameKind::Replay {
                self.lag_pending = false;
                if let (Some(stored), Some(capture)) = (self.stored_us(offset), f.capture_us) {
                    self.emit(WriterEvent::Lag {
                        lag_us: stored - capture,
                    });
                }
            }
            self.keep(f.data, f.capture_us, f.input, epoch);
        } else if f.kind == FrameKind::Bind && self.keep_time() {
            self.realign();
        }
    }

    /// Keeps an acknowledged frame in the replay window (or recycles it).
    fn keep(&mut self, data: Vec<u8>, capture_us: Option<i64>, input: u64, epoch: usize) {
        if self.window == 0 {
            self.recycle(data);
            return;
        }
        self.kept_bytes += data.len() as u64;
        self.kept.push_back(Kept {
            data,
            capture_us,
            input,
            epoch,
        });
        self.trim_window();
    }

    fn trim_window(&mut self) {
        while let Some(front) = self.kept.front() {
            let len = front.data.len() as u64;
            if self.kept_bytes - len < self.window && self.window > 0 {
                break;
            }
            let k = self.kept.pop_front().expect("front exists");
            self.kept_bytes -= len;
            self.recycle(k.data);
        }
    }

    /// keep-time after the timeline moved (a restart): drops what is queued or held and can
    /// no longer be stored near its capture time.
    fn realign(&mut self) {
        let late = self.late_bytes(0);
        if late > 0 {
            // Reported with what the next writes drop after it, as one range.
            self.drop_unsent(late);
            self.rechunk();
        }
    }

    /// After a partial drop: what is queued (not re-sent) and held, cut into whole chunks
    /// again, so the timeline keeps its fixed block size.
    fn rechunk(&mut self) {
        let mut fresh: VecDeque<OutFrame> = VecDeque::new();
        let mut keep = VecDeque::new();
        let sent_ahead = self.in_flight.is_some();
        for (i, f) in self.queue.drain(..).enumerate() {
            if f.kind != FrameKind::Audio || (i == 0 && sent_ahead) {
                keep.push_back(f);
            } else {
                fresh.push_back(f);
            }
        }
        self.queue = keep;
        if fresh.is_empty() {
            return;
        }
        let first = fresh.front().expect("not empty");
        let (input, capture) = (first.input, first.capture_us);
        let mut bytes: Vec<u8> = Vec::new();
        for f in fresh {
            bytes.extend_from_slice(&f.data);
            self.recycle(f.data);
        }
        bytes.extend_from_slice(&self.held);
        self.held.clear();
        let bps = self.bps();
        let mut at = 0;
        while bytes.len() - at >= self.chunk {
            let mut data = self.take_buffer();
            data.extend_from_slice(&bytes[at..at + self.chunk]);
            self.queue.push_back(OutFrame {
                data,
                capture_us: capture.map(|c| c + (at as u64 * 1_000_000 / bps) as i64),
                input: input + at as u64,
                kind: FrameKind::Audio,
                maybe_sent: false,
            });
            at += self.chunk;
        }
        self.held.extend_from_slice(&bytes[at..]);
        self.held_input = input + at as u64;
        self.held_capture = capture.map(|c| c + (at as u64 * 1_000_000 / bps) as i64);
    }

    /// The stream had to be reopened: establish what the server holds, report and re-send
    /// what it lost, and move to its new timeline.
    fn recover(&mut self, retrier: &mut Retrier) -> Result<(), WriteError> {
        let in_doubt = match (self.queue.front(), self.ledger.as_ref()) {
            (Some(f), Some(ledger)) if f.maybe_sent && !f.data.is_empty() => Some(InDoubt {
                key: ledger.key(ledger.current(), self.server_size),
                visible: ledger.visible(f.data.len() as u64),
            }),
            _ => None,
        };
        let in_doubt_len = self
            .queue
            .front()
            .filter(|f| f.maybe_sent)
            .map_or(0, |f| f.data.len() as u64);
        let truth = loop {
            let ctx = self.ctx();
            let ledger = self.ledger.as_ref().expect("open");
            let settle = self.config.settle;
            let verify_from = self.verify_from();
            match run(&self.canceller, async {
                ctx.find_truth(ledger, in_doubt, settle, verify_from).await
            }) {
                Ok(truth) => break truth,
                Err(e) => self.on_failure(e, retrier)?,
            }
        };
        if truth.ref_ms.is_some()
            && truth.ref_ms == self.current_ref()
            && truth.size > self.server_size + in_doubt_len
        {
            // The same timeline grew by bytes this writer never sent: another writer closed,
            // reopened and wrote it meanwhile (a restart never adds bytes; a kill may bring
            // back older metadata, but with it another timeline).
            self.phase = Phase::Failed;
            return Err(self.ctx().taken_over());
        }
        self.apply_truth(truth);
        Ok(())
    }

    /// The server offset from which the current epoch's blocks are checked one by one after a
    /// restart: that of the oldest block acknowledged within [`VERIFY_WINDOW`] of the last.
    fn verify_from(&self) -> u64 {
        let Some(ledger) = self.ledger.as_ref() else {
            return 0;
        };
        let epoch = ledger.current();
        let Some(last) = self.marks.back().map(|m| m.0) else {
            return 0;
        };
        self.marks
            .iter()
            .filter(|m| m.1 == epoch)
            .find(|m| last.duration_since(m.0) <= VERIFY_WINDOW)
            .map_or(0, |m| m.2)
    }

    fn apply_truth(&mut self, truth: Truth) {
        let bps = self.bps();
        // The frame in doubt first: it came after every acknowledged block.
        if truth.front_stored {
            self.ack_front(None, None, false);
        } else if let Some(f) = self.queue.front_mut() {
            f.maybe_sent = false;
        }
        let ledger = self.ledger.as_mut().expect("open");
        let lost = ledger.mark_lost(&truth.lost);
        let server_lost: u64 =
            lost.iter().map(|b| u64::from(b.len)).sum::<u64>() + truth.unexplained;
        // What the window still holds of them is re-sent (keep-audio), newest last.
        let mut replay: VecDeque<Kept> = VecDeque::new();
        let mut unreplayed = lost.len();
        if !self.keep_time() {
            while unreplayed > 0 {
                let b = lost[unreplayed - 1];
                match self.kept.back() {
                    Some(k)
                        if k.epoch == b.epoch
                            && k.input == b.input
                            && k.data.len() as u64 == u64::from(b.len) =>
                    {
                        let k = self.kept.pop_back().expect("checked");
                        self.kept_bytes -= k.data.len() as u64;
                        replay.push_front(k);
                        unreplayed -= 1;
                    }
                    _ => break,
                }
            }
        }
        // Lost blocks still in the window are of no use now.
        while let Some(k) = self.kept.back() {
            if lost[..unreplayed]
                .iter()
                .any(|b| b.epoch == k.epoch && b.input == k.input)
            {
                let k = self.kept.pop_back().expect("checked");
                self.kept_bytes -= k.data.len() as u64;
                self.recycle(k.data);
            } else {
                break;
            }
        }
        let replayed: u64 = replay.iter().map(|k| k.data.len() as u64).sum();
        let mut losses = coalesce(&lost[..unreplayed], bps);
        if truth.unexplained > 0 {
            // Bytes missing in no place the search could pin down: reported at the newest
            // block still counted present.
            let at = self
                .ledger
                .as_ref()
                .and_then(|l| l.tail(1).first().copied());
            losses.push(Loss {
                kind: LossKind::Lost,
                bytes: truth.unexplained,
                duration_ns: (u128::from(truth.unexplained) * 1_000_000_000 / u128::from(bps))
                    as u64,
                start_us: at.map(|b| b.key * 1000).unwrap_or(0),
                input_offset: at.map(|b| b.input).unwrap_or(0),
                placed: false,
                correction: false,
            });
        }
        {
            let mut stats = self.stats.lock().unwrap();
            stats.server_lost_bytes += server_lost;
            stats.lost_acked_bytes += losses.iter().map(|l| l.bytes).sum::<u64>();
        }
        // The server's timeline from here on.
        let ledger = self.ledger.as_mut().expect("open");
        let current_ref = ledger.epoch(ledger.current()).ref_ms;
        let kept_until = ledger.last_present_key();
        let new_epoch = if truth.size == 0 && truth.ref_ms.is_none() {
            ledger.begin_epoch(None);
            self.fresh = true;
            true
        } else if truth.ref_ms.is_some() && truth.ref_ms != current_ref {
            ledger.begin_epoch(truth.ref_ms);
            self.fresh = false;
            true
        } else {
            false
        };
        if new_epoch {
            self.ref_reported = false;
            if self.keep_time() {
                self.time_offset = Some(0);
            }
        }
        self.server_size = truth.size;
        for k in replay.into_iter().rev() {
            self.queue.push_front(OutFrame {
                data: k.data,
                capture_us: k.capture_us,
                input: k.input,
                kind: FrameKind::Replay,
                maybe_sent: false,
            });
        }
        self.emit(WriterEvent::Restarted(Restart {
            server_lost,
            replayed,
            new_epoch,
            server_size: truth.size,
        }));
        let now = now_ms();
        if let Some(until) = kept_until.filter(|&k| new_epoch && k > now) {
            self.emit(WriterEvent::Overlap {
                now_ms: now,
                kept_until_ms: until,
            });
        }
        for loss in losses {
            self.emit(WriterEvent::Loss(loss));
        }
        if self.keep_time() {
            if self.fresh && self.capture_base.is_some() {
                self.push_bind();
            } else {
                self.realign();
            }
        } else {
            self.lag_pending = true;
        }
        self.recovering = true;
    }
}

/// Contiguous lost blocks as loss ranges.
fn coalesce(blocks: &[Block], bps: u64) -> Vec<Loss> {
    let mut out: Vec<Loss> = Vec::new();
    let mut prev: Option<Block> = None;
    for b in blocks {
        let len = u64::from(b.len);
        match (out.last_mut(), prev) {
            (Some(l), Some(p))
                if p.epoch == b.epoch
                    && p.offset + u64::from(p.len) == b.offset
                    && p.input + u64::from(p.len) == b.input =>
            {
                l.bytes += len;
            }
            _ => out.push(Loss {
                kind: LossKind::Lost,
                bytes: len,
                duration_ns: 0,
                start_us: b.key * 1000,
                input_offset: b.input,
                placed: true,
                correction: false,
            }),
        }
        prev = Some(*b);
    }
    for l in &mut out {
        l.duration_ns = (u128::from(l.bytes) * 1_000_000_000 / u128::from(bps.max(1))) as u64;
    }
    out
}

/// The retry budget of one frame: reconnect with backoff until `budget` has passed since
/// the first failure.
#[derive(Debug)]
struct Retrier {
    budget: Duration,
    deadline: Option<Instant>,
    failures: u32,
    backoff: Duration,
}

impl Retrier {
    fn new(budget: Duration) -> Self {
        Retrier {
            budget,
            deadline: None,
            failures: 0,
            backoff: FIRST_BACKOFF,
        }
    }

    /// A fresh budget for the next frame.
    fn restart(&self) -> Self {
        Retrier::new(self.budget)
    }

    /// Counts a failure; true once the budget is spent.
    fn failed(&mut self) -> bool {
        self.failures += 1;
        let now = Instant::now();
        let deadline = *self.deadline.get_or_insert(now + self.budget);
        now >= deadline
    }
}

/// [`block_on`] for futures that fail with a [`WriteError`]: the writer's error travels inside
/// `Ok`, so only a cancel comes back as the client's `Error`.
fn run<T>(
    canceller: &Canceller,
    fut: impl std::future::Future<Output = Result<T, WriteError>>,
) -> Result<T, WriteError> {
    let fut = std::pin::pin!(fut);
    block_on(canceller, async move { Ok(fut.await) })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_once_by_their_contract_texts() {
        let server = |m: &str| Error::Server(m.to_string());
        assert_eq!(
            Refusal::of(&server("Stream is already open")),
            Some(Refusal::AlreadyOpen)
        );
        assert_eq!(
            Refusal::of(&server("Stream is not open")),
            Some(Refusal::NotOpen)
        );
        assert_eq!(
            Refusal::of(&server("Stream is closed or currently in use.")),
            Some(Refusal::InUse)
        );
        assert_eq!(Refusal::of(&server("Failed to create stream")), None);
        let io = Error::Io {
            addr: "h:1".into(),
            reason: "Stream is already open".into(),
        };
        assert_eq!(Refusal::of(&io), None, "only server replies are refusals");
        assert!(refused(&server("Stream is not open"), Refusal::NotOpen));
    }

    #[test]
    fn reconcile_decides_from_the_servers_size() {
        assert_eq!(reconcile(1000, 100, 1000), Reconcile::Resend);
        assert_eq!(reconcile(1000, 100, 1100), Reconcile::Stored);
        assert_eq!(reconcile(1000, 100, 0), Reconcile::Restarted);
        assert_eq!(reconcile(1000, 100, 400), Reconcile::Restarted);
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
            bytes_per_second: 176400,
            stored: 352800,
            unknown: 0,
            bytes: 17640,
            retry_for: Duration::from_millis(250),
            last: Box::new(Error::Connect {
                addr: "h:1".into(),
                reason: "refused".into(),
            }),
        }
        .to_string();
        assert!(
            e.contains("0.100 s of audio (17640 bytes) were not stored in stream 's'")
                && e.contains("250 ms")
                && e.contains("2.000 s (352800 bytes) before that were stored"),
            "{e}"
        );
        assert!(!e.contains("may or may not"), "{e}");
        let e = WriteError::Unstored {
            stream: "s".into(),
            bytes_per_second: 176400,
            stored: 0,
            unknown: 32768,
            bytes: 100,
            retry_for: Duration::from_millis(250),
            last: Box::new(Error::Timeout {
                addr: "h:1".into(),
                what: "a frame".into(),
                after: Duration::from_millis(100),
            }),
        }
        .to_string();
        assert!(
            e.contains("32768 bytes, the frame in flight")
                && e.contains("may or may not be stored"),
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
    fn replay_windows_parse_bytes_and_times() {
        let fmt = StreamFormat::new(44100, 2, 16).unwrap();
        assert_eq!(ReplayWindow::parse("auto"), Ok(ReplayWindow::Auto));
        assert_eq!(ReplayWindow::Auto.bytes(&fmt, 32768), 80 * 32768);
        assert_eq!(ReplayWindow::parse(" 0 "), Ok(ReplayWindow::Bytes(0)));
        assert_eq!(
            ReplayWindow::parse("4MiB"),
            Ok(ReplayWindow::Bytes(4 << 20))
        );
        assert_eq!(
            ReplayWindow::parse("512KiB"),
            Ok(ReplayWindow::Bytes(512 << 10))
        );
        assert_eq!(
            ReplayWindow::parse("1MB"),
            Ok(ReplayWindow::Bytes(1_000_000))
        );
        let t = ReplayWindow::parse("500ms").unwrap();
        assert_eq!(t, ReplayWindow::Time(Duration::from_millis(500)));
        assert_eq!(t.bytes(&fmt, 32768), 88200);
        assert_eq!(t.to_string(), "500ms");
        assert_eq!(
            ReplayWindow::parse("10s"),
            Ok(ReplayWindow::Time(Duration::from_secs(10)))
        );
        for bad in ["", "ten", "-1", "5 parsecs", "1e3"] {
            let e = ReplayWindow::parse(bad).unwrap_err();
            assert!(e.contains("expected auto"), "{bad}: {e}");
        }
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
        fixture_on(racs_lite::TestServer::start(), id, chunk)
    }

    fn fixture_on(srv: racs_lite::TestServer, id: &str, chunk: usize) -> Fixture {
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

    /// [`stored`], asked again until `len` bytes are visible or 5 s have passed (a table being
    /// written is hidden for a moment).
    fn stored_len(srv: &racs_lite::TestServer, id: &str, len: usize) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = stored(srv, id);
            if got.len() >= len || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
        // Pretend the reply to that frame never came: it is queued again and in doubt.
        f.writer.queue.push_back(OutFrame {
            data: first.clone(),
            capture_us: None,
            input: 0,
            kind: FrameKind::Audio,
            maybe_sent: true,
        });
        f.writer.server_size = 0;
        f.writer.ledger = Some({
            let mut l = Ledger::new(S16_MONO_8K, true);
            l.begin_epoch(None);
            l
        });
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
    fn a_table_hidden_while_written_is_waited_out_not_called_lost() {
        // Tables of 4 blocks, each invisible to EXTRACT for 800 ms after it fills.
        let srv = racs_lite::TestServer::start_with(|c| {
            c.entries = 4;
            c.flush_invisible = Duration::from_millis(800);
        });
        let mut f = fixture_on(srv, "w-hidden", 1600);
        f.writer.prepare(S16_MONO_8K).unwrap();
        let a = pcm(1600 * 5, 12);
        f.writer.write(&a).unwrap();
        // The first table is hidden now. A CLOSE from elsewhere makes the writer reopen and
        // probe: its first four blocks are missing from EXTRACT, for a while.
        runtime().block_on(async {
            let mut conn = Connection::connect(&f.srv.addr().to_string(), Duration::from_secs(2))
                .await
                .unwrap();
            conn.close("w-hidden").await.unwrap();
        });
        let b = pcm(1600, 13);
        f.writer.write(&b).unwrap();
        f.writer.finish(true).unwrap();
        let stats = f.writer.stats();
        assert_eq!(stats.server_lost_bytes, 0, "{stats:?}");
        assert_eq!(stats.replayed_bytes, 0);
        let mut all = a.clone();
        all.extend_from_slice(&b);
        assert!(
            stored_len(&f.srv, "w-hidden", all.len()) == all,
            "nothing lost, nothing twice"
        );
    }

    #[test]
    fn blocks_in_a_table_named_long_before_them_are_found_not_called_lost() {
        // Tables of 4 blocks, written at once (and surviving a kill once written).
        let srv = racs_lite::TestServer::start_with(|c| {
            c.entries = 4;
            c.flush_invisible = Duration::ZERO;
        });
        let addr = srv.addr().to_string();
        let other = SessionId::random();
        let frame_of_other = |addr: &str| {
            runtime().block_on(async {
                let mut conn = Connection::connect(addr, Duration::from_secs(2))
                    .await
                    .unwrap();
                conn.send_frame(&other, stream_hash(b"w-behind"), &pcm(1600, 1))
                    .await
                    .unwrap();
            })
        };
        runtime().block_on(async {
            let mut conn = Connection::connect(&addr, Duration::from_secs(2))
                .await
                .unwrap();
            conn.create("w-behind", &S16_MONO_8K).await.unwrap();
            conn.open("w-behind").await.unwrap();
        });
        // Another stream written behind the wall clock: its second block, keyed 100 ms after
        // its first, arrives 2 s later.
        frame_of_other(&addr);
        std::thread::sleep(Duration::from_secs(2));
        frame_of_other(&addr);
        let mut f = fixture_on(srv, "w-named", 1600);
        f.writer.prepare(S16_MONO_8K).unwrap();
        // Blocks 1-2 complete the table begun by the other stream (named after its first
        // block, 2 s before theirs); blocks 3-5 sit in the server's memory.
        let a = pcm(1600 * 5, 14);
        f.writer.write(&a).unwrap();
        f.srv.kill();
        f.srv.restart();
        let b = pcm(1600, 15);
        f.writer.write(&b).unwrap();
        f.writer.finish(true).unwrap();
        let stats = f.writer.stats();
        assert_eq!(stats.server_lost_bytes, 3 * 1600, "{stats:?}");
        assert_eq!(stats.replayed_bytes, 3 * 1600, "{stats:?}");
        let mut all = a.clone();
        all.extend_from_slice(&b);
        assert!(
            stored(&f.srv, "w-named") == all,
            "nothing lost, nothing twice"
        );
    }

    #[test]
    fn pooled_connections_closed_while_idle_are_reported_as_a_reconnect() {
        // The server drops connections idle for 300 ms; the stream stays open for the writer.
        let srv =
            racs_lite::TestServer::start_with(|c| c.idle_timeout = Duration::from_millis(300));
        let mut f = fixture_on(srv, "w-idle", 1600);
        f.writer.prepare(S16_MONO_8K).unwrap();
        let a = pcm(1600 * 2, 31);
        f.writer.write(&a).unwrap();
        assert_eq!(f.writer.stats().reconnects, 0);
        // Waits (bounded) until the server has closed the pooled connection.
        let deadline = Instant::now() + Duration::from_secs(10);
        let pool = f.writer.pool.clone();
        loop {
            let stale = runtime().block_on(async {
                let c = pool.checkout(Duration::from_secs(2)).await.unwrap();
                c.replaced_dead()
            });
            if stale {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the server kept its idle connection"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The probe above replaced it; let the new one go idle and die too.
        std::thread::sleep(Duration::from_millis(900));
        let b = pcm(1600, 32);
        f.writer.write(&b).unwrap();
        f.writer.finish(true).unwrap();
        let stats = f.writer.stats();
        assert_eq!(stats.reconnects, 1, "{stats:?}");
        let events = f.events.lock().unwrap();
        let retrying = events
            .iter()
            .position(|e| matches!(e, WriterEvent::Retrying { error, .. } if error.contains("closed by the server while idle")));
        let recovered = events
            .iter()
            .position(|e| matches!(e, WriterEvent::Recovered));
        assert!(retrying.is_some() && retrying < recovered, "{events:?}");
        let mut all = a.clone();
        all.extend_from_slice(&b);
        assert!(stored_len(&f.srv, "w-idle", all.len()) == all);
    }

    #[test]
    fn an_older_table_lost_while_a_newer_one_survived_is_reported_in_its_place() {
        // The server writes each full table from its own thread, and those finish in any
        // order: a kill can lose a table while the next one is already in place. Tables of 4
        // blocks; the second one's file is taken away after the kill, as if its write had
        // not finished.
        let srv = racs_lite::TestServer::start_with(|c| {
            c.entries = 4;
            c.flush_invisible = Duration::ZERO;
        });
        let mut f = fixture_on(srv, "w-hole", 1600);
        f.writer.prepare(S16_MONO_8K).unwrap();
        let a = pcm(1600 * 14, 21);
        f.writer.write(&a).unwrap();
        f.srv.kill();
        let mut tables = Vec::new();
        let mut dirs = vec![f.srv.data_dir().join(".racs").join("seg")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.path().is_dir() {
                    dirs.push(e.path());
                } else {
                    tables.push(e.path());
                }
            }
        }
        tables.sort();
        assert_eq!(tables.len(), 3, "{tables:?}");
        std::fs::remove_file(&tables[1]).unwrap();
        f.srv.restart();
        let b = pcm(1600, 22);
        f.writer.write(&b).unwrap();
        f.writer.finish(true).unwrap();
        let stats = f.writer.stats();
        // Blocks 4-7 (the lost table) and 12-13 (the in-memory table) are gone; only the
        // newest can be sent again without landing after audio that followed them.
        assert_eq!(stats.server_lost_bytes, 6 * 1600, "{stats:?}");
        assert_eq!(stats.replayed_bytes, 2 * 1600, "{stats:?}");
        assert_eq!(stats.lost_acked_bytes, 4 * 1600, "{stats:?}");
        let losses: Vec<Loss> = f
            .events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                WriterEvent::Loss(l) => Some(*l),
                _ => None,
            })
            .collect();
        assert_eq!(losses.len(), 1, "{losses:?}");
        assert_eq!((losses[0].input_offset, losses[0].bytes), (6400, 6400));
        assert!(losses[0].placed);
        let mut want = a[..6400].to_vec();
        want.extend_from_slice(&a[12800..]);
        want.extend_from_slice(&b);
        assert!(
            stored_len(&f.srv, "w-hole", want.len()) == want,
            "the hole left out, nothing twice"
        );
    }

    /// Random histories: frame sizes, table sizes, replay windows, a kill, a SHUTDOWN or a
    /// clean restart at a random point, more audio, the end. What the stream holds must be
    /// exactly the input minus the reported losses, and the counters must agree.
    #[test]
    fn random_faults_leave_exactly_the_input_minus_the_reported_losses() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut all_lost, mut all_replayed, mut all_ahead) = (0, 0, 0);
        for round in 0..10 {
            let entries = 2 + rnd(10) as usize;
            let mut srv = racs_lite::TestServer::start_with(|c| c.entries = entries);
            let id = format!("w-random-{round}");
            let pool = Pool::get(&srv.host(), srv.port(), 2);
            let mut config = WriterConfig::new(&id);
            config.chunk_bytes = 160 * (1 + rnd(20) as usize);
            config.timeout = Duration::from_secs(2);
            config.retry_timeout = Duration::from_secs(10);
            config.settle = Duration::from_millis(400);
            config.replay_window = match rnd(3) {
                0 => ReplayWindow::Bytes(0),
                1 => ReplayWindow::Bytes(160 * rnd(40)),
                _ => ReplayWindow::Auto,
            };
            let stats = Arc::default();
            let mut w = StreamWriter::new(pool, config.clone(), Canceller::new(), stats).unwrap();
            let losses = Arc::new(Mutex::new(Vec::new()));
            let sink = losses.clone();
            w.set_observer(move |e| {
                if let WriterEvent::Loss(l) = e {
                    sink.lock().unwrap().push(l);
                }
            });
            w.prepare(S16_MONO_8K).unwrap();
            // Every other round sends each write's last frame ahead of its acknowledgement,
            // in writes of a few samples as a streaming thread makes them, so that the faults
            // also meet a frame whose reply is still on its way.
            let ahead = round % 2 == 1;
            w.set_pipelined(ahead);
            w.ahead_after = 2;
            let mut fed = Vec::new();
            let mut feed = |w: &mut StreamWriter, n: usize, seed: u8| {
                let data = pcm(n, seed);
                if ahead {
                    for piece in data.chunks(112) {
                        w.write(piece).unwrap();
                    }
                } else {
                    w.write(&data).unwrap();
                }
                fed.extend_from_slice(&data);
            };
            feed(&mut w, 16 * (1 + rnd(600) as usize), round as u8);
            // Let the keys (ahead of the wall clock, written this fast) fall into the past.
            std::thread::sleep(Duration::from_millis(700));
            let fault = rnd(3);
            match fault {
                0 => srv.kill(),
                1 => {
                    let mut c = racs_lite::client::RawClient::connect(srv.addr()).unwrap();
                    let _ = c.send_message(b"SHUTDOWN\0");
                    let mut b = [0u8; 1];
                    let _ = std::io::Read::read(&mut c.stream, &mut b);
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while srv.is_running() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                _ => srv.stop(),
            }
            srv.restart();
            feed(&mut w, 16 * rnd(400) as usize, round as u8 + 100);
            w.finish(true).unwrap();
            let losses = losses.lock().unwrap().clone();
            let mut want = Vec::new();
            let mut at = 0;
            for l in &losses {
                assert_eq!(l.kind, LossKind::Lost, "round {round}");
                assert!(l.placed, "round {round}");
                want.extend_from_slice(&fed[at..l.input_offset as usize]);
                at = (l.input_offset + l.bytes) as usize;
            }
            want.extend_from_slice(&fed[at..]);
            let got = stored_len(&srv, &id, want.len());
            let st = w.stats();
            assert!(
                got == want,
                "round {round} (fault {fault}, ahead {ahead}, {config:?}): {} bytes stored, {} expected; \
                 losses {losses:?}; {st:?}",
                got.len(),
                want.len()
            );
            let lost: u64 = losses.iter().map(|l| l.bytes).sum();
            assert_eq!(st.lost_acked_bytes, lost, "round {round}");
            assert_eq!(
                st.server_lost_bytes,
                lost + st.replayed_bytes,
                "round {round}"
            );
            let window = config.replay_window.bytes(&S16_MONO_8K, w.chunk_bytes());
            if st.server_lost_bytes <= window {
                assert_eq!(lost, 0, "round {round}: the window covered the loss");
            }
            all_lost += lost;
            all_replayed += st.replayed_bytes;
            all_ahead += w.sent_ahead;
            assert!(ahead || w.sent_ahead == 0, "round {round}");
        }
        assert!(
            all_lost > 0 && all_replayed > 0 && all_ahead > 0,
            "{all_lost} {all_replayed} {all_ahead}"
        );
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
