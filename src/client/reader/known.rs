// SPDX-License-Identifier: MPL-2.0
//! What the reader knows about the blocks it has read: runs of consecutive blocks, each from one
//! table, with what that says about the blocks' `lo` and `hi` (see `split`). A probe
//! `Q(z, c)` made to find where the next block is filed also returns known blocks; this module
//! says how many bytes of them, or that it cannot tell. Pure bookkeeping, no I/O.

use std::collections::VecDeque;

/// How a run was read, which fixes the `lo` and `hi` of its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Blocks of the table named `name`, with keys at or after the name: `lo = name`,
    /// `hi = key`.
    Head,
    /// Blocks of the table named `name`, with keys before the name (a table named after a later
    /// time): `lo = key`, `hi = name`.
    Tail,
    /// One block that a query for its own key returns: its table is named after it, or it is
    /// in the in-memory table. `lo = hi = key`.
    Single,
}

/// Consecutive blocks of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Stream offset of the first block (in the epoch).
    pub start: u64,
    /// Stream bytes.
    pub len: u64,
    /// The table's name (for `Single`, the block's key).
    pub name: i64,
    /// The key of the first block, exactly.
    pub first_key: i64,
    /// No block of the run has a key after this.
    pub last_key: i64,
    pub kind: Kind,
}

impl Run {
    /// The largest `lo` of the run's blocks.
    fn max_lo(&self) -> i64 {
        match self.kind {
            Kind::Head => self.name,
            Kind::Tail => self.last_key,
            Kind::Single => self.first_key,
        }
    }

    /// Bytes of the run in `Q(z, c)`, or `None` when only some of its blocks are and the split
    /// between them is not known.
    fn in_window(&self, z: i64, c: i64) -> Option<u64> {
        let all = Some(self.len);
        match self.kind {
            Kind::Head => {
                if z > self.name || c < self.first_key {
                    Some(0)
                } else if c >= self.last_key {
                    all
                } else {
                    None
                }
            }
            Kind::Tail => {
                if c < self.name || z > self.last_key {
                    Some(0)
                } else if z <= self.first_key {
                    all
                } else {
                    None
                }
            }
            // A block read on its own may have been in the in-memory table; once that table
            // is written out it takes the name of its first entry, at or before this block's
            // key: below the key, whether it counts is not known.
            Kind::Single => {
                if z > self.first_key || c < self.first_key {
                    Some(0)
                } else {
                    None
                }
            }
        }
    }
}

/// The runs read in one pass over an epoch, oldest first.
#[derive(Debug, Clone)]
pub struct Known {
    runs: VecDeque<Run>,
    /// Blocks with `lo` below this are not all known: blocks before the pass started, and runs
    /// forgotten to bound memory.
    floor: i64,
    /// The most runs kept.
    cap: usize,
}

impl Known {
    /// A pass that starts with nothing known about blocks whose `lo` is below `floor`.
    pub fn new(floor: i64) -> Known {
        Known {
            runs: VecDeque::new(),
            floor,
            cap: 4096,
        }
    }

    pub fn floor(&self) -> i64 {
        self.floor
    }

    pub fn push(&mut self, run: Run) {
        if self.runs.len() == self.cap {
            if let Some(old) = self.runs.pop_front() {
                self.floor = self.floor.max(old.max_lo().saturating_add(1));
            }
        }
        self.runs.push_back(run);
    }

    pub fn last(&self) -> Option<&Run> {
        self.runs.back()
    }

    /// Forgets the runs that start at or after `start` (a run read again from there covers them).
    pub fn drop_from(&mut self, start: u64) {
        while self.runs.back().is_some_and(|r| r.start >= start) {
            self.runs.pop_back();
        }
    }

    /// Replaces the newest run (the same table's run, read again further).
    pub fn replace_last(&mut self, run: Run) {
        if let Some(last) = self.runs.back_mut() {
            *last = run;
        }
    }

    pub fn runs(&self) -> impl DoubleEndedIterator<Item = &Run> {
        self.runs.iter()
    }

    /// Every known block has a `lo` at or below this.
    pub fn max_lo(&self) -> i64 {
        self.runs
            .iter()
            .map(Run::max_lo)
            .max()
            .unwrap_or(i64::MIN)
            .max(self.floor.saturating_sub(1))
    }

    /// Bytes of known blocks in `Q(z, c)`; `None` when that cannot be told: `z` is below the
    /// floor (unknown blocks may count), or it splits a run whose blocks' keys are not known.
    pub fn in_window(&self, z: i64, c: i64) -> Option<u64> {
        if z < self.floor {
            return None;
        }
        self.runs.iter().map(|r| r.in_window(z, c)).sum()
    }

    /// Bytes of known blocks with `lo >= z` and `hi` in `[c0, c1]`, or `None` when a run has
    /// blocks on both sides and the split is not known. Unlike `in_window` this does not answer
    /// for blocks below the floor; the caller accounts for them.
    pub fn in_hi_window(&self, z: i64, c0: i64, c1: i64) -> Option<u64> {
        self.runs
            .iter()
            .map(|r| match r.kind {
                Kind::Head => {
                    if z > r.name || r.last_key < c0 || r.first_key > c1 {
                        Some(0)
                    } else if c0 <= r.first_key && r.last_key <= c1 {
                        Some(r.len)
                    } else {
                        None
                    }
                }
                Kind::Tail => {
                    if r.name < c0 || r.name > c1 || z > r.last_key {
                        Some(0)
                    } else if z <= r.first_key {
                        Some(r.len)
                    } else {
                        None
                    }
                }
                Kind::Single => Some(
                    if r.first_key >= z && c0 <= r.first_key && r.first_key <= c1 {
                        r.len
                    } else {
                        0
                    },
                ),
            })
            .sum()
    }

    /// Whether a known block may have exactly this key (so that a block found under it could be
    /// that one).
    pub fn may_have_key(&self, key: i64) -> bool {
        self.runs
            .iter()
            .any(|r| r.first_key <= key && key <= r.last_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: Kind, name: i64, first_key: i64, last_key: i64, len: u64) -> Run {
        Run {
            start: 0,
            len,
            name,
            first_key,
            last_key,
            kind,
        }
    }

    #[test]
    fn head_runs_count_whole_while_the_lower_bound_is_at_or_below_their_name() {
        let mut k = Known::new(1000);
        k.push(run(Kind::Head, 1000, 1000, 1400, 500));
        assert_eq!(k.in_window(1000, 2000), Some(500));
        assert_eq!(k.in_window(1001, 2000), Some(0));
        assert_eq!(k.in_window(1000, 900), Some(0));
        assert_eq!(k.in_window(1000, 1200), None, "cuts through the run");
        assert_eq!(k.in_window(999, 2000), None, "below the floor");
        assert_eq!(k.max_lo(), 1000);
    }

    #[test]
    fn tail_runs_count_by_key_and_need_the_upper_bound_past_their_name() {
        let mut k = Known::new(0);
        k.push(run(Kind::Tail, 9000, 1000, 1300, 400));
        assert_eq!(k.in_window(1000, 9000), Some(400));
        assert_eq!(k.in_window(1000, 8999), Some(0));
        assert_eq!(k.in_window(1301, 9000), Some(0));
        assert_eq!(k.in_window(1200, 9000), None);
        assert_eq!(k.max_lo(), 1300);
        // One block: its key is known, so no split.
        k.push(run(Kind::Tail, 9500, 1500, 1500, 100));
        assert_eq!(k.in_window(1400, 9500), Some(100));
        assert_eq!(k.in_window(1200, 9500), None, "still splits the first run");
        assert_eq!(k.in_window(1301, 9500), Some(100));
        assert_eq!(k.in_window(1501, 9500), Some(0));
    }

    #[test]
    fn singles_are_unknown_below_their_key() {
        let mut k = Known::new(0);
        k.push(run(Kind::Single, 700, 700, 700, 40));
        assert_eq!(
            k.in_window(700, 700),
            None,
            "its table may have been renamed"
        );
        assert_eq!(k.in_window(701, 800), Some(0));
        assert_eq!(k.in_window(600, 699), Some(0));
        assert!(k.may_have_key(700));
        assert!(!k.may_have_key(701));
    }

    #[test]
    fn forgetting_runs_raises_the_floor() {
        let mut k = Known::new(0);
        k.cap = 2;
        k.push(run(Kind::Head, 100, 100, 199, 10));
        k.push(run(Kind::Head, 200, 200, 299, 10));
        k.push(run(Kind::Head, 300, 300, 399, 10));
        assert_eq!(k.floor(), 101);
        assert_eq!(k.in_window(100, 1000), None);
        assert_eq!(k.in_window(101, 1000), Some(20));
    }
}
