//! The safe wrapper around `ucx-sys`: the only module of rdask that calls UCX.
//!
//! One [`Worker`] owns a UCP context and worker (created `UCS_THREAD_MODE_SERIALIZED`: any
//! thread may call it, one at a time, which `&mut self` and the caller's mutex guarantee),
//! its endpoints, listeners and every outstanding request together with the buffers the
//! request reads or writes. Handles given out ([`EpId`], [`ListenerId`], [`OpId`]) are plain
//! numbers: a stale one is refused with an error, never dereferenced.
//!
//! UCX calls back from inside `ucp_worker_progress`. The callbacks do the minimum: they copy
//! what is only valid during the call (an eager message's bytes) and push an event onto a
//! queue; [`Worker::progress`] drains the queue after progress returns and turns raw handles
//! into ids. Nothing else runs inside a callback, so no callback can re-enter the worker.
//!
//! Active messages (AM id 0) carry every frame part: a small AM header chosen by the caller
//! and the data. Large data arrives as a rendezvous descriptor ([`RndvDesc`]) that the caller
//! receives straight into a buffer of the announced size ([`Worker::am_recv`]), or releases.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use ucx_sys as u;

/// An error reported by UCX, with UCX's own words (`ucs_status_string`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {message}")]
pub struct UcxError {
    /// What rdask was doing.
    pub what: String,
    /// UCX's message for the status.
    pub message: String,
    /// The raw `ucs_status_t`.
    pub status: i32,
}

impl UcxError {
    fn new(what: impl Into<String>, status: u::ucs_status_t) -> UcxError {
        UcxError { what: what.into(), message: status_message(status), status: status as i32 }
    }

    /// A connection-level error (the peer reset or timed out).
    pub fn is_peer_failure(&self) -> bool {
        use u::ucs_status_t::*;
        [UCS_ERR_CONNECTION_RESET, UCS_ERR_ENDPOINT_TIMEOUT, UCS_ERR_UNREACHABLE, UCS_ERR_NOT_CONNECTED]
            .iter()
            .any(|s| *s as i32 == self.status)
            || (UCS_ERR_LAST_ENDPOINT_FAILURE as i32..=UCS_ERR_FIRST_LINK_FAILURE as i32).contains(&self.status)
    }
}

/// UCX's description of a status.
fn status_message(status: u::ucs_status_t) -> String {
    // SAFETY: ucs_status_string returns a pointer to a static NUL-terminated string for
    // every status value (an unknown one yields a generic static message).
    unsafe { CStr::from_ptr(u::ucs_status_string(status)) }.to_string_lossy().into_owned()
}

fn check(what: impl FnOnce() -> String, status: u::ucs_status_t) -> Result<(), UcxError> {
    if status == u::ucs_status_t::UCS_OK {
        Ok(())
    } else {
        Err(UcxError::new(what(), status))
    }
}

/// An endpoint (one connection to a peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EpId(u64);
/// A listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(u64);
/// An outstanding send or receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(u64);

/// A peer's connection request on a listener: pass it to [`Worker::accept`] or [`Worker::reject`].
#[derive(Debug)]
pub struct ConnRequest {
    raw: usize,
    listener: ListenerId,
}

impl ConnRequest {
    /// The listener it arrived on.
    pub fn listener(&self) -> ListenerId {
        self.listener
    }
}

/// Rendezvous data waiting on the sender's side: pass it to [`Worker::am_recv`] or
/// [`Worker::am_release`] (dropping it leaks the descriptor until the worker ends).
#[derive(Debug)]
pub struct RndvDesc {
    raw: usize,
    /// Length of the data, in bytes.
    pub len: usize,
}

/// The data of an active message.
#[derive(Debug)]
pub enum AmData {
    /// Already here (copied out of UCX's buffer).
    Eager(Bytes),
    /// To be received with [`Worker::am_recv`].
    Rndv(RndvDesc),
}

/// Something that happened during [`Worker::progress`].
#[derive(Debug)]
pub enum Event {
    /// An active message from the peer of `ep`.
    Am {
        /// The endpoint it came through.
        ep: EpId,
        /// The AM header the sender chose.
        header: Vec<u8>,
        /// The data.
        data: AmData,
    },
    /// A send finished (its buffers are released).
    Sent {
        /// The send.
        op: OpId,
        /// Its outcome.
        result: Result<(), UcxError>,
    },
    /// A rendezvous receive finished.
    Received {
        /// The receive.
        op: OpId,
        /// The data, exactly as long as announced, or the error.
        result: Result<Bytes, UcxError>,
    },
    /// UCX reports an endpoint as failed (its peer died or became unreachable).
    EpFailed {
        /// The endpoint.
        ep: EpId,
        /// UCX's error.
        error: UcxError,
    },
    /// A peer asks to connect to one of our listeners.
    ConnRequest(ConnRequest),
}

/// What callbacks push; raw handles travel as integers and are mapped after progress.
enum RawEvent {
    Am { ep: usize, header: Vec<u8>, data: RawData },
    Sent { req: usize, status: u::ucs_status_t },
    Received { req: usize, status: u::ucs_status_t, len: usize },
    EpFailed { ep: usize, status: u::ucs_status_t },
    ConnRequest { raw: usize, listener: u64 },
}

enum RawData {
    Eager(Bytes),
    Rndv { desc: usize, len: usize },
}

/// The queue callbacks write to. Callbacks receive a pointer to it as their `arg` /
/// `user_data`; the `Arc` in [`Worker`] keeps it alive (and at one address) for as long as
/// UCX can call back, i.e. until the worker is destroyed.
#[derive(Default)]
struct Queue(Mutex<Vec<RawEvent>>);

impl Queue {
    fn push(&self, e: RawEvent) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }
}

/// The argument of a listener's connection callback: the queue and the listener's id.
struct ListenerArg {
    queue: Arc<Queue>,
    id: u64,
}

struct ListenerEntry {
    raw: u::ucp_listener_h,
    /// Boxed so that its address (given to UCX) stays fixed; lives until the listener is destroyed.
    _arg: Box<ListenerArg>,
    addr: SocketAddr,
}

enum Op {
    /// A send: the buffers UCX reads from until completion.
    Send { _header: Bytes, _data: Bytes },
    /// A rendezvous receive: the buffer UCX writes into until completion.
    Recv { buf: Vec<u8>, len: usize },
}

/// Error handling asked of endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorMode {
    /// `UCP_ERR_HANDLING_MODE_PEER`: UCX detects peer failure and calls the error handler.
    Peer,
    /// `UCP_ERR_HANDLING_MODE_NONE`: every transport allowed; peer failure is detected by
    /// the caller (keepalive timeouts).
    None,
}

/// A UCP context and worker with everything that hangs off them.
pub struct Worker {
    context: u::ucp_context_h,
    worker: u::ucp_worker_h,
    efd: RawFd,
    queue: Arc<Queue>,
    eps: HashMap<EpId, u::ucp_ep_h>,
    ep_ids: HashMap<usize, EpId>,
    listeners: HashMap<ListenerId, ListenerEntry>,
    ops: HashMap<usize, (OpId, Op)>,
    /// Endpoint close requests still in flight (polled, then freed).
    closing: Vec<usize>,
    next_id: u64,
    error_mode: ErrorMode,
}

// SAFETY: the worker is created with UCS_THREAD_MODE_SERIALIZED, so UCX allows calls from any
// thread as long as they do not overlap; every call goes through `&mut self` (or `Drop`), and
// the callbacks only touch the `Queue`, which is `Sync`. The raw handles are never shared.
unsafe impl Send for Worker {}

/// The flags of every send and receive: a completion callback whose `user_data` is the queue.
fn request_param(queue: &Arc<Queue>) -> u::ucp_request_param_t {
    u::ucp_request_param_t {
        op_attr_mask: u::UCP_OP_ATTR_FIELD_CALLBACK | u::UCP_OP_ATTR_FIELD_USER_DATA,
        user_data: Arc::as_ptr(queue) as *mut c_void,
        ..Default::default()
    }
}

impl Worker {
    /// Creates a context and worker from the `UCX_*` environment plus `overrides`
    /// (`("TLS", "tcp")` sets what `UCX_TLS=tcp` would). A setting UCX rejects is an error
    /// quoting UCX.
    pub fn new(overrides: &[(String, String)], error_mode: ErrorMode) -> Result<Worker, UcxError> {
        let mut config: *mut u::ucp_config_t = ptr::null_mut();
        // SAFETY: NULL prefix and file mean "UCX_ from the environment"; config is valid for writing.
        let status = unsafe { u::ucp_config_read(ptr::null(), ptr::null(), &mut config) };
        check(|| "UCX rejects its configuration (the UCX_* environment variables)".into(), status)?;
        let mut result = Ok(());
        for (k, v) in overrides {
            let (Ok(ck), Ok(cv)) = (CString::new(k.as_str()), CString::new(v.as_str())) else {
                result = Err(UcxError::new(
                    format!("UCX setting {k}={v:?} contains a NUL byte"),
                    u::ucs_status_t::UCS_ERR_INVALID_PARAM,
                ));
                break;
            };
            // SAFETY: config came from ucp_config_read and is not yet released; both strings are NUL-terminated.
            let status = unsafe { u::ucp_config_modify(config, ck.as_ptr(), cv.as_ptr()) };
            if let Err(e) = check(|| format!("UCX rejects the setting UCX_{k}={v}"), status) {
                result = Err(e);
                break;
            }
        }
        let params = u::ucp_params_t {
            field_mask: (u::UCP_PARAM_FIELD_FEATURES | u::UCP_PARAM_FIELD_NAME) as u64,
            features: (u::UCP_FEATURE_AM | u::UCP_FEATURE_WAKEUP) as u64,
            name: c"rdask".as_ptr(),
            ..Default::default()
        };
        let mut context: u::ucp_context_h = ptr::null_mut();
        if result.is_ok() {
            // SAFETY: params is fully initialised, config is live, context is valid for writing.
            let status = unsafe { u::ucp_init(&params, config, &mut context) };
            result = check(|| format!("UCX cannot start ({})", ucx_settings()), status);
        }
        // SAFETY: config is live and not used after this.
        unsafe { u::ucp_config_release(config) };
        result?;

        let wparams = u::ucp_worker_params_t {
            field_mask: u::UCP_WORKER_PARAM_FIELD_THREAD_MODE as u64,
            thread_mode: u::UCS_THREAD_MODE_SERIALIZED,
            ..Default::default()
        };
        let mut worker: u::ucp_worker_h = ptr::null_mut();
        // SAFETY: context is live; wparams initialised; worker valid for writing.
        let status = unsafe { u::ucp_worker_create(context, &wparams, &mut worker) };
        if let Err(e) = check(|| format!("UCX cannot create a worker ({})", ucx_settings()), status) {
            // SAFETY: context is live and owns nothing else yet.
            unsafe { u::ucp_cleanup(context) };
            return Err(e);
        }
        // From here on, Drop cleans up.
        let mut w = Worker {
            context,
            worker,
            efd: -1,
            queue: Arc::default(),
            eps: HashMap::new(),
            ep_ids: HashMap::new(),
            listeners: HashMap::new(),
            ops: HashMap::new(),
            closing: Vec::new(),
            next_id: 1,
            error_mode,
        };
        let mut efd: libc::c_int = -1;
        // SAFETY: worker is live (created with the WAKEUP feature); efd valid for writing.
        let status = unsafe { u::ucp_worker_get_efd(w.worker, &mut efd) };
        check(|| "UCX gives no event file descriptor".into(), status)?;
        w.efd = efd;
        let am = u::ucp_am_handler_param_t {
            field_mask: (u::UCP_AM_HANDLER_PARAM_FIELD_ID
                | u::UCP_AM_HANDLER_PARAM_FIELD_CB
                | u::UCP_AM_HANDLER_PARAM_FIELD_ARG
                | u::UCP_AM_HANDLER_PARAM_FIELD_FLAGS) as u64,
            id: AM_ID,
            flags: u::UCP_AM_FLAG_WHOLE_MSG,
            cb: Some(am_callback),
            arg: Arc::as_ptr(&w.queue) as *mut c_void,
        };
        // SAFETY: worker is live; `arg` points to the queue, which `w` keeps alive until the
        // worker is destroyed (Drop destroys the worker before the Arc is dropped).
        let status = unsafe { u::ucp_worker_set_am_recv_handler(w.worker, &am) };
        check(|| "UCX refuses the active-message handler".into(), status)?;
        Ok(w)
    }

    /// The worker's event file descriptor, registered with the current tokio runtime:
    /// readable when [`Worker::progress`] has work, once [`Worker::arm`] returned `true`.
    /// It is a duplicate of UCX's descriptor, so it stays valid whatever happens to the worker.
    pub fn async_efd(&self) -> io::Result<AsyncFd<OwnedFd>> {
        // SAFETY: self.efd is UCX's open event fd, open for as long as the worker (`self`)
        // lives, which covers this call; it is only duplicated here.
        let fd = unsafe { BorrowedFd::borrow_raw(self.efd) }.try_clone_to_owned()?;
        // SAFETY: the OwnedFd moves into the AsyncFd, so it stays open and refers to the same
        // file description for the AsyncFd's whole life, and as_raw_fd always returns it.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
    }

    /// Runs UCX's progress engine until it is idle and returns the events it produced.
    pub fn progress(&mut self) -> Vec<Event> {
        // SAFETY: worker is live; callbacks only push to the queue.
        while unsafe { u::ucp_worker_progress(self.worker) } != 0 {}
        self.reap_closing();
        let raw = std::mem::take(&mut *self.queue.0.lock().unwrap_or_else(|p| p.into_inner()));
        raw.into_iter().filter_map(|e| self.map_event(e)).collect()
    }

    /// Arms the event fd. `Ok(false)`: events are pending, progress again before waiting.
    pub fn arm(&mut self) -> Result<bool, UcxError> {
        // SAFETY: worker is live.
        match unsafe { u::ucp_worker_arm(self.worker) } {
            u::ucs_status_t::UCS_OK => Ok(true),
            u::ucs_status_t::UCS_ERR_BUSY => Ok(false),
            s => Err(UcxError::new("arming the UCX worker's event fd", s)),
        }
    }

    fn map_event(&mut self, e: RawEvent) -> Option<Event> {
        match e {
            RawEvent::Am { ep, header, data } => {
                let data = match data {
                    RawData::Eager(b) => AmData::Eager(b),
                    RawData::Rndv { desc, len } => AmData::Rndv(RndvDesc { raw: desc, len }),
                };
                match self.ep_ids.get(&ep) {
                    Some(&ep) => Some(Event::Am { ep, header, data }),
                    None => {
                        // From an endpoint we closed (or sent without a reply endpoint): drop it.
                        if let AmData::Rndv(d) = data {
                            self.am_release(d);
                        }
                        None
                    }
                }
            }
            RawEvent::Sent { req, status } => {
                let (op, _) = self.finish(req)?;
                Some(Event::Sent { op, result: check(|| "sending to the peer".into(), status) })
            }
            RawEvent::Received { req, status, len } => {
                let (op, entry) = self.finish(req)?;
                let Op::Recv { mut buf, len: want } = entry else { return None };
                let result = check(|| "receiving data from the peer".into(), status).and_then(|()| {
                    if len != want {
                        return Err(UcxError::new(
                            format!("received {len} bytes where {want} were announced"),
                            u::ucs_status_t::UCS_ERR_MESSAGE_TRUNCATED,
                        ));
                    }
                    // SAFETY: UCX reported success writing `len` bytes into the first `len`
                    // bytes of buf's capacity (which is at least `len`); they are initialised.
                    unsafe { buf.set_len(len) };
                    Ok(pool::bytes(buf))
                });
                Some(Event::Received { op, result })
            }
            RawEvent::EpFailed { ep, status } => {
                let id = *self.ep_ids.get(&ep)?;
                Some(Event::EpFailed { ep: id, error: UcxError::new("the connection failed", status) })
            }
            RawEvent::ConnRequest { raw, listener } => {
                let listener = ListenerId(listener);
                if self.listeners.contains_key(&listener) {
                    Some(Event::ConnRequest(ConnRequest { raw, listener }))
                } else {
                    None
                }
            }
        }
    }

    /// Frees a completed request and returns what it owned.
    fn finish(&mut self, req: usize) -> Option<(OpId, Op)> {
        let entry = self.ops.remove(&req)?;
        // SAFETY: req is a request handle returned by UCX whose callback has now run; it is
        // freed exactly once (it was removed from `ops`).
        unsafe { u::ucp_request_free(req as *mut c_void) };
        Some(entry)
    }

    fn reap_closing(&mut self) {
        self.closing.retain(|&req| {
            // SAFETY: req is a live close request (freed only below, once, when complete).
            let status = unsafe { u::ucp_request_check_status(req as *mut c_void) };
            if status == u::ucs_status_t::UCS_INPROGRESS {
                return true;
            }
            // SAFETY: as above; complete, so it may be freed.
            unsafe { u::ucp_request_free(req as *mut c_void) };
            false
        });
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn add_ep(&mut self, ep: u::ucp_ep_h) -> EpId {
        let id = EpId(self.id());
        self.eps.insert(id, ep);
        self.ep_ids.insert(ep as usize, id);
        id
    }

    fn ep_params(&self) -> u::ucp_ep_params_t {
        let mut p = u::ucp_ep_params_t {
            field_mask: (u::UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE) as u64,
            err_mode: match self.error_mode {
                ErrorMode::Peer => u::UCP_ERR_HANDLING_MODE_PEER,
                ErrorMode::None => u::UCP_ERR_HANDLING_MODE_NONE,
            },
            ..Default::default()
        };
        if self.error_mode == ErrorMode::Peer {
            p.field_mask |= u::UCP_EP_PARAM_FIELD_ERR_HANDLER as u64;
            p.err_handler =
                u::ucp_err_handler_t { cb: Some(ep_error_callback), arg: Arc::as_ptr(&self.queue) as *mut c_void };
        }
        p
    }

    /// Connects to a UCX listener at `addr` (client-server mode, through UCX's connection manager).
    pub fn connect(&mut self, addr: SocketAddr) -> Result<EpId, UcxError> {
        let (storage, len) = sockaddr(addr);
        let mut p = self.ep_params();
        p.field_mask |= (u::UCP_EP_PARAM_FIELD_FLAGS | u::UCP_EP_PARAM_FIELD_SOCK_ADDR) as u64;
        p.flags = u::UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
        p.sockaddr =
            u::ucs_sock_addr_t { addr: &storage as *const libc::sockaddr_storage as *const u::sockaddr, addrlen: len };
        let mut ep: u::ucp_ep_h = ptr::null_mut();
        // SAFETY: worker live; p initialised, its sockaddr points to `storage`, alive during the call
        // (UCX copies it); the error handler's arg is the queue, alive as long as the worker.
        let status = unsafe { u::ucp_ep_create(self.worker, &p, &mut ep) };
        check(|| format!("UCX cannot connect to {addr} ({})", ucx_settings()), status)?;
        Ok(self.add_ep(ep))
    }

    /// Listens on `addr` (port 0 picks one); returns the id and the address bound.
    pub fn listen(&mut self, addr: SocketAddr) -> Result<(ListenerId, SocketAddr), UcxError> {
        let id = self.id();
        let arg = Box::new(ListenerArg { queue: self.queue.clone(), id });
        let (storage, len) = sockaddr(addr);
        let params = u::ucp_listener_params_t {
            field_mask: (u::UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | u::UCP_LISTENER_PARAM_FIELD_CONN_HANDLER) as u64,
            sockaddr: u::ucs_sock_addr_t {
                addr: &storage as *const libc::sockaddr_storage as *const u::sockaddr,
                addrlen: len,
            },
            conn_handler: u::ucp_listener_conn_handler_t {
                cb: Some(conn_callback),
                arg: &*arg as *const ListenerArg as *mut c_void,
            },
            ..Default::default()
        };
        let mut raw: u::ucp_listener_h = ptr::null_mut();
        // SAFETY: worker live; params initialised; sockaddr valid during the call; the callback
        // arg is the boxed ListenerArg, kept (at a fixed address) until the listener is destroyed.
        let status = unsafe { u::ucp_listener_create(self.worker, &params, &mut raw) };
        check(
            || {
                format!("UCX cannot listen on {addr} (a UCX listener needs `tcp` in UCX_TLS for its connection manager; {})", ucx_settings())
            },
            status,
        )?;
        let mut attr =
            u::ucp_listener_attr_t { field_mask: u::UCP_LISTENER_ATTR_FIELD_SOCKADDR as u64, ..Default::default() };
        // SAFETY: raw is the live listener just created; attr valid for writing.
        let status = unsafe { u::ucp_listener_query(raw, &mut attr) };
        let bound = if status == u::ucs_status_t::UCS_OK {
            // SAFETY: UCX filled attr.sockaddr with the bound address (a sockaddr_storage).
            from_sockaddr(unsafe { &*(&attr.sockaddr as *const u::sockaddr_storage as *const libc::sockaddr_storage) })
        } else {
            None
        };
        let bound = bound.unwrap_or(addr);
        self.listeners.insert(ListenerId(id), ListenerEntry { raw, _arg: arg, addr: bound });
        Ok((ListenerId(id), bound))
    }

    /// The address a listener is bound to.
    pub fn listener_addr(&self, id: ListenerId) -> Option<SocketAddr> {
        self.listeners.get(&id).map(|l| l.addr)
    }

    /// Stops a listener.
    pub fn close_listener(&mut self, id: ListenerId) {
        if let Some(l) = self.listeners.remove(&id) {
            // SAFETY: l.raw is live (removed from the map, so destroyed once); its arg box is
            // dropped only after this, when `l` goes out of scope.
            unsafe { u::ucp_listener_destroy(l.raw) };
        }
    }

    /// Accepts a connection request: creates the server side's endpoint. Also returns the
    /// client's address, when UCX knows it.
    pub fn accept(&mut self, req: ConnRequest) -> Result<(EpId, Option<SocketAddr>), UcxError> {
        if !self.listeners.contains_key(&req.listener) {
            return Err(UcxError::new("the listener is closed", u::ucs_status_t::UCS_ERR_CANCELED));
        }
        let mut attr = u::ucp_conn_request_attr_t {
            field_mask: u::UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR as u64,
            ..Default::default()
        };
        // SAFETY: req.raw is a live connection request (not yet consumed); attr is valid for writing.
        let status = unsafe { u::ucp_conn_request_query(req.raw as u::ucp_conn_request_h, &mut attr) };
        let client = if status == u::ucs_status_t::UCS_OK {
            // SAFETY: UCX filled client_address, a sockaddr_storage.
            from_sockaddr(unsafe {
                &*(&attr.client_address as *const u::sockaddr_storage as *const libc::sockaddr_storage)
            })
        } else {
            None
        };
        let mut p = self.ep_params();
        p.field_mask |= u::UCP_EP_PARAM_FIELD_CONN_REQUEST as u64;
        p.conn_request = req.raw as u::ucp_conn_request_h;
        let mut ep: u::ucp_ep_h = ptr::null_mut();
        // SAFETY: worker live; conn_request came from this worker's listener callback and is
        // consumed here exactly once (ConnRequest is not Clone).
        let status = unsafe { u::ucp_ep_create(self.worker, &p, &mut ep) };
        check(|| "UCX cannot accept a connection".into(), status)?;
        Ok((self.add_ep(ep), client))
    }

    /// Rejects a connection request.
    pub fn reject(&mut self, req: ConnRequest) {
        if let Some(l) = self.listeners.get(&req.listener) {
            // SAFETY: the listener is live and req came from it, consumed once.
            unsafe { u::ucp_listener_reject(l.raw, req.raw as u::ucp_conn_request_h) };
        }
    }

    /// Sends an active message: `header` (small) and `data`. `Ok(None)`: done already;
    /// `Ok(Some(op))`: a [`Event::Sent`] for `op` follows. Both buffers are kept until then.
    pub fn am_send(&mut self, ep: EpId, header: Bytes, data: Bytes) -> Result<Option<OpId>, UcxError> {
        let raw_ep = *self
            .eps
            .get(&ep)
            .ok_or_else(|| UcxError::new("the connection is closed", u::ucs_status_t::UCS_ERR_NOT_CONNECTED))?;
        let mut p = request_param(&self.queue);
        p.op_attr_mask |= u::UCP_OP_ATTR_FIELD_FLAGS;
        p.flags = u::UCP_AM_SEND_FLAG_REPLY;
        p.cb.send = Some(send_callback);
        // SAFETY: raw_ep is live (in `eps`); header and data point to `len` readable bytes that
        // stay alive and unmoved until completion: either now (the call returns a status) or at
        // the callback, until which `ops` owns both Bytes (their heap data does not move).
        let ret = unsafe {
            u::ucp_am_send_nbx(
                raw_ep,
                AM_ID,
                header.as_ptr() as *const c_void,
                header.len(),
                data.as_ptr() as *const c_void,
                data.len(),
                &p,
            )
        };
        if u::UCS_PTR_IS_PTR(ret) {
            let op = OpId(self.id());
            self.ops.insert(ret as usize, (op, Op::Send { _header: header, _data: data }));
            Ok(Some(op))
        } else {
            check(|| "sending to the peer".into(), u::UCS_PTR_STATUS(ret)).map(|()| None)
        }
    }

    /// Receives rendezvous data into a fresh buffer of exactly its size (no further copy).
    /// `Ok(Ok(bytes))`: here already; `Ok(Err(op))`: a [`Event::Received`] for `op` follows.
    pub fn am_recv(&mut self, desc: RndvDesc) -> Result<Result<Bytes, OpId>, UcxError> {
        let len = desc.len;
        let mut buf = pool::take(len);
        let mut p = request_param(&self.queue);
        p.cb.recv_am = Some(recv_callback);
        // SAFETY: desc came from this worker's AM callback (RNDV flag) and is consumed once;
        // buf's capacity holds `len` writable bytes, owned by `ops` (heap data fixed) until the
        // callback, or done when the call returns a status.
        let ret = unsafe {
            u::ucp_am_recv_data_nbx(self.worker, desc.raw as *mut c_void, buf.as_mut_ptr() as *mut c_void, len, &p)
        };
        if u::UCS_PTR_IS_PTR(ret) {
            let op = OpId(self.id());
            self.ops.insert(ret as usize, (op, Op::Recv { buf, len }));
            Ok(Err(op))
        } else {
            check(|| "receiving data from the peer".into(), u::UCS_PTR_STATUS(ret))?;
            // SAFETY: UCX completed the receive of `len` bytes into buf's capacity in the call.
            unsafe { buf.set_len(len) };
            Ok(Ok(pool::bytes(buf)))
        }
    }

    /// Drops rendezvous data without receiving it.
    pub fn am_release(&mut self, desc: RndvDesc) {
        // SAFETY: desc came from this worker's AM callback and is consumed once.
        unsafe { u::ucp_am_data_release(self.worker, desc.raw as *mut c_void) };
    }

    /// Closes an endpoint. `force`: at once, cancelling its outstanding requests (their
    /// completions follow as errors); otherwise after flushing them.
    pub fn close_ep(&mut self, ep: EpId, force: bool) {
        let Some(raw) = self.eps.remove(&ep) else { return };
        self.ep_ids.remove(&(raw as usize));
        let mut p = u::ucp_request_param_t::default();
        if force {
            p.op_attr_mask = u::UCP_OP_ATTR_FIELD_FLAGS;
            p.flags = u::UCP_EP_CLOSE_FLAG_FORCE;
        }
        // SAFETY: raw was live and is closed once (removed from the maps above).
        let ret = unsafe { u::ucp_ep_close_nbx(raw, &p) };
        if u::UCS_PTR_IS_PTR(ret) {
            self.closing.push(ret as usize);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let eps: Vec<EpId> = self.eps.keys().copied().collect();
        for ep in eps {
            self.close_ep(ep, true);
        }
        let ls: Vec<ListenerId> = self.listeners.keys().copied().collect();
        for l in ls {
            self.close_listener(l);
        }
        for _ in 0..1000 {
            self.progress();
            if self.closing.is_empty() {
                break;
            }
        }
        // Requests still outstanding are released with the worker; their buffers (in `ops`)
        // are dropped after it, when UCX can no longer touch them.
        // SAFETY: worker and context are live and destroyed once, worker first.
        unsafe {
            u::ucp_worker_destroy(self.worker);
            u::ucp_cleanup(self.context);
        }
    }
}

const AM_ID: u32 = 0;

unsafe extern "C" fn am_callback(
    arg: *mut c_void,
    header: *const c_void,
    header_length: usize,
    data: *mut c_void,
    length: usize,
    param: *const u::ucp_am_recv_param_t,
) -> u::ucs_status_t {
    // SAFETY: arg is the Queue registered with the handler, alive while the worker is; UCX
    // passes a valid param, and header/data valid for their lengths during this call.
    unsafe {
        let queue = &*(arg as *const Queue);
        let param = &*param;
        let ep =
            if param.recv_attr & u::UCP_AM_RECV_ATTR_FIELD_REPLY_EP as u64 != 0 { param.reply_ep as usize } else { 0 };
        let header = bytes_at(header, header_length).to_vec();
        if param.recv_attr & u::UCP_AM_RECV_ATTR_FLAG_RNDV as u64 != 0 {
            queue.push(RawEvent::Am { ep, header, data: RawData::Rndv { desc: data as usize, len: length } });
            // Keep the descriptor: the data is received (or released) after progress returns.
            u::ucs_status_t::UCS_INPROGRESS
        } else {
            let data = Bytes::copy_from_slice(bytes_at(data, length));
            queue.push(RawEvent::Am { ep, header, data: RawData::Eager(data) });
            u::ucs_status_t::UCS_OK
        }
    }
}

/// The `len` bytes at `p` (none when `len` is 0, whatever `p` is).
///
/// # Safety
/// When `len > 0`, `p` must be valid for reading `len` bytes for the returned lifetime.
unsafe fn bytes_at<'a>(p: *const c_void, len: usize) -> &'a [u8] {
    if len == 0 || p.is_null() {
        &[]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(p as *const u8, len) }
    }
}

unsafe extern "C" fn send_callback(request: *mut c_void, status: u::ucs_status_t, user_data: *mut c_void) {
    // SAFETY: user_data is the worker's Queue (request_param), alive while the worker is.
    let queue = unsafe { &*(user_data as *const Queue) };
    queue.push(RawEvent::Sent { req: request as usize, status });
}

unsafe extern "C" fn recv_callback(
    request: *mut c_void,
    status: u::ucs_status_t,
    length: usize,
    user_data: *mut c_void,
) {
    // SAFETY: as in send_callback.
    let queue = unsafe { &*(user_data as *const Queue) };
    queue.push(RawEvent::Received { req: request as usize, status, len: length });
}

unsafe extern "C" fn ep_error_callback(arg: *mut c_void, ep: u::ucp_ep_h, status: u::ucs_status_t) {
    // SAFETY: arg is the worker's Queue (ep_params), alive while the worker is.
    let queue = unsafe { &*(arg as *const Queue) };
    queue.push(RawEvent::EpFailed { ep: ep as usize, status });
}

unsafe extern "C" fn conn_callback(conn_request: u::ucp_conn_request_h, arg: *mut c_void) {
    // SAFETY: arg is the listener's boxed ListenerArg, alive until the listener is destroyed.
    let arg = unsafe { &*(arg as *const ListenerArg) };
    arg.queue.push(RawEvent::ConnRequest { raw: conn_request as usize, listener: arg.id });
}

/// A `sockaddr_storage` holding `addr`, and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, u::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as u::socklen_t)
}

fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(a.sin6_port))))
        }
        _ => None,
    }
}

/// The UCX variables set in the environment, for error messages.
pub fn ucx_settings() -> String {
    let mut v: Vec<String> =
        std::env::vars().filter(|(k, _)| k.starts_with("UCX_")).map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    if v.is_empty() {
        "no UCX_* variables set".into()
    } else {
        v.join(" ")
    }
}

/// Receive buffers for rendezvous data, reused: a buffer fresh from the kernel costs a page
/// fault and the zeroing of every page (for a large payload about as long as the copy
/// itself); a payload's buffer comes back here when its last `Bytes` is dropped.
pub mod pool {
    use std::sync::Mutex;

    use bytes::Bytes;

    /// Buffers smaller than this are not pooled (the allocator serves them well).
    const MIN: usize = 1 << 20;
    /// Payloads from this size on are received into transparent huge pages.
    const HUGE: usize = 4 << 20;

    struct Pool {
        free: Vec<Vec<u8>>,
        bytes: usize,
    }

    static POOL: Mutex<Pool> = Mutex::new(Pool { free: Vec::new(), bytes: 0 });

    /// At most this many bytes of free buffers are kept: `RDASK_UCX_POOL_MB` (default 1024; 0 turns it off).
    fn limit() -> usize {
        static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *LIMIT.get_or_init(|| {
            std::env::var("RDASK_UCX_POOL_MB").ok().and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(1024) << 20
        })
    }

    /// An empty buffer with room for `len` bytes: a pooled one of about that size, or a new one.
    pub(super) fn take(len: usize) -> Vec<u8> {
        if len >= MIN {
            let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
            // The smallest free buffer that fits and wastes at most a quarter.
            let best = p
                .free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len && b.capacity() - len <= len / 4)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let mut b = p.free.swap_remove(i);
                p.bytes -= b.capacity();
                b.clear();
                return b;
            }
        }
        let mut b = Vec::with_capacity(len);
        if len >= HUGE {
            super::advise_huge_pages(b.spare_capacity_mut().as_mut_ptr() as usize, len);
        }
        b
    }

    struct Pooled(Vec<u8>);

    impl AsRef<[u8]> for Pooled {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Pooled {
        fn drop(&mut self) {
            let b = std::mem::take(&mut self.0);
            if b.capacity() < MIN {
                return;
            }
            let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
            // Make room by dropping the oldest buffers; a buffer over the limit is not kept.
            while p.bytes + b.capacity() > limit() && !p.free.is_empty() {
                let old = p.free.remove(0);
                p.bytes -= old.capacity();
            }
            if p.bytes + b.capacity() <= limit() {
                p.bytes += b.capacity();
                p.free.push(b);
            }
        }
    }

    /// The received data as `Bytes` that return the buffer to the pool when dropped.
    pub(super) fn bytes(b: Vec<u8>) -> Bytes {
        if b.capacity() < MIN {
            Bytes::from(b)
        } else {
            Bytes::from_owner(Pooled(b))
        }
    }
}

/// Asks the kernel to back `[start, start + len)` (inside one allocation of ours) with
/// transparent huge pages: receiving a large payload into fresh memory is otherwise dominated
/// by one page fault per 4 KiB.
fn advise_huge_pages(start: usize, len: usize) {
    const PAGE: usize = 4096;
    let end = start + len;
    let aligned = start.next_multiple_of(PAGE);
    if end <= aligned + PAGE {
        return;
    }
    let len = (end - aligned) / PAGE * PAGE;
    // SAFETY: [aligned, aligned + len) lies inside the caller's allocation (the spare capacity
    // of a live Vec); MADV_HUGEPAGE changes only how the kernel backs the pages. A failure is harmless.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}
