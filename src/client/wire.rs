//! One connection to a RACS server: a length-prefixed request and its reply, in lock-step.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::command::{Command, InfoAttr};
use super::error::{Error, Result};
use super::frame::{encode_frame_into, SessionId, StreamFormat};

/// Replies larger than this are taken for garbage rather than allocated.
pub const MAX_REPLY_BYTES: u64 = 1 << 31;

/// One decoded reply object.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Error(String),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// SEARCH results; names are raw bytes on the server and decoded leniently.
    List(Vec<String>),
    /// `s32v`, `u8v` and the other vector types: the type name and the raw bytes.
    Bytes {
        kind: String,
        data: Vec<u8>,
    },
}

/// A whole reply: normally one object, but the server can send none (an empty command) or two
/// (FORMAT with a wrong argument count after EXTRACT).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply(pub Vec<Value>);

fn lossy(value: rmpv::Value) -> Option<String> {
    match value {
        rmpv::Value::String(s) => Some(String::from_utf8_lossy(&s.into_bytes()).into_owned()),
        rmpv::Value::Binary(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    }
}

fn decode_object(value: rmpv::Value) -> std::result::Result<Value, String> {
    let rmpv::Value::Array(items) = value else {
        return Err(format!("expected an array, got {value}"));
    };
    let mut items = items.into_iter();
    let kind = items
        .next()
        .and_then(lossy)
        .ok_or("the reply has no type name")?;
    let first = items.next();
    let missing = || format!("a {kind:?} reply without its value");
    Ok(match kind.as_str() {
        "null" => Value::Null,
        "error" => Value::Error(first.and_then(lossy).ok_or_else(missing)?),
        "string" => Value::Str(first.and_then(lossy).ok_or_else(missing)?),
        "int" => Value::Int(
            first
                .and_then(|v| v.as_i64().or_else(|| v.as_u64().map(|u| u as i64)))
                .ok_or_else(missing)?,
        ),
        "float" => Value::Float(first.and_then(|v| v.as_f64()).ok_or_else(missing)?),
        "bool" => Value::Bool(first.and_then(|v| v.as_bool()).ok_or_else(missing)?),
        "list" => Value::List(
            first
                .into_iter()
                .chain(items)
                .map(|v| lossy(v).ok_or("a list entry that is not a string"))
                .collect::<std::result::Result<_, _>>()?,
        ),
        _ => match first {
            Some(rmpv::Value::Binary(data)) => Value::Bytes { kind, data },
            _ => return Err(format!("unknown reply type {kind:?}")),
        },
    })
}

impl Reply {
    /// Decodes every msgpack object in a reply body.
    pub fn decode(mut body: &[u8]) -> std::result::Result<Reply, String> {
        let mut objects = Vec::new();
        while !body.is_empty() {
            let value =
                rmpv::decode::read_value(&mut body).map_err(|e| format!("bad msgpack: {e}"))?;
            objects.push(decode_object(value)?);
        }
        Ok(Reply(objects))
    }

    /// The reply as a result: the first error object if there is one, else the first object.
    pub fn into_value(self) -> Result<Value> {
        if let Some(msg) = self.0.iter().find_map(|v| match v {
            Value::Error(msg) => Some(msg.clone()),
            _ => None,
        }) {
            return Err(Error::Server(msg));
        }
        self.0.into_iter().next().ok_or_else(|| {
            Error::Server("empty reply (the server did not take the request)".into())
        })
    }
}

/// A connection in strict lock-step: one request in flight, each prefix and payload written
/// together, every request bounded by a timeout. After any transport error or timeout the
/// connection is marked broken and must be dropped: its position in the reply stream is unknown.
pub struct Connection {
    stream: TcpStream,
    addr: String,
    timeout: Duration,
    out: Vec<u8>,
    broken: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("broken", &self.broken)
            .finish()
    }
}

impl Connection {
    /// Connects to `addr` ("host:port"), giving up after `timeout`.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Connection> {
        let connect_err = |reason: String| Error::Connect {
            addr: addr.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_err(format!("no answer within {} ms", timeout.as_millis())))?
            .map_err(|e| connect_err(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| connect_err(e.to_string()))?;
        Ok(Connection {
            stream,
            addr: addr.to_string(),
            timeout,
            out: Vec::with_capacity(64 * 1024 + 64),
            broken: false,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Whether a transport error or timeout left this connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether the peer has closed the connection or sent bytes nobody asked for, checked
    /// without waiting. Such a connection must not be reused.
    pub fn is_stale(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(
            self.stream.try_read(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Sends the request already in `self.out` and reads its reply.
    async fn round_trip(&mut self, what: &str) -> Result<Reply> {
        if self.broken {
            return Err(Error::Io {
                addr: self.addr.clone(),
                reason: "the connection was already broken".into(),
            });
        }
        let timeout = self.timeout;
        // Broken until the reply is in: if this future is dropped half-way (a cancelled wait),
        // the connection's place in the reply stream is unknown and it must not be reused.
        self.broken = true;
        let result = match tokio::time::timeout(timeout, self.exchange()).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                addr: self.addr.clone(),
                what: what.to_string(),
                after: timeout,
            }),
        };
        self.broken = result.is_err();
        result
    }

    async fn exchange(&mut self) -> Result<Reply> {
        let io_err = |addr: &str, e: std::io::Error| Error::Io {
            addr: addr.to_string(),
            reason: e.to_string(),
        };
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|e| io_err(&self.addr, e))?;
        let mut prefix = [0u8; 8];
        self.stream.read_exact(&mut prefix).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Io {
                    addr: self.addr.clone(),
                    reason: "the server closed the connection without replying".into(),
                }
            } else {
                io_err(&self.addr, e)
            }
        })?;
        let len = u64::from_le_bytes(prefix);
        if len > MAX_REPLY_BYTES {
            return Err(Error::Protocol {
                addr: self.addr.clone(),
                reason: format!("a reply announced as {len} bytes"),
            });
        }
        // Memory grows with what arrives, not with what a garbage prefix announces.
        let mut body = Vec::with_capacity(len.min(64 << 20) as usize);
        (&mut self.stream)
            .take(len)
            .read_to_end(&mut body)
            .await
            .map_err(|e| io_err(&self.addr, e))?;
        if (body.len() as u64) < len {
            return Err(Error::Io {
                addr: self.addr.clone(),
                reason: format!(
                    "the server closed the connection after {} of a {len}-byte reply",
                    body.len()
                ),
            });
        }
        Reply::decode(&body).map_err(|reason| Error::Protocol {
            addr: self.addr.clone(),
            reason,
        })
    }

    /// The result a reply carries. An empty reply (N=0) means the server lost the request (a
    /// split length prefix on the real server): the connection's place in the reply stream is
    /// no longer certain, so it is marked broken and the error is a connection error.
    fn value_of(&mut self, reply: Reply) -> Result<Value> {
        if reply.0.is_empty() {
            self.broken = true;
            return Err(Error::Protocol {
                addr: self.addr.clone(),
                reason: "an empty reply: the server did not take the request".into(),
            });
        }
        reply.into_value()
    }

    /// Sends one raw payload (a NUL-terminated command or a frame) and returns the reply.
    pub async fn request(&mut self, payload: &[u8]) -> Result<Reply> {
        self.out.clear();
        self.out
            .extend_from_slice(&(payload.len() as u64).to_le_bytes());
        self.out.extend_from_slice(payload);
        self.round_trip("a request").await
    }

    /// Runs one command and returns its result; an error reply becomes `Error::Server`.
    pub async fn command(&mut self, cmd: &Command) -> Result<Value> {
        self.out.clear();
        let text = cmd.as_str().as_bytes();
        self.out
            .extend_from_slice(&(text.len() as u64 + 1).to_le_bytes());
        self.out.extend_from_slice(text);
        self.out.push(0);
        let verb = cmd.as_str().split(' ').next().unwrap_or_default();
        {
            let reply = self.round_trip(verb).await?;
            self.value_of(reply)
        }
    }

    fn unexpected(&self, cmd: &Command, value: Value) -> Error {
        Error::Protocol {
            addr: self.addr.clone(),
            reason: format!("unexpected reply {value:?} to {}", cmd.as_str()),
        }
    }

    async fn expect_null(&mut self, cmd: Command) -> Result<()> {
        match self.command(&cmd).await? {
            Value::Null => Ok(()),
            other => Err(self.unexpected(&cmd, other)),
        }
    }

    /// Sends one frame of PCM and waits for it to be acknowledged.
    pub async fn send_frame(
        &mut self,
        session: &SessionId,
        stream_hash: u64,
        pcm: &[u8],
    ) -> Result<()> {
        self.out.clear();
        self.out
            .extend_from_slice(&((super::frame::HEADER_LEN + pcm.len()) as u64).to_le_bytes());
        encode_frame_into(&mut self.out, session, stream_hash, pcm)?;
        let reply = self.round_trip("a frame").await?;
        match self.value_of(reply)? {
            Value::Null => Ok(()),
            other => Err(Error::Protocol {
                addr: self.addr.clone(),
                reason: format!("unexpected reply {other:?} to a frame"),
            }),
        }
    }

    pub async fn ping(&mut self) -> Result<()> {
        let cmd = Command::ping();
        match self.command(&cmd).await? {
            Value::Str(s) if s == "PONG" => Ok(()),
            other => Err(self.unexpected(&cmd, other)),
        }
    }

    /// Creates a stream; `Ok(false)` when it already exists.
    pub async fn create(&mut self, id: &str, format: &StreamFormat) -> Result<bool> {
        match self.expect_null(Command::create(id, format)?).await {
            Ok(()) => Ok(true),
            Err(Error::Server(msg)) if msg == "Failed to create stream" => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn open(&mut self, id: &str) -> Result<()> {
        self.expect_null(Command::open(id)?).await
    }

    /// Closes a stream; a stream that was not open is not an error.
    pub async fn close(&mut self, id: &str) -> Result<()> {
        match self.expect_null(Command::close(id)?).await {
            Err(Error::Server(msg)) if msg == "Stream is not open" => Ok(()),
            other => other,
        }
    }

    /// One attribute; `None` when the server cannot read it, which on RACS means either a
    /// missing stream or a value of 0 (a fresh stream's `size` and `ref`).
    pub async fn info(&mut self, id: &str, attr: InfoAttr) -> Result<Option<i64>> {
        let cmd = Command::info(id, attr)?;
        match self.command(&cmd).await {
            Ok(Value::Int(v)) => Ok(Some(v)),
            Ok(other) => Err(self.unexpected(&cmd, other)),
            Err(Error::Server(msg)) if msg == "Failure reading metadata" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A stream's format and position, or `None` when the stream does not exist.
    pub async fn stream_info(&mut self, id: &str) -> Result<Option<StreamInfo>> {
        let Some(sample_rate) = self.info(id, InfoAttr::SampleRate).await? else {
            return Ok(None);
        };
        let channels = self.info(id, InfoAttr::Channels).await?.unwrap_or(0);
        let bit_depth = self.info(id, InfoAttr::BitDepth).await?.unwrap_or(0);
        let size = self.info(id, InfoAttr::Size).await?.unwrap_or(0);
        let ref_ms = self.info(id, InfoAttr::Ref).await?.unwrap_or(0);
        Ok(Some(StreamInfo {
            sample_rate: u32::try_from(sample_rate).unwrap_or(0),
            channels: u16::try_from(channels).unwrap_or(0),
            bit_depth: u16::try_from(bit_depth).unwrap_or(0),
            size: u64::try_from(size).unwrap_or(0),
            ref_ms,
        }))
    }

    /// The stored blocks whose start time lies in `[from_ms, to_ms]`, as packed int32 LE samples.
    pub async fn extract(&mut self, id: &str, from_ms: u64, to_ms: u64) -> Result<Vec<u8>> {
        let cmd = Command::extract(id, from_ms, to_ms)?;
        match self.command(&cmd).await? {
            Value::Bytes { kind, data } if kind == "s32v" => Ok(data),
            other => Err(self.unexpected(&cmd, other)),
        }
    }

    pub async fn search(&mut self, pattern: &str) -> Result<Vec<String>> {
        let cmd = Command::search(pattern)?;
        match self.command(&cmd).await? {
            Value::List(names) => Ok(names),
            other => Err(self.unexpected(&cmd, other)),
        }
    }
}

/// What INFO reports about a stream. `size` and `ref_ms` are 0 until the first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    pub sample_rate: u32,
    pub channels: u16,
    pub bit_depth: u16,
    pub size: u64,
    pub ref_ms: i64,
}

impl StreamInfo {
    /// The stored format, or an error naming it when the plugin cannot handle it.
    pub fn format(&self) -> Result<StreamFormat> {
        StreamFormat::new(self.sample_rate, self.channels, self.bit_depth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_every_reply_shape() {
        assert_eq!(
            Reply::decode(&unhex("91a46e756c6c")).unwrap().0,
            [Value::Null]
        );
        assert_eq!(
            Reply::decode(&unhex("92a6737472696e67a4504f4e47"))
                .unwrap()
                .0,
            [Value::Str("PONG".into())]
        );
        assert_eq!(
            Reply::decode(&unhex("92a3696e74cdac44")).unwrap().0,
            [Value::Int(44100)]
        );
        let mut err = unhex("92a56572726f72b6");
        err.extend_from_slice(b"Stream is already open");
        assert_eq!(
            Reply::decode(&err).unwrap().into_value(),
            Err(Error::Server("Stream is already open".into()))
        );
        // Empty reply (N=0).
        assert_eq!(Reply::decode(&[]).unwrap().0, []);
        assert!(Reply::decode(&[]).unwrap().into_value().is_err());
        // Flat list, and the empty list.
        let list = rmpv::Value::Array(vec!["list".into(), "a".into(), "b".into()]);
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &list).unwrap();
        assert_eq!(
            Reply::decode(&buf).unwrap().0,
            [Value::List(vec!["a".into(), "b".into()])]
        );
        assert_eq!(
            Reply::decode(&unhex("91a46c697374")).unwrap().0,
            [Value::List(vec![])]
        );
        // Two objects: s32v then an error.
        let mut two = Vec::new();
        let s32v = rmpv::Value::Array(vec!["s32v".into(), rmpv::Value::Binary(vec![1, 0, 0, 0])]);
        rmpv::encode::write_value(&mut two, &s32v).unwrap();
        let e = rmpv::Value::Array(vec!["error".into(), "Expected 4 args, but got 3".into()]);
        rmpv::encode::write_value(&mut two, &e).unwrap();
        let reply = Reply::decode(&two).unwrap();
        assert_eq!(reply.0.len(), 2);
        assert_eq!(
            reply.into_value(),
            Err(Error::Server("Expected 4 args, but got 3".into()))
        );
        // Negative int and a float.
        assert_eq!(
            Reply::decode(&unhex("92a3696e74ff")).unwrap().0,
            [Value::Int(-1)]
        );
        let mut f = unhex("92a5666c6f6174cb");
        f.extend_from_slice(&1.5f64.to_be_bytes());
        assert_eq!(Reply::decode(&f).unwrap().0, [Value::Float(1.5)]);
    }

    #[test]
    fn decodes_non_utf8_strings_leniently() {
        // ["error", <str8 with invalid UTF-8>]
        let mut body = unhex("92a56572726f72a4");
        body.extend_from_slice(&[b'U', 0xff, 0xfe, b'X']);
        let reply = Reply::decode(&body).unwrap();
        match &reply.0[0] {
            Value::Error(msg) => assert!(msg.starts_with('U') && msg.ends_with('X')),
            other => panic!("{other:?}"),
        }
    }

    /// PINGs a one-shot TCP peer that answers `answer` and closes; returns the error and
    /// whether the connection was marked broken.
    fn ping_a_peer_answering(answer: &'static [u8]) -> (Error, bool) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let peer = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut sock, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            let _ = sock.read(&mut buf).unwrap();
            sock.write_all(answer).unwrap();
        });
        let out = super::super::pool::runtime().block_on(async {
            let mut conn = Connection::connect(&addr, Duration::from_secs(5))
                .await
                .unwrap();
            let err = conn.ping().await.unwrap_err();
            (err, conn.is_broken())
        });
        peer.join().unwrap();
        out
    }

    #[test]
    fn an_empty_reply_breaks_the_connection() {
        // N=0, as the real server answers when it loses a request: a connection error, and
        // the connection is not reused.
        let (err, broken) = ping_a_peer_answering(&[0; 8]);
        assert!(broken);
        assert!(err.is_connection_error(), "{err}");
        assert!(err.to_string().contains("empty reply"), "{err}");
    }

    #[test]
    fn a_reply_cut_short_is_a_connection_error() {
        // A 1 GiB reply announced, 3 bytes sent, then the peer closes.
        let (err, broken) = ping_a_peer_answering(b"\x00\x00\x00\x40\x00\x00\x00\x00abc");
        assert!(broken);
        assert!(err.is_connection_error(), "{err}");
        assert!(err.to_string().contains("after 3 of a"), "{err}");
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        for body in [
            &b"\xc1"[..],
            b"HTTP/1.1 400",
            b"\x92",
            b"\x91\x01",
            b"\x92\xa3int\xa1x",
        ] {
            assert!(Reply::decode(body).is_err(), "{body:?}");
        }
    }
}
