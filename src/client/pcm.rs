// SPDX-License-Identifier: MPL-2.0
//! Sample layout the protocol knows about, used by both elements: EXTRACT returns every sample
//! widened to int32 (sign-extended), the stream's own width being the low 2 or 3 bytes of each;
//! and audio is stored and cut in whole sample frames.

/// Narrows an EXTRACT answer (int32 LE samples) to the stream's width in place: keeps the low
/// `bytes_per_sample` (2 or 3) bytes of each sample and truncates the vector to the result. No
/// allocation and no second buffer: the page is reused as it came from the socket. This loop is
/// racssrc's hot path.
pub fn narrow_in_place(data: &mut Vec<u8>, bytes_per_sample: usize) {
    assert!(
        bytes_per_sample == 2 || bytes_per_sample == 3,
        "only 16 and 24-bit streams are narrowed"
    );
    let samples = data.len() / 4;
    if bytes_per_sample == 2 {
        narrow_blocks::<8, 32, 16>(data, 2);
    } else {
        narrow_blocks::<4, 16, 12>(data, 3);
    }
    data.truncate(samples * bytes_per_sample);
}

/// Moves `W`-byte samples (the low `w` bytes of each 4-byte sample) forward to their packed
/// places, `N` samples per step: a step reads its `IN` bytes into a local copy before writing
/// its `OUT` bytes, which end at or before where the step's input starts, so nothing is read
/// after it was overwritten, and the local copy lets the compiler use wide registers.
fn narrow_blocks<const N: usize, const IN: usize, const OUT: usize>(data: &mut [u8], w: usize) {
    debug_assert_eq!(IN, N * 4);
    debug_assert_eq!(OUT, N * w);
    let samples = data.len() / 4;
    let blocks = samples / N;
    for b in 0..blocks {
        let mut s = [0u8; IN];
        s.copy_from_slice(&data[b * IN..(b + 1) * IN]);
        let mut d = [0u8; OUT];
        for i in 0..N {
            d[w * i..w * i + w].copy_from_slice(&s[4 * i..4 * i + w]);
        }
        data[b * OUT..(b + 1) * OUT].copy_from_slice(&d);
    }
    for i in blocks * N..samples {
        data.copy_within(4 * i..4 * i + w, w * i);
    }
}

/// Bytes to add to `bytes` to reach the next whole sample frame of `bytes_per_frame` (0 when
/// already whole): a stream is stored and cut in whole frames only.
pub fn pad_to_frame(bytes: u64, bytes_per_frame: u64) -> u64 {
    match bytes % bytes_per_frame {
        0 => 0,
        r => bytes_per_frame - r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wide(values: &[i32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn narrows_sign_extended_samples_in_place() {
        // Lengths around the step sizes: whole steps, a remainder, fewer samples than a step.
        for n in [0usize, 1, 3, 7, 8, 9, 37, 64, 1001] {
            let values: Vec<i32> = (0..n as i32).map(|i| (i * 1777 - 32768) % 32768).collect();
            let mut data = wide(&values);
            narrow_in_place(&mut data, 2);
            assert_eq!(data.len(), n * 2);
            let back: Vec<i32> = data
                .chunks_exact(2)
                .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]])))
                .collect();
            assert_eq!(back, values, "16-bit, {n} samples");

            let values: Vec<i32> = (0..n as i32)
                .map(|i| (i * 409_600) % 8_388_608 - 8_388_608 * (i % 2))
                .collect();
            let mut data = wide(&values);
            narrow_in_place(&mut data, 3);
            assert_eq!(data.len(), n * 3);
            let back: Vec<i32> = data
                .chunks_exact(3)
                .map(|c| i32::from_le_bytes([0, c[0], c[1], c[2]]) >> 8)
                .collect();
            assert_eq!(back, values, "24-bit, {n} samples");
        }
    }

    #[test]
    fn extremes_and_silence_survive() {
        let values = [i32::from(i16::MIN), -1, 0, 1, i32::from(i16::MAX)];
        let mut data = wide(&values.repeat(5));
        narrow_in_place(&mut data, 2);
        let expect: Vec<u8> = values
            .repeat(5)
            .iter()
            .flat_map(|v| (*v as i16).to_le_bytes())
            .collect();
        assert_eq!(data, expect);
    }

    #[test]
    fn pads_to_whole_frames() {
        assert_eq!(pad_to_frame(0, 4), 0);
        assert_eq!(pad_to_frame(8, 4), 0);
        assert_eq!(pad_to_frame(9, 4), 3);
        assert_eq!(pad_to_frame(11, 6), 1);
        assert_eq!(pad_to_frame(5, 1), 0);
    }
}
