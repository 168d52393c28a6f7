//! The tokio driver of the scheduler.
//!
//! One task owns the [`Scheduler`] and feeds it events from a channel; every
//! connection has a reader task (frames → events) and a writer task (commands →
//! frames). Connections are authenticated before the scheduler hears of them:
//! a peer without the secret is logged and dropped, and the scheduler's state
//! never changes because of it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdask_transport::auth::{self, Secret};
use rdask_transport::{Address, Frame, Listener};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits;
use crate::protocol::{self, ToScheduler};
use crate::scheduler::{Command, Config, ConnId, Control, Event, Notice, Scheduler};

enum Internal {
    Connected(ConnId, mpsc::UnboundedSender<Frame>, tokio::task::AbortHandle),
    Message(ConnId, ToScheduler),
    Closed(ConnId, String),
}

/// A running scheduler.
#[derive(Debug)]
pub struct ServerHandle {
    /// Where it listens.
    pub address: Address,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops the scheduler without telling workers (they exit after their death timeout).
    pub fn abort(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the scheduler has exited (after a client's shutdown request, or [`ServerHandle::abort`]).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Whether it has exited.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// The embedding's end of a controlled scheduler ([`spawn_controlled`]): the scheduler's
/// [`Notice`]s come out of `notices`, [`Control`]s go into `control`.
#[derive(Debug)]
pub struct Controller {
    /// What the scheduler tells its embedding, in order.
    pub notices: mpsc::UnboundedReceiver<Notice>,
    /// What the embedding asks of the scheduler.
    pub control: mpsc::UnboundedSender<Control>,
}

/// Starts a scheduler on `listener`.
pub fn spawn(listener: Box<dyn Listener>, secret: Secret, config: Config) -> ServerHandle {
    let address = listener.local_addr();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(listener, secret, Config { controlled: false, ..config }, stop_rx, None, None));
    ServerHandle { address, stop, task }
}

/// Starts a scheduler on `listener` that an embedding drives: it hears of workers and clients
/// coming and going, answers the clients' provisioning requests, and can retire workers.
pub fn spawn_controlled(listener: Box<dyn Listener>, secret: Secret, config: Config) -> (ServerHandle, Controller) {
    spawn_embedded(listener, secret, Config { controlled: true, ..config }, None)
}

/// A journal for [`spawn_journalled`]: the open file, what it said, and how long a restored
/// scheduler waits for its workers to come back before running again what they do not claim.
#[derive(Debug)]
pub struct Journal {
    /// The journal, open.
    pub file: crate::journal::JournalFile,
    /// What it said when opened.
    pub restored: crate::scheduler::Restored,
    /// The adoption window.
    pub window: Duration,
}

/// As [`spawn_controlled`], with a journal: the scheduler starts from what the journal says
/// (see [`crate::scheduler::Record`]) and appends to it from then on.
pub fn spawn_journalled(
    listener: Box<dyn Listener>,
    secret: Secret,
    config: Config,
    journal: Journal,
) -> (ServerHandle, Controller) {
    spawn_embedded(listener, secret, Config { controlled: true, journal: true, ..config }, Some(journal))
}

/// A controlled scheduler (with its embedding's channels), journalled or not.
fn spawn_embedded(
    listener: Box<dyn Listener>,
    secret: Secret,
    config: Config,
    journal: Option<Journal>,
) -> (ServerHandle, Controller) {
    let address = listener.local_addr();
    let (stop, stop_rx) = watch::channel(false);
    let (notices_tx, notices) = mpsc::unbounded_channel();
    let (control, control_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(listener, secret, config, stop_rx, Some((notices_tx, control_rx)), journal));
    (ServerHandle { address, stop, task }, Controller { notices, control })
}

/// Binds `addr` and starts a scheduler there.
pub async fn bind(addr: &Address, secret: Secret, config: Config) -> std::io::Result<ServerHandle> {
    let listener = rdask_transport::listen(addr).await?;
    Ok(spawn(listener, secret, config))
}

type Embedding = (mpsc::UnboundedSender<Notice>, mpsc::UnboundedReceiver<Control>);

async fn run(
    mut listener: Box<dyn Listener>,
    secret: Secret,
    config: Config,
    mut stop: watch::Receiver<bool>,
    embedding: Option<Embedding>,
    journal: Option<Journal>,
) {
    let (events, mut rx) = mpsc::unbounded_channel::<Internal>();
    let (notices, mut control) = match embedding {
        Some((n, c)) => (Some(n), Some(c)),
        None => (None, None),
    };
    let (mut sched, mut journal) = match journal {
        Some(j) => (Scheduler::restore(config, Instant::now(), &j.restored, j.window), Some(j.file)),
        None => (Scheduler::new(config), None),
    };
    let mut journal_failed = false;
    // Every task this driver starts (handshakes, readers, writers) is tracked, and ends on
    // `cancel`: none outlives the scheduler, and shutdown waits for them rather than sleeping.
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let mut writers: HashMap<ConnId, (mpsc::UnboundedSender<Frame>, tokio::task::AbortHandle)> = HashMap::new();
    let mut next_conn: ConnId = 1;
    let mut exiting = false;
    let mut backoff = AcceptBackoff::default();
    match limits::raise() {
        Ok(l) => tracing::debug!("open-file limit {} (hard {})", l.soft, l.hard),
        Err(e) => tracing::warn!("{e}; the scheduler holds at most as many connections as the current limit allows"),
    }
    // One timer for the scheduler's deadline, moved only when the deadline moves (most turns it
    // does not: heartbeats leave it where it is).
    let tick = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(tick);
    while !exiting {
        let deadline = sched.next_deadline().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        if tick.is_elapsed() || tick.deadline().into_std() != deadline {
            tick.as_mut().reset(deadline.into());
        }
        tokio::select! {
            // While accepting fails, the next try waits (the scheduler goes on meanwhile).
            accepted = async {
                if let Some(at) = backoff.resume {
                    tokio::time::sleep_until(at.into()).await;
                }
                listener.accept().await
            } => {
                match accepted {
                    Ok(conn) => {
                        if backoff.succeeded() {
                            tracing::info!("accepting connections again ({} open)", writers.len());
                        }
                        let id = next_conn;
                        next_conn += 1;
                        let (secret, events, cancel) = (secret.clone(), events.clone(), cancel.clone());
                        tasks.spawn(cancel.clone().run_until_cancelled_owned(connection(id, conn, secret, events, tasks.clone(), cancel)));
                    }
                    Err(e) => {
                        let exhausted = limits::is_exhausted(&e);
                        if backoff.failed(Instant::now()) {
                            if exhausted {
                                tracing::error!("{}", limits::exhausted_message(writers.len()));
                            } else {
                                tracing::warn!("accept failed: {e}; retrying with backoff (logged once until it succeeds)");
                            }
                        }
                    }
                }
                continue;
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                let now = Instant::now();
                handle(&mut sched, &mut writers, now, ev);
                // Take what else is queued before acting: fewer, larger batches.
                let mut n = 0;
                while let Ok(ev) = rx.try_recv() {
                    handle(&mut sched, &mut writers, now, ev);
                    n += 1;
                    if n > 1024 {
                        break;
                    }
                }
            }
            _ = &mut tick => {
                sched.handle(Instant::now(), Event::Tick);
            }
            c = recv_control(&mut control) => match c {
                Some(c) => sched.handle(Instant::now(), Event::Control(c)),
                // The embedding is gone: nothing drives provisioning any more.
                None => control = None,
            },
            _ = stop.changed() => break,
        }
        let commands = sched.take_commands();
        // The turn's records are on file before anything that follows them is done.
        if let Some(j) = &mut journal {
            let records = commands.iter().filter_map(|c| if let Command::Journal(r) = c { Some(r) } else { None });
            match j.append(records) {
                Ok(()) => journal_failed = false,
                Err(e) if !journal_failed => {
                    journal_failed = true;
                    tracing::error!(
                        "cannot write the journal {}: {e}; a restart would lose what follows",
                        j.path().display()
                    );
                }
                Err(_) => {}
            }
        }
        for cmd in commands {
            match cmd {
                Command::Journal(_) => {}
                Command::ToWorker(c, msg) => send(&writers, c, protocol::frame(&msg)),
                Command::ToClient(c, msg) => send(&writers, c, protocol::frame(&msg)),
                Command::Close(c) => {
                    if let Some((_, reader)) = writers.remove(&c) {
                        reader.abort();
                    }
                }
                Command::Exit => exiting = true,
                Command::Notify(n) => {
                    if let Some(tx) = &notices {
                        let _ = tx.send(n);
                    }
                }
            }
        }
    }
    // Dropping the senders lets each writer flush what it has and close its socket; the
    // readers and the handshakes still running end now. The writers get a bounded time to
    // flush (a peer that reads nothing must not hold the scheduler up).
    drop(writers);
    cancel.cancel();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await.is_err() {
        tracing::warn!("some connections had not flushed within 5 s of the scheduler's end");
    }
    tracing::info!("scheduler stopped");
}

/// When to try `accept` again after it failed: the first retry after 10 ms, each further one
/// twice as late, at most 1 s, so a listener out of descriptors (`EMFILE`) does not spin; and
/// whether to log, which is once per run of failures.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
    resume: Option<Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// Records a failure at `now`; true if it is the first of its run (the one to log).
    fn failed(&mut self, now: Instant) -> bool {
        let delay = Self::FIRST.saturating_mul(1 << self.failures.min(16)).min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        self.resume = Some(now + delay);
        self.failures == 1
    }

    /// Records a success; true if failures came before it (to say that it recovered).
    fn succeeded(&mut self) -> bool {
        let recovered = self.failures > 0;
        *self = AcceptBackoff::default();
        recovered
    }
}

async fn recv_control(control: &mut Option<mpsc::UnboundedReceiver<Control>>) -> Option<Control> {
    match control {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn handle(
    sched: &mut Scheduler,
    writers: &mut HashMap<ConnId, (mpsc::UnboundedSender<Frame>, tokio::task::AbortHandle)>,
    now: Instant,
    ev: Internal,
) {
    match ev {
        Internal::Connected(c, tx, reader) => {
            writers.insert(c, (tx, reader));
            sched.handle(now, Event::Connected(c));
        }
        Internal::Message(c, msg) => sched.handle(now, Event::Message(c, msg)),
        Internal::Closed(c, reason) => {
            writers.remove(&c);
            sched.handle(now, Event::Disconnected(c, reason));
        }
    }
}

fn send(writers: &HashMap<ConnId, (mpsc::UnboundedSender<Frame>, tokio::task::AbortHandle)>, c: ConnId, f: Frame) {
    if let Some((tx, _)) = writers.get(&c) {
        let _ = tx.send(f);
    }
}

async fn connection(
    id: ConnId,
    mut conn: rdask_transport::Connection,
    secret: Secret,
    events: mpsc::UnboundedSender<Internal>,
    tasks: TaskTracker,
    cancel: CancellationToken,
) {
    let peer = conn.peer.clone();
    match tokio::time::timeout(Duration::from_secs(10), auth::accept(&mut conn, &secret)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(%peer, "refused connection: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "refused connection: no handshake within 10 s");
            return;
        }
    }
    let rdask_transport::Connection { tx, mut rx, .. } = conn;
    let (out, out_rx) = mpsc::unbounded_channel();
    // The writer ends when its sender (in the driver's table) is dropped, after flushing: it is
    // not cancelled, so that what the scheduler said last reaches its peer.
    tasks.spawn(rdask_transport::pump(tx, out_rx));
    // The reader starts only once the driver knows the connection, so no message overtakes `Connected`.
    let (go, started) = tokio::sync::oneshot::channel::<()>();
    let reader = tasks.spawn(cancel.run_until_cancelled_owned({
        let events = events.clone();
        let peer = peer.clone();
        async move {
            if started.await.is_err() {
                return;
            }
            loop {
                let reason = match rx.recv().await {
                    Ok(Some(f)) => match protocol::decode::<ToScheduler>(&f.header) {
                        Ok(msg) => {
                            if events.send(Internal::Message(id, msg)).is_err() {
                                return;
                            }
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(%peer, "dropping connection: {e}");
                            format!("sent an undecodable message ({e})")
                        }
                    },
                    Ok(None) => "closed its connection".to_string(),
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            tracing::warn!(%peer, "dropping connection: {e}");
                        }
                        format!("connection broke ({e})")
                    }
                };
                let _ = events.send(Internal::Closed(id, reason));
                return;
            }
        }
    }));
    let _ = events.send(Internal::Connected(id, out, reader.abort_handle()));
    let _ = go.send(());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_to_a_second_and_log_once_per_run() {
        let mut b = AcceptBackoff::default();
        let t = Instant::now();
        assert_eq!(b.resume, None, "no failure, no wait");
        let mut delays = Vec::new();
        let mut logged = 0;
        for _ in 0..12 {
            logged += usize::from(b.failed(t));
            delays.push(b.resume.unwrap() - t);
        }
        assert_eq!(logged, 1, "one log line for a run of failures");
        assert_eq!(delays[0], Duration::from_millis(10));
        assert_eq!(delays[1], Duration::from_millis(20));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(1));
        assert!(b.succeeded(), "a success after failures is a recovery");
        assert!(!b.succeeded());
        assert!(b.failed(t), "a new run of failures logs again");
    }
}
