// SPDX-License-Identifier: MPL-2.0
//! Timeline arithmetic: where a block's key comes from, and what a key says about where a block
//! starts. Pure functions of the stream format, no I/O.
//!
//! The server stamps the block appended after `size_before` bytes with
//! `key = ref + trunc(size_before / bytes_per_second * 1000)`, computed in double precision
//! (`racs_streaminfo_offset`). A key therefore names a millisecond, and a block that starts in
//! that millisecond may start at any whole sample frame inside it. These functions replicate the
//! server's formula bit for bit and invert it exactly.

use crate::client::frame::StreamFormat;

/// The arithmetic of one stream format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    /// Sample frames per second.
    pub rate: u32,
    /// Stream bytes per sample frame (the stored width).
    pub bpf: u64,
    /// EXTRACT bytes per sample frame: every sample widened to int32.
    pub wide_bpf: u64,
    /// Stream bytes per second.
    pub bps: u64,
}

impl Timeline {
    pub fn new(format: &StreamFormat) -> Timeline {
        Timeline {
            rate: format.sample_rate,
            bpf: format.bytes_per_frame() as u64,
            wide_bpf: 4 * u64::from(format.channels),
            bps: format.bytes_per_second(),
        }
    }

    /// The key of a block starting `offset` bytes into an epoch whose `ref` is `ref_ms`, exactly
    /// as the server computes it.
    pub fn key(&self, ref_ms: i64, offset: u64) -> i64 {
        ref_ms + (offset as f64 / self.bps as f64 * 1000.0) as i64
    }

    /// The smallest whole-frame offset whose key is at least `key` (0 for keys at or before
    /// `ref`).
    pub fn first_offset_at(&self, ref_ms: i64, key: i64) -> u64 {
        if key <= ref_ms {
            return 0;
        }
        let ms = (key - ref_ms) as u128;
        // The exact rational answer, then a correction for the server's floating point.
        let mut frames = (ms * u128::from(self.rate)).div_ceil(1000) as u64;
        while self.key(ref_ms, frames * self.bpf) < key {
            frames += 1;
        }
        while frames > 0 && self.key(ref_ms, (frames - 1) * self.bpf) >= key {
            frames -= 1;
        }
        frames * self.bpf
    }

    /// The whole-frame offsets a block stamped `key` can start at: `[first, last]`, or `None`
    /// when no frame of the epoch gets that key (possible at rates below 1000 Hz).
    pub fn offsets_of_key(&self, ref_ms: i64, key: i64) -> Option<(u64, u64)> {
        if key < ref_ms {
            return None;
        }
        let first = self.first_offset_at(ref_ms, key);
        let next = self.first_offset_at(ref_ms, key + 1);
        (next > first).then(|| (first, next - self.bpf))
    }

    /// Stream bytes held by `wide` bytes of EXTRACT output (whole frames).
    pub fn wide_to_stream(&self, wide: usize) -> u64 {
        wide as u64 / self.wide_bpf * self.bpf
    }

    /// EXTRACT bytes for `bytes` stream bytes (whole frames).
    pub fn stream_to_wide(&self, bytes: u64) -> usize {
        (bytes / self.bpf * self.wide_bpf) as usize
    }

    /// Nanoseconds of `frames` sample frames, rounded down.
    pub fn frames_to_ns(&self, frames: u64) -> u64 {
        crate::client::frame::frames_to_ns(frames, self.rate)
    }

    /// Sample frames in `ns`, rounded to the nearest frame.
    pub fn ns_to_frames(&self, ns: u64) -> u64 {
        crate::client::frame::ns_to_frames(ns, self.rate)
    }

    /// The wall-clock time (ns since the Unix epoch) of the sample frame at `offset` of an
    /// epoch whose `ref` is `ref_ms`.
    pub fn unix_ns(&self, ref_ms: i64, offset: u64) -> i128 {
        i128::from(ref_ms) * 1_000_000
            + (i128::from(offset / self.bpf) * 1_000_000_000 / i128::from(self.rate))
    }

    /// The frame offset (in frames, may be negative) of the wall-clock time `unix_ns` in an epoch
    /// whose `ref` is `ref_ms`, rounded to the nearest frame.
    pub fn frame_of(&self, ref_ms: i64, unix_ns: i128) -> i128 {
        let rel = unix_ns - i128::from(ref_ms) * 1_000_000;
        let num = rel * i128::from(self.rate);
        (num + num.signum() * 500_000_000) / 1_000_000_000
    }

    /// Milliseconds covered by `bytes` stream bytes, rounded up.
    pub fn bytes_to_ms_ceil(&self, bytes: u64) -> i64 {
        (u128::from(bytes) * 1000).div_ceil(u128::from(self.bps)) as i64
    }

    /// The longest a block can last, in ms (a block holds at most 65535 bytes), plus one.
    pub fn max_block_ms(&self) -> i64 {
        self.bytes_to_ms_ceil(crate::client::frame::MAX_BLOCK_BYTES as u64) + 1
    }
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

/// Formats ns since the epoch as RFC 3339 UTC with microseconds.
pub fn format_unix_ns(ns: i128) -> String {
    let ms = ns.div_euclid(1_000_000);
    let us = ns.rem_euclid(1_000_000) / 1000;
    let s = format_unix_ms(ms as i64);
    format!("{}{us:03}Z", &s[..s.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tl(rate: u32, ch: u16, bd: u16) -> Timeline {
        Timeline::new(&StreamFormat::new(rate, ch, bd).unwrap())
    }

    const REF: i64 = 1_767_952_800_250;

    #[test]
    fn formats_unix_times() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_unix_ms(1_767_952_800_250),
            "2026-01-09T10:00:00.250Z"
        );
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            format_unix_ns(1_767_952_800_250_123_456),
            "2026-01-09T10:00:00.250123Z"
        );
    }

    #[test]
    fn keys_follow_the_servers_double_precision_formula() {
        let t = tl(44100, 2, 16);
        // 8192 frames = 185.759... ms: truncated.
        assert_eq!(t.key(REF, 32768), REF + 185);
        assert_eq!(t.key(REF, 0), REF);
        // 4410 frames = exactly 100 ms.
        assert_eq!(t.key(REF, 4410 * 4), REF + 100);
        assert_eq!(t.key(REF, 4409 * 4), REF + 99);
        // Agrees with a literal transcription of racs_streaminfo_offset.
        for size in [0u64, 4, 176_400, 176_396, 1_234_567 * 4, 65532 * 977] {
            let seconds = size as f64 / (2.0 * 44100.0 * 2.0);
            assert_eq!(t.key(REF, size), (seconds * 1000.0) as i64 + REF, "{size}");
        }
    }

    #[test]
    fn first_offset_at_inverts_the_key_exactly() {
        for t in [
            tl(44100, 2, 16),
            tl(48000, 6, 24),
            tl(8000, 1, 16),
            tl(1, 1, 16),
            tl(999, 3, 24),
        ] {
            for key in REF - 3..REF + 2500 {
                let o = t.first_offset_at(REF, key);
                assert_eq!(o % t.bpf, 0);
                assert!(t.key(REF, o) >= key, "{t:?} {key}");
                if o > 0 {
                    assert!(t.key(REF, o - t.bpf) < key, "{t:?} {key}");
                }
            }
        }
    }

    #[test]
    fn offsets_of_a_key_span_its_millisecond() {
        let t = tl(44100, 2, 16);
        let (a, b) = t.offsets_of_key(REF, REF + 1).unwrap();
        assert_eq!(t.key(REF, a), REF + 1);
        assert_eq!(t.key(REF, b), REF + 1);
        assert_eq!(t.key(REF, b + 4), REF + 2);
        assert_eq!(t.key(REF, a - 4), REF);
        assert!((b - a) / 4 <= 44);
        // Below 1000 Hz most milliseconds hold no frame at all.
        let slow = tl(8, 1, 16);
        assert_eq!(slow.offsets_of_key(REF, REF + 1), None);
        assert_eq!(slow.offsets_of_key(REF, REF + 125), Some((2, 2)));
        assert_eq!(slow.offsets_of_key(REF, REF - 1), None);
    }

    #[test]
    fn converts_between_frames_bytes_and_times() {
        let t = tl(48000, 2, 24);
        assert_eq!(t.bpf, 6);
        assert_eq!(t.wide_bpf, 8);
        assert_eq!(t.wide_to_stream(80), 60);
        assert_eq!(t.stream_to_wide(60), 80);
        assert_eq!(t.frames_to_ns(48000), 1_000_000_000);
        assert_eq!(t.ns_to_frames(500_000_000), 24000);
        assert_eq!(
            t.unix_ns(REF, 6 * 48),
            i128::from(REF) * 1_000_000 + 1_000_000
        );
        assert_eq!(t.frame_of(REF, i128::from(REF) * 1_000_000 + 1_000_000), 48);
        assert_eq!(
            t.frame_of(REF, i128::from(REF) * 1_000_000 - 1_000_000),
            -48
        );
        assert_eq!(tl(44100, 2, 16).max_block_ms(), 373);
    }
}
