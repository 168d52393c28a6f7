//! The provisioner's I/O shell, in the scheduler's process: notices from the scheduler and
//! the launcher's results in, controls to the scheduler and calls to the launcher out.
//!
//! The [`Launcher`] runs on a thread of its own (its calls block: `sbatch`, `squeue`…), one
//! call at a time, in order. The driver ends when the scheduler does (its notice channel
//! closes); then it ends every allocation the cluster still has and waits for them to go.
#![allow(clippy::disallowed_methods)] // the I/O side of the provisioner: it runs processes and timers

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdask::scheduler::{Control, Notice};
use tokio::sync::{mpsc, oneshot};

use super::launch::Launcher;
use super::{Action, Input, Provisioner};

/// The initial allocations could not be started: the batch system's own words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SubmissionRefused(pub String);

/// Carries one action out on `launcher`; the input that answers it (none for the scheduler's).
pub fn execute(launcher: &mut dyn Launcher, action: Action) -> Option<Input> {
    let text = |e: crate::Error| e.to_string();
    Some(match action {
        Action::Submit { seq, pool, launch } => {
            Input::Submitted { seq, result: launcher.submit(&pool, &launch).map_err(text) }
        }
        Action::Poll(ids) => Input::Polled(launcher.poll(&ids).map_err(text)),
        Action::Cancel(ids) => Input::Cancelled(launcher.cancel(&ids).map_err(text)),
        Action::Explain(id) => {
            let note = launcher.explain(&id);
            Input::Explained { id, note }
        }
        Action::Scheduler(_) | Action::Record(_) => return None,
    })
}

enum Job {
    Do(Action),
    /// End these and every allocation started and not seen ending; answer when done.
    EndAll(Vec<String>, Duration, oneshot::Sender<Result<(), String>>),
}

/// A running provisioner; see [`Driver::start`].
pub struct Driver {
    prov: Provisioner,
    control: mpsc::UnboundedSender<Control>,
    jobs: std::sync::mpsc::Sender<Job>,
    results: mpsc::UnboundedReceiver<Input>,
    end_timeout: Duration,
    /// Where accepted `scale`/`adapt` requests are journalled.
    journal: Option<crate::state::StateDir>,
}

impl Driver {
    /// Starts the launcher's thread and the initial allocations; returns once each of their
    /// submissions has answered, or the first refusal (after cancelling what was started).
    /// `end_timeout`: how long to wait for the allocations to end when the cluster stops.
    pub async fn start(
        mut prov: Provisioner,
        launcher: impl Launcher,
        control: mpsc::UnboundedSender<Control>,
        end_timeout: Duration,
    ) -> Result<Driver, SubmissionRefused> {
        let (jobs, results) = launcher_thread(launcher);
        prov.handle(Instant::now(), Input::Tick);
        let mut d = Driver { prov, control, jobs, results, end_timeout, journal: None };
        d.dispatch();
        let mut refused = None;
        while d.prov.submitting() > 0 {
            let Some(input) = d.results.recv().await else { break };
            if let Input::Submitted { result: Err(e), .. } = &input {
                refused.get_or_insert_with(|| e.clone());
                // No second try at the start: `up` reports the first refusal.
                d.prov.shut_down();
            }
            d.prov.handle(Instant::now(), input);
            d.dispatch();
        }
        if let Some(e) = refused {
            let _ = d.end_all().await;
            return Err(SubmissionRefused(e));
        }
        Ok(d)
    }

    /// Journals accepted `scale`/`adapt` requests in `state`'s journal from now on.
    pub fn journal_settings(&mut self, state: crate::state::StateDir) {
        self.journal = Some(state);
    }

    fn dispatch(&mut self) {
        for a in self.prov.take_actions() {
            match a {
                Action::Scheduler(c) => {
                    let _ = self.control.send(c);
                }
                Action::Record(request) => {
                    if let Some(state) = &self.journal {
                        if let Err(e) = state.record(&crate::state::Journalled::Setting { request }) {
                            tracing::error!("{e}: a restart would not know of this scale/adapt request");
                        }
                    }
                }
                other => {
                    let _ = self.jobs.send(Job::Do(other));
                }
            }
        }
    }

    /// Runs until the scheduler ends (`notices` closes), then ends every allocation.
    pub async fn run(mut self, mut notices: mpsc::UnboundedReceiver<Notice>) -> Result<(), String> {
        loop {
            self.dispatch();
            let deadline = tokio::time::Instant::from_std(self.prov.next_deadline());
            tokio::select! {
                n = notices.recv() => match n {
                    Some(n) => self.prov.handle(Instant::now(), Input::Notice(n)),
                    None => break,
                },
                Some(r) = self.results.recv() => self.prov.handle(Instant::now(), r),
                _ = tokio::time::sleep_until(deadline) => self.prov.handle(Instant::now(), Input::Tick),
            }
        }
        self.end_all().await
    }

    async fn end_all(&mut self) -> Result<(), String> {
        self.prov.shut_down();
        let (tx, rx) = oneshot::channel();
        let _ = self.jobs.send(Job::EndAll(self.prov.active_ids(), self.end_timeout, tx));
        rx.await.unwrap_or_else(|_| Err("the launcher's thread ended early".into()))
    }
}

fn launcher_thread(mut launcher: impl Launcher) -> (std::sync::mpsc::Sender<Job>, mpsc::UnboundedReceiver<Input>) {
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("rdask-launcher".into())
        .spawn(move || {
            // Started and not seen ending: what must be ended even if its answer was not read.
            let mut live: HashSet<String> = HashSet::new();
            while let Ok(job) = jobs_rx.recv() {
                match job {
                    Job::Do(action) => {
                        let Some(input) = execute(&mut launcher, action) else { continue };
                        match &input {
                            Input::Submitted { result: Ok((id, _)), .. } => {
                                live.insert(id.clone());
                            }
                            Input::Polled(Ok(states)) => {
                                live.retain(|id| states.get(id).is_none_or(|s| s.is_active()));
                            }
                            _ => {}
                        }
                        let _ = results_tx.send(input);
                    }
                    Job::EndAll(ids, timeout, done) => {
                        live.extend(ids);
                        let ids: Vec<String> = live.drain().collect();
                        let r = launcher.end_all(&ids, timeout).map_err(|e| format!("{e:#}"));
                        let _ = done.send(r);
                    }
                }
            }
        })
        .expect("cannot start a thread");
    (jobs_tx, results_rx)
}

/// Turns adaptive scaling on with `spec`, or off with `None`, for the cluster called `name`
/// (under `home`, `$RDASK_HOME` or `~/.rdask`), which must be up: the Rust form of
/// `rdask-jobqueue adapt`. Returns the cluster's answer.
///
/// ```no_run
/// use rdask_jobqueue::adapt::AdaptSpec;
/// // Between 0 and 10 jobs, finishing queued work within 30 s.
/// let spec = AdaptSpec { target_duration: 30.0, ..AdaptSpec::new(0, 10) };
/// rdask_jobqueue::provision::adapt_cluster(None, "default", Some(&spec)).unwrap();
/// ```
pub fn adapt_cluster(
    home: Option<&std::path::Path>,
    name: &str,
    spec: Option<&rdask::protocol::AdaptSpec>,
) -> crate::Result<String> {
    let home = home.map(std::path::Path::to_path_buf).or_else(|| std::env::var_os("RDASK_HOME").map(Into::into));
    let state = crate::state::StateDir::locate(home.as_deref(), name)?;
    if rdask::cluster::SchedulerFile::read(&state.path).is_err() {
        return Err(crate::Error::NotRunning { cluster: name.to_string(), dir: state.path });
    }
    let info = rdask::cluster::ClusterInfo::from_state_dir(&state.path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(crate::Error::io("cannot start the async runtime"))?;
    rt.block_on(async {
        let client = rdask::Client::connect(&info).await.map_err(crate::Error::client(name))?;
        let body = rdask::protocol::ControlRequest::Adapt { pool: None, spec: spec.cloned() };
        client.control(body).await.map_err(crate::Error::client(name))?.map_err(crate::Error::Refused)
    })
}
