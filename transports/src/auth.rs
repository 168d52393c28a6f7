//! Mutual challenge–response authentication with a shared cluster secret.
//!
//! Every rdask connection starts with this exchange, before any protocol
//! message is read:
//!
//! 1. The accepting side sends `HELLO`: magic, protocol version, 32-byte nonce `ns`.
//! 2. The connecting side answers with its own nonce `nc` and
//!    `HMAC-SHA256(secret, "rdask client" | version | ns | nc)`.
//! 3. The accepting side checks the MAC and answers with
//!    `HMAC-SHA256(secret, "rdask server" | version | nc | ns)`, proving that
//!    it knows the secret too, or closes the connection.
//!
//! The secret never crosses the wire. Until the exchange succeeds a stream
//! accepts only frames of [`Limits::HANDSHAKE`] size, so an unauthenticated
//! peer cannot make the receiver allocate. The secret lives in a 0600 file in
//! the cluster's state directory.

use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Connection, Frame, Limits};

/// Version of the rdask wire protocol; peers with another version are refused. 3: heartbeats
/// say their interval and the scheduler paces them (`ToWorker::Pace`).
pub const PROTOCOL_VERSION: u16 = 3;
const MAGIC: &[u8; 6] = b"RDASK\0";
const NONCE: usize = 32;
const MAC: usize = 32;

/// A cluster's shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The peer does not know the cluster secret.
    #[error("peer {peer} failed authentication: it does not hold this cluster's secret")]
    BadSecret {
        /// The peer's address.
        peer: String,
    },
    /// The peer speaks something else, or another version of rdask.
    #[error("peer {peer} is not an rdask peer of protocol version {PROTOCOL_VERSION}: {detail}")]
    Protocol {
        /// The peer's address.
        peer: String,
        /// What was wrong.
        detail: String,
    },
    /// The connection broke during the handshake.
    #[error("handshake with {peer} failed")]
    Io {
        /// The peer's address.
        peer: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Why a secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Reading or writing the file failed.
    #[error("cannot access secret file {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file does not hold a secret.
    #[error("secret file {path} is corrupt (expected 64 hex digits); delete it and start the cluster again")]
    Corrupt {
        /// The file.
        path: String,
    },
    /// Others may read the file.
    #[error("secret file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen {
        /// The file.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
}

impl Secret {
    /// A fresh random secret from the operating system's generator.
    pub fn generate() -> Secret {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).expect("the operating system's random generator failed");
        Secret(b)
    }

    /// The secret as 64 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Secret> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut b = [0u8; 32];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Secret(b))
    }

    /// Writes the secret to a new file readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), SecretError> {
        let io_err = |source| SecretError::Io { path: path.display().to_string(), source };
        let _ = std::fs::remove_file(path);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_err)?;
        f.write_all(self.to_hex().as_bytes()).map_err(io_err)?;
        f.sync_all().map_err(io_err)
    }

    /// Reads a secret file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let p = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| SecretError::Io { path: p.clone(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::TooOpen { path: p, mode });
        }
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Io { path: p.clone(), source })?;
        Secret::from_hex(&text).ok_or(SecretError::Corrupt { path: p })
    }

    /// A token for `purpose` (e.g. `"dashboard"`), derived from the secret: 64 hex digits that
    /// anyone with the secret file can recompute, that differ between clusters and purposes, and
    /// from which the secret cannot be recovered. What the dashboard's URL carries.
    pub fn derive_token(&self, purpose: &str) -> String {
        let tag = self.mac(b"rdask derived token", purpose.as_bytes(), b"").finalize().into_bytes();
        tag.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `token` is [`Secret::derive_token`] of `purpose`, compared in constant time.
    pub fn check_token(&self, purpose: &str, token: &str) -> bool {
        // Decoded, then checked by `hmac`'s `verify_slice` (constant time, through `subtle`).
        let Some(given) = Secret::from_hex(token) else { return false };
        self.mac(b"rdask derived token", purpose.as_bytes(), b"").verify_slice(&given.0).is_ok()
    }

    fn mac(&self, label: &[u8], a: &[u8], b: &[u8]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any size");
        m.update(label);
        m.update(&PROTOCOL_VERSION.to_le_bytes());
        m.update(a);
        m.update(b);
        m
    }
}

fn nonce() -> [u8; NONCE] {
    let mut n = [0u8; NONCE];
    getrandom::fill(&mut n).expect("the operating system's random generator failed");
    n
}

fn io_err(conn: &Connection) -> impl Fn(io::Error) -> AuthError + '_ {
    move |source| AuthError::Io { peer: conn.peer.clone(), source }
}

/// Runs the accepting side of the handshake; on success the stream accepts full-size frames.
pub async fn accept(conn: &mut Connection, secret: &Secret) -> Result<(), AuthError> {
    conn.rx.set_limits(Limits::HANDSHAKE);
    let ns = nonce();
    let mut hello = Vec::with_capacity(MAGIC.len() + 2 + NONCE);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    hello.extend_from_slice(&ns);
    conn.send_now(Frame::new(hello)).await.map_err(io_err(conn))?;
    let reply = conn.recv_some().await.map_err(io_err(conn))?;
    if reply.header.len() != NONCE + MAC {
        return Err(AuthError::Protocol { peer: conn.peer.clone(), detail: "malformed handshake reply".into() });
    }
    let (nc, their_mac) = reply.header.split_at(NONCE);
    if secret.mac(b"rdask client", &ns, nc).verify_slice(their_mac).is_err() {
        return Err(AuthError::BadSecret { peer: conn.peer.clone() });
    }
    let ours = secret.mac(b"rdask server", nc, &ns).finalize().into_bytes();
    conn.send_now(Frame::new(ours.to_vec())).await.map_err(io_err(conn))?;
    conn.rx.set_limits(Limits::AUTHENTICATED);
    Ok(())
}

/// Runs the connecting side of the handshake; it also checks that the server holds the secret.
pub async fn connect(conn: &mut Connection, secret: &Secret) -> Result<(), AuthError> {
    conn.rx.set_limits(Limits::HANDSHAKE);
    let hello = conn.recv_some().await.map_err(io_err(conn))?;
    let h = &hello.header;
    if h.len() != MAGIC.len() + 2 + NONCE || &h[..MAGIC.len()] != MAGIC {
        return Err(AuthError::Protocol { peer: conn.peer.clone(), detail: "no rdask greeting".into() });
    }
    let version = u16::from_le_bytes([h[MAGIC.len()], h[MAGIC.len() + 1]]);
    if version != PROTOCOL_VERSION {
        return Err(AuthError::Protocol { peer: conn.peer.clone(), detail: format!("it speaks version {version}") });
    }
    let ns = &h[MAGIC.len() + 2..];
    let nc = nonce();
    let mac = secret.mac(b"rdask client", ns, &nc).finalize().into_bytes();
    let mut reply = nc.to_vec();
    reply.extend_from_slice(&mac);
    conn.send_now(Frame::new(reply)).await.map_err(io_err(conn))?;
    let answer = match conn.rx.recv().await {
        Ok(Some(f)) => f,
        // The server closes on a wrong MAC: that means our secret is not the cluster's.
        Ok(None) => return Err(AuthError::BadSecret { peer: conn.peer.clone() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
            return Err(AuthError::BadSecret { peer: conn.peer.clone() })
        }
        Err(e) => return Err(io_err(conn)(e)),
    };
    if secret.mac(b"rdask server", &nc, ns).verify_slice(&answer.header).is_err() {
        return Err(AuthError::BadSecret { peer: conn.peer.clone() });
    }
    conn.rx.set_limits(Limits::AUTHENTICATED);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::{self, TcpFrameListener};
    use crate::Listener;

    #[test]
    fn derived_tokens_differ_by_cluster_and_purpose_and_check_only_themselves() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let t = a.derive_token("dashboard");
        assert_eq!(t.len(), 64);
        assert!(a.check_token("dashboard", &t));
        assert!(!b.check_token("dashboard", &t), "another cluster's token must not pass");
        assert!(!a.check_token("metrics", &t), "a token is for one purpose");
        assert!(!a.check_token("dashboard", &t[..63]));
        assert!(!a.check_token("dashboard", ""));
        assert_ne!(t, a.to_hex(), "the token is not the secret");
    }

    async fn handshake(server: Secret, client: Secret) -> (Result<(), AuthError>, Result<(), AuthError>) {
        let mut l = TcpFrameListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr();
        let srv = tokio::spawn(async move {
            let mut c = l.accept().await.unwrap();
            accept(&mut c, &server).await
        });
        let mut c = tcp::connect(&addr.host_port).await.unwrap();
        let r = connect(&mut c, &client).await;
        (srv.await.unwrap(), r)
    }

    #[tokio::test]
    async fn same_secret_passes() {
        let s = Secret::generate();
        let (a, b) = handshake(s.clone(), s).await;
        a.unwrap();
        b.unwrap();
    }

    #[tokio::test]
    async fn wrong_secret_is_refused_on_both_sides() {
        let (a, b) = handshake(Secret::generate(), Secret::generate()).await;
        assert!(matches!(a, Err(AuthError::BadSecret { .. })), "{a:?}");
        assert!(matches!(b, Err(AuthError::BadSecret { .. })), "{b:?}");
    }

    #[test]
    fn secret_file_round_trip_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        let s = Secret::generate();
        s.save(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Secret::load(&p).unwrap(), s);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Secret::load(&p), Err(SecretError::TooOpen { .. })));
        std::fs::write(dir.path().join("bad"), "xyz").unwrap();
        std::fs::set_permissions(dir.path().join("bad"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(Secret::load(&dir.path().join("bad")), Err(SecretError::Corrupt { .. })));
    }

    proptest::proptest! {
        #[test]
        fn hex_round_trips(bytes: [u8; 32]) {
            let s = Secret(bytes);
            proptest::prop_assert_eq!(Secret::from_hex(&s.to_hex()), Some(s));
        }

        #[test]
        fn from_hex_never_panics(text in ".*") {
            let _ = Secret::from_hex(&text);
        }
    }
}
