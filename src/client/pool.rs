//! The plugin-global connection pool: one registry for the process, one pool per server
//! address shared by every element, one shared tokio runtime, and the bridge that lets a
//! GStreamer thread wait on the network without ever outliving a cancel.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use once_cell::sync::Lazy;
use tokio::runtime::Runtime;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::error::{Error, Result};
use super::wire::Connection;

static RUNTIME: Lazy<Runtime> = Lazy::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("racs-io")
        .enable_all()
        .build()
        .expect("cannot start the RACS I/O runtime")
});

static POOLS: Lazy<Mutex<HashMap<String, Arc<Pool>>>> = Lazy::new(Default::default);

/// The one runtime every element's network I/O runs on.
pub fn runtime() -> &'static Runtime {
    &RUNTIME
}

/// Cancels waits from another thread (GStreamer's `unlock()`), and stays cancelled until reset
/// (`unlock_stop()`), so that a wait started after the cancel also returns at once.
///
/// A request made under [`block_on`] blocks its own thread in the socket call (see there); while
/// it does, the canceller holds that socket, and `cancel()` shuts it down, which ends the
/// blocked call at once. The connection is then unusable and is dropped, as after any
/// interrupted request.
#[derive(Clone, Debug)]
pub struct Canceller {
    inner: Arc<CancelInner>,
}

#[derive(Debug)]
struct CancelInner {
    state: watch::Sender<bool>,
    /// The socket a request on the calling thread is blocked in, if any.
    blocked_in: Mutex<Option<Arc<std::net::TcpStream>>>,
}

impl Default for Canceller {
    fn default() -> Self {
        Canceller {
            inner: Arc::new(CancelInner {
                state: watch::channel(false).0,
                blocked_in: Mutex::new(None),
            }),
        }
    }
}

impl Canceller {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.inner.state.send_replace(true);
        // After the flag: a request that registers later sees the flag and does not block.
        if let Some(sock) = self.inner.blocked_in.lock().unwrap().as_ref() {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn reset(&self) {
        self.inner.state.send_replace(false);
    }

    pub fn is_cancelled(&self) -> bool {
        *self.inner.state.borrow()
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.inner.state.subscribe();
        // The sender lives as long as `self`, so this only ends by cancellation.
        let _ = rx.wait_for(|cancelled| *cancelled).await;
    }

    /// Lets `cancel()` interrupt a blocking call on `sock` until the guard is dropped;
    /// `Err(Cancelled)` if already cancelled.
    pub(crate) fn guard_socket(&self, sock: &Arc<std::net::TcpStream>) -> Result<SocketGuard<'_>> {
        let mut blocked_in = self.inner.blocked_in.lock().unwrap();
        if self.is_cancelled() {
            return Err(Error::Cancelled);
        }
        *blocked_in = Some(sock.clone());
        Ok(SocketGuard { canceller: self })
    }
}

/// Deregisters the socket of a blocking call from its canceller.
pub(crate) struct SocketGuard<'a> {
    canceller: &'a Canceller,
}

impl Drop for SocketGuard<'_> {
    fn drop(&mut self) {
        self.canceller.inner.blocked_in.lock().unwrap().take();
    }
}

thread_local! {
    /// The canceller of the [`block_on`] running on this thread, if any: requests made under it
    /// drive their socket from this thread.
    static DIRECT: RefCell<Option<Canceller>> = const { RefCell::new(None) };
}

/// The canceller of the [`block_on`] this thread is in, when a request may block this thread in
/// its socket calls instead of waiting on the runtime.
pub(crate) fn direct_canceller() -> Option<Canceller> {
    DIRECT.with(|d| d.borrow().clone())
}

/// Marks this thread as driving its own sockets for the duration of a [`block_on`].
struct DirectScope {
    previous: Option<Canceller>,
}

impl DirectScope {
    fn enter(canceller: &Canceller) -> DirectScope {
        DirectScope {
            previous: DIRECT.with(|d| d.replace(Some(canceller.clone()))),
        }
    }
}

impl Drop for DirectScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        DIRECT.with(|d| *d.borrow_mut() = previous);
    }
}

/// Runs `fut` from a non-async thread and waits for it, returning `Error::Cancelled` as soon as
/// `canceller` fires. Must not be called from inside the runtime.
///
/// The future runs on the calling thread inside the shared runtime's context (timers, the pool's
/// semaphore and spawned tasks work as anywhere else). A [`Connection`] request made in it does
/// not wait on the runtime's I/O driver: it writes and reads its socket with blocking calls on
/// this thread, so a reply wakes this thread directly, with no hand-off through a runtime
/// worker. `canceller` interrupts such a call at once (it shuts the socket down). Requests
/// joined in one future are all sent before any reply is awaited, then their replies are read
/// one after another; a request joined with something else (a timer, a channel) holds this
/// thread until its reply is in, so to overlap a request with other waiting, spawn it on
/// [`runtime()`]. Outer timeouts around a request do not cut it short: its connection's own
/// timeout does.
pub fn block_on<T>(canceller: &Canceller, fut: impl Future<Output = Result<T>>) -> Result<T> {
    if canceller.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let _direct = DirectScope::enter(canceller);
    // Pinned here, once: the runtime's layers below take a pointer to it instead of moving
    // the whole future into each of their frames (a streaming thread's stack keeps the
    // deepest it ever was resident, for every one of hundreds of streams).
    let fut = std::pin::pin!(fut);
    RUNTIME.block_on(async move {
        tokio::select! {
            biased;
            _ = canceller.cancelled() => Err(Error::Cancelled),
            out = fut => out,
        }
    })
}

/// At most `size` connections to one server, shared by every element that talks to it.
#[derive(Debug)]
pub struct Pool {
    addr: String,
    permits: Arc<Semaphore>,
    state: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    size: usize,
    idle: Vec<Connection>,
}

impl Pool {
    /// The pool for `host:port`, created on first use. `size` raises the pool's limit if it is
    /// larger than what earlier users asked for; the limit is never lowered while in use.
    pub fn get(host: &str, port: u16, size: usize) -> Arc<Pool> {
        let addr = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let size = size.max(1);
        let mut pools = POOLS.lock().unwrap();
        let pool = pools.entry(addr.clone()).or_insert_with(|| {
            Arc::new(Pool {
                addr,
                permits: Arc::new(Semaphore::new(size)),
                state: Mutex::new(PoolState {
                    size,
                    idle: Vec::new(),
                }),
            })
        });
        let mut state = pool.state.lock().unwrap();
        if size > state.size {
            pool.permits.add_permits(size - state.size);
            state.size = size;
        }
        drop(state);
        pool.clone()
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The most connections this pool opens at once.
    pub fn size(&self) -> usize {
        self.state.lock().unwrap().size
    }

    /// Whether a connection could be checked out now without waiting (a slot is free).
    pub fn has_free_slot(&self) -> bool {
        self.permits.available_permits() > 0
    }

    /// Connections open and waiting to be checked out.
    pub fn idle(&self) -> usize {
        self.state.lock().unwrap().idle.len()
    }

    /// Checks a connection out, waiting at most `timeout` for a free slot and for the connect.
    /// Idle connections the server has closed meanwhile are dropped, not handed out.
    pub async fn checkout(self: &Arc<Self>, timeout: Duration) -> Result<PooledConnection> {
        // A free slot is taken without arming a timer.
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(timeout, self.permits.clone().acquire_owned())
                .await
                .map_err(|_| Error::PoolBusy {
                    addr: self.addr.clone(),
                    size: self.size(),
                    after: timeout,
                })?
                .expect("the pool's semaphore is never closed"),
        };
        let mut replaced_dead = false;
        let reused = {
            let mut state = self.state.lock().unwrap();
            let mut found = None;
            while let Some(conn) = state.idle.pop() {
                if !conn.is_stale() {
                    found = Some(conn);
                    break;
                }
                replaced_dead = true;
            }
            found
        };
        let mut conn = match reused {
            Some(conn) => conn,
            None => Connection::connect(&self.addr, timeout).await?,
        };
        conn.set_timeout(timeout);
        Ok(PooledConnection {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
            replaced_dead,
        })
    }
}

/// A checked-out connection; it goes back to the pool when dropped, unless it broke.
#[derive(Debug)]
pub struct PooledConnection {
    conn: Option<Connection>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
    /// Idle connections the server had closed were found and dropped at this checkout.
    replaced_dead: bool,
}

impl PooledConnection {
    /// Whether this checkout found idle connections closed by the server (a restart, an idle
    /// timeout, a broken network) and dropped them: this one may be new.
    pub fn replaced_dead(&self) -> bool {
        self.replaced_dead
    }

    /// Drops the connection instead of returning it (for example after a cancelled request,
    /// whose reply may still be on its way).
    pub fn discard(mut self) {
        self.conn.take();
    }
}

impl std::ops::Deref for PooledConnection {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.is_broken() {
                self.pool.state.lock().unwrap().idle.push(conn);
            }
        }
    }
}
