//! Framed, authenticated connections between rdask peers.
//!
//! Everything that crosses a process boundary in rdask is a [`Frame`]: a small
//! header (an encoded protocol message) and an optional payload of raw bytes
//! (a task result, an input). Payloads are reference-counted [`Bytes`] and are
//! written to and read from the socket without intermediate copies.
//!
//! A transport turns an [`Address`] into a [`Connection`] (a [`FrameSink`] and
//! a [`FrameStream`]) or a [`Listener`]. Only this crate knows about sockets;
//! the rest of rdask sees frames. TCP is always built; UCX is a cargo feature
//! of its own (a second implementation of the same traits).
//!
//! Every connection is authenticated before any message is exchanged: see
//! [`auth`].
// Allowed: transports wait on sockets with deadlines. The sans-IO modules deny it (see clippy.toml).
#![allow(clippy::disallowed_methods)]

pub mod auth;
pub mod tcp;
#[cfg(feature = "ucx")]
pub mod ucx;

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;

pub use bytes::Bytes;

/// A boxed future, as returned by the object-safe transport traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message on the wire: an encoded header and a raw payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// The encoded protocol message.
    pub header: Bytes,
    /// Raw bytes that travel after the header; empty for most messages.
    pub payload: Bytes,
}

impl Frame {
    /// A frame with a header and no payload.
    pub fn new(header: impl Into<Bytes>) -> Frame {
        Frame { header: header.into(), payload: Bytes::new() }
    }

    /// A frame with a header and a payload.
    pub fn with_payload(header: impl Into<Bytes>, payload: Bytes) -> Frame {
        Frame { header: header.into(), payload }
    }
}

/// Size limits enforced by a [`FrameStream`] on incoming frames.
///
/// A frame that announces more than its limit is a protocol violation: the
/// stream returns [`io::ErrorKind::InvalidData`] before allocating anything,
/// so a corrupt or hostile peer cannot make the receiver allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest header accepted, in bytes.
    pub max_header: u32,
    /// Largest payload accepted, in bytes.
    pub max_payload: u64,
}

impl Limits {
    /// Limits before authentication: only the handshake's tiny frames pass.
    pub const HANDSHAKE: Limits = Limits { max_header: 1024, max_payload: 0 };
    /// Limits after authentication.
    pub const AUTHENTICATED: Limits = Limits { max_header: 1 << 30, max_payload: 1 << 40 };
}

/// The sending half of a connection.
///
/// `send` may buffer; `flush` pushes everything buffered to the peer. Callers
/// send a batch of frames and flush once, which is how many small messages
/// share one system call.
pub trait FrameSink: Send {
    /// Queues a frame for sending.
    fn send(&mut self, frame: Frame) -> BoxFuture<'_, io::Result<()>>;
    /// Writes out every queued frame.
    fn flush(&mut self) -> BoxFuture<'_, io::Result<()>>;
}

/// The receiving half of a connection.
pub trait FrameStream: Send {
    /// The next frame, or `None` when the peer closed the connection cleanly.
    fn recv(&mut self) -> BoxFuture<'_, io::Result<Option<Frame>>>;
    /// Changes the limits applied to the following frames.
    fn set_limits(&mut self, limits: Limits);
}

/// An established connection, split into its two halves.
pub struct Connection {
    /// Frames to the peer.
    pub tx: Box<dyn FrameSink>,
    /// Frames from the peer.
    pub rx: Box<dyn FrameStream>,
    /// The peer's address, for logs.
    pub peer: String,
    /// This end's address (for TCP, the local IP that routes to the peer).
    pub local: String,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").field("peer", &self.peer).finish()
    }
}

impl Connection {
    /// Sends one frame and flushes it.
    pub async fn send_now(&mut self, frame: Frame) -> io::Result<()> {
        self.tx.send(frame).await?;
        self.tx.flush().await
    }

    /// Receives one frame; a clean close is an [`io::ErrorKind::UnexpectedEof`] error.
    pub async fn recv_some(&mut self) -> io::Result<Frame> {
        self.rx
            .recv()
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} closed the connection", self.peer)))
    }
}

/// Accepts incoming connections.
pub trait Listener: Send {
    /// The next incoming connection (not yet authenticated).
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Connection>>;
    /// The address peers can use to reach this listener.
    fn local_addr(&self) -> Address;
}

/// Where a peer listens: a transport scheme and a `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// The transport.
    pub scheme: Scheme,
    /// `host:port`, where host is a name, an IPv4 address or a bracketed IPv6 address.
    pub host_port: String,
}

/// The transports rdask knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// TCP, always available.
    Tcp,
    /// UCX, available when rdask is built with the `ucx` feature.
    Ucx,
}

/// An address string that could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    /// The part before `://` is not a transport.
    #[error("unknown transport `{0}` in address (use tcp:// or ucx://)")]
    UnknownScheme(String),
    /// No `:port` at the end.
    #[error("address `{0}` has no port (write it as host:port, e.g. tcp://10.0.0.1:8786)")]
    NoPort(String),
}

impl std::str::FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Address, AddressError> {
        let (scheme, rest) = match s.split_once("://") {
            Some(("tcp", rest)) => (Scheme::Tcp, rest),
            Some(("ucx", rest)) => (Scheme::Ucx, rest),
            Some((other, _)) => return Err(AddressError::UnknownScheme(other.to_string())),
            None => (Scheme::Tcp, s),
        };
        let port = rest.rsplit_once(':').map(|(_, p)| p);
        match port {
            Some(p) if !p.is_empty() && p.parse::<u16>().is_ok() && !rest.ends_with(']') => {
                Ok(Address { scheme, host_port: rest.to_string() })
            }
            _ => Err(AddressError::NoPort(s.to_string())),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Tcp => "tcp",
            Scheme::Ucx => "ucx",
        };
        write!(f, "{scheme}://{}", self.host_port)
    }
}

/// Sends the frames that arrive on `rx`, flushing whenever the channel runs empty,
/// so that a burst of messages shares system calls. Ends when `rx` closes or the peer breaks.
pub async fn pump(mut tx: Box<dyn FrameSink>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Frame>) {
    while let Some(f) = rx.recv().await {
        if tx.send(f).await.is_err() {
            return;
        }
        while let Ok(f) = rx.try_recv() {
            if tx.send(f).await.is_err() {
                return;
            }
        }
        if tx.flush().await.is_err() {
            return;
        }
    }
}

/// Connects to `addr` with the transport its scheme names (not yet authenticated).
pub async fn connect(addr: &Address) -> io::Result<Connection> {
    match addr.scheme {
        Scheme::Tcp => tcp::connect(&addr.host_port).await,
        #[cfg(feature = "ucx")]
        Scheme::Ucx => ucx::connect(&addr.host_port).await,
        #[cfg(not(feature = "ucx"))]
        Scheme::Ucx => Err(ucx_unavailable()),
    }
}

/// Listens on `addr` (port 0 picks a free port).
pub async fn listen(addr: &Address) -> io::Result<Box<dyn Listener>> {
    match addr.scheme {
        Scheme::Tcp => Ok(Box::new(tcp::TcpFrameListener::bind(&addr.host_port).await?)),
        #[cfg(feature = "ucx")]
        Scheme::Ucx => Ok(Box::new(ucx::listen(&addr.host_port).await?)),
        #[cfg(not(feature = "ucx"))]
        Scheme::Ucx => Err(ucx_unavailable()),
    }
}

#[cfg(not(feature = "ucx"))]
fn ucx_unavailable() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "this rdask was built without UCX; rebuild with `--features ucx` or use a tcp:// address",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let a: Address = "tcp://127.0.0.1:8786".parse().unwrap();
        assert_eq!(a.scheme, Scheme::Tcp);
        assert_eq!(a.host_port, "127.0.0.1:8786");
        assert_eq!(a.to_string(), "tcp://127.0.0.1:8786");
        let b: Address = "node1:99".parse().unwrap();
        assert_eq!(b.to_string(), "tcp://node1:99");
        let c: Address = "ucx://[::1]:5".parse().unwrap();
        assert_eq!(c.scheme, Scheme::Ucx);
        assert_eq!("http://x:1".parse::<Address>(), Err(AddressError::UnknownScheme("http".into())));
        assert!(matches!("node1".parse::<Address>(), Err(AddressError::NoPort(_))));
        assert!(matches!("node1:99999".parse::<Address>(), Err(AddressError::NoPort(_))));
        assert!(matches!("[::1]".parse::<Address>(), Err(AddressError::NoPort(_))));
    }

    proptest::proptest! {
        #[test]
        fn address_parser_never_panics(s in ".*") {
            let _ = s.parse::<Address>();
        }

        #[test]
        fn address_round_trips(host in "[a-z0-9.-]{1,20}", port: u16) {
            let a: Address = format!("tcp://{host}:{port}").parse().unwrap();
            proptest::prop_assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
        }
    }
}
