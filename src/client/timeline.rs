// SPDX-License-Identifier: MPL-2.0
//! A time-true stream: RACS derives a sample's stored time from the stream's `ref` and the byte
//! count, so a writer keeps the stored time of every sample within a bound of its capture time by
//! writing silence where the stored timeline falls behind and leaving samples out where it runs
//! ahead. Pure arithmetic in nanoseconds since the epoch (UTC), shared by the sink and its tests.

/// What to do with audio captured at a given wall-clock time before it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// The stored time is within the bound: write the audio as it is.
    Keep,
    /// The stored timeline is behind by this many sample frames: write that much silence first.
    Fill(u64),
    /// The stored timeline runs ahead by this many sample frames: leave them out of the audio.
    Drop(u64),
}

/// The bound and the rate of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    pub rate: u32,
    /// The largest difference between stored and capture time left alone, in ns.
    pub max_drift_ns: u64,
}

impl WallClock {
    /// The stored time of sample frame `frames` of an epoch whose `ref` is `ref_ms`.
    pub fn stored_ns(&self, ref_ms: i64, frames: u64) -> i128 {
        i128::from(ref_ms) * 1_000_000 + i128::from(frames) * 1_000_000_000 / i128::from(self.rate)
    }

    /// The correction for audio whose first sample was captured at `capture_ns` while the
    /// stored timeline puts the next sample at `stored_ns`. Beyond the bound it corrects the
    /// whole difference (to the nearest frame), so corrections stay rare.
    pub fn correct(&self, stored_ns: i128, capture_ns: i128) -> Correction {
        let diff = capture_ns - stored_ns;
        if diff.unsigned_abs() <= u128::from(self.max_drift_ns) {
            return Correction::Keep;
        }
        let frames = (diff.unsigned_abs() * u128::from(self.rate) + 500_000_000) / 1_000_000_000;
        let frames = u64::try_from(frames).unwrap_or(u64::MAX);
        if frames == 0 {
            Correction::Keep
        } else if diff > 0 {
            Correction::Fill(frames)
        } else {
            Correction::Drop(frames)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF: i64 = 1_795_000_000_000;

    #[test]
    fn inside_the_bound_nothing_changes() {
        let w = WallClock {
            rate: 48_000,
            max_drift_ns: 20_000_000,
        };
        let s = w.stored_ns(REF, 48_000);
        assert_eq!(s, i128::from(REF + 1000) * 1_000_000);
        assert_eq!(w.correct(s, s + 20_000_000), Correction::Keep);
        assert_eq!(w.correct(s, s - 20_000_000), Correction::Keep);
        assert_eq!(w.correct(s, s + 20_000_001), Correction::Fill(960));
        assert_eq!(w.correct(s, s - 25_000_000), Correction::Drop(1200));
    }

    /// A source running `ppm` off the wall clock, written through the correction: the stored
    /// time of every sample stays within the bound, and the corrections add up to the drift.
    fn simulate(ppm: i64, rate: u32, seconds: u64) -> (i128, u64, u64) {
        simulate_skipping(ppm, rate, seconds, 0)
    }

    /// [`simulate`] with a source that also loses two 512-frame cycles every `skip_every`
    /// buffers (0: never), as JACK did here without a word.
    fn simulate_skipping(ppm: i64, rate: u32, seconds: u64, skip_every: u64) -> (i128, u64, u64) {
        let w = WallClock {
            rate,
            max_drift_ns: 20_000_000,
        };
        let buffer = u64::from(rate) / 100; // 10 ms buffers, as a sound card delivers them
        let capture_rate = f64::from(rate) * (1.0 + ppm as f64 / 1e6);
        let mut stored_frames = 0u64;
        let (mut filled, mut dropped) = (0u64, 0u64);
        let mut worst = 0i128;
        let start_ns = i128::from(REF) * 1_000_000;
        for i in 0..seconds * 100 {
            // Capture time of the buffer's first sample by the wall clock.
            let skipped = i.checked_div(skip_every).unwrap_or(0) * 1024;
            let captured = start_ns + ((i * buffer + skipped) as f64 / capture_rate * 1e9) as i128;
            let mut frames = buffer;
            match w.correct(w.stored_ns(REF, stored_frames), captured) {
                Correction::Keep => {}
                Correction::Fill(n) => {
                    stored_frames += n;
                    filled += n;
                }
                Correction::Drop(n) => {
                    let n = n.min(frames);
                    frames -= n;
                    dropped += n;
                }
            }
            if frames > 0 {
                worst = worst.max((w.stored_ns(REF, stored_frames) - captured).abs());
            }
            stored_frames += frames;
        }
        (worst, filled, dropped)
    }

    #[test]
    fn drift_of_a_thousand_ppm_either_way_stays_within_the_bound() {
        for ppm in [-1000, -100, 0, 100, 1000] {
            let (worst, filled, dropped) = simulate(ppm, 48_000, 600);
            assert!(worst <= 20_000_000, "{ppm} ppm: {worst} ns");
            // 600 s at `ppm`: 0.6 ms per ppm... of audio frames too many or too few.
            let expected = (600.0 * 48_000.0 * ppm.unsigned_abs() as f64 / 1e6) as u64;
            let corrected = filled + dropped;
            assert!(
                corrected.abs_diff(expected) <= 48_000 / 50,
                "{ppm} ppm: corrected {corrected} frames, drift {expected}"
            );
            if ppm > 0 {
                assert_eq!(filled, 0, "a fast source never needs silence");
            }
            if ppm < 0 {
                assert_eq!(dropped, 0, "a slow source never loses samples");
            }
        }
    }

    /// Two days in accelerated time: a sound card 100 ppm off (17 s of drift) that also loses
    /// two 512-frame cycles every ten minutes.
    #[test]
    fn two_days_of_drift_and_skipped_cycles_stay_within_the_bound() {
        for ppm in [-100, 100] {
            let (worst, filled, dropped) = simulate_skipping(ppm, 48_000, 2 * 86_400, 60_000);
            assert!(worst <= 20_000_000, "{ppm} ppm: {worst} ns");
            let drift = (2.0 * 86_400.0 * 48_000.0 * 100.0 / 1e6) as i64;
            let skips = 2 * 86_400 * 100 / 60_000 * 1024;
            // Skipped cycles need silence; a slow source needs more, a fast one drops.
            let net = filled as i64 - dropped as i64;
            let want = skips - ppm.signum() * drift;
            assert!(
                (net - want).abs() <= 48_000 / 50,
                "{ppm} ppm: filled {filled}, dropped {dropped}, expected net {want}"
            );
        }
    }
}

#[cfg(test)]
mod correction_tests {
    use super::*;

    #[test]
    fn the_stored_time_counts_from_ref_in_whole_nanoseconds() {
        let w = WallClock {
            rate: 44_100,
            max_drift_ns: 0,
        };
        assert_eq!(w.stored_ns(1000, 0), 1_000_000_000);
        // One frame at 44.1 kHz: 22675.73 ns, rounded down.
        assert_eq!(w.stored_ns(0, 1), 22_675);
        assert_eq!(w.stored_ns(-1000, 44_100), 0, "a ref before the epoch");
    }

    #[test]
    fn beyond_the_bound_the_whole_difference_is_corrected_to_the_nearest_frame() {
        let w = WallClock {
            rate: 8000,
            max_drift_ns: 0,
        };
        // One frame is 125 us: 62.4 us rounds to none, 62.5 us to one.
        assert_eq!(w.correct(0, 62_499), Correction::Keep);
        assert_eq!(w.correct(0, 62_500), Correction::Fill(1));
        assert_eq!(w.correct(62_500, 0), Correction::Drop(1));
        assert_eq!(w.correct(0, 0), Correction::Keep);
        // A second either way.
        assert_eq!(w.correct(0, 1_000_000_000), Correction::Fill(8000));
        assert_eq!(w.correct(1_000_000_000, 0), Correction::Drop(8000));
        // A difference of more frames than a u64 counts saturates instead of wrapping.
        assert_eq!(w.correct(0, 10i128.pow(25)), Correction::Fill(u64::MAX));
        assert_eq!(w.correct(10i128.pow(25), 0), Correction::Drop(u64::MAX));
    }
}
