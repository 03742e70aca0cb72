"""Load a fleet of router replicas on loopback, promote a router mid-run, and measure the swap.

    python benchmarks/bench_fleet.py --router DIR --store postgresql://user@127.0.0.1:5432/db

N replicas (``--replicas``, default 3) run as ``neural-router serve --router DIR`` processes on
127.0.0.1, all with the same store (``--store``, the replicas' feedback_url; default a SQLite file
in a temporary folder, for a quick run) and ``registry_poll_s`` = ``--poll-s``. A closed-loop load
generator (``--concurrency`` asyncio workers, each sending its next /v1/route request, round-robin
over the replicas, as soon as the previous one answered) sends ``--requests`` requests in all. Once
``--promote-at`` of them were answered, a copy of DIR under another version is promoted in the
registry (:func:`neural_router.feedback.registry.promote_folder`, what ``neural-router promote``
runs); every replica must load it and swap without failing a request.

Reported (and written to ``--out`` as JSON): requests/s across the fleet, latency percentiles
(all requests, and those sent while the fleet was converging), errors (target 0), and the time from
the promotion's record to each replica serving the new router (seen in its /healthz, polled every
50 ms) and to the whole fleet. Everything is bounded: ``--requests`` and a ``--timeout-s`` for the
whole run; the replicas are stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from neural_router.feedback.registry import folder_version, promote_folder

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["What is 17 * 23?", "Write a Python function that reverses a list.",
           "Summarise the plot of Hamlet in two sentences.", "Prove that there are infinitely many primes."]


def start_replicas(args: argparse.Namespace, store: str, logs: Path) -> list[tuple[subprocess.Popen[bytes], str]]:
    """Start ``args.replicas`` services on free loopback ports (not waiting for them)."""
    cli = Path(sys.executable).parent / "neural-router"
    out = []
    for i in range(args.replicas):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        env = {**os.environ, "NEURAL_ROUTER_FEEDBACK_URL": store, "NEURAL_ROUTER_REGISTRY_POLL_S": str(args.poll_s),
               "NEURAL_ROUTER_REPLICA_ID": f"replica-{i}", "NEURAL_ROUTER_DEVICE": "cpu",
               "NEURAL_ROUTER_INFERENCE_THREADS": str(args.inference_threads), "NEURAL_ROUTER_ACCESS_LOG": "false",
               "NEURAL_ROUTER_LOG_LEVEL": "warning"}
        with (logs / f"replica-{i}.log").open("w") as log:
            proc = subprocess.Popen([str(cli), "serve", "--router", str(args.router), "--port", str(port)],
                                    cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        out.append((proc, f"http://127.0.0.1:{port}"))
    return out


def wait_ready(replicas: list[tuple[subprocess.Popen[bytes], str]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for proc, base in replicas:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"replica {base} exited with {proc.returncode}; see its log")
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"replica {base} not ready after {timeout_s} s")
            time.sleep(0.1)


def stop_replicas(replicas: list[tuple[subprocess.Popen[bytes], str]]) -> None:
    for proc, _ in replicas:
        proc.terminate()
    for proc, _ in replicas:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Run:
    """Counters shared by the workers, the watcher of /healthz and the promotion."""

    def __init__(self, bases: list[str], total: int) -> None:
        self.bases, self.total = bases, total
        self.sent = self.answered = 0
        self.latencies: list[tuple[float, float]] = []      # (send time, seconds)
        self.errors: list[str] = []
        self.per_replica = dict.fromkeys(bases, 0)
        self.promoted_at: float | None = None               # monotonic time of the registry record
        self.reached: dict[str, float] = {}                 # replica -> seconds after promoted_at
        self.done = asyncio.Event()
        self.elapsed = 0.0                                 # seconds of the load phase


async def worker(run: Run, client: httpx.AsyncClient) -> None:
    while run.sent < run.total:
        i = run.sent
        run.sent += 1
        base = run.bases[i % len(run.bases)]
        t = time.monotonic()
        try:
            r = await client.post(f"{base}/v1/route", json={"prompt": f"{PROMPTS[i % len(PROMPTS)]} ({i})"})
            ok = r.status_code == 200
            if not ok:
                run.errors.append(f"{base}: HTTP {r.status_code}: {r.text[:200]}")
        except httpx.HTTPError as e:
            ok = False
            run.errors.append(f"{base}: {type(e).__name__}: {e}")
        run.latencies.append((t, time.monotonic() - t))
        run.answered += 1
        run.per_replica[base] += ok


async def promote_and_watch(run: Run, args: argparse.Namespace, store: str, v2_dir: Path, v2: str) -> None:
    """Promote once ``promote_at`` of the requests were answered; then poll every replica's
    /healthz every 50 ms until each serves ``v2`` (bounded by the run's timeout)."""
    while run.answered < args.promote_at * run.total and not run.done.is_set():
        await asyncio.sleep(0.01)
    await asyncio.to_thread(promote_folder, v2_dir, store, "bench_fleet")
    run.promoted_at = time.monotonic()
    async with httpx.AsyncClient(timeout=5) as client:
        while len(run.reached) < len(run.bases):
            for base in run.bases:
                if base not in run.reached:
                    health = (await client.get(f"{base}/healthz")).json()
                    if health["router_version"] == v2:
                        run.reached[base] = time.monotonic() - run.promoted_at
            await asyncio.sleep(0.05)


async def drive(args: argparse.Namespace, bases: list[str], store: str, v2_dir: Path, v2: str) -> Run:
    run = Run(bases, args.requests)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        start = time.monotonic()
        watch = asyncio.create_task(promote_and_watch(run, args, store, v2_dir, v2))
        await asyncio.wait_for(asyncio.gather(*(worker(run, client) for _ in range(args.concurrency))),
                               args.timeout_s)
        run.elapsed = time.monotonic() - start
        run.done.set()
        await asyncio.wait_for(watch, max(1.0, args.timeout_s - run.elapsed))
    return run


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


def report(run: Run, args: argparse.Namespace, store_kind: str, versions: tuple[str, str]) -> dict[str, Any]:
    """The run's figures (latencies in ms, times in s)."""
    lat = [s for _, s in run.latencies]
    assert run.promoted_at is not None
    end_swap = run.promoted_at + max(run.reached.values())
    during = [s for t, s in run.latencies if run.promoted_at <= t <= end_swap]
    return {
        "config": {"replicas": args.replicas, "requests": args.requests, "concurrency": args.concurrency,
                   "poll_s": args.poll_s, "promote_at": args.promote_at, "store": store_kind,
                   "inference_threads": args.inference_threads, "router": str(args.router),
                   "versions": {"from": versions[0], "to": versions[1]}},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "requests_per_s": round(run.answered / run.elapsed, 1),
        "answered": run.answered, "errors": len(run.errors), "first_errors": run.errors[:5],
        "per_replica_ok": {f"replica-{i}": run.per_replica[b] for i, b in enumerate(run.bases)},
        "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99)},
        "during_convergence": {"requests": len(during), "p50_ms": pct(during, 50), "p99_ms": pct(during, 99)},
        "converged_s": round(max(run.reached.values()), 3),
        "replica_reached_s": {f"replica-{i}": round(run.reached[b], 3) for i, b in enumerate(run.bases)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--router", required=True, type=Path, help="an exported router folder (served first)")
    ap.add_argument("--store", help="store URL shared by the replicas (default: SQLite in a temp folder)")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3000, help="requests in all (bounds the run)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--promote-at", type=float, default=0.3, help="share of the requests answered before the promotion")
    ap.add_argument("--poll-s", type=float, default=0.5, help="the replicas' registry_poll_s")
    ap.add_argument("--inference-threads", type=int, default=1)
    ap.add_argument("--timeout-s", type=float, default=300, help="limit of the load phase")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_fleet.json")
    args = ap.parse_args(argv)
    if not (1 <= args.replicas <= 16 and args.requests >= 10 and 1 <= args.concurrency <= 256
            and 0 < args.promote_at < 1 and args.poll_s > 0):
        ap.error("need 1-16 replicas, at least 10 requests, concurrency 1-256, 0 < --promote-at < 1, --poll-s > 0")
    v1 = folder_version(args.router)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        v2_dir = Path(tmp) / "router-v2"
        shutil.copytree(args.router, v2_dir)
        config = json.loads((v2_dir / "router_config.json").read_text())
        config["version"] = v2 = f"{v1}-fleet-v2"
        (v2_dir / "router_config.json").write_text(json.dumps(config))
        store = args.store or f"sqlite:///{Path(tmp) / 'feedback.db'}"
        replicas = start_replicas(args, store, Path(tmp))
        try:
            wait_ready(replicas, 180)
            run = asyncio.run(drive(args, [b for _, b in replicas], store, v2_dir, v2))
        finally:
            stop_replicas(replicas)
    kind = store.split(":", 1)[0] if "://" in store else "sqlite"
    result = report(run, args, kind, (v1, v2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
