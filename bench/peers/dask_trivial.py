"""Dask distributed peer for the rdask "trivial tasks" benchmark.

Usage: python dask_trivial.py --tasks N [--tasks M ...] [--workers 2]

Starts one LocalCluster (processes, 1 thread per worker, no dashboard) and,
for each N, times client.gather(client.map(inc, range(N))) end to end
(submit + run + gather). Prints exactly one JSON line on stdout; every log
line (ours, distributed's, the worker processes') goes to stderr.
"""

import argparse
import json
import logging
import os
import statistics
import sys
import time

# Quiet distributed before it is imported; the env var also reaches the
# spawned worker/nanny processes.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


def inc(x):
    return x + 1


def log(msg):
    print(f"dask_trivial: {msg}", file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, action="append", required=True,
                   help="number of tasks in one round (repeatable)")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes (default 2)")
    p.add_argument("--roundtrips", type=int, default=200,
                   help="single submit().result() calls for the median (default 200)")
    p.add_argument("--warmup", type=int, default=100,
                   help="untimed tasks run once before the timed rounds (default 100, 0 = none)")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.tasks):
        p.error("--tasks must be >= 1")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if args.roundtrips < 1:
        p.error("--roundtrips must be >= 1")
    return args


def run(args):
    import distributed
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.WARNING,
    )
    client = None
    try:
        client = Client(cluster)
        client.wait_for_workers(args.workers, timeout=120)
        worker_register_s = time.perf_counter() - t0
        log(f"{args.workers} workers registered in {worker_register_s:.3f}s")

        if args.warmup:
            # Untimed: lets each worker import/unpickle `inc` once.
            got = sum(client.gather(client.map(inc, range(args.warmup), key=[f"warmup-{i}" for i in range(args.warmup)])))
            assert got == args.warmup * (args.warmup + 1) // 2

        results = []
        for rnd, n in enumerate(args.tasks):
            keys = [f"inc-r{rnd}-{i}" for i in range(n)]  # unique per round
            t = time.perf_counter()
            futures = client.map(inc, range(n), key=keys)
            values = client.gather(futures)
            seconds = time.perf_counter() - t
            del futures
            got, want = sum(values), n * (n + 1) // 2
            if got != want:
                raise SystemExit(f"dask_trivial: round {rnd} (N={n}): sum {got} != expected {want}")
            results.append({"tasks": n, "seconds": seconds, "tasks_per_s": n / seconds})
            log(f"N={n}: {seconds:.3f}s, {n / seconds:.0f} tasks/s")

        samples_us = []
        for i in range(args.roundtrips):
            t = time.perf_counter()
            r = client.submit(inc, i, pure=False).result()
            samples_us.append((time.perf_counter() - t) * 1e6)
            if r != i + 1:
                raise SystemExit(f"dask_trivial: roundtrip {i}: got {r}, expected {i + 1}")
        roundtrip_median_us = statistics.median(samples_us)
        log(f"roundtrip median {roundtrip_median_us:.0f}us over {args.roundtrips}")

        return {
            "peer": "dask-distributed",
            "version": distributed.__version__,
            "workers": args.workers,
            "results": results,
            "roundtrip_median_us": roundtrip_median_us,
            "worker_register_s": worker_register_s,
        }
    finally:
        if client is not None:
            client.close()
        cluster.close()


def main(argv=None):
    args = parse_args(argv)
    # Keep stdout for the single JSON line: point fd 1 (inherited by the
    # spawned worker processes) and sys.stdout at stderr while Dask runs.
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    saved_sys_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        report = run(args)
    finally:
        sys.stdout = saved_sys_stdout
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
