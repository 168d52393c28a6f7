//! The UCX transport between real UCX workers: over UCX's tcp transport and over shared
//! memory, byte-exact transfers of every size class, authentication, peer death, and
//! settings UCX refuses.
#![cfg(feature = "ucx")]
// Allowed: tests wait with real deadlines. The sans-IO modules deny it (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::io;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdask_transport::auth::{self, Secret};
use rdask_transport::ucx::{Engine, ErrorMode, Settings};
use rdask_transport::{Bytes, Connection, Frame, Listener};

/// UCX_TLS for the tcp runs, and for the shared-memory runs: a listener needs UCX's tcp
/// connection manager, which `tcp` in UCX_TLS provides; between two processes of one host UCX
/// then moves data through shared memory (posix/sysv) and CMA, and tcp carries only the
/// connection setup.
const TLS_TCP: &str = "tcp";
const TLS_SM: &str = "sm,self,tcp";

/// Set (in this process and so in its peer processes): endpoints without UCX's peer-failure
/// handling, so that only rdask's keepalives can detect a dead peer.
const NO_PEER_ERRORS: &str = "RDASK_UCX_TEST_NO_PEER_ERRORS";

fn settings(tls: &str, timeout: Duration) -> Settings {
    Settings { overrides: vec![("TLS".into(), tls.into())], error_mode: ErrorMode::None, timeout }
}

/// Two engines (two UCX workers), connected: the connecting side, then the accepting one.
async fn unauthenticated_pair(tls: &str) -> (Connection, Connection) {
    let server = Engine::new(settings(tls, Duration::from_secs(30))).unwrap();
    let client = Engine::new(settings(tls, Duration::from_secs(30))).unwrap();
    let mut l = server.listen("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr();
    assert!(addr.to_string().starts_with("ucx://127.0.0.1:"), "{addr}");
    let a = client.connect(&addr.host_port).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(30), l.accept()).await.unwrap().unwrap();
    (a, b)
}

/// Two engines (two UCX workers), connected and authenticated.
async fn pair(tls: &str) -> (Connection, Connection) {
    let (mut a, mut b) = unauthenticated_pair(tls).await;
    let secret = Secret::generate();
    let (ra, rb) = tokio::join!(auth::connect(&mut a, &secret), auth::accept(&mut b, &secret));
    ra.unwrap();
    rb.unwrap();
    (a, b)
}

/// A payload of `n` bytes that no shifted or truncated copy matches.
fn pattern(n: usize, seed: u64) -> Bytes {
    let mut v = Vec::with_capacity(n + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v.into()
}

const SIZES: [usize; 8] = [0, 1, 8191, 8192, 8193, 1 << 20, 64 << 20, 1 << 30];

async fn byte_exact(tls: &str) {
    let (mut a, mut b) = pair(tls).await;
    let payloads: Vec<Bytes> = SIZES.iter().enumerate().map(|(i, &n)| pattern(n, i as u64 + 1)).collect();
    let sent = payloads.clone();
    // Both directions at once, so each side sends while it receives.
    let forward = tokio::spawn(async move {
        for (i, p) in sent.into_iter().enumerate() {
            a.tx.send(Frame::with_payload(vec![i as u8; i + 1], p)).await.unwrap();
        }
        a.tx.flush().await.unwrap();
        let echo = a.recv_some().await.unwrap();
        assert_eq!(echo.header.as_ref(), b"echo");
        assert_eq!(echo.payload.len(), 8193);
        a
    });
    for (i, p) in payloads.iter().enumerate() {
        let f = b.recv_some().await.unwrap();
        assert_eq!(f.header.as_ref(), vec![i as u8; i + 1].as_slice(), "header of frame {i}");
        assert_eq!(f.payload.len(), p.len(), "payload size of frame {i}");
        assert!(f.payload == *p, "payload of {} bytes differs", p.len());
        if !p.is_empty() {
            assert_ne!(f.payload.as_ptr(), p.as_ptr(), "a received payload is its own buffer");
        }
    }
    b.send_now(Frame::with_payload(&b"echo"[..], pattern(8193, 99))).await.unwrap();
    let a = forward.await.unwrap();
    // A clean close reads as the end of the stream, after every frame.
    drop(a);
    assert!(b.rx.recv().await.unwrap().is_none(), "clean close reads as None");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_byte_exact_over_ucx_tcp() {
    byte_exact(TLS_TCP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_byte_exact_over_ucx_shared_memory() {
    byte_exact(TLS_SM).await;
}

#[tokio::test]
async fn many_small_frames_keep_their_order() {
    let (mut a, mut b) = pair(TLS_SM).await;
    let n = 5000u32;
    let sender = tokio::spawn(async move {
        for i in 0..n {
            let payload = if i % 7 == 0 { pattern(i as usize * 13, i as u64) } else { Bytes::new() };
            a.tx.send(Frame::with_payload(i.to_le_bytes().to_vec(), payload)).await.unwrap();
            if i % 100 == 0 {
                a.tx.flush().await.unwrap();
            }
        }
        a.tx.flush().await.unwrap();
        a
    });
    for i in 0..n {
        let f = b.recv_some().await.unwrap();
        assert_eq!(f.header.as_ref(), i.to_le_bytes());
        let want = if i % 7 == 0 { i as usize * 13 } else { 0 };
        assert_eq!(f.payload.len(), want);
        if want > 0 {
            assert!(f.payload == pattern(want, i as u64));
        }
    }
    drop(sender.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_before_a_close_are_all_read_then_a_clean_end() {
    for tls in [TLS_TCP, TLS_SM] {
        let (mut a, mut b) = pair(tls).await;
        let writer = tokio::spawn(async move {
            for i in 0..20u32 {
                let payload = if i == 10 { pattern(1 << 20, 3) } else { pattern(100, i as u64) };
                a.tx.send(Frame::with_payload(i.to_le_bytes().to_vec(), payload)).await.unwrap();
            }
            // Not flushed: dropping the connection must still deliver everything before the end.
            drop(a);
        });
        // Read only once the writer has closed (and UCX has seen its endpoint go).
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..20u32 {
            let f = b.recv_some().await.unwrap_or_else(|e| panic!("frame {i} over {tls}: {e}"));
            assert_eq!(f.header.as_ref(), i.to_le_bytes());
            let want = if i == 10 { pattern(1 << 20, 3) } else { pattern(100, i as u64) };
            assert!(f.payload == want, "payload of frame {i} over {tls}");
        }
        assert!(b.rx.recv().await.unwrap().is_none(), "a clean end over {tls}");
        writer.await.unwrap();
    }
}

#[tokio::test]
async fn oversized_frame_is_refused_before_authentication() {
    let (mut a, mut b) = unauthenticated_pair(TLS_TCP).await;
    // The accepting side still has the handshake's limits: a 1 MiB payload is refused.
    let sender = tokio::spawn(async move {
        // Completes once the receiver drops the refused data (here: when it closes).
        let r = a.send_now(Frame::with_payload(&b"x"[..], pattern(1 << 20, 1))).await;
        (r, a)
    });
    let err = b.rx.recv().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    drop(b);
    let (_, a) = tokio::time::timeout(Duration::from_secs(30), sender).await.expect("the sender is released").unwrap();
    drop(a);
}

#[tokio::test]
async fn wrong_secret_is_refused() {
    let (mut a, mut b) = unauthenticated_pair(TLS_TCP).await;
    let (theirs, ours) = (Secret::generate(), Secret::generate());
    let (ra, rb) = tokio::join!(auth::connect(&mut a, &theirs), async {
        let r = auth::accept(&mut b, &ours).await;
        drop(b); // the server closes on a bad MAC
        r
    });
    assert!(matches!(rb, Err(auth::AuthError::BadSecret { .. })), "{rb:?}");
    assert!(matches!(ra, Err(auth::AuthError::BadSecret { .. })), "{ra:?}");
}

#[test]
fn unknown_transport_is_refused_in_ucx_words() {
    let err = Engine::new(settings("no_such_transport", Duration::from_secs(30))).map(|_| ()).unwrap_err();
    let msg = err.to_string();
    // UCX's own message for the status (ucs_status_string), after what rdask was doing.
    assert!(msg.contains("UCX cannot start"), "{msg}");
    assert!(msg.contains("No such device") || msg.contains("not"), "{msg}");
}

#[test]
fn missing_network_device_is_refused_in_ucx_words() {
    let mut s = settings(TLS_TCP, Duration::from_secs(30));
    s.overrides.push(("NET_DEVICES".into(), "mlx5_9:1".into()));
    let msg = Engine::new(s).map(|_| ()).unwrap_err().to_string();
    assert!(msg.contains("UCX cannot start") && msg.contains("No such device"), "{msg}");
}

#[tokio::test]
async fn connecting_to_nothing_fails() {
    let client = Engine::new(settings(TLS_TCP, Duration::from_secs(3))).unwrap();
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = tokio::time::timeout(Duration::from_secs(30), client.connect(&format!("127.0.0.1:{port}")))
        .await
        .expect("connect must give up, not hang")
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_alone_cannot_connect_and_says_so() {
    // Without tcp in UCX_TLS, UCX has no transport to establish a connection by address:
    // connecting fails (it does not hang) and the error says what to add.
    let server = Engine::new(settings("sm,self", Duration::from_secs(3))).unwrap();
    let client = Engine::new(settings("sm,self", Duration::from_secs(3))).unwrap();
    let _l = server.listen("127.0.0.1:0").await.unwrap();
    let addr = _l.local_addr();
    let err = tokio::time::timeout(Duration::from_secs(30), client.connect(&addr.host_port))
        .await
        .expect("connect must give up")
        .map(|_| ())
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&addr.host_port) && msg.contains("UCX_TLS"), "{msg}");
}

// ---- peer death -------------------------------------------------------------------------

const PEER_ENV: &str = "RDASK_UCX_TEST_PEER";
const TIMEOUT: Duration = Duration::from_secs(3);
/// How long a side may take to see its peer's death before the test calls it a hang: the
/// keepalive timeout (what detects it when UCX does not), its check interval, and slack for a
/// loaded machine. Not a speed goal: UCX's own detection usually takes about a second.
const DEADLINE: Duration = Duration::from_secs(12);

/// Not a test of its own: the peer process of the tests below (the test binary re-run with
/// `RDASK_UCX_TEST_PEER=<tls>,<address>,<secret>,<role>`).
#[tokio::test]
async fn peer_process() {
    let Ok(spec) = std::env::var(PEER_ENV) else { return };
    let parts: Vec<&str> = spec.split(',').collect();
    let (tls, addr, secret, role) =
        (parts[..parts.len() - 3].join(","), parts[parts.len() - 3], parts[parts.len() - 2], parts[parts.len() - 1]);
    let engine = Engine::new(settings(&tls, TIMEOUT)).unwrap();
    let mut conn = engine.connect(addr).await.unwrap();
    auth::connect(&mut conn, &Secret::from_hex(secret).unwrap()).await.unwrap();
    match role {
        // Sends a large frame and waits to be killed while the receiver has not taken it yet.
        "send" => {
            conn.tx.send(Frame::with_payload(&b"big"[..], pattern(256 << 20, 5))).await.unwrap();
            conn.tx.flush().await.ok();
        }
        // Announces readiness, then never reads: the other side's large send stays in flight.
        "stall" => {
            conn.send_now(Frame::new(&b"ready"[..])).await.unwrap();
        }
        _ => unreachable!(),
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
}

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn with_peer(tls: &str, role: &str) -> (Connection, Peer, Engine) {
    let engine = Engine::new(settings(tls, TIMEOUT)).unwrap();
    let mut l = engine.listen("127.0.0.1:0").await.unwrap();
    let secret = Secret::generate();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "peer_process", "--nocapture", "--test-threads=1"])
        .env(PEER_ENV, format!("{tls},{},{},{role}", l.local_addr().host_port, secret.to_hex()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let peer = Peer(child);
    let mut conn = tokio::time::timeout(Duration::from_secs(60), l.accept()).await.expect("the peer connects").unwrap();
    auth::accept(&mut conn, &secret).await.unwrap();
    (conn, peer, engine)
}

/// The receiver of a large frame whose sender is killed before the data moved.
async fn receiver_sees_killed_sender(tls: &str) {
    let (mut conn, mut peer, _engine) = with_peer(tls, "send").await;
    // Let the frame's announcement arrive, then kill the sender.
    tokio::time::sleep(Duration::from_millis(500)).await;
    peer.0.kill().unwrap();
    peer.0.wait().unwrap();
    let t = Instant::now();
    let r = tokio::time::timeout(DEADLINE, async {
        loop {
            match conn.rx.recv().await {
                Ok(Some(f)) => assert_eq!(f.payload.len(), 256 << 20, "only a whole frame may arrive"),
                other => return other,
            }
        }
    })
    .await
    .expect("a dead peer must not leave a read hanging");
    let err = r.expect_err("the stream must fail, not end cleanly");
    eprintln!("receiver saw after {:?}: {err}", t.elapsed());
}

/// The sender of a large frame whose receiver is killed: its flush fails.
async fn sender_sees_killed_receiver(tls: &str) {
    let (mut conn, mut peer, _engine) = with_peer(tls, "stall").await;
    assert_eq!(conn.recv_some().await.unwrap().header.as_ref(), b"ready");
    conn.tx.send(Frame::with_payload(&b"big"[..], pattern(256 << 20, 6))).await.unwrap();
    let flush = tokio::spawn(async move {
        let r = conn.tx.flush().await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    peer.0.kill().unwrap();
    peer.0.wait().unwrap();
    let (r, at) =
        tokio::time::timeout(DEADLINE, flush).await.expect("a dead peer must not leave a flush hanging").unwrap();
    let err = r.expect_err("the flush must fail");
    eprintln!("sender saw after {:?}: {err}", at.saturating_duration_since(killed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sender_is_an_error_over_ucx_tcp() {
    receiver_sees_killed_sender(TLS_TCP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sender_is_an_error_over_shared_memory() {
    receiver_sees_killed_sender(TLS_SM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_receiver_is_an_error_over_ucx_tcp() {
    sender_sees_killed_receiver(TLS_TCP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_receiver_is_an_error_over_shared_memory() {
    sender_sees_killed_receiver(TLS_SM).await;
}

/// The same four cases without UCX's peer-failure handling (`RDASK_UCX_ERROR_MODE=none`): the
/// keepalive timeout alone must turn a dead peer into an error. Run in a child process, as the
/// mode is chosen per process here.
#[test]
fn killed_peers_are_errors_without_ucx_error_handling() {
    if std::env::var(NO_PEER_ERRORS).is_ok() || std::env::var(PEER_ENV).is_ok() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["killed_", "--skip", "without_ucx_error_handling", "--test-threads=1"])
        .env(NO_PEER_ERRORS, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("4 passed"), "{stdout}");
}
