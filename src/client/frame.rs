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
