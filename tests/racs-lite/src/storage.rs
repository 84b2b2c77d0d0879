// SPDX-License-Identifier: MPL-2.0
//! Storage (contract section 6): stream metadata files keyed by hash behind an LRU cache of
//! `cache.entries` streams, one shared in-memory table of `entries` blocks, and table files
//! named after their first key, written by a background writer.
//!
//! Layout under `<data_dir>/.racs`:
//! - `md/<u64 hash in decimal>`: u16 ch, u16 bd, u32 sr, u64 size, i64 ref, i64 ttl(-1),
//!   u32 id_len (including NUL), id bytes + NUL.
//! - `seg/YYYY/MM/DD/hh/mm/ss/mmm[.N]`: a 16-byte header (u64 file size, u32 version=100, u32 0),
//!   entries (u64 hash, u64 ts, u32 crc, u16 len, u8 flags, data), an index of
//!   count × (hash, ts, offset) u64s, then a u16 count. Tables whose first keys share a
//!   millisecond overwrite each other as on the real server, unless `keep_colliding_tables`
//!   is set: then later ones get a `.N` suffix.
//!
//! Failure and timing semantics (see `Config` in the crate root): a full table is handed to
//! the writer, which writes `<name>.tmp` and renames it into place no earlier than
//! `flush_invisible` after the hand-over; until then EXTRACT does not see it (unless
//! `flush_invisible` is zero, then it is read from memory). Stopping without `durable` (or a
//! kill) loses the in-memory table and every table not yet renamed, like a real server that
//! exits while its flush threads are still writing.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::timefmt::{split_ms, timegm};

const ENTRY_HEADER: usize = 8 + 8 + 4 + 2 + 1;
const FILE_HEADER: usize = 16;
const INDEX_ENTRY: usize = 24;

/// Persisted per-stream metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMeta {
    pub ch: u16,
    pub bd: u16,
    pub sr: u32,
    pub size: u64,
    pub ref_ms: i64,
    pub id: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct EntryRef {
    hash: u64,
    ts: u64,
    /// Offset of the entry header within `Table::data`.
    off: usize,
    len: usize,
}

/// A table of blocks, kept in the on-disk entry format.
#[derive(Debug, Default)]
pub struct Table {
    data: Vec<u8>,
    entries: Vec<EntryRef>,
}

impl Table {
    fn with_capacity(entries: usize, bytes: usize) -> Table {
        Table {
            data: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(entries),
        }
    }

    fn push(&mut self, hash: u64, ts: u64, crc: u32, block: &[u8]) {
        let off = self.data.len();
        self.data.extend_from_slice(&hash.to_le_bytes());
        self.data.extend_from_slice(&ts.to_le_bytes());
        self.data.extend_from_slice(&crc.to_le_bytes());
        self.data
            .extend_from_slice(&(block.len() as u16).to_le_bytes());
        self.data.push(0);
        self.data.extend_from_slice(block);
        self.entries.push(EntryRef {
            hash,
            ts,
            off,
            len: block.len(),
        });
    }

    fn blocks(&self) -> impl Iterator<Item = (u64, u64, &[u8])> {
        self.entries.iter().map(move |e| {
            let start = e.off + ENTRY_HEADER;
            (e.hash, e.ts, &self.data[start..start + e.len])
        })
    }

    /// The complete file image: header, entries, index, count.
    fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let total = FILE_HEADER + self.data.len() + self.entries.len() * INDEX_ENTRY + 2;
        let mut header = [0u8; FILE_HEADER];
        header[..8].copy_from_slice(&(total as u64).to_le_bytes());
        header[8..12].copy_from_slice(&100u32.to_le_bytes());
        w.write_all(&header)?;
        w.write_all(&self.data)?;
        let mut index = Vec::with_capacity(self.entries.len() * INDEX_ENTRY + 2);
        for e in &self.entries {
            index.extend_from_slice(&e.hash.to_le_bytes());
            index.extend_from_slice(&e.ts.to_le_bytes());
            index.extend_from_slice(&((FILE_HEADER + e.off) as u64).to_le_bytes());
        }
        index.extend_from_slice(&(self.entries.len() as u16).to_le_bytes());
        w.write_all(&index)
    }
}

/// Parse a table file image into (hash, ts, block) triples, in entry order.
/// Returns `None` if the image is malformed.
pub fn parse_table_file(img: &[u8]) -> Option<Vec<(u64, u64, &[u8])>> {
    let u64_at =
        |o: usize| -> Option<u64> { Some(u64::from_le_bytes(img.get(o..o + 8)?.try_into().ok()?)) };
    if img.len() < FILE_HEADER + 2 || u64_at(0)? != img.len() as u64 {
        return None;
    }
    let count = u16::from_le_bytes(img[img.len() - 2..].try_into().ok()?) as usize;
    let idx_start = img.len().checked_sub(2 + count * INDEX_ENTRY)?;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let o = idx_start + i * INDEX_ENTRY;
        let hash = u64_at(o)?;
        let ts = u64_at(o + 8)?;
        let off = usize::try_from(u64_at(o + 16)?).ok()?;
        let lenb = img.get(off.checked_add(20)?..off.checked_add(22)?)?;
        let len = u16::from_le_bytes(lenb.try_into().ok()?) as usize;
        let start = off + ENTRY_HEADER;
        let block = img.get(start..start.checked_add(len)?)?;
        if start + len > idx_start {
            return None;
        }
        out.push((hash, ts, block));
    }
    Some(out)
}

#[derive(Debug, Clone)]
enum Seg {
    /// Handed to the writer, not yet renamed into place.
    Pending(Arc<Table>),
    Disk(PathBuf),
}

type SegIndex = Arc<Mutex<BTreeMap<(u64, u32), Seg>>>;

struct Job {
    key: (u64, u32),
    path: PathBuf,
    table: Arc<Table>,
    /// Not renamed into place (so neither visible nor durable) before this instant.
    deadline: Instant,
}

/// How the store stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Flush the in-memory table, finish every table write and persist all metadata.
    Durable,
    /// The real server's SHUTDOWN: persist the cached metadata (whose size counts every
    /// acknowledged block), then lose the in-memory table and the tables still being written.
    Shutdown,
    /// `kill -9`: lose the metadata cache, the in-memory table and the tables still being
    /// written; the metadata on disk stays as last persisted.
    Kill,
}

/// Shared between the store and its writer thread.
struct WriterCtl {
    /// Set when stopping without `Durable`: tables whose deadline is later are lost.
    abort_at: Mutex<Option<Instant>>,
    error: Mutex<Option<io::Error>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Murmur3 x64_128, seed 0, first (h1) half, unsigned.
pub fn stream_hash(id: &[u8]) -> u64 {
    let h = murmur3::murmur3_x64_128(&mut io::Cursor::new(id), 0).unwrap_or(0);
    h as u64
}

/// Tables handed to the writer thread and not yet on disk, at most.
const MAX_PENDING_TABLES: usize = 16;

/// Storage options (see the fields of the same names in `Config`).
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    pub entries: usize,
    pub cache_entries: usize,
    pub flush_invisible: Duration,
    pub keep_colliding_tables: bool,
}

impl StoreOptions {
    /// The defaults of `Config` for everything but `entries`.
    pub fn with_entries(entries: usize) -> StoreOptions {
        StoreOptions {
            entries,
            cache_entries: 4096,
            flush_invisible: Duration::from_millis(100),
            keep_colliding_tables: false,
        }
    }
}

/// The whole server state behind one mutex.
pub struct Store {
    root: PathBuf,
    cap: usize,
    opts: StoreOptions,
    /// Metadata as persisted in `md/` (one file per created stream).
    disk_meta: HashMap<u64, StreamMeta>,
    /// The metadata LRU cache (the real server's `cache.entries`): the live values, with the
    /// tick of their last use. Evicting an entry persists it.
    cache: HashMap<u64, (StreamMeta, u64)>,
    lru: BTreeMap<u64, u64>,
    tick: u64,
    /// Open streams and their bound session (all zeros = unbound).
    pub open: HashMap<u64, [u8; 16]>,
    mem: Table,
    segs: SegIndex,
    writer_tx: Option<mpsc::SyncSender<Job>>,
    writer: Option<JoinHandle<()>>,
    ctl: Arc<WriterCtl>,
    /// Set once stopped; a second stop does nothing.
    stopped: bool,
}

/// What EXTRACT needs to read outside the lock.
pub struct ExtractPlan {
    ch: u16,
    bd: u16,
    hash: u64,
    from: u64,
    to: u64,
    segs: Vec<Seg>,
    mem: Vec<u8>,
}

pub const ERR_NO_STREAM: &str = "The stream-id does not exist";
pub const ERR_EXTRACT_FORMAT: &str =
    "Unsupported stream format for EXTRACT (needs 16 or 24 bit and at least 1 channel)";

/// Append `block` widened to int32 LE samples; trailing bytes that do not make a whole
/// sample-frame are dropped.
fn widen(ch: u16, bd: u16, block: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    if block.is_empty() {
        return Ok(());
    }
    if ch == 0 || (bd != 16 && bd != 24) {
        return Err(ERR_EXTRACT_FORMAT);
    }
    let bps = (bd / 8) as usize;
    let frame = ch as usize * bps;
    let usable = block.len() - block.len() % frame;
    let block = &block[..usable];
    out.reserve(usable / bps * 4);
    if bps == 2 {
        for s in block.chunks_exact(2) {
            out.extend_from_slice(&(i16::from_le_bytes([s[0], s[1]]) as i32).to_le_bytes());
        }
    } else {
        for s in block.chunks_exact(3) {
            let v = (i32::from_le_bytes([0, s[0], s[1], s[2]])) >> 8;
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(())
}

impl ExtractPlan {
    /// Read the planned tables (files in path order, then the in-memory snapshot).
    pub fn run(self) -> Result<Vec<u8>, String> {
        // Size the output once (an upper bound; untouched capacity costs nothing).
        let widen_factor = match self.bd {
            16 => 2,
            24 => 2,
            _ => 0,
        };
        let stored: u64 = self
            .segs
            .iter()
            .map(|s| match s {
                Seg::Pending(t) => t.data.len() as u64,
                Seg::Disk(p) => fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            })
            .sum();
        let cap = (stored * widen_factor) as usize + self.mem.len();
        let mut out = Vec::with_capacity(cap.min(1 << 34));
        let in_range = |h: u64, ts: u64| h == self.hash && self.from <= ts && ts <= self.to;
        for seg in &self.segs {
            match seg {
                Seg::Pending(t) => {
                    for (h, ts, b) in t.blocks() {
                        if in_range(h, ts) {
                            widen(self.ch, self.bd, b, &mut out)?;
                        }
                    }
                }
                Seg::Disk(p) => {
                    let img = match fs::read(p) {
                        Ok(i) => i,
                        Err(e) => {
                            crate::log(&format!("cannot read table {}: {e}", p.display()));
                            continue;
                        }
                    };
                    let Some(entries) = parse_table_file(&img) else {
                        crate::log(&format!("malformed table {}", p.display()));
                        continue;
                    };
                    for (h, ts, b) in entries {
                        if in_range(h, ts) {
                            widen(self.ch, self.bd, b, &mut out)?;
                        }
                    }
                }
            }
        }
        out.extend_from_slice(&self.mem);
        Ok(out)
    }
}

fn seg_path(root: &Path, ts: u64, seq: u32) -> PathBuf {
    let (y, mo, d, h, mi, s, ms) = split_ms(ts as i64);
    let mut p = root.join("seg");
    p.push(format!("{y:04}"));
    p.push(format!("{mo:02}"));
    p.push(format!("{d:02}"));
    p.push(format!("{h:02}"));
    p.push(format!("{mi:02}"));
    p.push(format!("{s:02}"));
    if seq == 0 {
        p.push(format!("{ms:03}"));
    } else {
        p.push(format!("{ms:03}.{seq}"));
    }
    p
}

/// Parse `seg/YYYY/MM/DD/hh/mm/ss/mmm[.N]` back into its key.
fn parse_seg_path(rel: &[String]) -> Option<(u64, u32)> {
    if rel.len() != 7 {
        return None;
    }
    let n = |s: &str| s.parse::<i64>().ok();
    let (last, seq) = match rel[6].split_once('.') {
        Some((a, b)) => (a, b.parse::<u32>().ok()?),
        None => (rel[6].as_str(), 0),
    };
    let secs = timegm(
        n(&rel[0])?,
        n(&rel[1])?,
        n(&rel[2])?,
        n(&rel[3])?,
        n(&rel[4])?,
        n(&rel[5])?,
    );
    let ms = secs * 1000 + n(last)?;
    Some((u64::try_from(ms).ok()?, seq))
}

fn scan_segs(dir: &Path, rel: &mut Vec<String>, out: &mut BTreeMap<(u64, u32), Seg>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        let path = ent.path();
        let is_dir = ent.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            rel.push(name);
            scan_segs(&path, rel, out);
            rel.pop();
        } else if name.ends_with(".tmp") {
            let _ = fs::remove_file(&path);
        } else {
            rel.push(name);
            if let Some(key) = parse_seg_path(rel) {
                out.insert(key, Seg::Disk(path));
            }
            rel.pop();
        }
    }
}

fn encode_meta(m: &StreamMeta) -> Vec<u8> {
    let mut b = Vec::with_capacity(36 + m.id.len() + 1);
    b.extend_from_slice(&m.ch.to_le_bytes());
    b.extend_from_slice(&m.bd.to_le_bytes());
    b.extend_from_slice(&m.sr.to_le_bytes());
    b.extend_from_slice(&m.size.to_le_bytes());
    b.extend_from_slice(&m.ref_ms.to_le_bytes());
    b.extend_from_slice(&(-1i64).to_le_bytes());
    b.extend_from_slice(&((m.id.len() + 1) as u32).to_le_bytes());
    b.extend_from_slice(&m.id);
    b.push(0);
    b
}

fn decode_meta(b: &[u8]) -> Option<StreamMeta> {
    let ch = u16::from_le_bytes(b.get(0..2)?.try_into().ok()?);
    let bd = u16::from_le_bytes(b.get(2..4)?.try_into().ok()?);
    let sr = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    let size = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    let ref_ms = i64::from_le_bytes(b.get(16..24)?.try_into().ok()?);
    let id_len = u32::from_le_bytes(b.get(32..36)?.try_into().ok()?) as usize;
    let id = b.get(36..36 + id_len.checked_sub(1)?)?.to_vec();
    Some(StreamMeta {
        ch,
        bd,
        sr,
        size,
        ref_ms,
        id,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// A temporary name of its own for each table write (`<name>.<n>.tmp`), so two tables with the
/// same name never write into one file; the later rename still replaces the earlier file.
fn tmp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", N.fetch_add(1, Ordering::Relaxed)));
    PathBuf::from(tmp)
}

fn write_table(job: &Job) -> io::Result<PathBuf> {
    if let Some(parent) = job.path.parent() {
        fs::create_dir_all(parent)?;
    }
    let tmp = tmp_path(&job.path);
    let f = fs::File::create(&tmp)?;
    let mut w = io::BufWriter::with_capacity(256 * 1024, f);
    job.table.write_to(&mut w)?;
    w.into_inner().map_err(|e| e.into_error())?;
    Ok(tmp)
}

/// Rename a written table into place and point the index at the file (unless a newer table
/// with the same name replaced it in the index meanwhile).
fn finish_table(job: Job, tmp: &Path, segs: &SegIndex, ctl: &WriterCtl) {
    match fs::rename(tmp, &job.path) {
        Ok(()) => {
            let mut idx = lock(segs);
            if let Some(e) = idx.get_mut(&job.key) {
                if matches!(e, Seg::Pending(t) if Arc::ptr_eq(t, &job.table)) {
                    *e = Seg::Disk(job.path);
                }
            }
        }
        Err(e) => {
            crate::log(&format!("cannot rename table {}: {e}", job.path.display()));
            lock(&ctl.error).get_or_insert(e);
        }
    }
}

/// Drop a lost table from the index (unless a newer table with the same name replaced it).
fn remove_pending(segs: &SegIndex, job: &Job) {
    let mut idx = lock(segs);
    if matches!(idx.get(&job.key), Some(Seg::Pending(t)) if Arc::ptr_eq(t, &job.table)) {
        idx.remove(&job.key);
    }
}

fn writer_loop(rx: mpsc::Receiver<Job>, segs: SegIndex, ctl: Arc<WriterCtl>) {
    // Written to `.tmp`, waiting for their deadline to be renamed into place.
    let mut written: std::collections::VecDeque<(Job, PathBuf)> = Default::default();
    let keep = |job: &Job| match *lock(&ctl.abort_at) {
        Some(at) => job.deadline <= at,
        None => true,
    };
    loop {
        let now = Instant::now();
        while written.front().is_some_and(|(j, _)| j.deadline <= now) {
            let (job, tmp) = written.pop_front().expect("front exists");
            finish_table(job, &tmp, &segs, &ctl);
        }
        let msg = match written.front() {
            Some((j, _)) => rx.recv_timeout(j.deadline.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(job) => {
                if !keep(&job) {
                    continue;
                }
                match write_table(&job) {
                    Ok(tmp) => written.push_back((job, tmp)),
                    Err(e) => {
                        // The table is lost, as when the real server cannot create a file.
                        crate::log(&format!("cannot write table {}: {e}", job.path.display()));
                        remove_pending(&segs, &job);
                        lock(&ctl.error).get_or_insert(e);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Stopping: finish what is kept, lose the rest (its `.tmp` is removed).
    for (job, tmp) in written {
        if keep(&job) {
            finish_table(job, &tmp, &segs, &ctl);
        } else {
            let _ = fs::remove_file(&tmp);
            remove_pending(&segs, &job);
        }
    }
}

impl Store {
    /// Open (or create) the store under `data_dir/.racs` with `entries` blocks per table and
    /// the other options at their defaults.
    pub fn open(data_dir: &Path, entries: usize) -> io::Result<Store> {
        Self::open_with(data_dir, StoreOptions::with_entries(entries))
    }

    /// Open (or create) the store under `data_dir/.racs`.
    pub fn open_with(data_dir: &Path, opts: StoreOptions) -> io::Result<Store> {
        let root = data_dir.join(".racs");
        fs::create_dir_all(root.join("md"))?;
        fs::create_dir_all(root.join("seg"))?;
        let mut disk_meta = HashMap::new();
        for ent in fs::read_dir(root.join("md"))?.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(ent.path());
                continue;
            }
            let Ok(hash) = name.parse::<u64>() else {
                continue;
            };
            match fs::read(ent.path()).ok().as_deref().and_then(decode_meta) {
                Some(m) => {
                    disk_meta.insert(hash, m);
                }
                None => crate::log(&format!("ignoring malformed metadata file {name}")),
            }
        }
        let mut segs = BTreeMap::new();
        scan_segs(&root.join("seg"), &mut Vec::new(), &mut segs);
        let segs: SegIndex = Arc::new(Mutex::new(segs));
        let ctl = Arc::new(WriterCtl {
            abort_at: Mutex::new(None),
            error: Mutex::new(None),
        });
        // Bounded, so a client writing faster than the disk is slowed down instead of growing
        // the server's memory without limit.
        let (tx, rx) = mpsc::sync_channel(MAX_PENDING_TABLES);
        let (s2, c2) = (segs.clone(), ctl.clone());
        let writer = std::thread::Builder::new()
            .name("racs-lite-writer".into())
            .spawn(move || writer_loop(rx, s2, c2))?;
        let cap = opts.entries.clamp(1, u16::MAX as usize);
        let mut opts = opts;
        opts.cache_entries = opts.cache_entries.max(1);
        Ok(Store {
            root,
            cap,
            opts,
            disk_meta,
            cache: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            open: HashMap::new(),
            mem: Table::with_capacity(cap, 64 * 1024),
            segs,
            writer_tx: Some(tx),
            writer: Some(writer),
            ctl,
            stopped: false,
        })
    }

    /// Makes each flushed table invisible to EXTRACT for at least `d`, as on the real server.
    pub fn set_flush_invisible(&mut self, d: Duration) {
        self.opts.flush_invisible = d;
    }

    fn md_path(&self, hash: u64) -> PathBuf {
        self.root.join("md").join(hash.to_string())
    }

    /// Write one stream's metadata file (and remember what is on disk).
    fn persist(&mut self, hash: u64, m: StreamMeta) -> io::Result<()> {
        write_atomic(&self.md_path(hash), &encode_meta(&m))?;
        self.disk_meta.insert(hash, m);
        Ok(())
    }

    /// The real server's `racs_streaminfo_get`: the cached metadata of a stream (made most
    /// recently used), loaded from its file on a miss; loading may evict (and so persist) the
    /// least recently used entry. `None` if the stream does not exist.
    pub fn meta(&mut self, hash: u64) -> Option<&mut StreamMeta> {
        self.tick += 1;
        let tick = self.tick;
        if let Some((_, t)) = self.cache.get_mut(&hash) {
            self.lru.remove(t);
            *t = tick;
            self.lru.insert(tick, hash);
        } else {
            let m = self.disk_meta.get(&hash)?.clone();
            if self.cache.len() >= self.opts.cache_entries {
                if let Some((_, old)) = self.lru.pop_first() {
                    if let Some((om, _)) = self.cache.remove(&old) {
                        if let Err(e) = self.persist(old, om) {
                            crate::log(&format!("cannot persist metadata {old}: {e}"));
                        }
                    }
                }
            }
            self.cache.insert(hash, (m, tick));
            self.lru.insert(tick, hash);
        }
        self.cache.get_mut(&hash).map(|(m, _)| m)
    }

    /// The metadata a restart would find for a stream (what its file holds).
    pub fn persisted_meta(&self, hash: u64) -> Option<&StreamMeta> {
        self.disk_meta.get(&hash)
    }

    /// CREATE: false if the stream already exists.
    pub fn create(&mut self, id: &[u8], sr: u32, ch: u16, bd: u16) -> io::Result<bool> {
        let hash = stream_hash(id);
        if self.meta(hash).is_some() {
            return Ok(false);
        }
        let m = StreamMeta {
            ch,
            bd,
            sr,
            size: 0,
            ref_ms: 0,
            id: id.to_vec(),
        };
        self.persist(hash, m)?;
        // Loaded into the cache, as the real server's put does.
        self.meta(hash);
        Ok(true)
    }

    /// Hand the in-memory table to the writer and start a new one.
    fn rotate(&mut self) {
        if self.mem.entries.is_empty() {
            return;
        }
        let hint = self.mem.data.capacity();
        let table = std::mem::replace(&mut self.mem, Table::with_capacity(self.cap, hint));
        let ts = table.entries[0].ts;
        let table = Arc::new(table);
        let mut segs = lock(&self.segs);
        let mut seq = 0u32;
        if self.opts.keep_colliding_tables {
            while segs.contains_key(&(ts, seq)) {
                seq += 1;
            }
        }
        let key = (ts, seq);
        segs.insert(key, Seg::Pending(table.clone()));
        drop(segs);
        let job = Job {
            key,
            path: seg_path(&self.root, ts, seq),
            table,
            deadline: Instant::now() + self.opts.flush_invisible,
        };
        if let Some(tx) = &self.writer_tx {
            if tx.send(job).is_err() {
                crate::log("table writer is gone; table lost");
            }
        }
    }

    /// Append one block; flushes the in-memory table first if it is full.
    pub fn append(&mut self, hash: u64, ts: u64, crc: u32, block: &[u8]) {
        if self.mem.entries.len() >= self.cap {
            self.rotate();
        }
        self.mem.push(hash, ts, crc, block);
    }

    /// Prepare an EXTRACT: validate under the lock, snapshot what must be read.
    pub fn plan_extract(&mut self, id: &[u8], from: i64, to: i64) -> Result<ExtractPlan, String> {
        let hash = stream_hash(id);
        let Some(m) = self.meta(hash) else {
            return Err(ERR_NO_STREAM.to_string());
        };
        let (ch, bd) = (m.ch, m.bd);
        let (from, to) = (from.max(0) as u64, to.max(0) as u64);
        let mut plan = ExtractPlan {
            ch,
            bd,
            hash,
            from,
            to,
            segs: Vec::new(),
            mem: Vec::new(),
        };
        if from > to {
            return Ok(plan);
        }
        // A table being written is read from memory only when flush invisibility is off.
        let pending_visible = self.opts.flush_invisible.is_zero();
        plan.segs = lock(&self.segs)
            .range((from, 0)..=(to, u32::MAX))
            .filter(|(_, s)| pending_visible || matches!(s, Seg::Disk(_)))
            .map(|(_, s)| s.clone())
            .collect();
        for (h, ts, b) in self.mem.blocks() {
            if h == hash && from <= ts && ts <= to {
                widen(ch, bd, b, &mut plan.mem)?;
            }
        }
        Ok(plan)
    }

    /// SEARCH: the names matching `pat`, in the order of the metadata file names (decimal
    /// hashes sorted as strings). Every stream is looked up through the cache, as on the real
    /// server, so a SEARCH may evict (and persist) metadata.
    pub fn search(&mut self, pat: &[u8]) -> Vec<Vec<u8>> {
        let mut v: Vec<(String, u64)> =
            self.disk_meta.keys().map(|h| (h.to_string(), *h)).collect();
        v.sort();
        let mut out = Vec::new();
        for (_, h) in v {
            if let Some(m) = self.meta(h) {
                if crate::glob::fnmatch(pat, &m.id) {
                    out.push(m.id.clone());
                }
            }
        }
        out
    }

    /// Stop the store (see [`StopMode`]).
    pub fn shutdown(&mut self, mode: StopMode) -> io::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut result = Ok(());
        let now = Instant::now();
        if mode == StopMode::Durable {
            self.rotate();
        } else {
            self.mem = Table::default();
            *lock(&self.ctl.abort_at) = Some(now);
        }
        if mode == StopMode::Kill {
            self.cache.clear();
            self.lru.clear();
        } else {
            let cached: Vec<(u64, StreamMeta)> =
                self.cache.drain().map(|(h, (m, _))| (h, m)).collect();
            self.lru.clear();
            for (h, m) in cached {
                if let Err(e) = self.persist(h, m) {
                    crate::log(&format!("cannot persist metadata {h}: {e}"));
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        self.writer_tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some(e) = lock(&self.ctl.error).take() {
            if result.is_ok() {
                result = Err(e);
            }
        }
        result
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.shutdown(StopMode::Kill);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn hash_vectors() {
        assert_eq!(stream_hash(b"chopin"), 3740679502687231301);
        assert_eq!(
            stream_hash(b"Beethoven Piano Sonata No.1"),
            13518887301497293089
        );
        assert_eq!(stream_hash(b""), 0);
        assert_eq!(stream_hash(b"alpha"), 18439212215455061653);
        assert_eq!(stream_hash(b"beta"), 13179257210476431013);
        assert_eq!(stream_hash(b"air"), 6985459874387285311);
    }

    #[test]
    fn seg_paths_roundtrip() {
        let root = Path::new("/r");
        for (ts, seq) in [(1762344854608u64, 0u32), (0, 3), (951782400001, 1)] {
            let p = seg_path(root, ts, seq);
            let rel: Vec<String> = p
                .strip_prefix("/r/seg")
                .unwrap()
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            assert_eq!(parse_seg_path(&rel), Some((ts, seq)));
        }
    }

    #[test]
    fn table_file_roundtrip() {
        let mut t = Table::default();
        t.push(1, 10, 0, b"abcd");
        t.push(2, 20, 0, b"");
        t.push(1, 30, 0, b"xy");
        let mut img = Vec::new();
        t.write_to(&mut img).unwrap();
        assert_eq!(
            u64::from_le_bytes(img[..8].try_into().unwrap()),
            img.len() as u64
        );
        let e = parse_table_file(&img).unwrap();
        assert_eq!(
            e,
            vec![
                (1, 10, &b"abcd"[..]),
                (2, 20, &b""[..]),
                (1, 30, &b"xy"[..])
            ]
        );
        assert!(parse_table_file(&img[..img.len() - 3]).is_none());
    }
}
