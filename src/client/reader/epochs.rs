// SPDX-License-Identifier: MPL-2.0
//! Recordings of one stream across a crash. After a kill the server starts a stream over: the
//! next frame gets a new `ref`, INFO describes only what came after it, and the blocks written
//! before keep their old keys. The reader reads such a stream whole, in time order: the earlier
//! recording at its own times, then a gap up to the current `ref`, then the current recording.
//!
//! The stream's timeline counts frames from the earlier recording's first sample; each
//! recording starts at the frame nearest its `ref` on that timeline (recordings keep their own
//! sample positions exactly; only the silence between them is rounded to a frame).

use super::arith::Timeline;
use super::steps::FAR;
use super::{format_unix_ms, Piece, RangeReader, ReadError};

/// One recording of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Epoch {
    /// Wall-clock time of its first sample (ms since the Unix epoch).
    pub ref_ms: i64,
    /// Its stored bytes.
    pub size: u64,
    /// Its first frame on the stream's timeline.
    pub base: u64,
}

/// The frame on the stream's timeline (counted from `origin`'s first sample) of a recording
/// that starts at `ref_ms`, and whether it starts after `earlier_frames` frames of the recording
/// before it end (it must: else both answer for the same times).
pub(super) fn base_of(
    tl: &Timeline,
    origin_ms: i64,
    ref_ms: i64,
    earlier_frames: u64,
) -> Option<u64> {
    let f = tl.frame_of(origin_ms, i128::from(ref_ms) * 1_000_000);
    u64::try_from(f).ok().filter(|b| *b >= earlier_frames)
}

impl RangeReader {
    /// Finds a recording from before the current `ref` and, when it can be placed exactly,
    /// makes it the first one read; the current recording follows it. Earlier audio that cannot
    /// be placed is an error, never left out silently.
    pub(super) async fn find_earlier_recordings(&mut self) -> Result<(), ReadError> {
        let current = self.ref_ms;
        let earlier = self.qlen(0, current - 1).await?;
        self.stats.fallbacks += 1;
        if earlier == 0 {
            return Ok(());
        }
        let everything = self.qlen(0, FAR).await?;
        self.stats.fallbacks += 1;
        let runs_into = ReadError::Missing(format!(
            "{} holds {} bytes of audio from before its current reference time {} (a \
                 recording cut short when the server restarted) whose times run into the current \
                 recording, so blocks of both answer for the same times; racssrc cannot tell them \
                 apart and reads neither",
            self.who(),
            earlier,
            format_unix_ms(current)
        ));
        if everything > earlier + self.size {
            return Err(runs_into);
        }
        // The earlier recording's first block carries its `ref` as its key. The smallest `c`
        // for which `Q(0, c)` holds anything is the smallest max(key, table name) of its
        // blocks; when no block has a smaller key or name (`Q(c, current - 1)` holds them all),
        // that block's key is `c`.
        let (mut lo, mut hi) = (-1i64, current - 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let n = self.qlen(0, mid).await?;
            self.stats.fallbacks += 1;
            if n > 0 {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        let first = hi;
        let all = self.qlen(first, current - 1).await?;
        self.stats.fallbacks += 1;
        // The server loses a recording's newest blocks, never older ones alone: what it kept is
        // a prefix. A block of it right after the bytes counted here would carry this key; at
        // or after the current `ref`, such blocks may exist and answer for the current
        // recording's times (losses of the current recording hide them from the count above).
        if self.tl.key(first, earlier) >= current {
            return Err(runs_into);
        }
        let last_key = self.tl.key(first, earlier.saturating_sub(self.tl.bpf));
        let base = base_of(&self.tl, first, current, earlier / self.tl.bpf);
        let (true, Some(base), true) = (all == earlier, base, last_key < current) else {
            return Err(ReadError::Missing(format!(
                "{} holds {earlier} bytes of audio from before its current reference time {} \
                 (recordings before the server restarted after a crash) that racssrc cannot \
                 place exactly (more than one restart, or blocks filed under other times); set \
                 start to {} or later to read the current recording",
                self.who(),
                format_unix_ms(current),
                format_unix_ms(current)
            )));
        };
        self.later.push_back(Epoch {
            ref_ms: current,
            size: self.size,
            base,
        });
        self.origin_ms = first;
        self.ref_ms = first;
        self.size = earlier;
        self.base = 0;
        Ok(())
    }

    /// Bytes on the stream's timeline: every recording and the time between them.
    pub(super) fn timeline_bytes(&self) -> u64 {
        match self.later.back() {
            Some(e) => e.base * self.tl.bpf + e.size,
            None => self.base * self.tl.bpf + self.size,
        }
    }

    /// The frame on the stream's timeline at wall-clock time `unix_ns`.
    pub(super) fn timeline_frame_of(&self, unix_ns: i128) -> i128 {
        let mut at = (self.ref_ms, self.base);
        for e in &self.later {
            if i128::from(e.ref_ms) * 1_000_000 <= unix_ns {
                at = (e.ref_ms, e.base);
            }
        }
        i128::from(at.1) + self.tl.frame_of(at.0, unix_ns)
    }

    /// Moves on to the next recording once this one is read (or the range starts after it):
    /// the time between them is a gap. False when there is none.
    pub(super) fn next_recording(&mut self) -> bool {
        let Some(e) = self.later.pop_front() else {
            return false;
        };
        let end = self.base + self.size / self.tl.bpf;
        let from = end.max(self.first_frame);
        let to = self.end_frame.map_or(e.base, |f| f.min(e.base));
        if to > from {
            self.stats.holes += 1;
            self.pending.push_back(Piece::Gap {
                frame: from,
                unix_ns: self
                    .tl
                    .unix_ns(self.ref_ms, (from - self.base) * self.tl.bpf),
                frames: to - from,
                reason: format!(
                    "{}: no audio is stored from {} to {} ({:.3} s): the server restarted after \
                     a crash there, and the stream started over at {}",
                    self.who(),
                    super::format_unix_ns(
                        self.tl
                            .unix_ns(self.ref_ms, (from - self.base) * self.tl.bpf)
                    ),
                    format_unix_ms(e.ref_ms),
                    (to - from) as f64 / f64::from(self.format.sample_rate),
                    format_unix_ms(e.ref_ms)
                ),
            });
        }
        self.ref_ms = e.ref_ms;
        self.size = e.size;
        self.base = e.base;
        self.cursor = None;
        self.open_table = None;
        self.next_out = self.first_frame.saturating_sub(e.base) * self.tl.bpf;
        true
    }

    /// Skips the recordings that end before the range starts.
    pub(super) fn skip_to_first_recording(&mut self) {
        while !self.later.is_empty() && self.base + self.size / self.tl.bpf <= self.first_frame {
            self.next_recording();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::frame::StreamFormat;

    fn tl(rate: u32) -> Timeline {
        Timeline::new(&StreamFormat {
            sample_rate: rate,
            channels: 1,
            bit_depth: 16,
        })
    }

    #[test]
    fn a_later_recording_starts_at_the_frame_nearest_its_ref() {
        let t = tl(44100);
        // 2.5 s after the origin: frame 110250.
        assert_eq!(base_of(&t, 1_000, 3_500, 1000), Some(110_250));
        // 1 ms is 44.1 frames: rounded to the nearest.
        assert_eq!(base_of(&t, 0, 1, 0), Some(44));
        assert_eq!(base_of(&t, 0, 3, 0), Some(132));
    }

    #[test]
    fn recordings_that_overlap_have_no_place() {
        let t = tl(8000);
        // The earlier recording holds 2 s; the later one starts 1 s after it began.
        assert_eq!(base_of(&t, 0, 1000, 16_000), None);
        assert_eq!(base_of(&t, 0, 2000, 16_000), Some(16_000));
        // A later ref before the origin.
        assert_eq!(base_of(&t, 5000, 1000, 0), None);
    }
}
