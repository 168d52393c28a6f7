//! Tasks that need GPUs, memory and named resources: placed only where their needs are free,
//! bound to concrete GPUs, never oversubscribed, refused when nothing could ever hold them.

use super::*;
use std::collections::HashSet;

impl Sim {
    fn connect_offering(&mut self, slots: u16, offer: Offer) -> (ConnId, WorkerId) {
        self.connect_worker_with(slots, |info| info.offer = offer)
    }
}

fn gpus(n: usize) -> Offer {
    Offer { gpus: (0..n).map(|i| i.to_string()).collect(), ..Offer::default() }
}

fn needing(ranges: Vec<(u32, u32)>, needs: Needs) -> JobSpec {
    JobSpec { command: Some(command()), tasks: JobTasks::Array { ranges, cpus: 1, needs }, ..graph(vec![]) }
}

fn one_gpu() -> Needs {
    Needs { gpus: 1, ..Needs::default() }
}

#[test]
fn gpu_tasks_never_share_a_gpu_and_never_exceed_the_workers_gpus() {
    let mut sim = Sim::new();
    let client = sim.connect_client();
    // 16 slots but 4 GPUs: at most 4 GPU tasks at once.
    let (w, _) = sim.connect_offering(16, gpus(4));
    let job = sim.submit(client, needing(vec![(1, 40)], one_gpu()));
    let mut running: HashMap<TaskId, String> = HashMap::new();
    let mut done = 0;
    let mut rounds = 0;
    while done < 40 {
        rounds += 1;
        assert!(rounds < 100, "stuck with {done} done");
        for a in sim.computes(w) {
            assert_eq!(a.gpus.len(), 1, "exactly one GPU bound: {a:?}");
            assert!(!running.values().any(|g| *g == a.gpus[0]), "GPU {} given to two running tasks", a.gpus[0]);
            running.insert(a.id, a.gpus[0].clone());
        }
        assert!(running.len() <= 4, "{} GPU tasks at once on 4 GPUs", running.len());
        assert!(!running.is_empty(), "nothing runs although GPUs are free");
        // Finish one at a time, so that the freed GPU is the one reused.
        let (&id, _) = running.iter().min_by_key(|(id, _)| id.index).expect("one runs");
        running.remove(&id);
        sim.finish(w, &[id]);
        done += 1;
    }
    assert_eq!(sim.progress(client, job), counts(40, 0, 0, 40, 0));
}

#[test]
fn a_gpu_task_goes_only_where_gpus_are_and_cpu_tasks_still_run_beside_it() {
    let mut sim = Sim::new();
    let client = sim.connect_client();
    let (cpu, _) = sim.connect_offering(4, Offer::default());
    let (gpu, _) = sim.connect_offering(4, gpus(1));
    let g = sim.submit(client, needing(vec![(1, 3)], one_gpu()));
    let c = sim.submit(client, array(vec![(1, 4)], 1));
    let on_cpu = sim.computes(cpu);
    let on_gpu = sim.computes(gpu);
    assert!(on_cpu.iter().all(|a| a.id.job == c && a.gpus.is_empty()), "{on_cpu:?}");
    let gpu_tasks: Vec<_> = on_gpu.iter().filter(|a| a.id.job == g).collect();
    assert_eq!(gpu_tasks.len(), 1, "one GPU, one GPU task: {on_gpu:?}");
    assert_eq!(gpu_tasks[0].gpus, vec!["0".to_string()]);
    // The GPU task fails: its GPU is free again for the next one.
    sim.fail(gpu, gpu_tasks[0].id, ErrorKind::ExitCode(1));
    let next: Vec<_> = sim.computes(gpu).into_iter().filter(|a| a.id.job == g).collect();
    assert_eq!(next.len(), 1, "the freed GPU goes to the next task");
}

#[test]
fn named_resources_and_memory_are_counted_across_tasks() {
    let mut sim = Sim::new();
    let client = sim.connect_client();
    let offer = Offer { memory: 10_000_000_000, named: vec![("license".into(), 2)], ..Offer::default() };
    let (w, _) = sim.connect_offering(8, offer);
    let lic =
        sim.submit(client, needing(vec![(1, 5)], Needs { named: vec![("license".into(), 1)], ..Needs::default() }));
    let mem = sim.submit(client, needing(vec![(1, 5)], Needs { memory: 4_000_000_000, ..Needs::default() }));
    let sent = sim.computes(w);
    assert_eq!(sent.iter().filter(|a| a.id.job == lic).count(), 2, "two licences");
    assert_eq!(sent.iter().filter(|a| a.id.job == mem).count(), 2, "4 GB each of 10 GB");
    let first_lic = sent.iter().find(|a| a.id.job == lic).unwrap().id;
    sim.finish(w, &[first_lic]);
    let more = sim.computes(w);
    assert_eq!(more.iter().filter(|a| a.id.job == lic).count(), 1, "a licence back, one more task");
    assert_eq!(more.iter().filter(|a| a.id.job == mem).count(), 0, "memory is still held");
}

#[test]
fn a_lost_gpu_worker_s_tasks_run_again_on_another_gpu_worker() {
    let mut sim = Sim::new();
    let client = sim.connect_client();
    let (a, _) = sim.connect_offering(2, gpus(2));
    let job = sim.submit(client, needing(vec![(1, 2)], one_gpu()));
    let first: HashSet<TaskId> = ids(&sim.computes(a)).into_iter().collect();
    assert_eq!(first.len(), 2);
    sim.disconnect(a);
    let (b, _) = sim.connect_offering(2, Offer { gpus: vec!["GPU-aa".into(), "GPU-bb".into()], ..Offer::default() });
    let again = sim.computes(b);
    assert_eq!(again.iter().map(|a| a.id).collect::<HashSet<_>>(), first);
    let bound: HashSet<&str> = again.iter().map(|a| a.gpus[0].as_str()).collect();
    assert_eq!(bound, HashSet::from(["GPU-aa", "GPU-bb"]), "the new worker's own device names");
    sim.finish(b, &ids(&again));
    assert_eq!(sim.progress(client, job), counts(2, 0, 0, 2, 0));
}

#[test]
fn a_need_no_worker_and_no_pool_could_meet_is_refused_naming_the_pool_and_its_limit() {
    let mut sim = Sim::controlled();
    let client = sim.connect_client();
    let pool = |name: &str, n: usize| crate::protocol::PoolStatus {
        name: name.into(),
        unit: "job".into(),
        workers_per_job: 1,
        slots: 4,
        offer: gpus(n),
        ..Default::default()
    };
    let p = ProvisioningStatus { backend: "slurm".into(), pools: vec![pool("default", 0), pool("gpu", 2)] };
    sim.handle(Event::Control(Control::Provisioning(p)));
    let three = Needs { gpus: 3, ..Needs::default() };
    let Reply::Refused(r) = sim.request(client, Request::Submit(needing(vec![(1, 1)], three).into())) else {
        panic!("3 GPUs where the largest pool has 2 is accepted")
    };
    assert!(r.message.contains("pool `gpu`: 3 GPUs asked, 2 offered"), "{}", r.message);
    // Two fit the GPU pool: accepted, and waits for its workers.
    let job = sim.submit(client, needing(vec![(1, 1)], Needs { gpus: 2, ..Needs::default() }));
    assert_eq!(sim.progress(client, job), counts(1, 1, 0, 0, 0));
    let st = sim.status(client);
    let why = st.jobs.iter().find(|j| j.id == job).and_then(|j| j.waiting_for.clone()).expect("says why it waits");
    assert_eq!(why, "2 GPUs: no worker offers it yet; pool `gpu` does");
    // Without pools (no provisioner), a need waits for workers that may come.
    let mut plain = Sim::new();
    let c = plain.connect_client();
    plain.submit(c, needing(vec![(1, 1)], Needs { gpus: 8, ..Needs::default() }));
}

#[test]
fn a_task_that_names_a_pool_runs_only_on_its_workers() {
    let mut sim = Sim::controlled();
    let client = sim.connect_client();
    let pool = |name: &str| crate::protocol::PoolStatus {
        name: name.into(),
        offer: Offer { pool: Some(name.into()), ..Offer::default() },
        ..Default::default()
    };
    let p = ProvisioningStatus { backend: "slurm".into(), pools: vec![pool("default"), pool("big")] };
    sim.handle(Event::Control(Control::Provisioning(p)));
    let (small, _) = sim.connect_offering(4, Offer { pool: Some("default".into()), ..Offer::default() });
    let (big, _) = sim.connect_offering(4, Offer { pool: Some("big".into()), ..Offer::default() });
    let job = sim.submit(client, needing(vec![(1, 3)], Needs { pool: Some("big".into()), ..Needs::default() }));
    assert!(sim.computes(small).is_empty(), "a task for pool `big` went to pool `default`");
    assert_eq!(sim.computes(big).len(), 3);
    let _ = job;
    let nosuch = Needs { pool: Some("nosuch".into()), ..Needs::default() };
    let Reply::Refused(r) = sim.request(client, Request::Submit(needing(vec![(1, 1)], nosuch).into())) else {
        panic!("a pool that does not exist is accepted")
    };
    assert!(r.message.contains("pool `big`: not pool `nosuch`"), "{}", r.message);
}
