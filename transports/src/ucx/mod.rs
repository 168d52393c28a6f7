//! The UCX transport: [`Frame`]s as UCX active messages, for `ucx://host:port` addresses.
//!
//! One [`Engine`] (a UCP context and worker, see [`sys`]) serves all connections and
//! listeners of a process. A thread of its own runs a small tokio runtime that waits on the
//! worker's event fd (`AsyncFd`, `ucp_worker_arm`), runs UCX's progress engine and hands what
//! happened to the connections' state, waking the tasks that wait on them. Senders post
//! their messages directly (the engine's state is behind one mutex) and progress inline.
//!
//! A frame travels as one active message (its header) or two (header, then payload),
//! numbered per connection. UCX sends a large payload by rendezvous: the receiver is told its
//! size, allocates exactly that buffer when the frame is read, after the size limits are
//! checked, and UCX writes the data straight into it (shared memory: one copy by the kernel
//! (CMA); InfiniBand: RDMA). The sender's buffer is the result's own `Bytes`.
//!
//! Peer failure: by default UCX's error callbacks report it (`UCP_ERR_HANDLING_MODE_PEER`);
//! `RDASK_UCX_ERROR_MODE=none` turns it off. In this mode UCX 1.13 builds client-server
//! endpoints from tcp lanes only, even with `sm` in `UCX_TLS` (`UCX_LOG_LEVEL=info`:
//! `ep_cfg[..]: am(tcp/lo tcp/eth0)`); only with the mode off do two processes of one host get
//! shared memory and CMA (`am(sysv/memory cma/memory)`). An engine
//! whose `UCX_TLS` names shared memory in peer mode says so when it starts. Always, both sides
//! send keepalives, and a connection that hears nothing for `RDASK_UCX_TIMEOUT` seconds fails
//! with a clear error, so a dead peer never leaves a read, a flush or a connect hanging.

pub mod sys;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::os::fd::OwnedFd;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use sys::{AmData, EpId, Event, ListenerId, OpId, RndvDesc, Worker};
pub use sys::{ErrorMode, UcxError};

use crate::{Address, BoxFuture, Connection, Frame, FrameSink, FrameStream, Limits, Listener, Scheme};

/// How an [`Engine`] is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// UCX settings applied on top of the `UCX_*` environment: `("TLS", "tcp")` acts as
    /// `UCX_TLS=tcp`.
    pub overrides: Vec<(String, String)>,
    /// Error handling asked of endpoints.
    pub error_mode: ErrorMode,
    /// A connection that hears nothing from its peer for this long fails.
    pub timeout: Duration,
}

impl Settings {
    /// The settings from the environment: `RDASK_UCX_TIMEOUT` (seconds, default 30) and
    /// `RDASK_UCX_ERROR_MODE` (`peer`, the default, or `none`); UCX itself reads `UCX_*`.
    pub fn from_env() -> io::Result<Settings> {
        let timeout = match std::env::var("RDASK_UCX_TIMEOUT") {
            Ok(s) => match s.trim().parse::<f64>() {
                Ok(t) if t > 0.0 && t.is_finite() => Duration::from_secs_f64(t),
                _ => return Err(invalid(format!("RDASK_UCX_TIMEOUT={s:?} is not a positive number of seconds"))),
            },
            Err(_) => Duration::from_secs(30),
        };
        let error_mode = match std::env::var("RDASK_UCX_ERROR_MODE").as_deref() {
            Err(_) | Ok("peer") | Ok("") => ErrorMode::Peer,
            Ok("none") => ErrorMode::None,
            Ok(other) => return Err(invalid(format!("RDASK_UCX_ERROR_MODE={other:?}: use `peer` or `none`"))),
        };
        Ok(Settings { overrides: Vec::new(), error_mode, timeout })
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn ucx_io(e: UcxError) -> io::Error {
    use ucx_sys::ucs_status_t::*;
    let kind = match e.status {
        s if s == UCS_ERR_NO_DEVICE as i32 || s == UCS_ERR_UNSUPPORTED as i32 => io::ErrorKind::Unsupported,
        s if s == UCS_ERR_INVALID_PARAM as i32 || s == UCS_ERR_NO_ELEM as i32 => io::ErrorKind::InvalidInput,
        s if s == UCS_ERR_UNREACHABLE as i32 => io::ErrorKind::ConnectionRefused,
        s if s == UCS_ERR_BUSY as i32 || s == UCS_ERR_ALREADY_EXISTS as i32 => io::ErrorKind::AddrInUse,
        s if s == UCS_ERR_CANCELED as i32 => io::ErrorKind::ConnectionAborted,
        _ if e.is_peer_failure() => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// The error of a connection UCX reports as failed.
fn lost(peer: &str, e: &UcxError) -> String {
    if e.is_peer_failure() {
        format!("connection to ucx://{peer} lost ({}: {}): the peer died or became unreachable", e.what, e.message)
    } else {
        format!("connection to ucx://{peer} failed: {e}")
    }
}

/// Kinds of active message, the first byte of the AM header.
const FRAME: u8 = 0;
const PAYLOAD: u8 = 1;
const CLOSE: u8 = 2;
const KEEPALIVE: u8 = 3;
/// AM header: kind, sequence number, length (of the payload that follows a FRAME).
const AM_HEADER: usize = 17;

fn am_header(kind: u8, seq: u64, len: u64) -> Bytes {
    let mut h = [0u8; AM_HEADER];
    h[0] = kind;
    h[1..9].copy_from_slice(&seq.to_le_bytes());
    h[9..].copy_from_slice(&len.to_le_bytes());
    Bytes::copy_from_slice(&h)
}

fn parse_am_header(h: &[u8]) -> Option<(u8, u64, u64)> {
    if h.len() != AM_HEADER || h[0] > KEEPALIVE {
        return None;
    }
    Some((h[0], u64::from_le_bytes(h[1..9].try_into().ok()?), u64::from_le_bytes(h[9..].try_into().ok()?)))
}

/// The UCX engine of a process (or of a test): context, worker, progress thread.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the progress thread (after a send or a close, to progress and re-arm).
    kick: Notify,
    settings: Settings,
}

struct State {
    worker: Worker,
    conns: HashMap<EpId, Conn>,
    ops: HashMap<OpId, (EpId, OpKind)>,
    listeners: HashMap<ListenerId, Accepting>,
}

#[derive(Clone, Copy)]
enum OpKind {
    /// A frame's send, counted in `outstanding`.
    Send,
    /// A keepalive or close message: nobody waits for it.
    Quiet,
    /// The rendezvous receive of the part with this sequence number.
    Recv(u64),
}

struct Accepting {
    ready: VecDeque<EpId>,
    notify: Arc<Notify>,
}

enum PartData {
    Here(Bytes),
    Rndv(RndvDesc),
    Receiving,
}

struct Part {
    kind: u8,
    /// For a FRAME: the length of its payload (0: none follows).
    len: u64,
    /// Length of `data`.
    data_len: usize,
    data: PartData,
}

struct Conn {
    peer: String,
    rx_notify: Arc<Notify>,
    tx_notify: Arc<Notify>,
    parts: BTreeMap<u64, Part>,
    next: u64,
    limits: Limits,
    send_seq: u64,
    outstanding: usize,
    error: Option<(io::ErrorKind, String)>,
    /// Whether anything came from the peer yet (connect waits for its hello).
    heard: bool,
    last_heard: Instant,
    last_sent: Instant,
    /// Halves (sink, stream) still alive; the endpoint closes when both are gone.
    halves: u8,
}

impl Conn {
    fn new(peer: String) -> Conn {
        let now = Instant::now();
        Conn {
            peer,
            rx_notify: Arc::new(Notify::new()),
            tx_notify: Arc::new(Notify::new()),
            parts: BTreeMap::new(),
            next: 0,
            limits: Limits::HANDSHAKE,
            send_seq: 0,
            outstanding: 0,
            error: None,
            heard: false,
            last_heard: now,
            last_sent: now,
            halves: 2,
        }
    }

    fn fail(&mut self, kind: io::ErrorKind, msg: String) {
        if self.error.is_none() {
            tracing::debug!("ucx connection to {}: {msg}", self.peer);
            self.error = Some((kind, msg));
        }
        self.rx_notify.notify_one();
        self.tx_notify.notify_one();
    }

    fn error(&self) -> Option<io::Error> {
        self.error.as_ref().map(|(k, m)| io::Error::new(*k, m.clone()))
    }
}

impl State {
    /// Progresses the worker and applies what happened.
    fn progress(&mut self) {
        loop {
            let events = self.worker.progress();
            if events.is_empty() {
                return;
            }
            for e in events {
                self.handle(e);
            }
        }
    }

    fn handle(&mut self, e: Event) {
        match e {
            Event::Am { ep, header, data } => {
                let Some(conn) = self.conns.get_mut(&ep) else {
                    if let AmData::Rndv(d) = data {
                        self.worker.am_release(d);
                    }
                    return;
                };
                conn.last_heard = Instant::now();
                conn.heard = true;
                let Some((kind, seq, len)) = parse_am_header(&header) else {
                    conn.fail(io::ErrorKind::InvalidData, format!("malformed message from {}", conn.peer));
                    if let AmData::Rndv(d) = data {
                        self.worker.am_release(d);
                    }
                    return;
                };
                let (data_len, data) = match data {
                    AmData::Eager(b) => (b.len(), PartData::Here(b)),
                    AmData::Rndv(d) => (d.len, PartData::Rndv(d)),
                };
                if kind == KEEPALIVE || seq < conn.next || conn.parts.contains_key(&seq) {
                    if let PartData::Rndv(d) = data {
                        self.worker.am_release(d);
                    }
                    if kind != KEEPALIVE {
                        conn.fail(io::ErrorKind::InvalidData, format!("duplicate message {seq} from {}", conn.peer));
                    }
                    conn.tx_notify.notify_one(); // a connect waits for the first message
                    return;
                }
                conn.parts.insert(seq, Part { kind, len, data_len, data });
                conn.rx_notify.notify_one();
                conn.tx_notify.notify_one();
            }
            Event::Sent { op, result } => {
                let Some((ep, kind)) = self.ops.remove(&op) else { return };
                let Some(conn) = self.conns.get_mut(&ep) else { return };
                if let OpKind::Send = kind {
                    conn.outstanding -= 1;
                }
                if let Err(e) = result {
                    conn.fail(ucx_io(e.clone()).kind(), lost(&conn.peer, &e));
                }
                conn.tx_notify.notify_one();
                if conn.halves == 0 {
                    self.close_if_idle(ep);
                }
            }
            Event::Received { op, result } => {
                let Some((ep, OpKind::Recv(seq))) = self.ops.remove(&op) else { return };
                let Some(conn) = self.conns.get_mut(&ep) else { return };
                match result {
                    Ok(b) => {
                        if let Some(p) = conn.parts.get_mut(&seq) {
                            p.data = PartData::Here(b);
                        }
                    }
                    Err(e) => conn.fail(ucx_io(e.clone()).kind(), lost(&conn.peer, &e)),
                }
                conn.rx_notify.notify_one();
                if conn.halves == 0 {
                    self.close_if_idle(ep);
                }
            }
            Event::EpFailed { ep, error } => {
                if let Some(conn) = self.conns.get_mut(&ep) {
                    if conn.parts.values().any(|p| p.kind == CLOSE) {
                        // The peer closed after its last frame: the frames already here and
                        // the clean end are still read; our sends still in flight fail.
                        conn.rx_notify.notify_one();
                        conn.tx_notify.notify_one();
                    } else {
                        let kind =
                            if conn.heard { io::ErrorKind::ConnectionReset } else { io::ErrorKind::ConnectionRefused };
                        conn.fail(kind, lost(&conn.peer, &error));
                    }
                }
                // UCX asks for failed endpoints to be closed (at once: there is no peer to flush to).
                self.close_ep(ep, true);
            }
            Event::ConnRequest(req) => {
                let lid = req.listener();
                if !self.listeners.contains_key(&lid) {
                    self.worker.reject(req);
                    return;
                }
                match self.worker.accept(req) {
                    Ok((ep, client)) => {
                        let peer = match client {
                            Some(a) => a.to_string(),
                            None => format!(
                                "a peer of {}",
                                self.worker.listener_addr(lid).map(|a| a.to_string()).unwrap_or_default()
                            ),
                        };
                        let mut conn = Conn::new(peer);
                        conn.heard = true;
                        self.conns.insert(ep, conn);
                        // Hello: lets the connecting side know the connection stands.
                        let _ = self.post(ep, am_header(KEEPALIVE, 0, 0), Bytes::new(), OpKind::Quiet);
                        let a = self.listeners.get_mut(&lid).expect("checked above");
                        a.ready.push_back(ep);
                        a.notify.notify_one();
                    }
                    Err(e) => tracing::warn!("ucx: {e}"),
                }
            }
        }
    }

    /// Posts one active message; the result says whether it is still in flight.
    fn post(&mut self, ep: EpId, header: Bytes, data: Bytes, kind: OpKind) -> io::Result<()> {
        let result = self.worker.am_send(ep, header, data);
        let Some(conn) = self.conns.get_mut(&ep) else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "connection closed"));
        };
        conn.last_sent = Instant::now();
        match result {
            Ok(None) => Ok(()),
            Ok(Some(op)) => {
                if let OpKind::Send = kind {
                    conn.outstanding += 1;
                }
                self.ops.insert(op, (ep, kind));
                Ok(())
            }
            Err(e) => {
                let msg = lost(&conn.peer, &e);
                let kind = ucx_io(e).kind();
                conn.fail(kind, msg.clone());
                Err(io::Error::new(kind, msg))
            }
        }
    }

    /// Closes the endpoint of a connection whose halves are both dropped once none of its
    /// operations is in flight: UCX's flush on close does not wait for a rendezvous send to be
    /// fetched, so closing earlier would take the data away from the peer.
    fn close_if_idle(&mut self, ep: EpId) {
        if self.ops.values().any(|(e, _)| *e == ep) {
            return; // again when the last one completes (Event::Sent), or by the keepalive check
        }
        // Not forced: UCX first flushes what is still queued (the close message included).
        self.close_ep(ep, false);
        self.conns.remove(&ep);
    }

    /// Closes the endpoint. Data already received stays readable; rendezvous data not yet
    /// fetched is released (it can no longer be).
    fn close_ep(&mut self, ep: EpId, force: bool) {
        if let Some(conn) = self.conns.get_mut(&ep) {
            let waiting: Vec<u64> =
                conn.parts.iter().filter(|(_, p)| matches!(p.data, PartData::Rndv(_))).map(|(s, _)| *s).collect();
            if !waiting.is_empty() {
                let msg = format!("connection to ucx://{} closed before all its data was received", conn.peer);
                conn.fail(io::ErrorKind::ConnectionReset, msg);
            }
            for seq in waiting {
                if let Some(Part { data: PartData::Rndv(d), .. }) = conn.parts.remove(&seq) {
                    self.worker.am_release(d);
                }
            }
            if conn.halves == 0 {
                self.conns.remove(&ep);
            }
        }
        self.worker.close_ep(ep, force);
    }

    /// Keepalives to quiet peers; failure of peers not heard for the timeout.
    fn keepalive(&mut self, settings: &Settings) {
        let now = Instant::now();
        let interval = settings.timeout / 4;
        let eps: Vec<EpId> = self.conns.keys().copied().collect();
        for ep in eps {
            let conn = &self.conns[&ep];
            let silent = now.duration_since(conn.last_heard);
            if conn.halves == 0 && (conn.error.is_some() || silent >= settings.timeout) {
                // Dropped, still waiting for its last sends, but the peer is gone: give up.
                self.close_ep(ep, settings.error_mode == ErrorMode::Peer);
                self.conns.remove(&ep);
                continue;
            }
            if conn.error.is_some() || conn.halves == 0 {
                continue;
            }
            if silent >= settings.timeout {
                let msg = format!(
                    "no message from ucx://{} for {:.1} s (RDASK_UCX_TIMEOUT): the peer died or is unreachable",
                    conn.peer,
                    silent.as_secs_f64()
                );
                self.conns.get_mut(&ep).expect("present").fail(io::ErrorKind::TimedOut, msg);
                self.close_ep(ep, settings.error_mode == ErrorMode::Peer);
            } else if now.duration_since(conn.last_sent) >= interval {
                let _ = self.post(ep, am_header(KEEPALIVE, 0, 0), Bytes::new(), OpKind::Quiet);
            }
        }
    }

    /// Tries to take the next frame of `ep` off its parts; `Ok(None)` when it is not complete yet.
    fn next_frame(&mut self, ep: EpId) -> io::Result<Option<Option<Frame>>> {
        let Some(conn) = self.conns.get_mut(&ep) else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "connection closed"));
        };
        let next = conn.next;
        let Some(first) = conn.parts.get(&next) else { return conn.error().map_or(Ok(None), Err) };
        match first.kind {
            CLOSE => return Ok(Some(None)),
            FRAME => {}
            _ => {
                let msg = format!("out-of-order data from {}", conn.peer);
                conn.fail(io::ErrorKind::InvalidData, msg.clone());
                return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
            }
        }
        let (header_len, payload_len) = (first.data_len, first.len);
        if header_len as u64 > conn.limits.max_header as u64 || payload_len > conn.limits.max_payload {
            let msg = format!(
                "frame of {header_len} + {payload_len} bytes exceeds the limit of {} + {} bytes",
                conn.limits.max_header, conn.limits.max_payload
            );
            conn.fail(io::ErrorKind::InvalidData, msg.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
        }
        let seqs: &[u64] = if payload_len > 0 { &[next, next + 1] } else { &[next] };
        if payload_len > 0 {
            match conn.parts.get(&(next + 1)) {
                None => return conn.error().map_or(Ok(None), Err),
                Some(p) if p.kind != PAYLOAD || p.data_len as u64 != payload_len => {
                    let msg = format!("payload from {} does not match its announced size", conn.peer);
                    conn.fail(io::ErrorKind::InvalidData, msg.clone());
                    return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
                }
                Some(_) => {}
            }
        }
        // Start the rendezvous receives the frame needs, each into a buffer of its exact size.
        for &seq in seqs {
            let conn = self.conns.get_mut(&ep).expect("present");
            let p = conn.parts.get_mut(&seq).expect("checked");
            if !matches!(p.data, PartData::Rndv(_)) {
                continue;
            }
            let PartData::Rndv(desc) = std::mem::replace(&mut p.data, PartData::Receiving) else { unreachable!() };
            match self.worker.am_recv(desc) {
                Ok(Ok(b)) => {
                    self.conns.get_mut(&ep).expect("present").parts.get_mut(&seq).expect("present").data =
                        PartData::Here(b)
                }
                Ok(Err(op)) => {
                    self.ops.insert(op, (ep, OpKind::Recv(seq)));
                }
                Err(e) => {
                    let conn = self.conns.get_mut(&ep).expect("present");
                    let msg = lost(&conn.peer, &e);
                    conn.fail(ucx_io(e).kind(), msg.clone());
                    return Err(io::Error::other(msg));
                }
            }
        }
        let conn = self.conns.get_mut(&ep).expect("present");
        if seqs.iter().any(|s| !matches!(conn.parts[s].data, PartData::Here(_))) {
            return conn.error().map_or(Ok(None), Err);
        }
        let mut take = |seq: u64| match conn.parts.remove(&seq).map(|p| p.data) {
            Some(PartData::Here(b)) => b,
            _ => unreachable!("checked above"),
        };
        let header = take(next);
        let payload = if payload_len > 0 { take(next + 1) } else { Bytes::new() };
        conn.next += seqs.len() as u64;
        Ok(Some(Some(Frame { header, payload })))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The progress thread's loop: progress, arm, wait for the event fd, a kick or the keepalive tick.
async fn drive(shared: Arc<Shared>, afd: AsyncFd<OwnedFd>) {
    let mut tick = tokio::time::interval((shared.settings.timeout / 8).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        {
            let mut st = shared.lock();
            loop {
                st.progress();
                match st.worker.arm() {
                    Ok(true) => break,
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!("ucx: {e}");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            g = afd.readable() => match g {
                Ok(mut g) => g.clear_ready(),
                Err(e) => {
                    tracing::error!("ucx: waiting on the worker's event fd: {e}");
                    return;
                }
            },
            _ = shared.kick.notified() => {}
            _ = tick.tick() => shared.lock().keepalive(&shared.settings),
        }
    }
}

static GLOBAL: Mutex<Option<Engine>> = Mutex::new(None);

/// Every engine started in this process, for [`quiesce_at_exit`].
static ENGINES: Mutex<Vec<std::sync::Weak<Shared>>> = Mutex::new(Vec::new());

/// Runs at `exit()`, before the shared libraries' destructors (glibc runs `atexit` handlers
/// registered after start-up before `_dl_fini`): takes each live engine's lock and never gives
/// it back. Every call into UCX is made under that lock, so no thread of ours (the progress
/// thread above all) is inside UCX while UCX's own destructors tear it down; without this a
/// process that exits while its progress thread polls can die of SIGSEGV in its last
/// microseconds (seen on a 2-core CI machine).
extern "C" fn quiesce_at_exit() {
    let engines = std::mem::take(&mut *ENGINES.lock().unwrap_or_else(|p| p.into_inner()));
    for shared in engines.iter().filter_map(std::sync::Weak::upgrade) {
        std::mem::forget(shared.lock());
        // The Arc too: its last drop would destroy the worker under UCX's feet.
        std::mem::forget(shared);
    }
}

fn register_for_exit(shared: &Arc<Shared>) {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    AT_EXIT.call_once(|| {
        #[allow(unsafe_code)]
        // SAFETY: the handler is a plain `extern "C" fn` that takes only Rust mutexes.
        unsafe {
            libc::atexit(quiesce_at_exit);
        }
    });
    let mut engines = ENGINES.lock().unwrap_or_else(|p| p.into_inner());
    engines.retain(|w| w.strong_count() > 0);
    engines.push(Arc::downgrade(shared));
}

impl Engine {
    /// Starts an engine: a UCP context and worker (UCX reads its `UCX_*` variables now) and
    /// its progress thread. A setting UCX rejects is an error quoting UCX.
    pub fn new(settings: Settings) -> io::Result<Engine> {
        let tls = settings.overrides.iter().rev().find(|(k, _)| k == "TLS").map(|(_, v)| v.clone());
        let tls = tls.or_else(|| std::env::var("UCX_TLS").ok());
        if shm_lost_to_peer_mode(tls.as_deref(), settings.error_mode) {
            tracing::warn!(
                "UCX_TLS={} asks for shared memory, but with peer-failure handling (RDASK_UCX_ERROR_MODE=peer, \
                 the default) UCX 1.13 connects by tcp only; set RDASK_UCX_ERROR_MODE=none for shared memory \
                 (a dead peer is then detected after RDASK_UCX_TIMEOUT)",
                tls.as_deref().unwrap_or_default()
            );
        }
        let worker = Worker::new(&settings.overrides, settings.error_mode).map_err(ucx_io)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State { worker, conns: HashMap::new(), ops: HashMap::new(), listeners: HashMap::new() }),
            kick: Notify::new(),
            settings,
        });
        register_for_exit(&shared);
        let s = shared.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("rdask-ucx".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => return drop(ready_tx.send(Err(e))),
            };
            rt.block_on(async move {
                let efd = s.lock().worker.async_efd();
                match efd {
                    Ok(afd) => {
                        let _ = ready_tx.send(Ok(()));
                        drive(s, afd).await
                    }
                    Err(e) => drop(ready_tx.send(Err(e))),
                }
            })
        })?;
        // Without its progress thread the engine would never move: fail now, not hang later.
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Engine { shared }),
            Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("cannot start UCX's progress thread: {e}"))),
            Err(_) => Err(io::Error::other("UCX's progress thread ended at its start")),
        }
    }

    /// The engine of this process, started on first use from the environment.
    pub fn global() -> io::Result<Engine> {
        let mut g = GLOBAL.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = &*g {
            return Ok(e.clone());
        }
        let e = Engine::new(Settings::from_env()?)?;
        *g = Some(e.clone());
        Ok(e)
    }

    /// Connects to a UCX listener at `host:port` and waits until the peer answers.
    pub async fn connect(&self, host_port: &str) -> io::Result<Connection> {
        let addr = resolve(host_port).await?;
        let (ep, notify) = {
            let mut st = self.shared.lock();
            let ep = st.worker.connect(addr).map_err(ucx_io)?;
            let conn = Conn::new(addr.to_string());
            let notify = conn.tx_notify.clone();
            st.conns.insert(ep, conn);
            st.progress();
            (ep, notify)
        };
        self.shared.kick.notify_one();
        // Dropped on an error or when this future is cancelled: then it abandons the connection.
        let handle = ConnHandle { shared: self.shared.clone(), ep, taken: false };
        // Wait for the accepting side's hello: a refused or unreachable peer is an error now,
        // not at the first read.
        loop {
            {
                let st = self.shared.lock();
                let Some(conn) = st.conns.get(&ep) else {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        format!("cannot connect to ucx://{host_port}"),
                    ));
                };
                if conn.heard {
                    break;
                }
                if let Some(e) = conn.error() {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "cannot connect to ucx://{host_port}: {e}. Is a UCX listener there? Connecting by address \
                             needs UCX's tcp connection manager: include tcp in UCX_TLS (e.g. UCX_TLS=sm,self,tcp; {})",
                            sys::ucx_settings()
                        ),
                    ));
                }
                if conn.last_heard.elapsed() >= self.shared.settings.timeout {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "cannot connect to ucx://{host_port}: no answer within {:?}",
                            self.shared.settings.timeout
                        ),
                    ));
                }
            }
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        Ok(handle.into_connection(addr.to_string(), local_ip_towards(addr)))
    }

    /// Listens on `host:port` (port 0 picks one).
    pub async fn listen(&self, host_port: &str) -> io::Result<UcxListener> {
        let addr = resolve(host_port).await?;
        let mut st = self.shared.lock();
        let (id, bound) = st.worker.listen(addr).map_err(ucx_io)?;
        let notify = Arc::new(Notify::new());
        st.listeners.insert(id, Accepting { ready: VecDeque::new(), notify: notify.clone() });
        Ok(UcxListener {
            shared: self.shared.clone(),
            id,
            notify,
            advertised: Address { scheme: Scheme::Ucx, host_port: bound.to_string() },
        })
    }
}

/// Whether `UCX_TLS` names a shared-memory transport that the endpoints' error mode rules
/// out: with peer-failure handling, UCX 1.13 gives client-server endpoints tcp lanes only.
/// A list starting with `^` excludes what it names; unset or `all` names nothing explicitly.
fn shm_lost_to_peer_mode(tls: Option<&str>, mode: ErrorMode) -> bool {
    const SHARED_MEMORY: [&str; 7] = ["sm", "shm", "posix", "sysv", "cma", "knem", "xpmem"];
    let Some(tls) = tls.map(str::trim).filter(|t| !t.starts_with('^')) else { return false };
    mode == ErrorMode::Peer && tls.split(',').any(|t| SHARED_MEMORY.contains(&t.trim()))
}

async fn resolve(host_port: &str) -> io::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port).await?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host_port} resolves to no address")))
}

/// The local IP that routes to `peer` (what TCP reports as the local address), as `ip:0`.
fn local_ip_towards(peer: SocketAddr) -> String {
    let any: SocketAddr =
        if peer.is_ipv4() { "0.0.0.0:0".parse().expect("valid") } else { "[::]:0".parse().expect("valid") };
    UdpSocket::bind(any)
        .and_then(|s| {
            s.connect(peer)?;
            s.local_addr()
        })
        .map(|a| SocketAddr::new(a.ip(), 0).to_string())
        .unwrap_or_default()
}

/// Connects with the process's engine (see [`Engine::global`]).
pub async fn connect(host_port: &str) -> io::Result<Connection> {
    Engine::global()?.connect(host_port).await
}

/// Listens with the process's engine (see [`Engine::global`]).
pub async fn listen(host_port: &str) -> io::Result<UcxListener> {
    Engine::global()?.listen(host_port).await
}

/// A UCX listener yielding unauthenticated [`Connection`]s.
pub struct UcxListener {
    shared: Arc<Shared>,
    id: ListenerId,
    notify: Arc<Notify>,
    advertised: Address,
}

impl Listener for UcxListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Connection>> {
        Box::pin(async move {
            loop {
                {
                    let mut st = self.shared.lock();
                    if let Some(ep) = st.listeners.get_mut(&self.id).and_then(|a| a.ready.pop_front()) {
                        let peer = st.conns.get(&ep).map(|c| c.peer.clone()).unwrap_or_default();
                        drop(st);
                        let handle = ConnHandle { shared: self.shared.clone(), ep, taken: false };
                        let local = self.advertised.host_port.clone();
                        return Ok(handle.into_connection(peer, local));
                    }
                }
                self.notify.notified().await;
            }
        })
    }

    fn local_addr(&self) -> Address {
        self.advertised.clone()
    }
}

impl Drop for UcxListener {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(a) = st.listeners.remove(&self.id) {
            for ep in a.ready {
                if let Some(c) = st.conns.get_mut(&ep) {
                    c.halves = 0;
                }
                st.close_ep(ep, false);
            }
        }
        st.worker.close_listener(self.id);
    }
}

/// A connection not yet handed out as a [`Connection`]; dropped before that, it is abandoned.
struct ConnHandle {
    shared: Arc<Shared>,
    ep: EpId,
    taken: bool,
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        if !self.taken {
            let mut st = self.shared.lock();
            if let Some(c) = st.conns.get_mut(&self.ep) {
                c.halves = 0;
            }
            st.close_if_idle(self.ep);
        }
    }
}

impl ConnHandle {
    fn into_connection(mut self, peer: String, local: String) -> Connection {
        self.taken = true;
        let (rx_notify, tx_notify) = {
            let st = self.shared.lock();
            let c = &st.conns[&self.ep];
            (c.rx_notify.clone(), c.tx_notify.clone())
        };
        let sink = UcxSink { shared: self.shared.clone(), ep: self.ep, notify: tx_notify };
        let stream = UcxStream { shared: self.shared.clone(), ep: self.ep, notify: rx_notify };
        Connection { tx: Box::new(sink), rx: Box::new(stream), peer: format!("ucx://{peer}"), local }
    }
}

/// Drops one half; the endpoint closes when both are gone.
fn drop_half(shared: &Shared, ep: EpId, sink: bool) {
    let mut st = shared.lock();
    let Some(conn) = st.conns.get_mut(&ep) else { return };
    conn.halves = conn.halves.saturating_sub(1);
    let healthy = conn.error.is_none();
    let last = conn.halves == 0;
    if sink && healthy {
        // Like a TCP FIN: the peer reads a clean end after every frame sent before.
        let seq = conn.send_seq;
        conn.send_seq += 1;
        let _ = st.post(ep, am_header(CLOSE, seq, 0), Bytes::new(), OpKind::Quiet);
    }
    if last {
        st.close_if_idle(ep);
    }
    st.progress();
    drop(st);
    shared.kick.notify_one();
}

struct UcxSink {
    shared: Arc<Shared>,
    ep: EpId,
    notify: Arc<Notify>,
}

impl FrameSink for UcxSink {
    fn send(&mut self, frame: Frame) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            {
                let mut st = self.shared.lock();
                let conn = st
                    .conns
                    .get_mut(&self.ep)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection closed"))?;
                if let Some(e) = conn.error() {
                    return Err(e);
                }
                let seq = conn.send_seq;
                let has_payload = !frame.payload.is_empty();
                conn.send_seq += if has_payload { 2 } else { 1 };
                st.post(self.ep, am_header(FRAME, seq, frame.payload.len() as u64), frame.header, OpKind::Send)?;
                if has_payload {
                    let len = frame.payload.len() as u64;
                    st.post(self.ep, am_header(PAYLOAD, seq + 1, len), frame.payload, OpKind::Send)?;
                }
                st.progress();
                // A send UCX did not complete at once needs progress later (and the event fd
                // re-armed): the progress thread's job. One that completed needs nothing more,
                // which spares a small message's round trip a thread wake-up.
                if st.conns.get(&self.ep).is_some_and(|c| c.outstanding > 0) {
                    self.shared.kick.notify_one();
                }
            }
            // Bound what is in flight: a sender far ahead of its peer waits here.
            self.wait(MAX_IN_FLIGHT).await
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.wait(0))
    }
}

/// Sends in flight per connection before `send` waits.
const MAX_IN_FLIGHT: usize = 256;

impl UcxSink {
    /// Waits until at most `max` sends are in flight.
    async fn wait(&self, max: usize) -> io::Result<()> {
        loop {
            {
                let st = self.shared.lock();
                let conn = st
                    .conns
                    .get(&self.ep)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection closed"))?;
                if let Some(e) = conn.error() {
                    return Err(e);
                }
                if conn.outstanding <= max {
                    return Ok(());
                }
            }
            self.notify.notified().await;
        }
    }
}

impl Drop for UcxSink {
    fn drop(&mut self) {
        drop_half(&self.shared, self.ep, true);
    }
}

struct UcxStream {
    shared: Arc<Shared>,
    ep: EpId,
    notify: Arc<Notify>,
}

impl FrameStream for UcxStream {
    fn recv(&mut self) -> BoxFuture<'_, io::Result<Option<Frame>>> {
        Box::pin(async move {
            loop {
                let (started, receiving) = {
                    let mut st = self.shared.lock();
                    let r = st.next_frame(self.ep)?;
                    if let Some(f) = r {
                        return Ok(f);
                    }
                    // A rendezvous receive may have been posted: progress it here first.
                    st.progress();
                    let r = st.next_frame(self.ep)?;
                    let receiving = st
                        .conns
                        .get(&self.ep)
                        .is_some_and(|c| c.parts.values().any(|p| matches!(p.data, PartData::Receiving)));
                    (r, receiving)
                };
                if let Some(f) = started {
                    return Ok(f);
                }
                if receiving {
                    // The progress thread carries the receive on (and re-arms the event fd).
                    self.shared.kick.notify_one();
                }
                self.notify.notified().await;
            }
        })
    }

    fn set_limits(&mut self, limits: Limits) {
        if let Some(c) = self.shared.lock().conns.get_mut(&self.ep) {
            c.limits = limits;
        }
    }
}

impl Drop for UcxStream {
    fn drop(&mut self) {
        drop_half(&self.shared, self.ep, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_asked_for_in_peer_mode_is_flagged() {
        for tls in ["sm,self,tcp", "tcp,posix", " cma , tcp", "sysv"] {
            assert!(shm_lost_to_peer_mode(Some(tls), ErrorMode::Peer), "{tls}");
            assert!(!shm_lost_to_peer_mode(Some(tls), ErrorMode::None), "{tls}");
        }
        for tls in [None, Some("tcp"), Some("^sm"), Some("all"), Some("self,tcp"), Some("smx")] {
            assert!(!shm_lost_to_peer_mode(tls, ErrorMode::Peer), "{tls:?}");
        }
    }
}
