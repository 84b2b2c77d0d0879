//! What one writer stored, and where: the stream's *epochs* (a reference time, and the server
//! size from which this writer's blocks count) and runs of equal blocks in arrival order. Pure
//! arithmetic, no I/O: the writer keeps it up to date, and the ground-truth probes after a
//! server failure read it to know how many bytes of their own a given EXTRACT must return.
//!
//! The server keys the block appended after `size_before` bytes at
//! `ref + trunc(size_before * 1000 / bytes_per_second)` (contract section 5), so a block's key
//! follows from its epoch's `ref` and the server size before it. A kill makes the server start a
//! new epoch (a new `ref` at the next frame); a SHUTDOWN keeps the epoch and its size, holes
//! included.
//!
//! Blocks are kept as runs (same epoch, same length, consecutive offsets and input), so a
//! steady stream of days costs a few runs, not a record per block.

use crate::client::frame::StreamFormat;

/// One reference time of the stream during this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    /// The stream's `ref` (epoch ms), once read back from the server.
    pub ref_ms: Option<i64>,
    /// Wall-clock ms when this writer sent the epoch's first frame: the server sets `ref` on
    /// arrival, so it is a close lower bound while `ref_ms` is unknown.
    pub first_sent_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    Present,
    /// The server lost it (found by the probes after a failure).
    Lost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    epoch: usize,
    /// Server size before the run's first block.
    offset0: u64,
    /// Bytes of the writer's input before the run's first block.
    input0: u64,
    len: u32,
    count: u64,
    state: BlockState,
}

/// One block of the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub epoch: usize,
    /// Server size before it (the offset its key comes from).
    pub offset: u64,
    /// Bytes of the writer's input before it.
    pub input: u64,
    pub len: u32,
    pub key: i64,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    format: StreamFormat,
    epochs: Vec<Epoch>,
    runs: Vec<Run>,
    /// Whether blocks written before this run may exist (the stream was not created by it).
    foreign_before: bool,
}

impl Ledger {
    /// A ledger for a stream of `format`; `created`: this writer created the stream, so every
    /// block in it is its own.
    pub fn new(format: StreamFormat, created: bool) -> Self {
        Ledger {
            format,
            epochs: Vec::new(),
            runs: Vec::new(),
            foreign_before: !created,
        }
    }

    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// Starts a new epoch (the first one, or after a server restart) and returns its index.
    pub fn begin_epoch(&mut self, ref_ms: Option<i64>) -> usize {
        self.epochs.push(Epoch {
            ref_ms,
            first_sent_ms: None,
        });
        self.epochs.len() - 1
    }

    /// The epoch new blocks go to.
    pub fn current(&self) -> usize {
        self.epochs.len().saturating_sub(1)
    }

    pub fn epoch(&self, i: usize) -> &Epoch {
        &self.epochs[i]
    }

    pub fn epoch_count(&self) -> usize {
        self.epochs.len()
    }

    pub fn set_ref(&mut self, epoch: usize, ref_ms: i64) {
        self.epochs[epoch].ref_ms = Some(ref_ms);
    }

    /// Notes that a frame of the current epoch went out at wall-clock `now_ms`.
    pub fn note_sent(&mut self, now_ms: i64) {
        if let Some(e) = self.epochs.last_mut() {
            e.first_sent_ms.get_or_insert(now_ms);
        }
    }

    /// The key the server gives a block of `epoch` appended after `offset` bytes (with the
    /// send time standing in for an unknown `ref`).
    pub fn key(&self, epoch: usize, offset: u64) -> i64 {
        let e = &self.epochs[epoch];
        let r = e.ref_ms.or(e.first_sent_ms).unwrap_or(0);
        self.format.block_time_ms(r, offset)
    }

    /// Bytes of a block of `len` bytes that EXTRACT returns: whole sample frames only.
    pub fn visible(&self, len: u64) -> u64 {
        let bpf = self.format.bytes_per_frame() as u64;
        len - len % bpf
    }

    /// Records an acknowledged block of the current epoch.
    pub fn push(&mut self, offset: u64, input: u64, len: u32) {
        let epoch = self.current();
        if let Some(last) = self.runs.last_mut() {
            if last.epoch == epoch
                && last.len == len
                && last.state == BlockState::Present
                && last.offset0 + last.count * u64::from(len) == offset
                && last.input0 + last.count * u64::from(len) == input
            {
                last.count += 1;
                return;
            }
        }
        self.runs.push(Run {
            epoch,
            offset0: offset,
            input0: input,
            len,
            count: 1,
            state: BlockState::Present,
        });
    }

    /// Whether the stream may hold blocks written before this run.
    pub fn foreign_before(&self) -> bool {
        self.foreign_before
    }

    /// The key below which the stream may hold blocks this writer did not write: its first
    /// block's, when the stream was not created by this writer (`None` otherwise).
    pub fn pre_floor(&self) -> Option<i64> {
        if !self.foreign_before {
            return None;
        }
        self.runs.first().map(|r| self.key(r.epoch, r.offset0))
    }

    fn block_of(&self, run: &Run, j: u64) -> Block {
        let offset = run.offset0 + j * u64::from(run.len);
        Block {
            epoch: run.epoch,
            offset,
            input: run.input0 + j * u64::from(run.len),
            len: run.len,
            key: self.key(run.epoch, offset),
        }
    }

    /// The present blocks of the current epoch, newest last (at most `max` of them).
    pub fn tail(&self, max: usize) -> Vec<Block> {
        let epoch = self.current();
        let mut out = Vec::new();
        for run in self.runs.iter().rev() {
            if run.epoch != epoch {
                break;
            }
            if run.state != BlockState::Present {
                continue;
            }
            let mut j = run.count;
            while j > 0 && out.len() < max {
                j -= 1;
                out.push(self.block_of(run, j));
            }
            if out.len() >= max {
                break;
            }
        }
        out.reverse();
        out
    }

    /// Present blocks of the current epoch.
    pub fn current_count(&self) -> u64 {
        let epoch = self.current();
        self.runs
            .iter()
            .rev()
            .take_while(|r| r.epoch == epoch)
            .filter(|r| r.state == BlockState::Present)
            .map(|r| r.count)
            .sum()
    }

    /// Visible bytes of the present blocks whose key is at least `lo`, over every epoch.
    pub fn expected_from(&self, lo: i64) -> u64 {
        let mut total = 0;
        for run in &self.runs {
            if run.state != BlockState::Present || run.count == 0 {
                continue;
            }
            // Keys grow with j inside a run: find the first block at or after `lo`.
            let (mut a, mut b) = (0u64, run.count);
            while a < b {
                let mid = a + (b - a) / 2;
                if self.key(run.epoch, run.offset0 + mid * u64::from(run.len)) >= lo {
                    b = mid;
                } else {
                    a = mid + 1;
                }
            }
            total += (run.count - a) * self.visible(u64::from(run.len));
        }
        total
    }

    /// The key of the newest present block of any epoch.
    pub fn last_present_key(&self) -> Option<i64> {
        self.runs
            .iter()
            .filter(|r| r.state == BlockState::Present && r.count > 0)
            .map(|r| self.key(r.epoch, r.offset0 + (r.count - 1) * u64::from(r.len)))
            .max()
    }

    /// Marks the newest `n` present blocks of the current epoch as lost and returns them,
    /// oldest first.
    pub fn mark_lost_tail(&mut self, n: u64) -> Vec<Block> {
        let epoch = self.current();
        let mut left = n;
        let mut lost = Vec::new();
        let mut i = self.runs.len();
        while left > 0 && i > 0 {
            i -= 1;
            if self.runs[i].epoch != epoch {
                break;
            }
            if self.runs[i].state != BlockState::Present {
                continue;
            }
            let run = self.runs[i].clone();
            let take = left.min(run.count);
            for j in (run.count - take..run.count).rev() {
                lost.push(self.block_of(&run, j));
            }
            if take == run.count {
                self.runs[i].state = BlockState::Lost;
            } else {
                self.runs[i].count -= take;
                let mut tail = run.clone();
                tail.count = take;
                tail.offset0 += (run.count - take) * u64::from(run.len);
                tail.input0 += (run.count - take) * u64::from(run.len);
                tail.state = BlockState::Lost;
                self.runs.insert(i + 1, tail);
            }
            left -= take;
        }
        lost.reverse();
        lost
    }
}

impl Ledger {
    /// Visible bytes of the present blocks whose key lies in `[lo, hi]`, over every epoch.
    pub fn expected_between(&self, lo: i64, hi: i64) -> u64 {
        if hi < lo {
            return 0;
        }
        self.expected_from(lo) - self.expected_from(hi.saturating_add(1))
    }

    /// Marks the present blocks of the current epoch that start at the server offsets in
    /// `offsets` as lost (anywhere in the epoch, not only its newest blocks) and returns them,
    /// oldest first.
    pub fn mark_lost(&mut self, offsets: &[u64]) -> Vec<Block> {
        let epoch = self.current();
        let mut lost = Vec::new();
        let mut out: Vec<Run> = Vec::with_capacity(self.runs.len() + 2 * offsets.len());
        for run in std::mem::take(&mut self.runs) {
            let len = u64::from(run.len);
            let end = run.offset0 + run.count * len;
            let hit = run.epoch == epoch
                && run.state == BlockState::Present
                && offsets.iter().any(|&o| o >= run.offset0 && o < end);
            if !hit {
                out.push(run);
                continue;
            }
            // Cut the run into pieces of equal state.
            let mut j = 0;
            while j < run.count {
                let offset = run.offset0 + j * len;
                let gone = offsets.contains(&offset);
                let mut k = j + 1;
                while k < run.count && offsets.contains(&(run.offset0 + k * len)) == gone {
                    k += 1;
                }
                let piece = Run {
                    epoch: run.epoch,
                    offset0: offset,
                    input0: run.input0 + j * len,
                    len: run.len,
                    count: k - j,
                    state: if gone {
                        BlockState::Lost
                    } else {
                        BlockState::Present
                    },
                };
                if gone {
                    for m in 0..piece.count {
                        lost.push(self.block_of(&piece, m));
                    }
                }
                out.push(piece);
                j = k;
            }
        }
        self.runs = out;
        lost
    }
}

/// Where the loss sits, from one probe: `missing` bytes of the candidates whose key is at
/// least `lo` were not returned. Losses are the newest blocks (a server loses its in-memory
/// table and the tables it was still writing), so the missing bytes must be exactly a suffix
/// of the candidates (oldest first). Returns how many trailing candidates are missing, or
/// `None` when no suffix fits.
pub fn missing_suffix(candidates: &[(i64, u64)], lo: i64, missing: u64) -> Option<usize> {
    if missing == 0 {
        return Some(0);
    }
    let mut sum = 0;
    for (n, &(key, visible)) in candidates.iter().rev().enumerate() {
        if key < lo {
            return None;
        }
        sum += visible;
        if sum == missing {
            // Empty candidates right before the suffix cannot be told apart; count them
            // as present.
            return Some(n + 1);
        }
        if sum > missing {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const FMT: StreamFormat = StreamFormat {
        sample_rate: 8000,
        channels: 1,
        bit_depth: 16,
    };

    #[test]
    fn keys_follow_the_servers_formula_per_epoch() {
        let mut l = Ledger::new(FMT, true);
        l.begin_epoch(Some(1_000_000));
        for k in 0..5u64 {
            l.push(k * 1600, k * 1600, 1600);
        }
        assert_eq!(l.runs.len(), 1, "one run for equal consecutive blocks");
        let tail = l.tail(10);
        assert_eq!(tail.len(), 5);
        assert_eq!(tail[0].key, 1_000_000);
        assert_eq!(tail[4].key, 1_000_400);
        assert_eq!(l.expected_from(1_000_100), 4 * 1600);
        assert_eq!(l.expected_from(1_000_101), 3 * 1600);
        assert_eq!(l.expected_from(0), 5 * 1600);
        // A new epoch (a kill): its own ref, offsets from 0.
        l.begin_epoch(None);
        l.note_sent(2_000_000);
        l.push(0, 8000, 1600);
        assert_eq!(l.tail(10).len(), 1, "the tail is the current epoch's");
        assert_eq!(l.key(1, 1600), 2_000_100, "the send time stands in for ref");
        l.set_ref(1, 2_000_003);
        assert_eq!(l.tail(1)[0].key, 2_000_003);
        assert_eq!(l.expected_from(1_000_400), 2 * 1600);
    }

    #[test]
    fn lost_tails_split_runs_and_leave_the_rest() {
        let mut l = Ledger::new(FMT, true);
        l.begin_epoch(Some(0));
        for k in 0..6u64 {
            l.push(k * 1600, k * 1600, 1600);
        }
        let lost = l.mark_lost_tail(2);
        assert_eq!(
            lost.iter().map(|b| b.offset).collect::<Vec<_>>(),
            vec![6400, 8000]
        );
        assert_eq!(l.current_count(), 4);
        assert_eq!(l.expected_from(0), 4 * 1600);
        // A SHUTDOWN keeps the epoch: the next block continues after the lost ones' offsets.
        l.push(9600, 9600, 1600);
        assert_eq!(l.tail(10).len(), 5);
        assert_eq!(l.tail(1)[0].key, 600);
        // Blocks with a partial sample frame: EXTRACT drops the partial frame.
        l.push(11200, 11200, 801);
        assert_eq!(l.expected_from(650), 800);
    }

    #[test]
    fn blocks_lost_in_the_middle_split_runs_and_keep_the_others() {
        let mut l = Ledger::new(FMT, true);
        l.begin_epoch(Some(0));
        for k in 0..8u64 {
            l.push(k * 1600, k * 1600, 1600);
        }
        // A table written after the one before it was lost (the server's flushes finish in
        // any order): blocks 2 and 3 gone, 4 and 5 kept, 6 and 7 gone.
        let lost = l.mark_lost(&[3200, 4800, 9600, 11200]);
        assert_eq!(
            lost.iter().map(|b| (b.offset, b.key)).collect::<Vec<_>>(),
            vec![(3200, 200), (4800, 300), (9600, 600), (11200, 700)]
        );
        assert_eq!(l.current_count(), 4);
        assert_eq!(l.expected_from(0), 4 * 1600);
        assert_eq!(l.expected_between(100, 400), 2 * 1600);
        assert_eq!(
            l.tail(10).iter().map(|b| b.offset).collect::<Vec<_>>(),
            vec![0, 1600, 6400, 8000]
        );
        assert!(l.mark_lost(&[3200]).is_empty(), "already lost");
    }

    #[test]
    fn the_pre_floor_is_the_first_key_of_a_stream_not_created_here() {
        let mut l = Ledger::new(FMT, false);
        l.begin_epoch(Some(5000));
        l.push(16000, 0, 1600);
        assert_eq!(l.pre_floor(), Some(6000));
        let mut own = Ledger::new(FMT, true);
        own.begin_epoch(Some(5000));
        own.push(0, 0, 1600);
        assert_eq!(own.pre_floor(), None);
    }

    /// Random histories (new timelines, blocks of random sizes, losses of the newest blocks)
    /// against a plain list of blocks.
    #[test]
    fn runs_agree_with_a_list_of_blocks() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for history in 0..200 {
            let created = history % 2 == 0;
            let mut l = Ledger::new(FMT, created);
            // (epoch, offset, input, len, present) per block, in arrival order.
            let mut model: Vec<(usize, u64, u64, u32, bool)> = Vec::new();
            let mut refs: Vec<i64> = Vec::new();
            let (mut size, mut input) = (0u64, 0u64);
            for _ in 0..60 {
                match rnd(10) {
                    0 => {
                        let r = 1_000_000 + rnd(100_000) as i64;
                        l.begin_epoch(Some(r));
                        refs.push(r);
                        size = rnd(3) * 1600;
                    }
                    1 if !refs.is_empty() => {
                        let n = rnd(4);
                        l.mark_lost_tail(n);
                        let e = refs.len() - 1;
                        let mut left = n;
                        for b in model.iter_mut().rev() {
                            if left == 0 || b.0 != e {
                                break;
                            }
                            if b.4 {
                                b.4 = false;
                                left -= 1;
                            }
                        }
                    }
                    _ if !refs.is_empty() => {
                        let len = if rnd(4) == 0 {
                            16 * (1 + rnd(200))
                        } else {
                            1600
                        } as u32;
                        l.push(size, input, len);
                        model.push((refs.len() - 1, size, input, len, true));
                        size += u64::from(len);
                        input += u64::from(len) + if rnd(8) == 0 { 320 } else { 0 };
                    }
                    _ => {}
                }
            }
            let key = |e: usize, off: u64| FMT.block_time_ms(refs[e], off);
            for lo in [0, 1_000_000, 1_000_050, 1_030_000, 1_060_000, 1_200_000] {
                let want: u64 = model
                    .iter()
                    .filter(|b| b.4 && key(b.0, b.1) >= lo)
                    .map(|b| u64::from(b.3) - u64::from(b.3) % 2)
                    .sum();
                assert_eq!(l.expected_from(lo), want, "history {history}, lo {lo}");
            }
            let current = refs.len().saturating_sub(1);
            let tail: Vec<Block> = model
                .iter()
                .filter(|b| b.4 && b.0 == current && !refs.is_empty())
                .map(|b| Block {
                    epoch: b.0,
                    offset: b.1,
                    input: b.2,
                    len: b.3,
                    key: key(b.0, b.1),
                })
                .collect();
            assert_eq!(l.tail(usize::MAX), tail, "history {history}");
            assert_eq!(l.current_count(), tail.len() as u64);
            let last = model.iter().filter(|b| b.4).map(|b| key(b.0, b.1)).max();
            assert_eq!(l.last_present_key(), last, "history {history}");
            let first = model.first().map(|b| key(b.0, b.1));
            assert_eq!(l.pre_floor(), if created { None } else { first });
        }
    }

    #[test]
    fn missing_bytes_must_be_a_suffix() {
        let c = [(0, 100), (10, 100), (20, 50), (30, 100)];
        assert_eq!(missing_suffix(&c, 0, 0), Some(0));
        assert_eq!(missing_suffix(&c, 0, 100), Some(1));
        assert_eq!(missing_suffix(&c, 0, 150), Some(2));
        assert_eq!(missing_suffix(&c, 0, 250), Some(3));
        assert_eq!(missing_suffix(&c, 0, 350), Some(4));
        assert_eq!(missing_suffix(&c, 0, 120), None, "not a block boundary");
        assert_eq!(missing_suffix(&c, 15, 250), None, "reaches below the probe");
        assert_eq!(missing_suffix(&c, 0, 400), None, "more than there is");
    }
}
