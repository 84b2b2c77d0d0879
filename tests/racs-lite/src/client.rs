// SPDX-License-Identifier: MPL-2.0
//! A tiny blocking client for tests and benchmarks: raw framing, no retries, no pipelining.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

pub use crate::storage::stream_hash;

/// A blocking connection speaking the raw RACS framing.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    /// Connect with a 10 s read/write timeout.
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<RawClient> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(RawClient { stream })
    }

    /// Connect to one address within `timeout`, with a 10 s read/write timeout.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<RawClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(RawClient { stream })
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// Send raw bytes as they are (no prefix).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Send `payload` behind its u64 LE length prefix, in one write.
    pub fn send_message(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut m = Vec::with_capacity(8 + payload.len());
        m.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        m.extend_from_slice(payload);
        self.stream.write_all(&m)
    }

    /// Read one reply: its u64 LE length and that many body bytes.
    pub fn read_reply(&mut self) -> io::Result<Vec<u8>> {
        let mut p = [0u8; 8];
        self.stream.read_exact(&mut p)?;
        let n = u64::from_le_bytes(p) as usize;
        let mut body = vec![0u8; n];
        self.stream.read_exact(&mut body)?;
        Ok(body)
    }

    /// Send a command string (a NUL is appended) and return the raw reply body.
    pub fn command_raw(&mut self, cmd: &str) -> io::Result<Vec<u8>> {
        let mut p = Vec::with_capacity(cmd.len() + 1);
        p.extend_from_slice(cmd.as_bytes());
        p.push(0);
        self.send_message(&p)?;
        self.read_reply()
    }

    /// Send a command string and decode every msgpack object of the reply.
    pub fn command(&mut self, cmd: &str) -> io::Result<Vec<rmpv::Value>> {
        let body = self.command_raw(cmd)?;
        decode_all(&body)
    }

    /// Send a frame payload and decode the reply.
    pub fn frame(&mut self, frame: &[u8]) -> io::Result<Vec<rmpv::Value>> {
        self.send_message(frame)?;
        let body = self.read_reply()?;
        decode_all(&body)
    }
}

/// Decode all concatenated msgpack objects of a reply body.
pub fn decode_all(mut body: &[u8]) -> io::Result<Vec<rmpv::Value>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let v = rmpv::decode::read_value(&mut body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        out.push(v);
    }
    Ok(out)
}

/// Build a frame payload (without the length prefix) for stream `id`.
pub fn build_frame(session: &[u8; 16], id: &[u8], pcm: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + pcm.len());
    f.extend_from_slice(b"rsp");
    f.extend_from_slice(session);
    f.extend_from_slice(&stream_hash(id).to_le_bytes());
    f.extend_from_slice(&crc32c::crc32c(pcm).to_le_bytes());
    f.extend_from_slice(&(pcm.len() as u16).to_le_bytes());
    f.push(0);
    f.extend_from_slice(pcm);
    f
}

/// Render a decoded reply compactly, e.g. `["string","PONG"]` or `["error","..."]`.
pub fn show(values: &[rmpv::Value]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}
