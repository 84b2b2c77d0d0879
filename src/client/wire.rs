//! One connection to a RACS server: a length-prefixed request and its reply, in lock-step.

use std::io::{IoSlice, Read};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::command::{Command, InfoAttr};
use super::error::{Error, Result};
use super::frame::{crc32c, SessionId, StreamFormat, HEADER_LEN, MAX_BLOCK_BYTES};

/// The length prefix and header of a frame carrying `pcm` (the layout `encode_frame_into`
/// writes), without the PCM.
fn frame_head(session: &SessionId, stream_hash: u64, pcm: &[u8]) -> Result<[u8; FRAME_HEAD_LEN]> {
    let len = u16::try_from(pcm.len()).map_err(|_| {
        Error::InvalidArgument(format!(
            "a frame carries at most {MAX_BLOCK_BYTES} bytes of PCM, not {}",
            pcm.len()
        ))
    })?;
    let mut head = [0u8; FRAME_HEAD_LEN];
    head[..8].copy_from_slice(&((HEADER_LEN + pcm.len()) as u64).to_le_bytes());
    head[8..11].copy_from_slice(b"rsp");
    head[11..27].copy_from_slice(&session.0);
    head[27..35].copy_from_slice(&stream_hash.to_le_bytes());
    head[35..39].copy_from_slice(&crc32c(pcm).to_le_bytes());
    head[39..41].copy_from_slice(&len.to_le_bytes());
    // head[41]: flags, 0.
    Ok(head)
}

/// Pending once (waking itself at once), then ready.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Where the samples lie in a reply body that is exactly one `["s32v", bin]` object.
fn s32v_samples(body: &[u8]) -> Option<std::ops::Range<usize>> {
    let rest = body.strip_prefix(b"\x92\xa4s32v")?;
    let (len, header) = match *rest.first()? {
        0xc4 => (usize::from(*rest.get(1)?), 2),
        0xc5 => (
            usize::from(u16::from_be_bytes(rest.get(1..3)?.try_into().ok()?)),
            3,
        ),
        0xc6 => (
            u32::from_be_bytes(rest.get(1..5)?.try_into().ok()?) as usize,
            5,
        ),
        _ => return None,
    };
    let start = 6 + header;
    (body.len() == start + len).then_some(start..body.len())
}

/// Writes all of `parts` with `sendmsg`; MSG_NOSIGNAL, because a host program (gst-launch, a
/// Python interpreter) may not ignore SIGPIPE, and a peer that went away must be an error, not
/// the end of the process.
fn send_all(sock: &std::net::TcpStream, mut parts: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        // SAFETY: msghdr points at `parts`, which outlive the call; the kernel only reads them.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = parts.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = parts.len() as _;
            libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut parts, n as usize);
    }
    Ok(())
}

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

/// `["null"]`: the reply to a stored frame, OPEN, CLOSE and CREATE.
const NULL_REPLY: &[u8] = b"\x91\xa4null";

/// Bytes of a frame request before its PCM: the length prefix and the frame header.
const FRAME_HEAD_LEN: usize = 8 + HEADER_LEN;

/// A reply body kept between requests is freed when it grew beyond this (a large EXTRACT).
const KEEP_BODY_BYTES: usize = 1 << 20;

/// How the socket is driven.
enum Io {
    /// A blocking socket, not registered with any runtime: requests made under
    /// [`block_on`](super::pool::block_on) call `sendmsg`/`recv` on the calling thread. Shared
    /// with the canceller while a call blocks, so that `cancel()` can shut it down.
    Direct(Arc<std::net::TcpStream>),
    /// Registered with the runtime the request is polled in: requests made in a task.
    Async(TcpStream),
    /// Only while switching between the two, or after a switch failed.
    Detached,
}

/// A connection in strict lock-step: one request in flight, each prefix and payload written
/// together, every request bounded by a timeout. After any transport error or timeout the
/// connection is marked broken and must be dropped: its position in the reply stream is unknown.
///
/// Under [`block_on`](super::pool::block_on) a request runs on the calling thread with blocking
/// socket calls (one `sendmsg` of the prefix, the header and the caller's PCM, then `recv`), so
/// the reply wakes that thread itself; in a task it waits on the runtime as any async I/O. The
/// socket moves between the two as it is used, which costs a few system calls per switch.
pub struct Connection {
    io: Io,
    addr: String,
    timeout: Duration,
    /// The send/receive timeout set on the blocking socket, if any.
    socket_timeout: Option<Duration>,
    /// A command request, or a whole frame request when the runtime drives the socket.
    out: Vec<u8>,
    /// The last reply's body, kept for the next one.
    body: Vec<u8>,
    broken: bool,
    /// A frame sent with [`start_frame`](Connection::start_frame) whose reply is still to be
    /// read, and when its time is up.
    pending: Option<std::time::Instant>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("broken", &self.broken)
            .finish()
    }
}

/// What a request sends.
enum Payload<'a> {
    /// `Connection::out`, prefix included.
    Out,
    /// A frame: the prefix and header, then the caller's PCM.
    Frame(&'a [u8; FRAME_HEAD_LEN], &'a [u8]),
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
            io: Io::Async(stream),
            addr: addr.to_string(),
            timeout,
            socket_timeout: None,
            out: Vec::with_capacity(256),
            body: Vec::new(),
            broken: false,
            pending: None,
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
        match &self.io {
            Io::Async(stream) => !matches!(
                stream.try_read(&mut probe),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
            Io::Direct(sock) => {
                // SAFETY: a valid socket and a 1-byte buffer; MSG_PEEK leaves the data queued.
                let n = unsafe {
                    libc::recv(
                        sock.as_raw_fd(),
                        probe.as_mut_ptr().cast(),
                        1,
                        libc::MSG_PEEK | libc::MSG_DONTWAIT,
                    )
                };
                !(n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock)
            }
            Io::Detached => true,
        }
    }

    fn io_error(&self, e: std::io::Error) -> Error {
        Error::Io {
            addr: self.addr.clone(),
            reason: e.to_string(),
        }
    }

    fn timeout_error(&self, what: &str) -> Error {
        Error::Timeout {
            addr: self.addr.clone(),
            what: what.to_string(),
            after: self.timeout,
        }
    }

    fn closed_error(&self, got: usize, len: Option<u64>) -> Error {
        Error::Io {
            addr: self.addr.clone(),
            reason: match len {
                None => "the server closed the connection without replying".into(),
                Some(len) => {
                    format!("the server closed the connection after {got} of a {len}-byte reply")
                }
            },
        }
    }

    fn check_reply_len(&self, len: u64) -> Result<usize> {
        if len > MAX_REPLY_BYTES {
            return Err(Error::Protocol {
                addr: self.addr.clone(),
                reason: format!("a reply announced as {len} bytes"),
            });
        }
        Ok(len as usize)
    }

    /// Sends a request and reads its reply into `self.body`.
    async fn round_trip(&mut self, what: &str, payload: Payload<'_>) -> Result<()> {
        if self.broken {
            return Err(Error::Io {
                addr: self.addr.clone(),
                reason: "the connection was already broken".into(),
            });
        }
        if self.body.capacity() > KEEP_BODY_BYTES {
            self.body = Vec::new();
        }
        // Broken until the reply is in: if this future is dropped half-way (a cancelled wait),
        // the connection's place in the reply stream is unknown and it must not be reused.
        self.broken = true;
        let result = match super::pool::direct_canceller() {
            Some(canceller) => self.exchange_direct(what, payload, &canceller).await,
            None => {
                let timeout = self.timeout;
                match tokio::time::timeout(timeout, self.exchange_async(payload)).await {
                    Ok(result) => result.map(|()| false),
                    Err(_) => Err(self.timeout_error(what)),
                }
            }
        };
        self.broken = !matches!(result, Ok(false));
        result.map(|_| ())
    }

    /// The blocking socket, switched out of the runtime if it was registered there.
    fn direct_socket(&mut self) -> Result<Arc<std::net::TcpStream>> {
        if let Io::Direct(sock) = &self.io {
            return Ok(sock.clone());
        }
        let Io::Async(stream) = std::mem::replace(&mut self.io, Io::Detached) else {
            return Err(Error::Io {
                addr: self.addr.clone(),
                reason: "the connection's socket was lost".into(),
            });
        };
        let sock = stream.into_std().map_err(|e| self.io_error(e))?;
        sock.set_nonblocking(false).map_err(|e| self.io_error(e))?;
        self.socket_timeout = None;
        let sock = Arc::new(sock);
        self.io = Io::Direct(sock.clone());
        Ok(sock)
    }

    /// The socket registered with the runtime this is polled in.
    fn async_socket(&mut self) -> Result<&mut TcpStream> {
        if let Io::Direct(_) | Io::Detached = self.io {
            let Io::Direct(sock) = std::mem::replace(&mut self.io, Io::Detached) else {
                return Err(Error::Io {
                    addr: self.addr.clone(),
                    reason: "the connection's socket was lost".into(),
                });
            };
            // Unique: the canceller lets go of it when the blocking call ends.
            let sock = Arc::try_unwrap(sock).map_err(|_| Error::Io {
                addr: self.addr.clone(),
                reason: "the connection's socket is still shared".into(),
            })?;
            sock.set_nonblocking(true).map_err(|e| self.io_error(e))?;
            self.io = Io::Async(TcpStream::from_std(sock).map_err(|e| self.io_error(e))?);
        }
        match &mut self.io {
            Io::Async(stream) => Ok(stream),
            _ => unreachable!("switched above"),
        }
    }

    /// One request and its reply with blocking calls on this thread; `canceller` can shut the
    /// socket down to end them at once.
    ///
    /// Between sending and waiting for the reply it yields once, so that requests joined in
    /// one future (`tokio::join!`) are all sent before any of their replies is awaited, as they
    /// would be on the runtime; a request alone pays a few atomic operations for that.
    async fn exchange_direct(
        &mut self,
        what: &str,
        payload: Payload<'_>,
        canceller: &super::pool::Canceller,
    ) -> Result<bool> {
        let sock = self.direct_socket()?;
        if self.socket_timeout != Some(self.timeout) {
            sock.set_read_timeout(Some(self.timeout).filter(|t| !t.is_zero()))
                .and_then(|()| sock.set_write_timeout(Some(self.timeout).filter(|t| !t.is_zero())))
                .map_err(|e| self.io_error(e))?;
            self.socket_timeout = Some(self.timeout);
        }
        let deadline = std::time::Instant::now() + self.timeout;
        let guard = canceller.guard_socket(&sock)?;
        let sent = self.send_blocking(&sock, what, payload);
        drop(guard);
        if canceller.is_cancelled() {
            // The socket may have been shut down, whatever the call returned.
            return Err(Error::Cancelled);
        }
        sent?;
        YieldOnce(false).await;
        let guard = canceller.guard_socket(&sock)?;
        let received = self.recv_blocking(&sock, what, deadline);
        drop(guard);
        if canceller.is_cancelled() {
            return Err(Error::Cancelled);
        }
        received
    }

    fn blocking_error(&self, what: &str, e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                self.timeout_error(what)
            }
            _ => self.io_error(e),
        }
    }

    fn send_blocking(
        &self,
        sock: &std::net::TcpStream,
        what: &str,
        payload: Payload<'_>,
    ) -> Result<()> {
        let sent = match payload {
            Payload::Out => send_all(sock, &mut [IoSlice::new(&self.out)]),
            Payload::Frame(head, pcm) => {
                send_all(sock, &mut [IoSlice::new(head), IoSlice::new(pcm)])
            }
        };
        sent.map_err(|e| self.blocking_error(what, e))
    }

    /// Reads a reply into `self.body`; `Ok(true)` when bytes followed it.
    fn recv_blocking(
        &mut self,
        sock: &std::net::TcpStream,
        what: &str,
        deadline: std::time::Instant,
    ) -> Result<bool> {
        let map_io = |this: &Self, e: std::io::Error| this.blocking_error(what, e);
        // The prefix and, for the short replies frames get, the whole body in one call. A
        // reply never has bytes after it in lock-step; any that arrive mean the peer is not
        // speaking the protocol, and the connection is not reused.
        let mut head = [0u8; 64];
        let mut got = 0;
        let mut reader = sock;
        while got < 8 {
            match reader.read(&mut head[got..]) {
                Ok(0) => return Err(self.closed_error(0, None)),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_io(self, e)),
            }
            if got < 8 {
                self.check_deadline(sock, deadline, what)?;
            }
        }
        let len = self.check_reply_len(u64::from_le_bytes(head[..8].try_into().unwrap()))?;
        let stray = got > 8 + len;
        self.body.clear();
        self.body.extend_from_slice(&head[8..got.min(8 + len)]);
        while self.body.len() < len {
            // Memory grows with what arrives, not with what a garbage prefix announces.
            let have = self.body.len();
            let step = (len - have).min(have.max(64 << 10));
            self.body.resize(have + step, 0);
            let mut filled = have;
            while filled < have + step {
                match reader.read(&mut self.body[filled..have + step]) {
                    Ok(0) => {
                        self.body.truncate(filled);
                        return Err(self.closed_error(filled, Some(len as u64)));
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.body.truncate(filled);
                        return Err(map_io(self, e));
                    }
                }
                if filled < len {
                    self.check_deadline(sock, deadline, what)?;
                }
            }
        }
        // Answered; but bytes after the reply mean the peer does not keep lock-step, so the
        // connection must not be reused.
        Ok(stray)
    }

    /// Errors once `deadline` is past; otherwise makes sure the socket's timeout does not
    /// reach beyond it (a reply that trickles in is bounded as a whole).
    fn check_deadline(
        &mut self,
        sock: &std::net::TcpStream,
        deadline: std::time::Instant,
        what: &str,
    ) -> Result<()> {
        if self.timeout.is_zero() {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(self.timeout_error(what));
        }
        // Lowered only once most of the time is gone: a system call per read otherwise.
        if self.socket_timeout.is_some_and(|t| left < t / 2) {
            sock.set_read_timeout(Some(left))
                .map_err(|e| self.io_error(e))?;
            self.socket_timeout = Some(left);
        }
        Ok(())
    }

    async fn exchange_async(&mut self, payload: Payload<'_>) -> Result<()> {
        if let Payload::Frame(head, pcm) = payload {
            // One write, as the protocol wants the prefix and its message together.
            self.out.clear();
            self.out.extend_from_slice(head);
            self.out.extend_from_slice(pcm);
        }
        let addr = self.addr.clone();
        let io_err = |e: std::io::Error| Error::Io {
            addr: addr.clone(),
            reason: e.to_string(),
        };
        let out = std::mem::take(&mut self.out);
        let mut body = std::mem::take(&mut self.body);
        let result = async {
            let stream = self.async_socket()?;
            stream.write_all(&out).await.map_err(io_err)?;
            let mut prefix = [0u8; 8];
            stream.read_exact(&mut prefix).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    self.closed_error(0, None)
                } else {
                    io_err(e)
                }
            })?;
            let len = self.check_reply_len(u64::from_le_bytes(prefix))?;
            let stream = self.async_socket()?;
            body.clear();
            // Memory grows with what arrives, not with what a garbage prefix announces.
            stream
                .take(len as u64)
                .read_to_end(&mut body)
                .await
                .map_err(io_err)?;
            if body.len() < len {
                return Err(self.closed_error(body.len(), Some(len as u64)));
            }
            Ok(())
        }
        .await;
        self.out = out;
        self.body = body;
        result
    }

    /// The reply in `self.body`, decoded.
    fn reply(&self) -> Result<Reply> {
        Reply::decode(&self.body).map_err(|reason| Error::Protocol {
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
        self.round_trip("a request", Payload::Out).await?;
        self.reply()
    }

    /// Runs one command and returns its result; an error reply becomes `Error::Server`.
    pub async fn command(&mut self, cmd: &Command) -> Result<Value> {
        self.send_command(cmd).await?;
        let reply = self.reply()?;
        self.value_of(reply)
    }

    /// Sends one command and reads its reply into `self.body`.
    async fn send_command(&mut self, cmd: &Command) -> Result<()> {
        self.out.clear();
        let text = cmd.as_str().as_bytes();
        self.out
            .extend_from_slice(&(text.len() as u64 + 1).to_le_bytes());
        self.out.extend_from_slice(text);
        self.out.push(0);
        let verb = cmd.as_str().split(' ').next().unwrap_or_default();
        self.round_trip(verb, Payload::Out).await
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
    ///
    /// The PCM is not copied under [`block_on`](super::pool::block_on): the prefix and header
    /// (CRC included) are written into a small buffer and sent with the PCM in one `sendmsg`.
    pub async fn send_frame(
        &mut self,
        session: &SessionId,
        stream_hash: u64,
        pcm: &[u8],
    ) -> Result<()> {
        let head = frame_head(session, stream_hash, pcm)?;
        self.round_trip("a frame", Payload::Frame(&head, pcm))
            .await?;
        if self.body == NULL_REPLY {
            return Ok(());
        }
        let reply = self.reply()?;
        match self.value_of(reply)? {
            Value::Null => Ok(()),
            other => Err(Error::Protocol {
                addr: self.addr.clone(),
                reason: format!("unexpected reply {other:?} to a frame"),
            }),
        }
    }

    /// Sends one frame of PCM on the calling thread and returns without waiting for its
    /// reply; [`finish_frame`](Connection::finish_frame) reads it. In between, the calling
    /// thread can do other work (gather the next frame) while the server stores this one; the
    /// connection stays in lock-step: no other request goes out before that reply is read, and
    /// a connection dropped in between is not reused (it counts as broken until then).
    ///
    /// Only under [`block_on`](super::pool::block_on), which lets the calling thread drive the
    /// socket; elsewhere it fails without sending anything. As in `send_frame`, the PCM is not
    /// copied: prefix and header go out with it in one `sendmsg`.
    pub fn start_frame(&mut self, session: &SessionId, stream_hash: u64, pcm: &[u8]) -> Result<()> {
        let canceller = super::pool::direct_canceller().ok_or_else(|| Error::Io {
            addr: self.addr.clone(),
            reason: "a frame without waiting for its reply is sent only from a thread that \
                     drives its own socket (block_on)"
                .into(),
        })?;
        if self.broken {
            return Err(Error::Io {
                addr: self.addr.clone(),
                reason: "the connection was already broken".into(),
            });
        }
        let head = frame_head(session, stream_hash, pcm)?;
        if self.body.capacity() > KEEP_BODY_BYTES {
            self.body = Vec::new();
        }
        let sock = self.direct_socket()?;
        if self.socket_timeout != Some(self.timeout) {
            sock.set_read_timeout(Some(self.timeout).filter(|t| !t.is_zero()))
                .and_then(|()| sock.set_write_timeout(Some(self.timeout).filter(|t| !t.is_zero())))
                .map_err(|e| self.io_error(e))?;
            self.socket_timeout = Some(self.timeout);
        }
        // Broken until the reply is read.
        self.broken = true;
        let deadline = std::time::Instant::now() + self.timeout;
        let guard = canceller.guard_socket(&sock)?;
        let sent = self.send_blocking(&sock, "a frame", Payload::Frame(&head, pcm));
        drop(guard);
        if canceller.is_cancelled() {
            return Err(Error::Cancelled);
        }
        sent?;
        self.pending = Some(deadline);
        Ok(())
    }

    /// Whether a frame sent with [`start_frame`](Connection::start_frame) awaits its reply.
    pub fn frame_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Reads the reply to the frame sent with [`start_frame`](Connection::start_frame),
    /// blocking the calling thread (under [`block_on`](super::pool::block_on); its canceller
    /// ends the wait at once). Bounded by the connection's timeout from the send.
    pub fn finish_frame(&mut self) -> Result<()> {
        let Some(deadline) = self.pending.take() else {
            return Err(Error::Io {
                addr: self.addr.clone(),
                reason: "no frame is waiting for its reply on this connection".into(),
            });
        };
        let canceller = super::pool::direct_canceller().ok_or_else(|| Error::Io {
            addr: self.addr.clone(),
            reason: "a frame's reply is read only on a thread that drives its own socket \
                     (block_on)"
                .into(),
        })?;
        let Io::Direct(sock) = &self.io else {
            return Err(Error::Io {
                addr: self.addr.clone(),
                reason: "the connection's socket was lost".into(),
            });
        };
        let sock = sock.clone();
        let guard = canceller.guard_socket(&sock)?;
        let received = self.recv_blocking(&sock, "a frame", deadline);
        drop(guard);
        if canceller.is_cancelled() {
            return Err(Error::Cancelled);
        }
        self.broken = !matches!(received, Ok(false));
        received?;
        if self.body == NULL_REPLY {
            return Ok(());
        }
        let reply = self.reply()?;
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
    ///
    /// The samples are the reply's own buffer, moved out past its msgpack header: no second
    /// copy of a page, and no second page-sized allocation.
    pub async fn extract(&mut self, id: &str, from_ms: u64, to_ms: u64) -> Result<Vec<u8>> {
        let cmd = Command::extract(id, from_ms, to_ms)?;
        self.send_command(&cmd).await?;
        if let Some(samples) = s32v_samples(&self.body) {
            let mut data = std::mem::take(&mut self.body);
            data.truncate(samples.end);
            data.drain(..samples.start);
            return Ok(data);
        }
        let reply = self.reply()?;
        match self.value_of(reply)? {
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
    fn the_frame_head_and_pcm_are_the_contract_frame() {
        let session = SessionId(core::array::from_fn(|i| i as u8 + 1));
        let pcm = [0x00, 0x00, 0xe8, 0x03, 0x18, 0xfc, 0xff, 0x7f];
        let hash = super::super::frame::stream_hash(b"chopin");
        let mut whole = Vec::new();
        super::super::frame::encode_frame_into(&mut whole, &session, hash, &pcm).unwrap();
        let head = frame_head(&session, hash, &pcm).unwrap();
        assert_eq!(&head[..8], &unhex("2a00000000000000")[..]);
        assert_eq!([&head[8..], &pcm[..]].concat(), whole);
        assert!(frame_head(&session, hash, &[0; 65536]).is_err());
    }

    /// A peer that answers each request (read in one go) with the next of `answers`, then
    /// stays silent with the connection open until the test ends.
    fn scripted_peer(
        answers: Vec<Vec<u8>>,
    ) -> (
        String,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<()>,
    ) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (done, until) = std::sync::mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            for answer in answers {
                let mut buf = [0u8; 256];
                if sock.read(&mut buf).unwrap_or(0) == 0 {
                    return;
                }
                sock.write_all(&answer).unwrap();
            }
            let _ = until.recv_timeout(Duration::from_secs(30));
        });
        (addr, done, peer)
    }

    fn pong() -> Vec<u8> {
        let body = unhex("92a6737472696e67a4504f4e47");
        [&(body.len() as u64).to_le_bytes()[..], &body].concat()
    }

    fn connect_direct(addr: &str, c: &Canceller) -> Connection {
        block_on(c, Connection::connect(addr, Duration::from_secs(5))).unwrap()
    }

    use super::super::pool::{block_on, runtime, Canceller};

    fn null_reply() -> Vec<u8> {
        [&(NULL_REPLY.len() as u64).to_le_bytes()[..], NULL_REPLY].concat()
    }

    #[test]
    fn a_frame_sent_ahead_keeps_the_connection_in_lock_step_until_its_reply_is_read() {
        let (addr, done, peer) = scripted_peer(vec![null_reply(), pong()]);
        let c = Canceller::new();
        let mut conn = connect_direct(&addr, &c);
        let session = SessionId([7; 16]);
        // Not on a thread that drives its own socket: refused, nothing sent.
        let e = conn.start_frame(&session, 1, &[0u8; 64]).unwrap_err();
        assert!(e.to_string().contains("block_on"), "{e}");
        assert!(!conn.is_broken());
        block_on(&c, async { conn.start_frame(&session, 1, &[0u8; 64]) }).unwrap();
        assert!(conn.frame_pending() && conn.is_broken());
        // No other request goes out before the reply is read.
        assert!(block_on(&c, conn.ping()).is_err());
        block_on(&c, async { conn.finish_frame() }).unwrap();
        assert!(!conn.frame_pending() && !conn.is_broken());
        block_on(&c, conn.ping()).unwrap();
        // No frame waits: an error, not a read of someone else's reply.
        assert!(block_on(&c, async { conn.finish_frame() }).is_err());
        done.send(()).unwrap();
        peer.join().unwrap();
    }

    #[test]
    fn a_connection_moves_between_the_calling_thread_and_the_runtime() {
        let (addr, done, peer) = scripted_peer(vec![pong(), pong(), pong(), pong()]);
        let c = Canceller::new();
        let mut conn = connect_direct(&addr, &c);
        block_on(&c, conn.ping()).unwrap();
        assert!(matches!(conn.io, Io::Direct(_)));
        runtime().block_on(conn.ping()).unwrap();
        assert!(matches!(conn.io, Io::Async(_)));
        block_on(&c, conn.ping()).unwrap();
        assert!(!conn.is_stale() && !conn.is_broken());
        // In a task on the runtime, as a spawned reader does.
        let conn = runtime()
            .block_on(runtime().spawn(async move { conn.ping().await.map(|()| conn) }))
            .unwrap()
            .unwrap();
        assert!(!conn.is_broken());
        done.send(()).unwrap();
        peer.join().unwrap();
    }

    #[test]
    fn joined_requests_are_all_sent_before_any_reply_is_awaited() {
        // Peer A answers only once peer B has its request: requests joined under block_on must
        // both go out first (as a takeover's reopen and its zero-length frame do).
        use std::io::Write;
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (addr_a, addr_b) = (
            a.local_addr().unwrap().to_string(),
            b.local_addr().unwrap().to_string(),
        );
        let (b_has_it, a_may_answer) = std::sync::mpsc::channel::<()>();
        let peer_b = std::thread::spawn(move || {
            let (mut sock, _) = b.accept().unwrap();
            let mut buf = [0u8; 64];
            let _ = sock.read(&mut buf).unwrap();
            b_has_it.send(()).unwrap();
            sock.write_all(&pong()).unwrap();
        });
        let peer_a = std::thread::spawn(move || {
            let (mut sock, _) = a.accept().unwrap();
            let mut buf = [0u8; 64];
            let _ = sock.read(&mut buf).unwrap();
            if a_may_answer.recv_timeout(Duration::from_secs(10)).is_ok() {
                sock.write_all(&pong()).unwrap();
            }
        });
        let c = Canceller::new();
        let mut conn_a = connect_direct(&addr_a, &c);
        let mut conn_b = connect_direct(&addr_b, &c);
        conn_a.set_timeout(Duration::from_secs(5));
        let (ra, rb) =
            block_on(&c, async { Ok(tokio::join!(conn_a.ping(), conn_b.ping())) }).unwrap();
        assert_eq!((ra, rb), (Ok(()), Ok(())));
        peer_a.join().unwrap();
        peer_b.join().unwrap();
    }

    #[test]
    fn cancel_interrupts_a_request_blocked_on_the_calling_thread_at_once() {
        let (addr, done, peer) = scripted_peer(vec![pong()]);
        let c = Canceller::new();
        let mut conn = connect_direct(&addr, &c);
        conn.set_timeout(Duration::from_secs(60));
        block_on(&c, conn.ping()).unwrap();
        let canceller = c.clone();
        let cancel = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            canceller.cancel();
        });
        let started = std::time::Instant::now();
        // The peer never answers this one.
        assert_eq!(block_on(&c, conn.ping()), Err(Error::Cancelled));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(conn.is_broken());
        // Sticky until reset; then the broken connection says so.
        assert_eq!(block_on(&c, conn.ping()), Err(Error::Cancelled));
        c.reset();
        let err = block_on(&c, conn.ping()).unwrap_err();
        assert!(err.to_string().contains("already broken"), "{err}");
        cancel.join().unwrap();
        done.send(()).unwrap();
        peer.join().unwrap();
    }

    #[test]
    fn a_silent_peer_times_out_on_the_calling_thread() {
        let (addr, done, peer) = scripted_peer(vec![]);
        let c = Canceller::new();
        let mut conn = connect_direct(&addr, &c);
        conn.set_timeout(Duration::from_millis(300));
        let err = block_on(&c, conn.ping()).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("PING"), "{err}");
        assert!(conn.is_broken());
        done.send(()).unwrap();
        peer.join().unwrap();
    }

    #[test]
    fn bytes_after_a_reply_retire_the_connection() {
        let mut answer = pong();
        answer.extend_from_slice(b"junk");
        let (addr, done, peer) = scripted_peer(vec![answer]);
        let c = Canceller::new();
        let mut conn = connect_direct(&addr, &c);
        block_on(&c, conn.ping()).unwrap();
        assert!(conn.is_broken());
        done.send(()).unwrap();
        peer.join().unwrap();
    }

    #[test]
    fn short_and_empty_replies_fail_the_same_on_the_calling_thread() {
        for (answer, want) in [
            (&[0u8; 8][..], "empty reply"),
            (&b"\x00\x00\x00\x40\x00\x00\x00\x00abc"[..], "after 3 of a"),
            (&b"\x03\x00"[..], "without replying"),
        ] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let peer = std::thread::spawn(move || {
                use std::io::Write;
                let (mut sock, _) = listener.accept().unwrap();
                let mut buf = [0u8; 64];
                let _ = sock.read(&mut buf).unwrap();
                sock.write_all(answer).unwrap();
            });
            let c = Canceller::new();
            let mut conn = connect_direct(&addr, &c);
            let err = block_on(&c, conn.ping()).unwrap_err();
            assert!(err.is_connection_error(), "{err}");
            assert!(err.to_string().contains(want), "{err}");
            assert!(conn.is_broken());
            peer.join().unwrap();
        }
    }

    #[test]
    fn s32v_samples_are_found_only_in_a_single_whole_object() {
        let one = |marker: &[u8], data: &[u8]| [&b"\x92\xa4s32v"[..], marker, data].concat();
        assert_eq!(s32v_samples(&one(b"\xc4\x04", b"abcd")), Some(8..12));
        assert_eq!(s32v_samples(&one(b"\xc5\x00\x04", b"abcd")), Some(9..13));
        assert_eq!(
            s32v_samples(&one(b"\xc6\x00\x00\x00\x00", b"")),
            Some(11..11)
        );
        // Cut short, followed by a second object, or another type: the general decoder.
        assert_eq!(s32v_samples(&one(b"\xc4\x05", b"abcd")), None);
        assert_eq!(s32v_samples(&one(b"\xc4\x02", b"ab\x91\xa4null")), None);
        assert_eq!(s32v_samples(b"\x92\xa3u8v\xc4\x00"), None);
        assert_eq!(s32v_samples(b"\x92\xa4s32v"), None);
    }

    #[test]
    fn a_large_reply_is_read_whole_in_a_task_too() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        let mut body = unhex("92a473333276c6");
        body.extend_from_slice(&(data.len() as u32).to_be_bytes());
        body.extend_from_slice(&data);
        let answer = [&(body.len() as u64).to_le_bytes()[..], &body].concat();
        let (addr, done, peer) = scripted_peer(vec![answer]);
        let got = runtime().block_on(async {
            let mut conn = Connection::connect(&addr, Duration::from_secs(5)).await?;
            conn.extract("x", 0, 1).await
        });
        assert_eq!(got.unwrap(), data);
        done.send(()).unwrap();
        peer.join().unwrap();
    }

    #[test]
    fn a_large_reply_is_read_whole_on_the_calling_thread() {
        // ["s32v", bin32 of 3 MB]: read in many calls, and the kept body is then let go.
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        let mut body = unhex("92a473333276c6");
        body.extend_from_slice(&(data.len() as u32).to_be_bytes());
        body.extend_from_slice(&data);
        let answer = [&(body.len() as u64).to_le_bytes()[..], &body].concat();
        let (addr, done, peer) = scripted_peer(vec![answer, pong()]);
        let c = Canceller::new();
        let mut conn = connect_direct(&addr, &c);
        let got = block_on(&c, conn.extract("x", 0, 1)).unwrap();
        assert_eq!(got, data);
        block_on(&c, conn.ping()).unwrap();
        assert!(conn.body.capacity() < KEEP_BODY_BYTES);
        done.send(()).unwrap();
        peer.join().unwrap();
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
