// SPDX-License-Identifier: MPL-2.0
//! The reader's moves: locating the start, and reading on from the cursor one run at a time.
//! Every move states what it relies on; when that cannot be shown, it stops with an error.

use super::known::{Kind, Known, Run};
use super::split::{self, Insertion};
use super::{Cursor, OpenTable, RangeReader, ReadError};

/// Bytes at the end of a stream that may sit in the in-memory table or in a table being
/// written (the newest tables, across all streams).
const RECENT_BYTES: u64 = 128 * 65535;
/// A time after every key a test or a user writes (year 9999).
pub(crate) const FAR: i64 = 253_402_300_799_999;
/// How far probes look for a table's name next to a block before asking about the whole stream.
const LOCAL_MS: i64 = 60_000;
/// Misses at one position, following near the live edge, before the searches (see
/// `quick_miss`).
pub(super) const QUICK_MISSES: u32 = 4;
/// How long the quick phase lasts at least: longer than a table stays hidden on an idle server
/// (6-25 ms on the real one, 100 ms on racs-lite by default).
const QUICK_WINDOW: std::time::Duration = std::time::Duration::from_millis(250);
/// Tables tried, going back from the start of the range, before reading from the epoch's start.
const KEYFRAME_TRIES: u32 = 24;

/// What one move produced.
pub(super) enum Step {
    /// Stored samples from stream offset `start` (int32).
    Run { start: u64, data: Vec<u8> },
    /// `len` bytes from `start` that the server lost.
    Gap {
        start: u64,
        len: u64,
        reason: String,
    },
    /// Nothing yet: ask again after a pause (why, for the error after too many).
    Retry(String),
    /// The cursor is at the end of the stored audio (in follow mode: of what is visible yet).
    End,
}

/// What trying a block read on its own as the head of a table gave.
enum Tried {
    Step(Step),
    /// Its table's run ends here, before the cursor.
    EndsAt(u64),
    No,
}

/// The outcome of reading a table's run.
enum Head {
    Run(Vec<u8>),
    Unstable(String),
}

impl RangeReader {
    fn w(&self) -> usize {
        self.tl.wide_bpf as usize
    }

    /// Whether blocks at this offset may still be in the in-memory table or a table being
    /// written, whose visibility changes between two requests.
    fn recent(&self, off: u64) -> bool {
        self.cfg.follow || self.size.saturating_sub(off) <= RECENT_BYTES
    }

    /// Following, within a second of the newest block: blocks are read one per request by
    /// their own key (each answer is exactly the block at the cursor, wherever it is filed).
    pub(super) fn live(&self, cur: Cursor) -> bool {
        self.cfg.follow
            && !self.counting
            && cur.unc == 0
            && self.size.saturating_sub(cur.off) <= self.tl.bps
    }

    /// Following near the live edge, the first misses at a position: a table handed over is
    /// hidden while written (6-25 ms on an idle real server), so only the cheap requests are
    /// made (the cursor's own key, the table the last blocks read most likely went to) before
    /// the searches.
    pub(super) fn quick_miss(&self, cur: Cursor) -> bool {
        self.live(cur) && self.misses < self.quick_misses()
    }

    /// How many misses the quick phase lasts: [`QUICK_WINDOW`] of pauses, at least
    /// [`QUICK_MISSES`].
    pub(super) fn quick_misses(&self) -> u32 {
        let per = self.cfg.retry_delay.as_millis().max(1);
        let n = (QUICK_WINDOW.as_millis() / per) as u32;
        n.max(QUICK_MISSES)
    }

    fn allowed_misses(&self) -> u32 {
        if self.cfg.follow {
            self.cfg.retries.saturating_mul(5)
        } else {
            self.cfg.retries
        }
    }

    /// The keys the block at the cursor can have.
    fn cand_keys(&self, cur: Cursor) -> (i64, i64) {
        (self.key(cur.off), self.key(cur.off + cur.unc))
    }

    /// No block of the epoch has this key (it lies after the newest block).
    fn no_block_keyed(&self, key: i64) -> bool {
        self.size < self.tl.bpf || key > self.key(self.size - self.tl.bpf)
    }

    /// The highest key a page from the cursor asks for: a page, or about one table when the
    /// run starts at a table's first block (`first`) and tables have been seen whole.
    fn upper(&self, kmax: i64, first: Option<i64>) -> i64 {
        let last = if self.size >= self.tl.bpf {
            self.key(self.size - self.tl.bpf)
        } else {
            kmax
        };
        let mut y = kmax.saturating_add(self.page_ms() - 1);
        if let (Some(k0), true) = (first, self.table_ms > 0) {
            y = y.min(k0 + self.table_ms + self.table_ms / 4 + 20);
        }
        // Blocks before the range (from a table start before it) are read in one go up to the
        // range's first page.
        if let Some(cur) = self.cursor {
            if self.next_out > cur.off + cur.unc {
                let target = self.key(self.next_out).saturating_add(self.page_ms() - 1);
                y = y.max(target);
            }
        }
        y.min(last).max(kmax)
    }

    fn missing(&self, off: u64, cause: String) -> ReadError {
        ReadError::Missing(format!(
            "{}: cannot read on from {}: {cause}; nothing from there on was delivered",
            self.who(),
            self.at(off)
        ))
    }

    /// Narrows the cursor once the key of its block is known exactly.
    fn learn_key(&mut self, key: i64) {
        let Some(cur) = self.cursor else { return };
        if cur.unc == 0 {
            return;
        }
        if let Some((lo, hi)) = self.tl.offsets_of_key(self.ref_ms, key) {
            let a = cur.off.max(lo);
            let b = (cur.off + cur.unc).min(hi);
            if a <= b {
                // The reader's offsets are estimates; only the uncertainty shrinks. Moving the
                // estimate would renumber samples already handed out.
                self.cursor = Some(Cursor {
                    off: cur.off,
                    unc: cur.unc.min(b - cur.off),
                });
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Locating the start.

    /// Puts the cursor at a block boundary at or before the first wanted byte.
    pub(super) async fn locate(&mut self) -> Result<(), ReadError> {
        let target = self.next_out;
        // Starting again inside what was read (a follower that lost its place): the newest
        // table run read before, at or before the target, starts at an offset that is known.
        let again = self
            .known
            .runs()
            .rev()
            .find(|r| r.kind == Kind::Head && r.start <= target)
            .copied();
        self.open_table = None;
        self.singles = false;
        self.misses = 0;
        if let Some(r) = again.filter(|_| self.cursor.is_some_and(|c| c.unc == 0)) {
            self.keyframe_at(r.start, r.name, r.first_key);
            return Ok(());
        }
        let near_start = target / self.tl.bpf
            <= u64::from(self.format.sample_rate) * self.page_ms() as u64 / 1000;
        if target == 0 || near_start {
            self.start_at(0, 0);
            return Ok(());
        }
        if target >= self.size {
            // Follow mode starting at the current end: the next block starts right there.
            self.start_at(self.size, self.key(self.size));
            return Ok(());
        }
        // A keyframe's offset is proven by counting from it to the stream's end; when the
        // stretch before the range is the shorter one (or the end keeps moving), count that.
        if self.cfg.follow || target <= self.size - target {
            self.start_at(0, 0);
            return Ok(());
        }
        let mut t = self.key(target);
        for _ in 0..KEYFRAME_TRIES {
            if t < self.ref_ms {
                break;
            }
            let Some((a, t1)) = self.largest_lo(t).await? else {
                break;
            };
            t = t1;
            // The blocks of `Q(a, t)` all have lo = a: the table named `a` (from its first block
            // with a key at or after `a`), or a block whose key is `a` filed under a later name.
            let own = self.qlen(a, a).await?;
            self.stats.fallbacks += 1;
            let k0 = if own > 0 {
                a
            } else {
                // The table was named by another stream's block: its first block of ours has
                // the smallest key c with Q(a, c) non-empty. That is only sure when no block
                // of ours has the key `a` itself (under a later name): else try an older table.
                if !self.no_block_keyed(a) && self.tl.offsets_of_key(self.ref_ms, a).is_some() {
                    t = a - 1;
                    continue;
                }
                self.smallest_hi(a, t).await?
            };
            let Some((lo, hi)) = self.tl.offsets_of_key(self.ref_ms, k0) else {
                t = k0 - 1;
                continue;
            };
            // Every offset the key allows must lie at or before the first wanted byte.
            if hi > target {
                t = k0 - 1;
                continue;
            }
            if lo == hi {
                self.keyframe_at(lo, a, k0);
                return Ok(());
            }
            // The key puts the block within a millisecond; counting to the stream's end says
            // where exactly, when that is less to read than the stretch before it.
            if self.size - lo < target {
                self.cursor = Some(Cursor {
                    off: lo,
                    unc: hi - lo,
                });
                self.known = Known::new(k0);
                self.open_table = Some(OpenTable {
                    name: a,
                    start: lo,
                    first_key: k0,
                    kind: Kind::Head,
                });
                if let Some(off) = self.count_to_end().await? {
                    self.keyframe_at(off, a, k0);
                    return Ok(());
                }
            }
            break;
        }
        // No table start found close enough: count from the stream's first byte.
        self.start_at(0, 0);
        Ok(())
    }

    /// A pass from a block boundary whose offset is known exactly; blocks with `lo` below
    /// `floor` are not known.
    fn start_at(&mut self, off: u64, floor: i64) {
        self.cursor = Some(Cursor { off, unc: 0 });
        self.known = Known::new(if off == 0 { self.ref_ms } else { floor });
        self.open_table = None;
        self.singles = false;
        self.misses = 0;
    }

    /// A pass from the first block of ours in the table named `name`, keyed `key`, whose
    /// offset is proven.
    fn keyframe_at(&mut self, off: u64, name: i64, key: i64) {
        self.start_at(off, key);
        self.open_table = Some(OpenTable {
            name,
            start: off,
            first_key: key,
            kind: Kind::Head,
        });
    }

    /// Where the block at the cursor really starts, when the cursor is known only to within
    /// `unc` bytes: the stream's size less every byte read from there to its end. `None` when
    /// that cannot be shown: a lost stretch on the way, a stream that grew meanwhile, answers
    /// that stayed ambiguous or kept changing. Leaves the reader's pass state undefined: the
    /// caller starts a new pass.
    async fn count_to_end(&mut self) -> Result<Option<u64>, ReadError> {
        let base = self.cursor.expect("located");
        let size = self.size;
        self.counting = true;
        self.misses = 0;
        let end = self.count_loop().await;
        self.counting = false;
        let Some(end) = end? else {
            return Ok(None);
        };
        if self.size != size {
            return Ok(None);
        }
        self.refresh_size().await?;
        let delta = size.checked_sub(end);
        trace!("count from {} (+{}) to {end} of {size}", base.off, base.unc);
        Ok(delta
            .filter(|d| *d <= base.unc && d.is_multiple_of(self.tl.bpf) && self.size == size)
            .map(|d| base.off + d))
    }

    /// The steps of a counting pass; the cursor's offset at the end, relative to its start.
    async fn count_loop(&mut self) -> Result<Option<u64>, ReadError> {
        loop {
            let cur = self.cursor.expect("located");
            if cur.off >= self.size {
                return Ok(Some(cur.off));
            }
            match self.step().await {
                Ok(Step::Run { .. }) => self.misses = 0,
                Ok(Step::Gap { .. }) => return Ok(None),
                Ok(Step::End) => return Ok(Some(cur.off)),
                Ok(Step::Retry(_)) => {
                    self.misses += 1;
                    self.stats.retries += 1;
                    if self.misses > self.cfg.retries {
                        return Ok(None);
                    }
                    let d = self.cfg.retry_delay;
                    self.pause(d).await;
                    self.refresh_size().await?;
                }
                Err(ReadError::Missing(why)) => {
                    trace!("count stopped: {why}");
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A table start at or before `t`, near it: the largest `a` in the last window
    /// `[w0, w1]` (going back from `t`, windows growing) for which `Q(a, w1)` holds anything,
    /// with `w1`. Probes over a window return only the first part of the tables named in it.
    async fn largest_lo(&mut self, t: i64) -> Result<Option<(i64, i64)>, ReadError> {
        let floor = self.ref_ms - self.tl.max_block_ms();
        let mut w1 = t;
        let mut width = 1000i64;
        let w0 = loop {
            if w1 < floor {
                return Ok(None);
            }
            let w0 = (w1 - width + 1).max(floor);
            let n = self.q(w0, w1).await?.len();
            self.stats.fallbacks += 1;
            if n > 0 {
                break w0;
            }
            w1 = w0 - 1;
            width = width.saturating_mul(2);
        };
        let (mut lo, mut hi) = (w0, w1 + 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let n = self.q(mid, w1).await?.len();
            self.stats.fallbacks += 1;
            if n > 0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(Some((lo, w1)))
    }

    /// The smallest `c` in `[a, t]` for which `Q(a, c)` holds anything (it does for `t`).
    async fn smallest_hi(&mut self, a: i64, t: i64) -> Result<i64, ReadError> {
        let (mut lo, mut hi) = (a - 1, t);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let n = self.q(a, mid).await?.len();
            self.stats.fallbacks += 1;
            if n > 0 {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Ok(hi)
    }

    /// What says whether the stretch from the cursor's block on is lost: the key of the next
    /// block the server has (the smallest hi among blocks with lo after the cursor's key), and
    /// the bytes of blocks whose hi (`g1`) or lo (`g2`) lies in the stretch, since every block
    /// keyed in it has one or the other there.
    async fn gap_evidence(
        &mut self,
        kmin: i64,
        kmax: i64,
    ) -> Result<(Option<i64>, u64, u64), ReadError> {
        let next = self.first_hi_after(kmax + 1).await?;
        let gap_to = next.unwrap_or(FAR);
        let g1 = {
            let a = self.qlen(0, gap_to - 1).await?;
            let b = self.qlen(0, kmin - 1).await?;
            a.saturating_sub(b)
        };
        let g2 = {
            let a = self.qlen(kmin, FAR).await?;
            let b = if gap_to >= FAR {
                0
            } else {
                self.qlen(gap_to, FAR).await?
            };
            a.saturating_sub(b)
        };
        self.stats.fallbacks += 4;
        Ok((next, g1, g2))
    }

    /// The smallest `c >= a` for which `Q(a, c)` holds anything, if any does.
    async fn first_hi_after(&mut self, a: i64) -> Result<Option<i64>, ReadError> {
        let mut empty = a - 1;
        let mut step = 1i64;
        let c = loop {
            let c = a.saturating_add(step - 1).min(FAR);
            let n = self.q(a, c).await?.len();
            self.stats.fallbacks += 1;
            if n > 0 {
                break c;
            }
            if c >= FAR {
                return Ok(None);
            }
            empty = c;
            step = step.saturating_mul(2);
        };
        let (mut lo, mut hi) = (empty, c);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let n = self.q(a, mid).await?.len();
            self.stats.fallbacks += 1;
            if n > 0 {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Ok(Some(hi))
    }

    // -----------------------------------------------------------------------------------------
    // Reading on.

    /// One move from the cursor.
    pub(super) async fn step(&mut self) -> Result<Step, ReadError> {
        let cur = self.cursor.expect("located");
        let (kmin, kmax) = self.cand_keys(cur);
        trace!(
            "step at {} (+{}) keys {}..{} open {:?} known max_lo {} floor {}",
            cur.off,
            cur.unc,
            kmin - self.ref_ms,
            kmax - self.ref_ms,
            self.open_table.map(|t| t.name - self.ref_ms),
            self.known.max_lo().saturating_sub(self.ref_ms),
            self.known.floor().saturating_sub(self.ref_ms)
        );
        // A table whose run went past the last answer's key bound.
        if let Some(t) = self.open_table {
            if let Some(s) = self.try_own_key(cur, kmin, kmax).await? {
                return Ok(s);
            }
            // Read again from the table's start: ask for twice as far each time, so a table
            // longer than a page is not read over and over.
            let y = self
                .upper(kmax, None)
                .max(t.first_key + 2 * (kmax - t.first_key) + self.page_ms());
            let last = if self.size >= self.tl.bpf {
                self.key(self.size - self.tl.bpf)
            } else {
                kmax
            };
            let y = y.min(last).max(kmax);
            match self.head(t.name, y, t.start).await? {
                Head::Run(p) => {
                    let end = t.start + self.tl.wide_to_stream(p.len());
                    if end > cur.off {
                        return Ok(self.accept(t.kind, t.name, t.first_key, t.start, p, Some(y)));
                    }
                    // The table ends at the cursor.
                    self.open_table = None;
                }
                Head::Unstable(why) => return Ok(Step::Retry(why)),
            }
        }
        if let Some(s) = self.try_own_key(cur, kmin, kmax).await? {
            return Ok(s);
        }
        // Blocks read one by one from the in-memory table end up, once that table is written,
        // in a table named after the first of them: when its own key shows it again, the table's
        // run from there may hold the block at the cursor.
        if let Some(s) = self.try_flushed_singles(cur).await? {
            return Ok(s);
        }
        self.singles = false;
        // After the quick phase, and again after each as long (the table may have been
        // hidden at the first try).
        if self.live(cur)
            && !self.quick_miss(cur)
            && self.misses.is_multiple_of(self.quick_misses())
        {
            if let Some(s) = self.reach_into_table(cur, kmin, kmax).await? {
                return Ok(s);
            }
        }
        if self.quick_miss(cur) {
            return Ok(Step::Retry(format!(
                "the block stamped {} is not visible (a table being written is hidden for a \
                 moment)",
                super::format_unix_ms(kmin)
            )));
        }
        // Following a live stream, a miss is most likely a table being written: look only where
        // it costs nothing (above every block already read), then wait. Otherwise look around
        // the block; near the newest blocks wait a while before looking everywhere, since a
        // table being written is hidden for up to about half a second on a loaded server.
        let waiting =
            (self.cfg.follow || self.recent(cur.off)) && self.misses < self.allowed_misses();
        let cheap = self.cfg.follow && waiting;
        let near = if cheap {
            self.known.max_lo() + 1
        } else {
            kmin - LOCAL_MS
        };
        if let Some((x, own)) = self.search_below(cur, kmin, kmax, near).await? {
            return self.read_head(cur, x, kmin, own).await;
        }
        if !cheap {
            if let Some(n) = self.search_above(cur, kmin, kmax, kmax + LOCAL_MS).await? {
                return self.read_tail(cur, n, kmin).await;
            }
        }
        // When the cursor may already be at the stream's end (its position is known to within
        // a millisecond), nothing there means the end.
        if cur.off + cur.unc >= self.size && self.probe_above(FAR, kmin, kmax).await? == 0 {
            return Ok(Step::End);
        }
        if waiting {
            return Ok(Step::Retry(format!(
                "the block stamped {} is not visible (a table being written is hidden for a \
                 moment)",
                super::format_unix_ms(kmin)
            )));
        }
        if self.probe_below(0, kmin, kmax).await? != Some(0) {
            if let Some((x, own)) = self.search_below(cur, kmin, kmax, 0).await? {
                return self.read_head(cur, x, kmin, own).await;
            }
        }
        if self.probe_above(FAR, kmin, kmax).await? != 0 {
            if let Some(n) = self.search_above(cur, kmin, kmax, FAR).await? {
                return self.read_tail(cur, n, kmin).await;
            }
        }
        self.hole(cur, kmin, kmax).await
    }

    /// Following near the live edge, the block at the cursor missed and no block read one by
    /// one names its table (a follower that started at the live edge, while the in-memory
    /// table held blocks from before its start): the table holding the block is named `x`
    /// before it (`search_below`). When `Q(x, x)` holds a block of this stream, that block is
    /// in the table named `x` (the in-memory table holds only blocks newer than the cursor's)
    /// and is the table's first of this stream, since no earlier block has a key at or after
    /// `x`. The table holds every block from it to the cursor's (a table takes consecutive
    /// arrivals), and `Q(x, k - 1)` holds exactly those, so the table's first block starts
    /// `|Q(x, k - 1)|` bytes before the cursor. The table's run is then read from there, as
    /// for a table read before.
    async fn reach_into_table(
        &mut self,
        cur: Cursor,
        kmin: i64,
        kmax: i64,
    ) -> Result<Option<Step>, ReadError> {
        if cur.unc != 0 || kmin != kmax {
            return Ok(None);
        }
        let block_ms = self
            .block_bytes()
            .map_or(0, |b| self.tl.bytes_to_ms_ceil(b));
        let back = (2000i64).max(64 * block_ms).max(2 * self.table_ms);
        let Some((x, _)) = self.search_below(cur, kmin, kmax, kmin - back).await? else {
            return Ok(None);
        };
        if x >= kmin {
            return Ok(None);
        }
        let first = self.q(x, x).await?;
        self.stats.fallbacks += 1;
        if first.is_empty() {
            return Ok(None);
        }
        let before = self.q(x, kmin - 1).await?;
        self.stats.fallbacks += 1;
        let len = self.tl.wide_to_stream(before.len());
        let Some(start) = cur.off.checked_sub(len) else {
            return Ok(None);
        };
        // Consistent with the timeline: the block there carries the key `x`, and the answer
        // before the cursor begins with it.
        if len == 0
            || self.key(start) != x
            || before.len() < first.len()
            || before[..first.len()] != first[..]
        {
            return Ok(None);
        }
        let y = self.upper(kmax, Some(x));
        match self.head(x, y, start).await? {
            Head::Run(p) => {
                let end = start + self.tl.wide_to_stream(p.len());
                if end <= cur.off || p.len() < before.len() || p[..before.len()] != before[..] {
                    return Ok(None);
                }
                trace!(
                    "follow: the cursor's block is in the table named {} from {start}",
                    x - self.ref_ms
                );
                self.singles = false;
                Ok(Some(self.accept(Kind::Head, x, x, start, p, Some(y))))
            }
            Head::Unstable(why) => Ok(Some(Step::Retry(why))),
        }
    }

    /// The runs of blocks read one by one after the last table read, newest first.
    fn singles_newest_first(&self) -> Vec<Run> {
        self.known
            .runs()
            .rev()
            .take_while(|r| r.kind == Kind::Single)
            .copied()
            .collect()
    }

    /// See `step`: the first of the blocks read one by one just before the cursor, when its
    /// own key returns it, heads a table whose run may go on past the cursor.
    async fn try_flushed_singles(&mut self, cur: Cursor) -> Result<Option<Step>, ReadError> {
        // Read alone, a stream's tables are named after its own blocks: the oldest of them,
        // the first block after the last table read, most likely names the table handed
        // over. A table that ends before the cursor is learnt (its blocks become its run), and
        // the block after it is tried next. While the table may still be hidden, that is all.
        if !self.cfg.follow {
            return self.newest_single_as_table(cur).await;
        }
        let mut jump: Option<u64> = None;
        for _ in 0..8 {
            let streak = self.singles_newest_first();
            // After a table was learnt, tables of the same length most likely follow: try the
            // newest block read one by one at a whole number of such tables after it first.
            let r = jump
                .and_then(|len| {
                    let base = streak.last()?.start;
                    streak
                        .iter()
                        .find(|r| len > 0 && (r.start - base).is_multiple_of(len))
                        .copied()
                })
                .or_else(|| streak.last().copied());
            let Some(r) = r else {
                return Ok(None);
            };
            match self.try_single_as_table(cur, r).await? {
                Tried::Step(s) => return Ok(Some(s)),
                Tried::EndsAt(end) => {
                    if !self.learn_table(r, end) {
                        break;
                    }
                    jump = Some(end - r.start);
                }
                Tried::No if jump.take().is_some() => continue,
                Tried::No => break,
            }
        }
        if self.quick_miss(cur) {
            return Ok(None);
        }
        // The newest of them whose own key returns it names the table that may hold the block
        // at the cursor; older ones name tables before it.
        let singles = self.singles_newest_first();
        for r in singles {
            match self.try_single_as_table(cur, r).await? {
                Tried::Step(s) => return Ok(Some(s)),
                Tried::EndsAt(_) => return Ok(None),
                Tried::No => continue,
            }
        }
        Ok(None)
    }

    /// Reading a range: the newest of the blocks read one by one whose own key returns it
    /// names the table that may hold the block at the cursor (older ones name tables before
    /// it).
    async fn newest_single_as_table(&mut self, cur: Cursor) -> Result<Option<Step>, ReadError> {
        let singles = self.singles_newest_first();
        for r in singles {
            let own = self.q(r.first_key, r.first_key).await?;
            self.stats.fallbacks += 1;
            if own.is_empty() || self.tl.wide_to_stream(own.len()) > r.len {
                continue;
            }
            let kmax = self.cand_keys(cur).1;
            let y = self.upper(kmax, Some(r.first_key));
            return match self.head(r.first_key, y, r.start).await? {
                Head::Run(p) => {
                    let end = r.start + self.tl.wide_to_stream(p.len());
                    if end <= cur.off || p[..own.len()] != own[..] {
                        return Ok(None);
                    }
                    self.singles = false;
                    Ok(Some(self.accept(
                        Kind::Head,
                        r.first_key,
                        r.first_key,
                        r.start,
                        p,
                        Some(y),
                    )))
                }
                Head::Unstable(why) => Ok(Some(Step::Retry(why))),
            };
        }
        Ok(None)
    }

    /// Whether the single block `r` heads a table (its own key returns it) whose run goes on
    /// past the cursor.
    async fn try_single_as_table(&mut self, cur: Cursor, r: Run) -> Result<Tried, ReadError> {
        let own = self.q(r.first_key, r.first_key).await?;
        self.stats.fallbacks += 1;
        if own.is_empty() || self.tl.wide_to_stream(own.len()) > r.len {
            return Ok(Tried::No);
        }
        let kmax = self.cand_keys(cur).1;
        let y = self.upper(kmax, Some(r.first_key));
        match self.head(r.first_key, y, r.start).await? {
            Head::Run(p) => {
                let end = r.start + self.tl.wide_to_stream(p.len());
                if p[..own.len()] != own[..] {
                    return Ok(Tried::No);
                }
                if end <= cur.off {
                    // The table ends before the cursor (its run stops below the key bound,
                    // which lies past the cursor's key).
                    return Ok(Tried::EndsAt(end));
                }
                self.singles = false;
                Ok(Tried::Step(self.accept(
                    Kind::Head,
                    r.first_key,
                    r.first_key,
                    r.start,
                    p,
                    Some(y),
                )))
            }
            Head::Unstable(why) => Ok(Tried::Step(Step::Retry(why))),
        }
    }

    /// The blocks read one by one from `r.start` to `end` are the run of the table named after
    /// `r`'s key (read whole, ending before the cursor): record them as that run.
    fn learn_table(&mut self, r: Run, end: u64) -> bool {
        let later: Vec<Run> = self
            .known
            .runs()
            .filter(|k| k.start >= end)
            .copied()
            .collect();
        let inside = self
            .known
            .runs()
            .filter(|k| k.start >= r.start && k.start < end)
            .all(|k| k.kind == Kind::Single && k.start + k.len <= end);
        if !inside || later.first().is_none_or(|k| k.start != end) {
            return false;
        }
        let last_key = self
            .known
            .runs()
            .filter(|k| k.start >= r.start && k.start < end)
            .map(|k| k.last_key)
            .max()
            .unwrap_or(r.last_key);
        let span = self.key(end) - r.first_key;
        self.table_ms = if span >= self.table_ms {
            span
        } else {
            (self.table_ms * 7 + span) / 8
        };
        self.known.drop_from(r.start);
        self.known.push(Run {
            start: r.start,
            len: end - r.start,
            name: r.first_key,
            first_key: r.first_key,
            last_key,
            kind: Kind::Head,
        });
        for k in later {
            self.known.push(k);
        }
        true
    }

    /// The block at the cursor when a request for its own key returns it (its table is named
    /// after it, or it is in the in-memory table); then the rest of that table's run.
    async fn try_own_key(
        &mut self,
        cur: Cursor,
        kmin: i64,
        kmax: i64,
    ) -> Result<Option<Step>, ReadError> {
        let mut hit: Option<(i64, Vec<u8>)> = None;
        for k in kmin..=kmax {
            // With an uncertain cursor, a key already held by a block read before is not ours.
            if kmin < kmax && self.known.may_have_key(k) {
                continue;
            }
            let data = self.q(k, k).await?;
            if data.is_empty() {
                continue;
            }
            if hit.is_some() {
                return Err(self.missing(
                    cur.off,
                    format!(
                        "blocks answer to both {} and {}, and the position of the last block read \
                         is known only to within a millisecond",
                        super::format_unix_ms(kmin),
                        super::format_unix_ms(kmax)
                    ),
                ));
            }
            hit = Some((k, data));
        }
        let Some((k, block)) = hit else {
            return Ok(None);
        };
        self.learn_key(k);
        let cur = self.cursor.expect("located");
        self.open_table = None;
        if self.singles || self.live(cur) {
            // The in-memory table: one block per key. Following near the live edge, the
            // cursor's block is most likely there too: reading it as a table's run would ask
            // twice more for nothing.
            return Ok(Some(self.accept(Kind::Single, k, k, cur.off, block, None)));
        }
        let y = self.upper(k, Some(k));
        match self.head(k, y, cur.off).await? {
            Head::Run(p) => {
                if p.len() < block.len() || p[..block.len()] != block[..] {
                    return Ok(Some(Step::Retry(
                        "a table's blocks changed between two requests".into(),
                    )));
                }
                if p.len() == block.len() {
                    self.singles = true;
                    return Ok(Some(self.accept(Kind::Single, k, k, cur.off, p, Some(y))));
                }
                Ok(Some(self.accept(Kind::Head, k, k, cur.off, p, Some(y))))
            }
            Head::Unstable(why) => Ok(Some(Step::Retry(why))),
        }
    }

    /// The run of the table named `x` from its first block with a key at or after `x` (at
    /// stream offset `start`), up to key `y`: the first `|Q(x, y)| - |Q(x + 1, y)|` bytes of
    /// `Q(x, y)`. Near the newest blocks `Q(x + 1, y)` is asked before and after, and both must
    /// agree, so that a table flushed or shown meanwhile cannot shift the split.
    async fn head(&mut self, x: i64, y: i64, start: u64) -> Result<Head, ReadError> {
        let recent = self.recent(start);
        let (a, b) = if recent {
            let b1 = self.q(x + 1, y).await?;
            let a = self.q(x, y).await?;
            let b2 = self.q(x + 1, y).await?;
            self.stats.fallbacks += 2;
            if b1 != b2 {
                return Ok(Head::Unstable(
                    "the server's answers changed while its newest tables were being written"
                        .into(),
                ));
            }
            (a, b1)
        } else {
            let a = self.q(x, y).await?;
            let b = self.q(x + 1, y).await?;
            self.stats.fallbacks += 1;
            (a, b)
        };
        let Some(p) = split::head(&a, b.len(), self.w()) else {
            return Ok(Head::Unstable(
                "an answer shrank when its range grew (a table was hidden meanwhile)".into(),
            ));
        };
        if a[p.len()..] != b[..] {
            return Ok(Head::Unstable(
                "two answers that must share their tail did not (a table was hidden or shown \
                 meanwhile)"
                    .into(),
            ));
        }
        Ok(Head::Run(p.to_vec()))
    }

    /// Records a run read from `start` (which may lie before the cursor when a table's run is
    /// read again) and moves the cursor to its end.
    fn accept(
        &mut self,
        kind: Kind,
        name: i64,
        first_key: i64,
        start: u64,
        data: Vec<u8>,
        y: Option<i64>,
    ) -> Step {
        let cur = self.cursor.expect("located");
        let len = self.tl.wide_to_stream(data.len());
        let end = start + len;
        // Blocks hold at least a millisecond: the last one starts that much before the end.
        let last_key =
            self.key((end + cur.unc).saturating_sub(self.format.min_chunk_bytes() as u64));
        let run = Run {
            start,
            len,
            name,
            first_key,
            last_key,
            kind,
        };
        if kind == Kind::Single && len >= self.tl.bpf {
            // One block exactly: the writer's block size, as a hint for polling.
            self.growth = Some(self.growth.map_or(len, |g| g.min(len)));
        }
        // A run read again from an earlier start replaces what it covers.
        self.known.drop_from(start);
        self.known.push(run);
        let next = Cursor {
            off: end,
            unc: cur.unc,
        };
        self.cursor = Some(next);
        // Cut by the key bound rather than by the table's end: the table may go on.
        self.open_table = match y {
            Some(y) if self.key(end + cur.unc) > y && end < self.size => Some(OpenTable {
                name,
                start,
                first_key,
                kind,
            }),
            _ => None,
        };
        if y.is_some() && self.open_table.is_none() && end < self.size && kind != Kind::Tail {
            let span = self.key(end) - first_key;
            self.table_ms = if span >= self.table_ms {
                span
            } else {
                (self.table_ms * 7 + span) / 8
            };
        }
        trace!(
            "  run {kind:?} name {} from {start} len {len}",
            name - self.ref_ms
        );
        Step::Run { start, data }
    }

    /// Reads the run of the table named `x`, found to hold the block at the cursor.
    async fn read_head(
        &mut self,
        cur: Cursor,
        x: i64,
        kmin: i64,
        own: Option<Vec<u8>>,
    ) -> Result<Step, ReadError> {
        // The table's run starts at its first block with a key at or after `x`; when an
        // earlier run came from the same table, that is where.
        let start = self
            .known
            .runs()
            .rev()
            .find(|r| r.name == x && r.kind != Kind::Tail)
            .map_or(cur.off, |r| r.start);
        let first_key = if start == cur.off { kmin } else { x };
        let kmax = self.cand_keys(cur).1;
        let y = self.upper(kmax, (start == cur.off).then_some(kmin));
        match self.head(x, y, start).await? {
            Head::Run(p) => {
                let end = start + self.tl.wide_to_stream(p.len());
                if end <= cur.off {
                    return Ok(Step::Retry(format!(
                        "the table filed under {} no longer shows the block",
                        super::format_unix_ms(x)
                    )));
                }
                if let Some(own) = own.filter(|_| start == cur.off) {
                    if p.len() < own.len() || p[..own.len()] != own[..] {
                        return Ok(Step::Retry(
                            "a table's blocks changed between two requests".into(),
                        ));
                    }
                }
                Ok(self.accept(Kind::Head, x, first_key, start, p, Some(y)))
            }
            Head::Unstable(why) => Ok(Step::Retry(why)),
        }
    }

    /// Reads the run of the table named `n`, after the cursor's block's key: the piece by which
    /// `Q(k, n)` exceeds `Q(k, n - 1)`, wherever it sits.
    async fn read_tail(&mut self, cur: Cursor, n: i64, kmin: i64) -> Result<Step, ReadError> {
        let recent = self.recent(cur.off);
        let short = self.q(kmin, n - 1).await?;
        let long = self.q(kmin, n).await?;
        self.stats.fallbacks += 1;
        if recent {
            let again = self.q(kmin, n - 1).await?;
            self.stats.fallbacks += 1;
            if again != short {
                return Ok(Step::Retry(
                    "the server's answers changed while its newest tables were being written"
                        .into(),
                ));
            }
        }
        // The table's run begins with the cursor's block: where that block alone fits
        // (`Q(kmax + 1, n)` lacks only it) narrows where the run can sit.
        let w = self.w();
        let outcome = match split::places(&long, &short, w) {
            None => Insertion::Inconsistent,
            Some((lo, hi)) => {
                let d = long.len() - short.len();
                match split::insertion(&long, &short, w) {
                    Insertion::Ambiguous { .. } => {
                        let kmax = self.cand_keys(cur).1;
                        let rest = self.q(kmax + 1, n).await?;
                        self.stats.fallbacks += 1;
                        match split::places(&long, &rest, w) {
                            Some((a, b)) => split::piece(&long, d, (lo.max(a), hi.min(b)), w),
                            None => Insertion::Inconsistent,
                        }
                    }
                    other => other,
                }
            }
        };
        let (piece, at) = match outcome {
            Insertion::Unique { piece, at } => (piece, at),
            Insertion::Ambiguous { places } => {
                return Err(self.missing(
                    cur.off,
                    format!(
                        "its blocks are filed under the later time {} and come back among \
                         others; {places} places fit both answers and give different audio",
                        super::format_unix_ms(n)
                    ),
                ))
            }
            Insertion::Nothing | Insertion::Inconsistent => {
                return Ok(Step::Retry(
                    "two answers that differ in one bound did not differ by one piece".into(),
                ))
            }
        };
        if !self.no_block_keyed(n) && !self.run_starts_the_piece(cur, n, &long, at).await? {
            return Err(self.missing(
                cur.off,
                format!(
                    "its blocks are filed under the later time {} (a table started by a stream \
                     written ahead of the clock), and a block of this stream may carry that very \
                     time, so no pair of answers can separate them",
                    super::format_unix_ms(n)
                ),
            ));
        }
        Ok(self.accept(Kind::Tail, n, kmin, cur.off, piece, None))
    }

    /// Whether the piece by which `Q(k, n)` (`long`) exceeds `Q(k, n - 1)`, found at the places
    /// `at`, is the run of the table named `n` alone. Blocks of ours keyed `n` would be part of
    /// it too: in the in-memory table (then `Q(n, n)` holds them) or in a table named before
    /// `n`, whose blocks come first in the answer, so the run would start after them. The run
    /// starts with the cursor's block, alone the difference between `Q(k, n)` and
    /// `Q(k + 1, n)`: when that block can sit nowhere after the piece's first place, nothing
    /// precedes it in the piece. Repetitive audio that lets the block sit in several places
    /// proves nothing.
    async fn run_starts_the_piece(
        &mut self,
        cur: Cursor,
        n: i64,
        long: &[u8],
        at: (usize, usize),
    ) -> Result<bool, ReadError> {
        if cur.unc != 0 {
            return Ok(false);
        }
        let k = self.key(cur.off);
        let keyed_n = self.qlen(n, n).await?;
        let rest = self.q(k + 1, n).await?;
        self.stats.fallbacks += 2;
        if keyed_n != 0 {
            return Ok(false);
        }
        Ok(split::places(long, &rest, self.w()).is_some_and(|(_, last)| last <= at.0))
    }

    /// The name of the table holding the block at the cursor, when it lies before the block's
    /// key: the largest `z` for which `Q(z, kmax)` holds the block. Probes above every known
    /// block's `lo` return at most the block itself; lower probes subtract what is known.
    async fn search_below(
        &mut self,
        cur: Cursor,
        kmin: i64,
        kmax: i64,
        limit: i64,
    ) -> Result<Option<(i64, Option<Vec<u8>>)>, ReadError> {
        let recent = self.recent(cur.off);
        let limit = limit.max(0);
        let mut empty = kmax + 1;
        let mut step = 1i64;
        let mut z = kmax;
        let found = loop {
            match self.probe_below(z, kmin, kmax).await? {
                Some(0) => {}
                Some(_) => break z,
                None => return Ok(None),
            }
            if z <= limit {
                return Ok(None);
            }
            empty = z;
            z = kmax.saturating_sub(step).max(limit);
            step = step.saturating_mul(2);
        };
        let (mut lo, mut hi) = (found, empty);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match self.probe_below(mid, kmin, kmax).await? {
                Some(0) => hi = mid,
                Some(_) => lo = mid,
                None => return Ok(None),
            }
        }
        if recent {
            // Ask both sides of the boundary again: near the newest blocks, a table that became
            // visible during the search would fake one.
            if self.probe_below(lo + 1, kmin, kmax).await? != Some(0)
                || self.probe_below(lo, kmin, kmax).await?.unwrap_or(0) == 0
            {
                return Ok(None);
            }
        }
        // Where nothing known is in the probe, its answer is the block itself: the run read
        // from that table must begin with it.
        let own = if self.known.in_window(lo, kmax) == Some(0) {
            self.stats.fallbacks += 1;
            Some(self.q(lo, kmax).await?)
        } else {
            None
        };
        Ok(Some((lo, own)))
    }

    /// Bytes of unknown blocks in `Q(z, kmax)` with `hi` in `[kmin, kmax]`: the block at the
    /// cursor if its table's name lies in `[z, kmax]`. `None` when the probe cannot tell.
    async fn probe_below(
        &mut self,
        z: i64,
        kmin: i64,
        kmax: i64,
    ) -> Result<Option<u64>, ReadError> {
        self.stats.fallbacks += 1;
        if let Some(known) = self.known.in_window(z, kmax) {
            let n = self.qlen(z, kmax).await?;
            return Ok(n.checked_sub(known));
        }
        // Below what is known: only blocks whose hi is the cursor's key can be it.
        let long = self.qlen(z, kmax).await?;
        let short = self.qlen(z, kmin - 1).await?;
        self.stats.fallbacks += 1;
        let Some(known) = self.known.in_hi_window(z, kmin, kmax) else {
            return Ok(None);
        };
        Ok(long.checked_sub(short).and_then(|d| d.checked_sub(known)))
    }

    /// The name of the table holding the block at the cursor, when it lies after the block's
    /// key: the smallest `c` for which the blocks with `lo` in `[kmin, kmax]` and `hi <= c`
    /// are not empty.
    async fn search_above(
        &mut self,
        cur: Cursor,
        kmin: i64,
        kmax: i64,
        cap: i64,
    ) -> Result<Option<i64>, ReadError> {
        let recent = self.recent(cur.off);
        let mut empty = kmax;
        let mut step = 1i64;
        let mut c;
        loop {
            c = kmax.saturating_add(step).min(cap);
            if self.probe_above(c, kmin, kmax).await? > 0 {
                break;
            }
            empty = c;
            if c >= cap {
                return Ok(None);
            }
            step = step.saturating_mul(2);
        }
        let (mut lo, mut hi) = (empty, c);
        let mut block = 0;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let n = self.probe_above(mid, kmin, kmax).await?;
            if n > 0 {
                hi = mid;
                block = n;
            } else {
                lo = mid;
            }
        }
        if block == 0 || recent {
            // Ask both sides of the boundary again: near the newest blocks, a table that became
            // visible during the search would fake one.
            block = self.probe_above(hi, kmin, kmax).await?;
            if block == 0 || self.probe_above(hi - 1, kmin, kmax).await? != 0 {
                return Ok(None);
            }
        }
        Ok(Some(hi))
    }

    /// Bytes of blocks with `lo` in `[kmin, kmax]` and `hi <= c`.
    async fn probe_above(&mut self, c: i64, kmin: i64, kmax: i64) -> Result<u64, ReadError> {
        let long = self.qlen(kmin, c).await?;
        let short = self.qlen(kmax + 1, c).await?;
        self.stats.fallbacks += 2;
        Ok(long.saturating_sub(short))
    }

    /// Nothing found for the block at the cursor: prove that the server lost it and the blocks
    /// after it up to the next one it has, and report that stretch as a gap.
    async fn hole(&mut self, cur: Cursor, kmin: i64, kmax: i64) -> Result<Step, ReadError> {
        if self.counting || cur.unc != 0 {
            // A counting pass cannot tell how much was lost: it ends here.
            return Ok(Step::Gap {
                start: cur.off,
                len: 0,
                reason: String::new(),
            });
        }
        let size = self.size;
        let first = self.gap_evidence(kmin, kmax).await?;
        // Tables being written are hidden too, and a fast import leaves a backlog of them that
        // land one after the other: the same evidence must hold after waiting that out, or the
        // stretch is read again.
        let d = self.cfg.retry_delay * self.cfg.retries.max(1);
        self.pause(d).await;
        let (next, g1, g2) = self.gap_evidence(kmin, kmax).await?;
        if (next, g1, g2) != first {
            return Ok(Step::Retry(
                "blocks appeared while the reader checked whether the server lost them".into(),
            ));
        }
        let gap_to = next.unwrap_or(FAR);
        let known_hi = self
            .known
            .in_hi_window(0, kmin, gap_to - 1)
            .unwrap_or(u64::MAX);
        if g1 != known_hi || g2 != 0 {
            return Err(self.missing(
                cur.off,
                "the block there is in none of the server's answers, yet other blocks with \
                 times in the same stretch are, filed where the reader cannot order them"
                    .into(),
            ));
        }
        // Where the next block starts: its key puts it within a millisecond; counting from it
        // to the stream's end says where exactly.
        let gap_end = match next {
            None => size,
            Some(k) => {
                let Some((lo, hi)) = self.tl.offsets_of_key(self.ref_ms, k) else {
                    return Err(self.missing(
                        cur.off,
                        format!(
                            "the next block the server has is stamped {}, a time no sample of \
                             this stream can have",
                            super::format_unix_ms(k)
                        ),
                    ));
                };
                if lo == hi {
                    lo
                } else if self.cfg.follow {
                    return Err(self.missing(
                        cur.off,
                        format!(
                            "blocks are lost there, and the next block the server has, stamped \
                             {}, is placed only to within a millisecond by its time, while the \
                             stream is still being written; read the range again once it is \
                             finished",
                            super::format_unix_ms(k)
                        ),
                    ));
                } else {
                    self.cursor = Some(Cursor {
                        off: lo,
                        unc: hi - lo,
                    });
                    self.known = Known::new(k);
                    self.open_table = None;
                    self.singles = false;
                    let counted = Box::pin(self.count_to_end()).await?;
                    self.cursor = Some(cur);
                    match counted {
                        Some(off) => off,
                        None => {
                            return Err(self.missing(
                                cur.off,
                                format!(
                                    "blocks are lost there, and where the next block the server \
                                     has (stamped {}) starts cannot be proven by counting from \
                                     it to the stream's end",
                                    super::format_unix_ms(k)
                                ),
                            ))
                        }
                    }
                }
            }
        };
        if gap_end <= cur.off || gap_end > size {
            return Err(self.missing(
                cur.off,
                format!(
                    "the next block the server has is stamped {}, which does not fit the stream's \
                     length",
                    super::format_unix_ms(next.unwrap_or(kmax))
                ),
            ));
        }
        let reason = format!(
            "{}: the server lost {:.3} s of audio from {} ({} bytes)",
            self.who(),
            (gap_end - cur.off) as f64 / self.tl.bps as f64,
            self.at(cur.off),
            gap_end - cur.off
        );
        self.cursor = Some(Cursor {
            off: gap_end,
            unc: 0,
        });
        self.known = Known::new(next.unwrap_or(FAR));
        self.open_table = None;
        self.singles = false;
        Ok(Step::Gap {
            start: cur.off,
            len: gap_end - cur.off,
            reason,
        })
    }
}
