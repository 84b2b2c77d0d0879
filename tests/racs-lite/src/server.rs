// SPDX-License-Identifier: MPL-2.0
//! Networking: one tokio task per connection, on a runtime owned by a background thread.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::exec::{handle_payload, Outcome};
use crate::pack::{encode, encode_split};
use crate::storage::{StopMode, Store, StoreOptions};
use crate::{log, Config};

struct Shared {
    store: Mutex<Store>,
    max_connections: usize,
    max_message_bytes: usize,
    idle_timeout: Duration,
    conns: AtomicUsize,
    /// Set to request a stop.
    stop_tx: watch::Sender<bool>,
    /// How to stop: the first request wins (a SHUTDOWN already done is not redone by a kill).
    mode: Mutex<Option<StopMode>>,
    /// Set as soon as a stop is requested: no further request is served.
    stopping: AtomicBool,
    durable: bool,
}

impl Shared {
    /// Record how to stop (unless already decided) and stop serving requests.
    fn request_stop(&self, mode: StopMode) -> StopMode {
        let m = *self
            .mode
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(mode);
        self.stopping.store(true, Ordering::SeqCst);
        m
    }
}

/// Bind a listener like the real server: SO_REUSEADDR, dual-stack for IPv6 wildcard.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        let _ = sock.set_only_v6(false);
    }
    sock.bind(&addr.into())?;
    sock.listen(128)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// A running server (see [`crate::Server`] for the public wrapper).
pub(crate) struct Running {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Running {
    pub fn start(addr: SocketAddr, config: Config) -> io::Result<Running> {
        let listener = bind(addr)?;
        let local = listener.local_addr()?;
        let store = Store::open_with(
            &config.data_dir,
            StoreOptions {
                entries: config.entries,
                cache_entries: config.cache_entries,
                flush_invisible: config.flush_invisible,
                keep_colliding_tables: config.keep_colliding_tables,
            },
        )?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            max_connections: config.max_connections,
            max_message_bytes: config.max_message_bytes,
            idle_timeout: config.idle_timeout,
            conns: AtomicUsize::new(0),
            stop_tx,
            mode: Mutex::new(None),
            stopping: AtomicBool::new(false),
            durable: config.durable,
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("racs-lite-worker")
            .enable_all()
            .build()?;
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("racs-lite".into())
            .spawn(move || {
                let res = rt.block_on(async {
                    let listener = TcpListener::from_std(listener)?;
                    accept_loop(listener, sh.clone(), stop_rx).await;
                    Ok::<(), io::Error>(())
                });
                // Cancels every connection task and closes their sockets.
                rt.shutdown_timeout(Duration::from_secs(5));
                let mode = sh.request_stop(StopMode::Kill);
                let mut st = sh.store.lock().unwrap_or_else(|e| e.into_inner());
                let stopped = st.shutdown(mode);
                res.and(stopped)
            })?;
        Ok(Running {
            addr: local,
            shared,
            thread: Some(thread),
        })
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stop: `kill` loses what a `kill -9` loses; otherwise `Config::durable` decides
    /// (durable: flush and persist everything; not durable: the same loss as a kill).
    pub fn stop(&mut self, kill: bool) -> io::Result<()> {
        let mode = if kill || !self.shared.durable {
            StopMode::Kill
        } else {
            StopMode::Durable
        };
        self.shared.request_stop(mode);
        self.shared.stop_tx.send_replace(true);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("racs-lite server thread panicked"))),
            None => Ok(()),
        }
    }
}

struct ConnGuard(Arc<Shared>);
impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut refused: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => break,
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    if shared.conns.load(Ordering::SeqCst) >= shared.max_connections {
                        refused += 1;
                        if refused.is_power_of_two() {
                            log(&format!(
                                "connection limit {} reached: refusing {peer} ({refused} refused so far)",
                                shared.max_connections
                            ));
                        }
                        drop(sock);
                        continue;
                    }
                    shared.conns.fetch_add(1, Ordering::SeqCst);
                    let guard = ConnGuard(shared.clone());
                    let sh = shared.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        if let Err(e) = connection(sock, &sh).await {
                            if e.kind() != io::ErrorKind::ConnectionReset
                                && e.kind() != io::ErrorKind::BrokenPipe
                            {
                                log(&format!("connection {peer}: {e}"));
                            }
                        }
                    });
                }
                Err(e) => {
                    log(&format!("accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Read more bytes into `buf`, at least `want` bytes of room; Ok(0) on EOF.
async fn read_more(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    want: usize,
    idle: Duration,
) -> io::Result<usize> {
    buf.reserve(want);
    match tokio::time::timeout(idle, sock.read_buf(buf)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    }
}

const CHUNK: usize = 64 * 1024;

async fn connection(mut sock: TcpStream, sh: &Shared) -> io::Result<()> {
    let _ = sock.set_nodelay(true);
    {
        let s = socket2::SockRef::from(&sock);
        let _ = s.set_recv_buffer_size(1 << 20);
        let _ = s.set_send_buffer_size(1 << 20);
    }
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + 8);
    let mut out: Vec<u8> = Vec::with_capacity(64);
    loop {
        while buf.len() < 8 {
            if read_more(&mut sock, &mut buf, CHUNK, sh.idle_timeout).await? == 0 {
                return Ok(());
            }
        }
        let len = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")) as u32 as usize;
        if len >= 1 << 31 || len > sh.max_message_bytes {
            log(&format!(
                "closing connection: message length {len} exceeds the limit of {} bytes",
                sh.max_message_bytes.min((1 << 31) - 1)
            ));
            return Ok(());
        }
        if len == 0 {
            // The real server read only the 8-byte prefix: keep what follows.
            buf.drain(..8);
            continue;
        }
        let need = 8 + len;
        let mut eof = false;
        while buf.len() < need {
            let room = CHUNK.max(need - buf.len());
            if read_more(&mut sock, &mut buf, room, sh.idle_timeout).await? == 0 {
                eof = true;
                break;
            }
        }
        if buf.len() <= 8 || sh.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Everything read for this message belongs to it; bytes past its end are discarded.
        let outcome = handle_payload(&sh.store, &buf[8..]);
        buf.clear();
        if buf.capacity() > 4 * 1024 * 1024 {
            buf = Vec::with_capacity(CHUNK + 8);
        }
        match outcome {
            Outcome::Shutdown => {
                let wanted = if sh.durable {
                    StopMode::Durable
                } else {
                    StopMode::Shutdown
                };
                let mode = sh.request_stop(wanted);
                log(&format!("SHUTDOWN received: stopping ({mode:?})"));
                // Stop the store at once, like the real server's exit: nothing served after
                // this point is acknowledged.
                let res = sh
                    .store
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .shutdown(mode);
                if let Err(e) = res {
                    log(&format!("error while stopping: {e}"));
                }
                sh.stop_tx.send_replace(true);
                return Ok(());
            }
            Outcome::Reply(values) => {
                out.clear();
                out.extend_from_slice(&[0u8; 8]);
                let mut tail: Option<&[u8]> = None;
                if let [single] = values.as_slice() {
                    tail = encode_split(single, &mut out);
                } else {
                    for v in &values {
                        encode(v, &mut out);
                    }
                }
                let n = (out.len() - 8 + tail.map_or(0, |t| t.len())) as u64;
                out[..8].copy_from_slice(&n.to_le_bytes());
                let write = async {
                    sock.write_all(&out).await?;
                    if let Some(t) = tail {
                        sock.write_all(t).await?;
                    }
                    Ok::<(), io::Error>(())
                };
                match tokio::time::timeout(sh.idle_timeout, write).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "peer not reading its reply",
                        ))
                    }
                }
                if out.capacity() > 4 * 1024 * 1024 {
                    out = Vec::with_capacity(64);
                }
            }
        }
        if eof {
            return Ok(());
        }
    }
}
