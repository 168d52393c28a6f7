//! The `ucx` benchmark: worker-to-worker bandwidth of one large frame (64 MiB, 512 MiB) and
//! the round trip of a small one, between two processes, over UCX shared memory, UCX tcp and
//! rdask's own TCP transport; next to `ucx_perftest`'s tag bandwidth, measured in the same run.
//!
//! The receiving process is this program again (`--ucx-peer`), like a worker: it allocates
//! each payload's buffer at its exact size when the frame arrives (UCX: rendezvous into it),
//! and answers every data frame with a small ack; the time is from the send to the ack.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdask_transport::auth::{self, Secret};
use rdask_transport::ucx::{Engine, ErrorMode, Settings};
use rdask_transport::{tcp, Connection, Frame, Listener};
use serde_json::{json, Value};

use crate::{median, MIB, R};

/// The transports compared: name, UCX_TLS (None: rdask's TCP transport), error mode.
///
/// Shared memory runs without UCX's peer-failure handling: with it (rdask's default), UCX 1.13
/// builds client-server endpoints of tcp lanes only, even with `sm` in UCX_TLS
/// (`UCX_LOG_LEVEL=info`: `ep_cfg[..]: am(tcp/lo tcp/eth0)` against `am(sysv/memory cma/memory)`),
/// so a path named shared memory would measure UCX tcp. `ucx_sm_peer_mode` keeps the default's
/// figure in view.
const PATHS: [(&str, Option<&str>, ErrorMode); 4] = [
    ("ucx_sm", Some(SM), ErrorMode::None),
    ("ucx_sm_peer_mode", Some(SM), ErrorMode::Peer),
    ("ucx_tcp", Some("tcp"), ErrorMode::Peer),
    ("tcp", None, ErrorMode::Peer),
];

const SM: &str = "sm,self,tcp";

/// The peer's name for rdask's own TCP transport.
const RDASK_TCP: &str = "rdask-tcp";

fn settings(tls: &str, error_mode: ErrorMode) -> Settings {
    Settings { overrides: vec![("TLS".into(), tls.into())], error_mode, timeout: Duration::from_secs(60) }
}

/// How the peer is told the error mode.
fn mode_name(m: ErrorMode) -> &'static str {
    match m {
        ErrorMode::Peer => "peer",
        ErrorMode::None => "none",
    }
}

/// The receiving side, run as `rdask-bench --ucx-peer UCX_TLS|rdask-tcp peer|none ADDRESS SECRET`.
pub async fn peer(args: &[String]) -> R<()> {
    let [tls, mode, addr, secret] = args else {
        return Err("usage: --ucx-peer UCX_TLS|rdask-tcp peer|none ADDRESS SECRET".into());
    };
    let mode = if mode == "none" { ErrorMode::None } else { ErrorMode::Peer };
    let secret = Secret::from_hex(secret).ok_or("bad secret")?;
    let _engine;
    let mut conn = if tls == RDASK_TCP {
        tcp::connect(addr).await?
    } else {
        let e = Engine::new(settings(tls, mode))?;
        let c = e.connect(addr).await?;
        _engine = e;
        c
    };
    auth::connect(&mut conn, &secret).await?;
    loop {
        let f = conn.recv_some().await?;
        match f.header.as_ref() {
            b"ping" => conn.send_now(Frame::new(&b"pong"[..])).await?,
            b"data" => conn.send_now(Frame::new((f.payload.len() as u64).to_le_bytes().to_vec())).await?,
            _ => return Ok(()),
        }
    }
}

struct PeerProcess(std::process::Child);

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Listens, starts the peer process and authenticates its connection.
async fn connect_peer(tls: Option<&str>, mode: ErrorMode) -> R<(Connection, PeerProcess, Option<Engine>)> {
    let secret = Secret::generate();
    let (mut listener, engine): (Box<dyn Listener>, Option<Engine>) = match tls {
        None => (Box::new(tcp::TcpFrameListener::bind("127.0.0.1:0").await?), None),
        Some(t) => {
            let e = Engine::new(settings(t, mode))?;
            (Box::new(e.listen("127.0.0.1:0").await?), Some(e))
        }
    };
    let child = Command::new(std::env::current_exe()?)
        .args([
            "--ucx-peer",
            tls.unwrap_or(RDASK_TCP),
            mode_name(mode),
            &listener.local_addr().host_port,
            &secret.to_hex(),
        ])
        .stdout(Stdio::null())
        .spawn()?;
    let child = PeerProcess(child);
    let mut conn = tokio::time::timeout(Duration::from_secs(30), listener.accept()).await??;
    auth::accept(&mut conn, &secret).await?;
    Ok((conn, child, engine))
}

async fn one_transfer(conn: &mut Connection, payload: &Bytes) -> R<f64> {
    let t = Instant::now();
    conn.send_now(Frame::with_payload(&b"data"[..], payload.clone())).await?;
    let ack = conn.recv_some().await?;
    let s = t.elapsed().as_secs_f64();
    if ack.header.as_ref() != (payload.len() as u64).to_le_bytes() {
        return Err("the peer acknowledged another size".into());
    }
    Ok(s)
}

/// Bandwidth per size (median of `reps` after one warm-up) and the small-message round trip.
async fn measure(name: &str, tls: Option<&str>, mode: ErrorMode, sizes: &[usize], reps: usize) -> R<Value> {
    let (mut conn, _child, _engine) = connect_peer(tls, mode).await?;
    let mut rtt = Vec::new();
    for i in 0..2000 {
        let t = Instant::now();
        conn.send_now(Frame::new(&b"ping"[..])).await?;
        conn.recv_some().await?;
        if i >= 200 {
            rtt.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let rtt_us = median(&mut rtt);
    let mut by_size = serde_json::Map::new();
    for &size in sizes {
        let payload: Bytes = (0..size).map(|i| (i * 131 % 251) as u8).collect::<Vec<u8>>().into();
        one_transfer(&mut conn, &payload).await?; // warm-up
        let mut s = Vec::new();
        for _ in 0..reps {
            s.push(one_transfer(&mut conn, &payload).await?);
        }
        let m = median(&mut s);
        eprintln!("   {name} {} MiB: {:.0} MiB/s", size / MIB, size as f64 / MIB as f64 / m);
        by_size.insert(
            format!("{}", size / MIB),
            json!({ "seconds": s, "median_s": m, "mib_per_s": size as f64 / MIB as f64 / m }),
        );
    }
    conn.send_now(Frame::new(&b"bye"[..])).await?;
    eprintln!("   {name} small round trip: {rtt_us:.1} us");
    Ok(json!({ "round_trip_us_median": rtt_us, "mib_per_s_by_mib": by_size }))
}

/// `ucx_perftest -t tag_bw` between two processes on this host: MiB/s ("MB/s" in its table).
fn perftest(tls: &str, size: usize, iters: usize) -> R<f64> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port().to_string();
    let server = Command::new("ucx_perftest")
        .args(["-p", &port])
        .env("UCX_TLS", tls)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("ucx_perftest: {e} (install ucx-utils: ci/setup-ucx.sh)"))?;
    let _server = PeerProcess(server);
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ucx_perftest")
        .args([
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "tag_bw",
            "-s",
            &size.to_string(),
            "-n",
            &iters.to_string(),
            "-w",
            "2",
            "-f",
        ])
        .env("UCX_TLS", tls)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last line: iterations, latency (50 %, average, overall), bandwidth (average, overall), rates.
    let cols: Vec<f64> = text.lines().last().unwrap_or("").split_whitespace().filter_map(|w| w.parse().ok()).collect();
    match cols.get(5) {
        Some(&bw) if out.status.success() => Ok(bw),
        _ => Err(format!("cannot read ucx_perftest's output: {text}").into()),
    }
}

pub async fn bench(quick: bool) -> R<Value> {
    let sizes = [64 * MIB, 512 * MIB];
    let reps = if quick { 3 } else { 9 };
    let mut res = serde_json::Map::new();
    for (name, tls, mode) in PATHS {
        let v = measure(name, tls, mode, &sizes, reps).await.unwrap_or_else(|e| json!({ "error": e.to_string() }));
        res.insert(name.to_string(), v);
    }
    let mut pt = serde_json::Map::new();
    for (name, tls) in [("ucx_sm", SM), ("ucx_tcp", "tcp")] {
        let mut by_size = serde_json::Map::new();
        for &size in &sizes {
            let iters = if size > 64 * MIB { 6 } else { 20 };
            let v = match perftest(tls, size, iters) {
                Ok(bw) => {
                    eprintln!("   ucx_perftest {tls} {} MiB: {bw:.0} MiB/s", size / MIB);
                    json!(bw)
                }
                Err(e) => json!({ "error": e.to_string() }),
            };
            by_size.insert(format!("{}", size / MIB), v);
        }
        pt.insert(name.to_string(), Value::Object(by_size));
    }
    // Ratios: ours against ucx_perftest on the same path, and UCX shared memory against our TCP.
    let bw = |path: &str, mib: &str| res.get(path)?.get("mib_per_s_by_mib")?.get(mib)?.get("mib_per_s")?.as_f64();
    let ptbw = |path: &str, mib: &str| pt.get(path)?.get(mib)?.as_f64();
    let mut ratios = serde_json::Map::new();
    for mib in ["64", "512"] {
        let r = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        ratios.insert(
            format!("{mib}_mib"),
            json!({
                "ucx_sm_vs_perftest": r(bw("ucx_sm", mib), ptbw("ucx_sm", mib)),
                "ucx_tcp_vs_perftest": r(bw("ucx_tcp", mib), ptbw("ucx_tcp", mib)),
                "ucx_sm_vs_rdask_tcp": r(bw("ucx_sm", mib), bw("tcp", mib)),
                "ucx_sm_peer_mode_vs_perftest": r(bw("ucx_sm_peer_mode", mib), ptbw("ucx_sm", mib)),
            }),
        );
    }
    // The same sizes worker to worker through rdask itself (data server, fetch, task input):
    // `transfer` on a cluster over UCX, each UCX_TLS in a process of its own.
    let mut fetch = serde_json::Map::new();
    for (name, tls, mode) in [("ucx_sm", SM, ErrorMode::None), ("ucx_tcp", "tcp", ErrorMode::Peer)] {
        let mut by_size = serde_json::Map::new();
        for &size in &sizes {
            let out = Command::new(std::env::current_exe()?)
                .args(["--ucx-transfer", &size.to_string()])
                .env("UCX_TLS", tls)
                .env("RDASK_UCX_ERROR_MODE", mode_name(mode))
                .stderr(Stdio::null())
                .output()?;
            let v: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&out.stdout).into_owned() }));
            if let Some(m) = v["fetch_mib_per_s"].as_f64() {
                eprintln!("   rdask fetch over {tls} {} MiB: {m:.0} MiB/s", size / MIB);
            }
            by_size.insert(format!("{}", size / MIB), v);
        }
        fetch.insert(name.to_string(), Value::Object(by_size));
    }
    res.insert("rdask_fetch".into(), Value::Object(fetch));
    res.insert("ucx_perftest_tag_bw_mib_per_s".into(), Value::Object(pt));
    res.insert("ratios".into(), Value::Object(ratios));
    res.insert("targets".into(), json!({ "ucx_sm_vs_perftest": 0.8, "ucx_sm_vs_rdask_tcp": 1.5 }));
    res.insert(
        "method".into(),
        json!("two processes on this host; the sender times one frame (header + payload) until the receiver's 8-byte ack, \
               median of the reps after a warm-up; ucx_sm without UCX's peer-failure handling (RDASK_UCX_ERROR_MODE=none: with \
               it UCX 1.13 gives client-server endpoints no shared-memory lane), ucx_sm_peer_mode with it (the default); \
               the receiver allocates every payload at its exact size (UCX: rendezvous \
               into it). ucx_perftest: tag_bw, same sizes, its overall bandwidth (MB/s = MiB/s), same UCX_TLS, reusing one \
               buffer. Round trip: 8-byte frames, ping-pong, median of 1800 after 200 warm-up. rdask_fetch: the \
               `transfer` benchmark (a task on worker B whose input lives on worker A) on a cluster over UCX, \
               one process per UCX_TLS; compare with `transfer` (rdask over TCP) in the same run"),
    );
    Ok(Value::Object(res))
}
