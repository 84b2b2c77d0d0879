// SPDX-License-Identifier: MPL-2.0
//! RSP frames and the stream timeline that the server derives from them.

use super::error::{Error, Result};

/// Bytes of the frame header before the PCM.
pub const HEADER_LEN: usize = 34;
/// The largest block a frame can carry: its size field is a u16.
pub const MAX_BLOCK_BYTES: usize = 65535;

/// The unsigned first half (h1) of MurmurHash3 x64_128 with seed 0: the server's stream key.
pub fn stream_hash(id: &[u8]) -> u64 {
    let hash = murmur3::murmur3_x64_128(&mut std::io::Cursor::new(id), 0)
        .expect("hashing an in-memory slice cannot fail");
    hash as u64
}

/// CRC32C (Castagnoli) as the server checks it.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The writer's session: frames from any other session are refused once the first one binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A random, non-zero session id (an all-zero session never binds the stream).
    pub fn random() -> Self {
        loop {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).expect("the operating system's random source failed");
            if bytes != [0u8; 16] {
                return SessionId(bytes);
            }
        }
    }
}

/// The layout of a stream's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamFormat {
    pub sample_rate: u32,
    pub channels: u16,
    pub bit_depth: u16,
}

/// Nanoseconds of `frames` sample frames at `rate`, rounded down, so that spans computed from
/// running frame counts join without gaps or overlaps.
pub fn frames_to_ns(frames: u64, rate: u32) -> u64 {
    (u128::from(frames) * 1_000_000_000 / u128::from(rate.max(1))) as u64
}

/// Sample frames at `rate` in `ns`, rounded to the nearest frame.
pub fn ns_to_frames(ns: u64, rate: u32) -> u64 {
    ((u128::from(ns) * u128::from(rate) + 500_000_000) / 1_000_000_000) as u64
}

/// Sample frames at `rate` in `ns`, rounded up: the first frame at or after `ns`.
pub fn ns_to_frames_up(ns: u64, rate: u32) -> u64 {
    (u128::from(ns) * u128::from(rate)).div_ceil(1_000_000_000) as u64
}

impl StreamFormat {
    /// A format the plugin can write and read: 16 or 24-bit, at least one channel and 1 Hz.
    pub fn new(sample_rate: u32, channels: u16, bit_depth: u16) -> Result<Self> {
        if sample_rate == 0 || channels == 0 || !(bit_depth == 16 || bit_depth == 24) {
            return Err(Error::InvalidArgument(format!(
                "unsupported stream format: {sample_rate} Hz, {channels} channels, {bit_depth}-bit \
                 (RACS streams handled here are 16 or 24-bit with a non-zero rate and channel count)"
            )));
        }
        Ok(StreamFormat {
            sample_rate,
            channels,
            bit_depth,
        })
    }

    pub fn bytes_per_sample(&self) -> usize {
        usize::from(self.bit_depth / 8)
    }

    /// Bytes of one sample frame (one sample of every channel).
    pub fn bytes_per_frame(&self) -> usize {
        usize::from(self.channels) * self.bytes_per_sample()
    }

    pub fn bytes_per_second(&self) -> u64 {
        u64::from(self.sample_rate) * self.bytes_per_frame() as u64
    }

    /// Nanoseconds of `frames` sample frames; see [`frames_to_ns`].
    pub fn frames_to_ns(&self, frames: u64) -> u64 {
        frames_to_ns(frames, self.sample_rate)
    }

    /// Sample frames in `ns`; see [`ns_to_frames`].
    pub fn ns_to_frames(&self, ns: u64) -> u64 {
        ns_to_frames(ns, self.sample_rate)
    }

    /// The largest whole number of sample frames that fits in `wanted` bytes and in one frame.
    /// `None` when not even one sample frame fits.
    pub fn chunk_bytes(&self, wanted: usize) -> Option<usize> {
        let bpf = self.bytes_per_frame();
        let bytes = wanted.min(MAX_BLOCK_BYTES) / bpf * bpf;
        (bytes > 0).then_some(bytes)
    }

    /// Bytes of the shortest block that still covers a millisecond, in whole sample frames;
    /// smaller blocks share timestamps on the server, and tables named after them collide.
    pub fn min_chunk_bytes(&self) -> usize {
        let frames = u64::from(self.sample_rate).div_ceil(1000).max(1);
        frames as usize * self.bytes_per_frame()
    }

    /// The timestamp the server gives a block appended after `size_before` bytes, exactly as the
    /// server computes it (in double precision, truncated to whole milliseconds).
    pub fn block_time_ms(&self, ref_ms: i64, size_before: u64) -> i64 {
        ref_ms + (size_before as f64 / self.bytes_per_second() as f64 * 1000.0) as i64
    }
}

impl std::fmt::Display for StreamFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} Hz, {} channel{}, {}-bit",
            self.sample_rate,
            self.channels,
            if self.channels == 1 { "" } else { "s" },
            self.bit_depth
        )
    }
}

/// Appends one frame (header and PCM, without the length prefix) to `out`.
pub fn encode_frame_into(
    out: &mut Vec<u8>,
    session: &SessionId,
    stream_hash: u64,
    pcm: &[u8],
) -> Result<()> {
    let len = u16::try_from(pcm.len()).map_err(|_| {
        Error::InvalidArgument(format!(
            "a frame carries at most {MAX_BLOCK_BYTES} bytes of PCM, not {}",
            pcm.len()
        ))
    })?;
    out.reserve(HEADER_LEN + pcm.len());
    out.extend_from_slice(b"rsp");
    out.extend_from_slice(&session.0);
    out.extend_from_slice(&stream_hash.to_le_bytes());
    out.extend_from_slice(&crc32c(pcm).to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.push(0);
    out.extend_from_slice(pcm);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hashes_match_the_contract() {
        for (id, hash, wire) in [
            ("chopin", 3740679502687231301u64, "45dd41503090e933"),
            (
                "Beethoven Piano Sonata No.1",
                13518887301497293089,
                "210949e45fbc9cbb",
            ),
            ("", 0, "0000000000000000"),
            ("alpha", 18439212215455061653, "95163e98d03de5ff"),
            ("beta", 13179257210476431013, "a506f4319b20e6b6"),
            ("air", 6985459874387285311, "3f5599c5be56f160"),
        ] {
            assert_eq!(stream_hash(id.as_bytes()), hash, "{id:?}");
            assert_eq!(hex(&stream_hash(id.as_bytes()).to_le_bytes()), wire);
        }
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn frame_matches_the_contract_vector() {
        let session = SessionId(core::array::from_fn(|i| i as u8 + 1));
        let pcm = [0x00, 0x00, 0xe8, 0x03, 0x18, 0xfc, 0xff, 0x7f];
        let mut out = Vec::new();
        encode_frame_into(&mut out, &session, stream_hash(b"chopin"), &pcm).unwrap();
        assert_eq!(
            hex(&out),
            "727370\
             0102030405060708090a0b0c0d0e0f10\
             45dd41503090e933\
             7b9586db\
             0800\
             00\
             0000e80318fcff7f"
        );
        assert_eq!(out.len() + 8, 0x2a + 8);
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut out = Vec::new();
        let err = encode_frame_into(&mut out, &SessionId::random(), 1, &[0; 65536]).unwrap_err();
        assert!(err.to_string().contains("65535"));
        assert!(out.is_empty());
    }

    #[test]
    fn sessions_are_random_and_non_zero() {
        let a = SessionId::random();
        assert_ne!(a.0, [0; 16]);
        assert_ne!(a, SessionId::random());
    }

    #[test]
    fn chunk_sizes_are_whole_frames() {
        let s24x6 = StreamFormat::new(48000, 6, 24).unwrap();
        assert_eq!(s24x6.chunk_bytes(32768), Some(32760));
        assert_eq!(s24x6.chunk_bytes(1 << 20), Some(65520));
        assert_eq!(s24x6.chunk_bytes(10), None);
        let s16x2 = StreamFormat::new(44100, 2, 16).unwrap();
        assert_eq!(s16x2.chunk_bytes(65535), Some(65532));
        assert_eq!(s16x2.min_chunk_bytes(), 45 * 4);
        assert!(StreamFormat::new(44100, 2, 8).is_err());
        assert!(StreamFormat::new(0, 2, 16).is_err());
    }

    #[test]
    fn block_times_follow_the_server_formula() {
        let f = StreamFormat::new(44100, 2, 16).unwrap();
        // 100 ms blocks: 17640 bytes.
        assert_eq!(f.block_time_ms(1000, 0), 1000);
        assert_eq!(f.block_time_ms(1000, 17640), 1100);
        // 32768-byte blocks: 185.759... ms each, truncated.
        assert_eq!(f.block_time_ms(0, 32768), 185);
        assert_eq!(f.block_time_ms(0, 2 * 32768), 371);
    }
}

#[cfg(test)]
mod time_and_format_tests {
    use super::*;

    #[test]
    fn frames_to_ns_rounds_down_so_running_spans_join() {
        assert_eq!(frames_to_ns(0, 44100), 0);
        assert_eq!(frames_to_ns(44100, 44100), 1_000_000_000);
        // One frame at 44.1 kHz is 22675.73 ns: rounded down.
        assert_eq!(frames_to_ns(1, 44100), 22675);
        // Spans from running frame counts add up to the span of the total: no gap, no overlap.
        let mut end = 0;
        for n in [1u64, 37, 1001, 4097, 333] {
            let before: u64 = end;
            end += n;
            let (a, b) = (frames_to_ns(before, 44100), frames_to_ns(end, 44100));
            assert!(b > a);
        }
        assert_eq!(frames_to_ns(end, 44100), frames_to_ns(5469, 44100));
        // No overflow for a year of 192 kHz audio; a zero rate is no division by zero.
        let year = 365 * 24 * 3600 * 192_000u64;
        assert_eq!(frames_to_ns(year, 192_000), 365 * 24 * 3600 * 1_000_000_000);
        assert_eq!(frames_to_ns(5, 0), 5_000_000_000);
    }

    #[test]
    fn ns_to_frames_rounds_to_the_nearest_frame() {
        assert_eq!(ns_to_frames(1_000_000_000, 48000), 48000);
        // 10.4 us is 0.4992 frames at 48 kHz, 10.5 us 0.504.
        assert_eq!(ns_to_frames(10_400, 48000), 0);
        assert_eq!(ns_to_frames(10_500, 48000), 1);
        // Round trip of every frame count through ns and back.
        for rate in [8000u32, 44100, 48000, 96000] {
            for frames in [0u64, 1, 2, 441, 44099, 1_000_003] {
                assert_eq!(ns_to_frames(frames_to_ns(frames, rate), rate), frames);
            }
        }
        let f = StreamFormat::new(44100, 2, 16).unwrap();
        assert_eq!(f.frames_to_ns(441), 10_000_000);
        assert_eq!(f.ns_to_frames(10_000_000), 441);
    }

    #[test]
    fn sizes_and_names_of_a_format() {
        let f = StreamFormat::new(48000, 6, 24).unwrap();
        assert_eq!(f.bytes_per_sample(), 3);
        assert_eq!(f.bytes_per_frame(), 18);
        assert_eq!(f.bytes_per_second(), 864_000);
        assert_eq!(f.to_string(), "48000 Hz, 6 channels, 24-bit");
        assert_eq!(
            StreamFormat::new(8000, 1, 16).unwrap().to_string(),
            "8000 Hz, 1 channel, 16-bit"
        );
        // 1 ms at 44.1 kHz is 44.1 frames: the shortest block covering it has 45.
        assert_eq!(f.min_chunk_bytes(), 48 * 18);
        assert_eq!(
            StreamFormat::new(1, 1, 16).unwrap().min_chunk_bytes(),
            2,
            "at least one frame"
        );
    }

    #[test]
    fn unsupported_formats_say_what_is_supported() {
        for (rate, channels, bits) in [(0, 2, 16), (44100, 0, 16), (44100, 2, 32), (44100, 2, 8)] {
            let e = StreamFormat::new(rate, channels, bits)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{rate} Hz, {channels} channels, {bits}-bit"))
                    && e.contains("16 or 24-bit"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_frame_of_the_largest_block_fits_its_size_field() {
        let mut out = vec![0xAA];
        let pcm = vec![7u8; MAX_BLOCK_BYTES];
        encode_frame_into(&mut out, &SessionId([1; 16]), 42, &pcm).unwrap();
        // Appended after what was there, header then PCM.
        assert_eq!(out.len(), 1 + HEADER_LEN + MAX_BLOCK_BYTES);
        assert_eq!(out[0], 0xAA);
        assert_eq!(&out[1..4], b"rsp");
        assert_eq!(u16::from_le_bytes([out[1 + 31], out[1 + 32]]), 65535);
        assert_eq!(
            u32::from_le_bytes(out[1 + 27..1 + 31].try_into().unwrap()),
            crc32c(&pcm)
        );
        assert_eq!(out[1 + 33], 0, "flags");
    }
}
