// SPDX-License-Identifier: MPL-2.0
//! EXTRACT returns every sample widened to int32 (sign-extended); the stream's own width is
//! the low 2 or 3 bytes of each. These loops are racssrc's hot path.

/// Keeps the low 16 bits of each int32 LE sample: `dst.len()` must be `src.len() / 2`.
pub fn narrow_to_s16le(src: &[u8], dst: &mut [u8]) {
    debug_assert_eq!(dst.len() * 2, src.len());
    // Eight samples per step, so the compiler can keep the loop in wide registers.
    let mut s = src.chunks_exact(32);
    let mut d = dst.chunks_exact_mut(16);
    for (s, d) in (&mut s).zip(&mut d) {
        for i in 0..8 {
            d[2 * i] = s[4 * i];
            d[2 * i + 1] = s[4 * i + 1];
        }
    }
    for (s, d) in s
        .remainder()
        .chunks_exact(4)
        .zip(d.into_remainder().chunks_exact_mut(2))
    {
        d.copy_from_slice(&s[..2]);
    }
}

/// Keeps the low 24 bits of each int32 LE sample: `dst.len()` must be `src.len() / 4 * 3`.
pub fn narrow_to_s24le(src: &[u8], dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), src.len() / 4 * 3);
    let mut s = src.chunks_exact(16);
    let mut d = dst.chunks_exact_mut(12);
    for (s, d) in (&mut s).zip(&mut d) {
        for i in 0..4 {
            d[3 * i] = s[4 * i];
            d[3 * i + 1] = s[4 * i + 1];
            d[3 * i + 2] = s[4 * i + 2];
        }
    }
    for (s, d) in s
        .remainder()
        .chunks_exact(4)
        .zip(d.into_remainder().chunks_exact_mut(3))
    {
        d.copy_from_slice(&s[..3]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wide(values: &[i32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn narrows_sign_extended_samples() {
        let values: Vec<i32> = (0..37).map(|i| (i * 1777 - 32768) % 32768).collect();
        let src = wide(&values);
        let mut dst = vec![0u8; src.len() / 2];
        narrow_to_s16le(&src, &mut dst);
        let back: Vec<i32> = dst
            .chunks_exact(2)
            .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]])))
            .collect();
        assert_eq!(back, values);

        let values: Vec<i32> = (0..41).map(|i| i * 409_600 - 8_388_608).collect();
        let src = wide(&values);
        let mut dst = vec![0u8; src.len() / 4 * 3];
        narrow_to_s24le(&src, &mut dst);
        let back: Vec<i32> = dst
            .chunks_exact(3)
            .map(|c| i32::from_le_bytes([0, c[0], c[1], c[2]]) >> 8)
            .collect();
        assert_eq!(back, values);
    }
}
