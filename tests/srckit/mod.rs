// SPDX-License-Identifier: MPL-2.0
//! The kit of the racssrc exactness suites (`src_exact.rs`, `src_model.rs`): writers that keep a
//! reference model of what the server stores (per block: stream, epoch, offset, key, samples,
//! lost or not, following the server's rules for tables, flushes, SHUTDOWN and kills), signal
//! generators that repeat (silence, DC, square waves, clicks) and some that do not (noise,
//! ramps), and a checker that compares what the reader hands out with the model: every sample
//! exact, every gap really lost, or an error before anything wrong.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use gstracs::client::reader::{Bound, Piece, RangeReader, ReadError, ReaderConfig, Timeline};
use gstracs::client::{
    block_on, runtime, stream_hash, Canceller, Connection, InfoAttr, Pool, SessionId, StreamFormat,
};

pub use racs_lite::harness::AnyServer as TestServer;

pub const T: Duration = Duration::from_secs(20);

pub fn rt<F: std::future::Future>(fut: F) -> F::Output {
    runtime().block_on(fut)
}

// ---------------------------------------------------------------------------------------------
// Signals

/// What a run of blocks holds. Everything but `Noise` and `Ramp` repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Silence,
    /// One constant value on every sample.
    Dc(i32),
    /// A square wave of `period` frames at half scale.
    Square {
        period: u32,
    },
    /// A full-scale click every `period` frames, silence between.
    Clicks {
        period: u32,
    },
    Noise {
        seed: u64,
    },
    /// The frame index (mod the sample width) on every channel.
    Ramp,
}

impl Content {
    /// The sample of `channel` at stream frame `frame`.
    fn sample(&self, frame: u64, channel: u16, bits: u16) -> i32 {
        let peak = (1i32 << (bits - 1)) - 1;
        match *self {
            Content::Silence => 0,
            Content::Dc(v) => v.clamp(-peak, peak),
            Content::Square { period } => {
                if (frame / u64::from(period.max(1))).is_multiple_of(2) {
                    peak / 2
                } else {
                    -peak / 2
                }
            }
            Content::Clicks { period } => {
                if frame.is_multiple_of(u64::from(period.max(1))) {
                    peak
                } else {
                    0
                }
            }
            Content::Noise { seed } => {
                let mut x = (frame ^ seed.rotate_left(17))
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(u64::from(channel) * 0x2545_F491_4F6C_DD1D);
                x ^= x >> 29;
                x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
                x ^= x >> 32;
                ((x as i64) >> (64 - bits)) as i32
            }
            Content::Ramp => {
                let m = 1i64 << bits;
                (((frame as i64 + i64::from(channel) * 7) % m) - m / 2) as i32
            }
        }
    }

    /// `frames` frames from stream frame `first`, in the stream's width.
    pub fn pcm(&self, f: &StreamFormat, first: u64, frames: u64) -> Vec<u8> {
        let bps = f.bytes_per_sample();
        let mut out = Vec::with_capacity(frames as usize * f.bytes_per_frame());
        for n in first..first + frames {
            for c in 0..f.channels {
                let v = self.sample(n, c, f.bit_depth);
                out.extend_from_slice(&v.to_le_bytes()[..bps]);
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The reference model

/// One block as the server stores it.
#[derive(Debug, Clone)]
pub struct Block {
    pub stream: usize,
    pub epoch: usize,
    /// Byte offset in its epoch.
    pub off: u64,
    pub key: i64,
    /// The stream's bytes.
    pub data: Vec<u8>,
    pub lost: bool,
}

/// One stream's metadata as the server holds it, and its epochs.
#[derive(Debug, Clone)]
pub struct StreamModel {
    pub id: String,
    pub format: StreamFormat,
    pub size: u64,
    pub ref_ms: i64,
    /// Metadata as last persisted (CREATE, SHUTDOWN): what a kill falls back to.
    pub persisted: (u64, i64),
    /// Ref of each epoch, oldest first.
    pub epochs: Vec<i64>,
    /// Frames of signal written (continues across epochs, so patterns run on).
    pub frames: u64,
    /// Block sizes used, in bytes.
    pub sizes: std::collections::BTreeSet<u64>,
}

/// The server's state as the model sees it.
#[derive(Debug, Default)]
pub struct World {
    pub blocks: Vec<Block>,
    pub streams: Vec<StreamModel>,
    /// Blocks in the in-memory table, in arrival order.
    pub mem: Vec<usize>,
    /// Flushed tables by name.
    pub tables: BTreeMap<i64, Vec<usize>>,
    pub entries: usize,
}

impl World {
    pub fn new(entries: usize) -> World {
        World {
            entries,
            ..World::default()
        }
    }

    fn append(&mut self, stream: usize, key: i64, data: Vec<u8>) {
        if self.mem.len() >= self.entries {
            let table = std::mem::take(&mut self.mem);
            let name = self.blocks[table[0]].key;
            if let Some(old) = self.tables.insert(name, table) {
                // Same file name: the later table overwrites the earlier one.
                for i in old {
                    self.blocks[i].lost = true;
                }
            }
        }
        let s = &mut self.streams[stream];
        let epoch = s.epochs.len() - 1;
        let len = data.len() as u64;
        s.sizes.insert(len);
        self.blocks.push(Block {
            stream,
            epoch,
            off: s.size,
            key,
            data,
            lost: false,
        });
        s.size += len;
        self.mem.push(self.blocks.len() - 1);
    }

    /// The server lost its in-memory table (SHUTDOWN, kill).
    fn lose_mem(&mut self) {
        for i in std::mem::take(&mut self.mem) {
            self.blocks[i].lost = true;
        }
    }

    /// The whole stream on its timeline, as the reader should give it: its recordings (epochs
    /// with stored blocks) in order, each from the frame nearest its `ref` counted from the
    /// first one's, `None` between them; `None` when two recordings overlap in time (the
    /// reader must then stop with an error).
    pub fn stream_timeline(&self, stream: usize) -> Option<Vec<Option<Vec<u8>>>> {
        let s = &self.streams[stream];
        let bpf = s.format.bytes_per_frame() as u64;
        if s.ref_ms == 0 {
            // Killed before its metadata was ever persisted, and not written since: the server
            // no longer knows the stream.
            return Some(Vec::new());
        }
        let cur = s.epochs.len() - 1;
        let stored = |e: usize| {
            self.blocks
                .iter()
                .any(|b| b.stream == stream && b.epoch == e && !b.lost)
        };
        let old: Vec<usize> = (0..cur).filter(|&e| stored(e)).collect();
        if old.is_empty() {
            return Some(self.timeline(stream));
        }
        let tl = Timeline::new(&s.format);
        let origin = s.epochs[old[0]];
        let mut out: Vec<Option<Vec<u8>>> = Vec::new();
        for e in old.into_iter().chain([cur]) {
            let base = tl.frame_of(origin, i128::from(s.epochs[e]) * 1_000_000);
            if base < out.len() as i128 {
                return None;
            }
            let base = base as usize;
            let blocks = self
                .blocks
                .iter()
                .filter(|b| b.stream == stream && b.epoch == e);
            let len = if e == cur {
                (s.size / bpf) as usize
            } else {
                blocks
                    .clone()
                    .filter(|b| !b.lost)
                    .map(|b| ((b.off + b.data.len() as u64) / bpf) as usize)
                    .max()
                    .unwrap_or(0)
            };
            out.resize(base + len, None);
            for b in blocks.filter(|b| !b.lost) {
                for (i, fr) in b.data.chunks_exact(bpf as usize).enumerate() {
                    if let Some(slot) = out.get_mut(base + (b.off / bpf) as usize + i) {
                        *slot = Some(fr.to_vec());
                    }
                }
            }
        }
        Some(out)
    }

    /// The current epoch of a stream as the reader sees it: per frame, its stored bytes or
    /// `None` where the server lost it.
    pub fn timeline(&self, stream: usize) -> Vec<Option<Vec<u8>>> {
        let s = &self.streams[stream];
        let bpf = s.format.bytes_per_frame() as u64;
        if s.ref_ms == 0 {
            return Vec::new();
        }
        let epoch = s.epochs.len() - 1;
        let mut out = vec![None; (s.size / bpf) as usize];
        for b in self
            .blocks
            .iter()
            .filter(|b| b.stream == stream && b.epoch == epoch && !b.lost)
        {
            for (i, fr) in b.data.chunks_exact(bpf as usize).enumerate() {
                if let Some(slot) = out.get_mut((b.off / bpf) as usize + i) {
                    *slot = Some(fr.to_vec());
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Writers

/// A server, its streams' writers, and the model of what it stores.
pub struct Bench {
    pub srv: TestServer,
    pub world: World,
    conns: Vec<Option<(Connection, SessionId)>>,
    /// Wait after the last write before a SHUTDOWN or kill, so that no table is being written.
    pub settle: Duration,
}

impl Bench {
    pub fn new(entries: usize, flush_invisible: Duration) -> Bench {
        let srv = TestServer::start_with(|c| {
            c.entries = entries;
            c.flush_invisible = flush_invisible;
        });
        Bench {
            srv,
            world: World::new(entries),
            conns: Vec::new(),
            settle: flush_invisible + Duration::from_millis(60),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.srv.addr()
    }

    /// Creates a stream; returns its index.
    pub fn create(&mut self, id: &str, format: StreamFormat) -> usize {
        let mut conn = rt(Connection::connect(&self.addr().to_string(), T)).unwrap();
        rt(conn.create(id, &format)).unwrap();
        self.world.streams.push(StreamModel {
            id: id.into(),
            format,
            size: 0,
            ref_ms: 0,
            persisted: (0, 0),
            epochs: Vec::new(),
            frames: 0,
            sizes: Default::default(),
        });
        self.conns.push(None);
        self.world.streams.len() - 1
    }

    fn conn(&mut self, s: usize) -> &mut (Connection, SessionId) {
        if self.conns[s].is_none() {
            let id = self.world.streams[s].id.clone();
            let mut conn = rt(Connection::connect(&self.addr().to_string(), T)).unwrap();
            rt(conn.close(&id)).ok();
            rt(conn.open(&id)).unwrap();
            self.conns[s] = Some((conn, SessionId::random()));
        }
        self.conns[s].as_mut().unwrap()
    }

    /// Appends one block of `frames` frames of `content` to stream `s`.
    pub fn block(&mut self, s: usize, frames: u64, content: Content) {
        let (format, first, id) = {
            let m = &self.world.streams[s];
            (m.format, m.frames, m.id.clone())
        };
        let pcm = content.pcm(&format, first, frames);
        let hash = stream_hash(id.as_bytes());
        let new_epoch = {
            let m = &self.world.streams[s];
            m.ref_ms == 0 && m.size == 0
        };
        {
            let (conn, session) = self.conn(s);
            let session = *session;
            rt(conn.send_frame(&session, hash, &pcm)).unwrap();
        }
        if new_epoch {
            let ref_ms = {
                let (conn, _) = self.conn(s);
                rt(conn.info(&id, InfoAttr::Ref)).unwrap().unwrap()
            };
            let m = &mut self.world.streams[s];
            m.ref_ms = ref_ms;
            m.epochs.push(ref_ms);
        }
        let m = &mut self.world.streams[s];
        m.frames += frames;
        let tl = Timeline::new(&format);
        let key = tl.key(m.ref_ms, m.size);
        self.world.append(s, key, pcm);
    }

    /// `n` blocks of `frames` frames each.
    pub fn blocks(&mut self, s: usize, n: usize, frames: u64, content: Content) {
        for _ in 0..n {
            self.block(s, frames, content);
        }
    }

    /// SHUTDOWN and start again: metadata persisted, the in-memory table lost.
    pub fn shutdown_restart(&mut self) {
        std::thread::sleep(self.settle);
        self.srv.shutdown();
        self.world.lose_mem();
        for m in &mut self.world.streams {
            m.persisted = (m.size, m.ref_ms);
        }
        self.conns.iter_mut().for_each(|c| *c = None);
        self.srv.start_again();
    }

    /// kill -9 and start again: the in-memory table and unpersisted metadata lost; the next
    /// frame of a stream whose metadata fell back to zero starts a new epoch.
    pub fn kill_restart(&mut self) {
        std::thread::sleep(self.settle);
        self.srv.kill();
        self.world.lose_mem();
        for m in &mut self.world.streams {
            (m.size, m.ref_ms) = m.persisted;
        }
        self.conns.iter_mut().for_each(|c| *c = None);
        self.srv.start_again();
    }
}

// ---------------------------------------------------------------------------------------------
// Reading and checking

/// How one read ended.
#[derive(Debug)]
pub struct Outcome {
    pub pieces: Vec<Piece>,
    pub error: Option<ReadError>,
    pub stats: gstracs::client::reader::ReaderStats,
    pub exact: bool,
}

/// Reads `[start, stop)` of a stream with the reader.
pub fn read(addr: SocketAddr, id: &str, start: Bound, stop: Bound, page_ms: u64) -> Outcome {
    let mut cfg = ReaderConfig::new(id);
    cfg.start = start;
    cfg.stop = stop;
    cfg.page_ms = page_ms;
    cfg.timeout = T;
    cfg.retry_delay = Duration::from_millis(25);
    cfg.retries = 16;
    run_reader(addr, cfg, None)
}

/// Every piece a reader with `cfg` hands out until its end or an error. With `stall`, a piece
/// that takes longer (a follow that stalls) fails the test; without, each request is bounded
/// by the reader's own timeout and retries.
fn run_reader(addr: SocketAddr, cfg: ReaderConfig, stall: Option<Duration>) -> Outcome {
    let pool = Pool::get(&addr.ip().to_string(), addr.port(), 3);
    let c = Canceller::new();
    let mut pieces = Vec::new();
    let res = block_on(&c, async {
        let mut reader = match RangeReader::open(pool, cfg).await {
            Ok(r) => r,
            Err(e) => return Ok((Some(e), Default::default(), true)),
        };
        loop {
            let next = match stall {
                Some(limit) => tokio::time::timeout(limit, reader.next_piece())
                    .await
                    .unwrap_or_else(|_| panic!("the reader handed out nothing for {limit:?}")),
                None => reader.next_piece().await,
            };
            match next {
                Ok(Some(p)) => pieces.push(p),
                Ok(None) => return Ok((None, reader.stats(), reader.is_exact())),
                Err(e) => return Ok((Some(e), reader.stats(), reader.is_exact())),
            }
        }
    })
    .unwrap();
    Outcome {
        pieces,
        error: res.0,
        stats: res.1,
        exact: res.2,
    }
}

/// Checks what a read of frames `[first, end)` handed out against the model's timeline.
///
/// Every sample must be the stored one and every gap really lost, at the position the reader
/// gave, shifted by at most `slack` frames (0 where the position must be exact; the shift may
/// change only after a gap). Without an error the pieces must cover the range exactly, in order.
pub fn check(
    timeline: &[Option<Vec<u8>>],
    f: &StreamFormat,
    first: u64,
    end: u64,
    out: &Outcome,
    slack: u64,
) -> Result<(), String> {
    let bps = f.bytes_per_sample();
    let mut next = first;
    let mut shifts: Vec<u64> = (0..=slack).collect();
    for (i, p) in out.pieces.iter().enumerate() {
        let (frame, frames) = match p {
            Piece::Audio { frame, data, .. } => {
                (*frame, (data.len() / (4 * f.channels as usize)) as u64)
            }
            Piece::Gap { frame, frames, .. } => (*frame, *frames),
        };
        if frame != next {
            return Err(format!(
                "piece {i} starts at frame {frame}, the previous one ended at {next}"
            ));
        }
        next = frame + frames;
        match p {
            Piece::Audio { data, .. } => {
                let narrow: Vec<Vec<u8>> = data
                    .chunks_exact(4 * f.channels as usize)
                    .map(|fr| fr.chunks_exact(4).flat_map(|s| s[..bps].to_vec()).collect())
                    .collect();
                shifts.retain(|&d| {
                    narrow.iter().enumerate().all(|(j, fr)| {
                        timeline
                            .get((frame + d) as usize + j)
                            .and_then(|t| t.as_ref())
                            == Some(fr)
                    })
                });
                if shifts.is_empty() {
                    let at = narrow
                        .iter()
                        .enumerate()
                        .position(|(j, fr)| {
                            timeline.get(frame as usize + j).and_then(|t| t.as_ref()) != Some(fr)
                        })
                        .unwrap_or(0);
                    return Err(format!(
                        "piece {i} (audio at frame {frame}, {frames} frames) differs from the \
                         stored stream from frame {} on",
                        frame + at as u64
                    ));
                }
            }
            Piece::Gap { .. } => {
                let lost: Vec<u64> = (0..=slack)
                    .filter(|&d| {
                        (frame + d..frame + d + frames)
                            .all(|n| timeline.get(n as usize).is_some_and(|t| t.is_none()))
                    })
                    .collect();
                if lost.is_empty() {
                    return Err(format!(
                        "piece {i} is a gap of {frames} frames at frame {frame}, but the server \
                         has audio there"
                    ));
                }
                shifts = (0..=slack).collect();
            }
        }
    }
    // A position known to within `slack` frames may end that much early.
    if out.error.is_none() && (next > end || next + slack < end) {
        return Err(format!(
            "the pieces end at frame {next}, the range at {end}"
        ));
    }
    if let Some(ReadError::Client(e)) = &out.error {
        return Err(format!("a client error instead of exact-or-error: {e}"));
    }
    Ok(())
}

/// The frames of `[start, stop)` as the reader resolves them on a stream of `frames` frames.
pub fn range_frames(start: Bound, stop: Bound, frames: u64) -> (u64, u64) {
    let first = match start {
        Bound::Frame(f) => f,
        _ => 0,
    };
    let end = match stop {
        Bound::Frame(f) => f.min(frames),
        _ => frames,
    };
    (first, end)
}

/// Follows a stream from its start (follow mode) until `frames` frames came out.
pub fn read_follow(addr: SocketAddr, id: &str, frames: u64) -> Outcome {
    let mut cfg = ReaderConfig::new(id);
    cfg.stop = Bound::Frame(frames);
    cfg.follow = true;
    cfg.page_ms = 2000;
    cfg.timeout = T;
    cfg.poll_interval = Duration::from_millis(20);
    cfg.retry_delay = Duration::from_millis(30);
    run_reader(addr, cfg, Some(T))
}
