"""The Python client's benchmark: rdask against Dask distributed, same worker layout, one run.

Run it with the interpreter that has ``rdask`` and NumPy installed (``pip install ./python numpy``)::

    bench/peers/setup.sh                  # optional: bench/peers/.venv with the pinned Dask
    python bench/python/bench.py          # --quick for small sizes

Figures (targets of issue 12):

* trivial tasks: ``client.gather(client.map(inc, range(N)))`` for N = 10k and 100k on 2
  worker processes x 1 thread, tasks/s and the ratio rdask / Dask (target >= 20x);
* round trip: median of 1,000 sequential ``client.submit(inc, i).result()`` (target <= 1 ms);
* transfer: a 512 MiB NumPy array produced on one worker and consumed by a task on the other,
  against a loopback TCP copy of 512 MiB measured in the same run (target >= 70 %).

Dask runs as ``bench/peers/dask_trivial.py`` (the same script the Rust benchmark uses) under
this interpreter if it imports ``distributed``, else under ``bench/peers/.venv/bin/python``,
else it is skipped (the script says so). It runs after rdask's cluster is down, with 2 worker
processes x 1 thread, and measures the trivial tasks and the round trip; the transfer is
rdask's alone (against TCP).

Prints a table and writes ``bench/results/python-<UTC>.json`` and
``bench/results/python-latest.json`` (git-ignored, as the Rust benchmark's).
"""

import argparse
import gc
import json
import os
import pathlib
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

import rdask

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MIB = 1 << 20


def inc(x):
    return x + 1


def make(nbytes, fill):
    """A producer: ``nbytes`` of ``fill``, with the pid of the worker that made them."""
    return {"pid": os.getpid(), "data": np.full(nbytes, fill, dtype=np.uint8)}


def consume(moved, local):
    """A consumer: checks the moved array (one byte per page) and says where everything ran."""
    data = moved["data"]
    ok = bool((data[::4096] == data[0]).all())
    return {"pid": os.getpid(), "moved_from": moved["pid"], "local_on": local["pid"], "nbytes": data.nbytes, "ok": ok}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- rdask ------------------------------------------------------------------------------------


def trivial(client, sizes):
    client.gather(client.map(inc, range(100)))  # warm-up: each worker unpickles `inc` once
    out = []
    for n in sizes:
        t = time.perf_counter()
        values = client.gather(client.map(inc, range(n)))
        seconds = time.perf_counter() - t
        if sum(values) != n * (n + 1) // 2:
            raise SystemExit(f"rdask: N={n}: wrong sum")
        out.append({"tasks": n, "seconds": seconds, "tasks_per_s": n / seconds})
        log(f"rdask N={n}: {seconds:.3f} s, {n / seconds:.0f} tasks/s")
    return out


def roundtrip(client, reps):
    samples = []
    for i in range(reps):
        t = time.perf_counter()
        r = client.submit(inc, i).result()
        samples.append((time.perf_counter() - t) * 1e6)
        if r != i + 1:
            raise SystemExit(f"rdask: round trip {i}: got {r}")
    median = statistics.median(samples)
    log(f"rdask round trip: median {median:.0f} us over {reps}")
    return {"reps": reps, "median_us": median, "p90_us": statistics.quantiles(samples, n=10)[-1]}


def one_transfer(client, nbytes):
    """One rep: a map makes big (worker X), anchor (Y, a page bigger) and small (X); a consumer of
    (small, anchor), then one of (big, anchor). The scheduler puts a task on the worker holding
    most of its input bytes, so both consumers run on Y and fetch their first input from X.
    Returns (seconds of the big consumer, of the small one), or None if the layout was not that."""
    producers = client.map(make, [nbytes, nbytes + 4096, 8], [7, 9, 5])
    rdask.wait(producers)
    big, anchor, small = producers
    times = []
    for moved in (small, big):
        t = time.perf_counter()
        r = client.submit(consume, moved, anchor).result()
        times.append(time.perf_counter() - t)
        if not r["ok"]:
            raise SystemExit("rdask transfer: the consumer saw wrong bytes")
        if r["moved_from"] == r["pid"] or r["local_on"] != r["pid"]:
            log(f"rdask transfer: layout not as planned ({r}); rep skipped")
            return None
    del producers, big, anchor, small
    gc.collect()
    return times[1], times[0]


def transfer(client, nbytes, reps):
    bigs, smalls, skipped = [], [], 0
    while len(bigs) < reps and skipped < 3 * reps:
        r = one_transfer(client, nbytes)
        if r is None:
            skipped += 1
            continue
        bigs.append(r[0])
        smalls.append(r[1])
    if not bigs:
        return {"error": "no rep had the producer and the consumer on different workers"}
    big_m, small_m = statistics.median(bigs), statistics.median(smalls)
    fetch = big_m - small_m
    log(f"rdask transfer of {nbytes / MIB:.0f} MiB: consumer {big_m * 1e3:.1f} ms, small {small_m * 1e3:.1f} ms")
    return {
        "bytes": nbytes,
        "reps": len(bigs),
        "skipped_reps": skipped,
        "consume_big_s": bigs,
        "consume_small_s": smalls,
        "fetch_s": fetch,
        "fetch_mib_per_s": nbytes / MIB / fetch,
        "end_to_end_mib_per_s": nbytes / MIB / big_m,
    }


def run_rdask(args):
    with rdask.LocalCluster(n_workers=2, threads_per_worker=1) as cluster:
        with rdask.Client(cluster) as client:
            out = {"workers": 2, "threads_per_worker": 1}
            out["trivial"] = trivial(client, args.tasks)
            out["roundtrip"] = roundtrip(client, args.roundtrips)
            out["transfer"] = transfer(client, args.transfer_mib * MIB, args.transfer_reps)
    return out


# --- the loopback TCP copy ---------------------------------------------------------------------


def loopback(nbytes, reps, fresh):
    """Seconds (median of ``reps``) to move ``nbytes`` over one loopback TCP connection, sendall in a
    thread, recv_into in this one: into a pre-faulted buffer, or a fresh lazily mapped one (as a
    worker receiving data must allocate)."""
    src = np.full(nbytes, 7, dtype=np.uint8)
    dst = np.ones(nbytes, dtype=np.uint8)
    listener = socket.create_server(("127.0.0.1", 0))
    addr = listener.getsockname()
    times = []
    try:
        for _ in range(reps):

            def send():
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(memoryview(src))

            sender = threading.Thread(target=send)
            sender.start()
            t = time.perf_counter()
            with socket.create_connection(addr) as c:
                buf = np.empty(nbytes, dtype=np.uint8) if fresh else dst
                view, got = memoryview(buf), 0
                while got < nbytes:
                    n = c.recv_into(view[got:])
                    if n == 0:
                        raise SystemExit("loopback: connection closed early")
                    got += n
            times.append(time.perf_counter() - t)
            sender.join()
            if buf[-1] != 7:
                raise SystemExit("loopback: wrong bytes")
    finally:
        listener.close()
    return statistics.median(times)


# --- Dask --------------------------------------------------------------------------------------


def dask_python(explicit):
    if explicit:
        return explicit
    try:
        import distributed  # noqa: F401

        return sys.executable
    except ImportError:
        pass
    venv = ROOT / "bench" / "peers" / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else None


def run_dask(python, args):
    cmd = [python, str(ROOT / "bench" / "peers" / "dask_trivial.py"), "--workers", "2"]
    cmd += [a for n in args.tasks for a in ("--tasks", str(n))]
    cmd += ["--roundtrips", str(args.roundtrips)]
    log("dask: " + " ".join(cmd))
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=1800)
    if p.returncode != 0:
        return {"error": f"dask_trivial.py exited with {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


# --- main --------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: N = 1k, 10k; 200 round trips; 64 MiB")
    p.add_argument("--tasks", type=int, action="append", help="N of a trivial round (repeatable; 10k, 100k)")
    p.add_argument("--roundtrips", type=int, default=None, help="sequential submit().result() (1000)")
    p.add_argument("--transfer-mib", type=int, default=None, help="size of the array moved (512)")
    p.add_argument("--transfer-reps", type=int, default=3, help="reps of the transfer (3)")
    p.add_argument("--dask-python", default=None, help="interpreter with Dask (default: see above)")
    p.add_argument("--no-dask", action="store_true", help="measure rdask alone")
    args = p.parse_args(argv)
    args.tasks = args.tasks or ([1000, 10000] if args.quick else [10000, 100000])
    args.roundtrips = args.roundtrips or (200 if args.quick else 1000)
    args.transfer_mib = args.transfer_mib or (64 if args.quick else 512)

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report = {
        "timestamp_utc": stamp,
        "quick": args.quick,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "method": (
            "one LocalCluster of 2 worker processes x 1 thread per system, run one after the other. "
            "trivial: gather(map(inc, range(N))) after a 100-task warm-up. round trip: sequential "
            "submit(inc, i).result(). transfer: per rep a map makes big (512 MiB, worker X), anchor "
            "(a page more, worker Y) and small (8 B, X); consume(small, anchor) then consume(big, anchor) "
            "run on Y (the scheduler prefers the holder of most input bytes; every rep checks the pids) "
            "and fetch small/big from X; fetch = median(consume big) - median(consume small), each "
            "timed submit -> result. TCP: one loopback connection, sendall/recv_into, median of 5, into "
            "a pre-faulted buffer (ratio) and into a fresh one (ratio_vs_fresh_buffer)."
        ),
    }

    log("loopback TCP copy ...")
    nbytes = args.transfer_mib * MIB
    tcp = loopback(nbytes, 5, fresh=False)
    tcp_fresh = loopback(nbytes, 5, fresh=True)
    report["tcp"] = {"bytes": nbytes, "seconds": tcp, "mib_per_s": nbytes / MIB / tcp,
                     "fresh_buffer_seconds": tcp_fresh, "fresh_buffer_mib_per_s": nbytes / MIB / tcp_fresh}

    log("rdask ...")
    report["rdask"] = run_rdask(args)

    python = None if args.no_dask else dask_python(args.dask_python)
    if args.no_dask:
        print("--no-dask: measuring rdask alone")
        report["dask"] = None
    elif python is None:
        print("Dask is missing (no `distributed` here, no bench/peers/.venv; bench/peers/setup.sh makes it): "
              "measuring rdask alone")
        report["dask"] = None
    else:
        report["dask"] = run_dask(python, args)

    rows = []
    dask = report["dask"] if report["dask"] and "error" not in report["dask"] else None
    dask_by_n = {r["tasks"]: r for r in dask["results"]} if dask else {}
    for r in report["rdask"]["trivial"]:
        d = dask_by_n.get(r["tasks"])
        ratio = r["tasks_per_s"] / d["tasks_per_s"] if d else None
        rows.append((f"trivial tasks/s, N={r['tasks']}", f"{r['tasks_per_s']:.0f}",
                     f"{d['tasks_per_s']:.0f}" if d else "-", ratio, ">= 20x Dask", ratio is not None and ratio >= 20))
    rt = report["rdask"]["roundtrip"]["median_us"]
    d_rt = dask["roundtrip_median_us"] if dask else None
    rows.append((f"round trip median (us), {args.roundtrips}", f"{rt:.0f}", f"{d_rt:.0f}" if d_rt else "-",
                 d_rt / rt if d_rt else None, "<= 1000 us", rt <= 1000))
    tr = report["rdask"]["transfer"]
    if "error" in tr:
        rows.append((f"transfer {args.transfer_mib} MiB", tr["error"], "-", None, ">= 70% TCP", False))
    else:
        tr["tcp_s"], tr["ratio"] = tcp, tcp / tr["fetch_s"]
        tr["ratio_vs_fresh_buffer"] = tcp_fresh / tr["fetch_s"]
        tr["ratio_end_to_end"] = tcp / statistics.median(tr["consume_big_s"])
        rows.append((f"transfer {args.transfer_mib} MiB (MiB/s), vs TCP {nbytes / MIB / tcp:.0f} MiB/s",
                     f"{tr['fetch_mib_per_s']:.0f}", "-", tr["ratio"], ">= 70% TCP", tr["ratio"] >= 0.7))
    report["summary"] = [
        {"figure": f, "rdask": v, "dask": dv, "ratio": ratio, "target": target, "met": met}
        for f, v, dv, ratio, target, met in rows
    ]

    print(f"{'figure':<58} {'rdask':>10} {'dask':>10} {'ratio':>9}  target")
    for f, v, dv, ratio, target, met in rows:
        rs = "-" if ratio is None else f"{ratio:.2f}"
        print(f"{f:<58} {v:>10} {dv:>10} {rs:>9}  {target} {'met' if met else 'NOT met'}")
    if not tr.get("error"):
        print(f"transfer: end to end {tr['end_to_end_mib_per_s']:.0f} MiB/s ({tr['ratio_end_to_end']:.2f} of TCP); "
              f"vs a fresh receive buffer {tr['ratio_vs_fresh_buffer']:.2f} of TCP ({nbytes / MIB / tcp_fresh:.0f} MiB/s)")

    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    for name in (f"python-{stamp}.json", "python-latest.json"):
        (out / name).write_text(text)
    print(f"written: {out / ('python-' + stamp + '.json')} and python-latest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
