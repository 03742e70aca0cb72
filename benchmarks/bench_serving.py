"""Load-test the router service over loopback HTTP and compare with raw ONNX batched throughput.

    python benchmarks/bench_serving.py --router runs/demo/export --out runs/bench_serving.json

For each configuration (dynamic batching on, and off = max_batch_size 1) the service is started as
a subprocess (`python -m neural_router serve`) on 127.0.0.1 with a free port, then a closed-loop load generator
(asyncio; each of C workers sends its next /v1/route request on its own keep-alive connection as soon
as the previous answers; ``--client httpx`` uses httpx instead)
runs for --duration-s seconds at each concurrency C. Reported per run: throughput, p50/p95/p99
latency, mean batch size and the share of the run spent in batches (``inference_busy``: the
batches' seconds over the run's, from the service's /metrics), and error counts (429 separately). The raw throughput of the same predictor (in
this process, no HTTP) at batch size 1 and --max-batch-size is measured in the same run. Client and
server share the machine's cores: on a small machine the load generator's own CPU use lowers the
service numbers, so each run also reports the CPU time per answered request of the service process
(all its threads, and its event-loop thread alone) and of the load generator, and how busy the cores
were. Everything is bounded by --duration-s.

The service/raw ratio (``ratio`` in the JSON) is measured in --ratio-rounds interleaved rounds at
--ratio-concurrency: raw predictor at --max-batch-size, service, raw again, ..., each round's ratio
being the service's throughput over the mean of the raw runs either side of it, so that a machine
whose load changes during the run (other processes) moves both sides alike; the median is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil  # a dependency of accelerate
import yaml

from neural_router.inference.export import SAMPLE_PROMPTS

REPO = Path(__file__).resolve().parents[1]

PROMPTS = [
    *SAMPLE_PROMPTS[:4],  # short question, code, maths word problem, multiple choice
    "Summarise the following text. " + "The quick brown fox jumps over the lazy dog. " * 40,
    "Translate to German: the weather is nice today and we are going to the lake.",
    "Explain the difference between a process and a thread in operating systems.",
    "Prove that the square root of two is irrational.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def batch_counters(base: str) -> tuple[float, float, float]:
    """(prompts batched, batches, seconds spent in batches) so far, from the service's /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    names = ("router_batch_size_sum", "router_batch_size_count", "router_batch_duration_seconds_sum")
    vals = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith(names)}
    return tuple(vals.get(n, 0.0) for n in names)  # type: ignore[return-value]


class Service:
    """`python -m neural_router serve` in a subprocess on loopback, with its own config file; ``src``
    runs the package found in that folder (``src/neural_router``, with ``serving``, ``training`` and
    ``configs`` inside it, as installed) instead of this checkout's."""

    def __init__(self, router: str, device: str, settings: dict[str, Any], workdir: Path,
                 src: Path | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cfg = workdir / f"serve-{self.port}.yaml"
        cfg.write_text(yaml.safe_dump({"log_level": "warning", "access_log": False, **settings}))
        self.log = workdir / f"serve-{self.port}.log"
        env = {**os.environ, "PYTHONPATH": str(src)} if src else None
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "neural_router", "serve", "--router", router, "--port", str(self.port),
                 "--device", device, "--config", str(cfg)], cwd=src or REPO, env=env,
                stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited ({self.proc.returncode}):\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return httpx.get(f"{self.base}/healthz", timeout=5).json()  # type: ignore[no-any-return]
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"service not ready after {timeout_s} s:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class RawConnection:
    """One keep-alive HTTP/1.1 connection on asyncio streams, for the load generator only: a POST costs
    it a few tens of microseconds of CPU where httpx spends about 2 ms, which on a 2-core machine
    would be taken from the service under test. Understands what uvicorn answers: a status line,
    headers and a Content-Length body."""

    def __init__(self, base: str) -> None:
        url = httpx.URL(base)
        self.host, self.port = url.host, url.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[int, dict[bytes, bytes]]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        body = json.dumps(payload).encode()
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(), self.port,
                                                               len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:] if ln)}
        if b"content-length" not in headers:
            raise httpx.RemoteProtocolError(f"response without Content-Length: {lines[0]!r}")
        await self.reader.readexactly(int(headers[b"content-length"]))
        if headers.get(b"connection") == b"close":
            await self.aclose()
        return status, headers

    async def aclose(self) -> None:  # named as httpx's, so both kinds of connection close alike
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


async def closed_loop(base: str, concurrency: int, duration_s: float, client: str = "raw") -> dict[str, Any]:
    """C workers, each with its own keep-alive connection (``client``: ``raw``, :class:`RawConnection`,
    or ``httpx``, one AsyncClient per worker: a shared client's pool costs O(connections) CPU per
    request and would make the load generator the bottleneck)."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    exceptions = 0
    if client == "raw":
        conns: list[Any] = [RawConnection(base) for _ in range(concurrency)]
        await asyncio.gather(*(c.open() for c in conns))

        async def post(conn: Any, body: dict[str, Any]) -> tuple[int, str | None]:
            status, headers = await conn.post("/v1/route", body)
            ra = headers.get(b"retry-after")
            return status, ra.decode() if ra else None
    else:
        conns = [httpx.AsyncClient(base_url=base, timeout=30) for _ in range(concurrency)]
        await asyncio.gather(*(c.get("/healthz") for c in conns))  # open the connections first

        async def post(conn: Any, body: dict[str, Any]) -> tuple[int, str | None]:
            r = await conn.post("/v1/route", json=body)
            return r.status_code, r.headers.get("retry-after")
    try:
        end = time.perf_counter() + duration_s

        async def worker(wid: int, conn: Any) -> None:
            nonlocal exceptions
            i = wid
            while time.perf_counter() < end:
                body = {"prompt": PROMPTS[i % len(PROMPTS)] + f" #{i}"}
                i += concurrency
                t0 = time.perf_counter()
                try:
                    status, retry_after = await asyncio.wait_for(post(conn, body), 30)
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        asyncio.TimeoutError, ValueError):
                    exceptions += 1
                    if client == "raw":
                        await conn.aclose()   # reconnect on the next request
                    continue
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)
                elif status == 429:
                    await asyncio.sleep(float(retry_after or "1") / 10)

        t_start = time.perf_counter()
        await asyncio.gather(*(worker(w, c) for w, c in enumerate(conns)))
        elapsed = time.perf_counter() - t_start
    finally:
        await asyncio.gather(*(c.aclose() for c in conns))
    ok = statuses.get("200", 0)
    return {"concurrency": concurrency, "client": client, "seconds": round(elapsed, 3), "ok": ok,
            "throughput_rps": ok / elapsed if elapsed else 0.0,
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99), "status_counts": statuses,
            "http_429": statuses.get("429", 0),
            "errors": sum(v for k, v in statuses.items() if k != "200") + exceptions,
            "exceptions": exceptions}


def cpu_accounting(res: dict[str, Any], service_cpu_s: float, loop_cpu_s: float,
                   client_cpu_s: float) -> dict[str, Any]:
    """CPU ms per answered request of the service (all threads, and its event-loop thread alone)
    and of the load generator, and the share of all cores the two kept busy during the run."""
    ok, cores = max(res["ok"], 1), os.cpu_count() or 1
    return {"service_cpu_ms_per_request": 1000 * service_cpu_s / ok,
            "event_loop_cpu_ms_per_request": 1000 * loop_cpu_s / ok,
            "client_cpu_ms_per_request": 1000 * client_cpu_s / ok,
            "cores_busy": (service_cpu_s + client_cpu_s) / (res["seconds"] * cores) if res["seconds"] else None}


def _cpu_s(server: psutil.Process) -> tuple[float, float]:
    """CPU seconds of the whole service process and of its main (event-loop) thread."""
    t = server.cpu_times()
    main = next((th for th in server.threads() if th.id == server.pid), None)
    return t.user + t.system, (main.user_time + main.system_time) if main else 0.0


def measure_level(svc: Service, concurrency: int, duration_s: float, client: str) -> dict[str, Any]:
    """One closed-loop run against ``svc`` with the service's batch and CPU figures for it."""
    server = psutil.Process(svc.proc.pid)
    s0, n0, b0 = batch_counters(svc.base)
    (cpu0, loop0), own0 = _cpu_s(server), time.process_time()
    res = asyncio.run(closed_loop(svc.base, concurrency, duration_s, client))
    (cpu1, loop1), own1 = _cpu_s(server), time.process_time()
    s1, n1, b1 = batch_counters(svc.base)
    res["mean_batch_size"] = (s1 - s0) / (n1 - n0) if n1 > n0 else None
    res["inference_busy"] = (b1 - b0) / res["seconds"] if res["seconds"] else None
    res.update(cpu_accounting(res, cpu1 - cpu0, loop1 - loop0, own1 - own0))
    return res


def run_service(name: str, router: str, device: str, settings: dict[str, Any], levels: list[int],
                duration_s: float, workdir: Path, client: str = "raw") -> dict[str, Any]:
    svc = Service(router, device, settings, workdir)
    try:
        health = svc.wait_ready()
        runs = []
        for c in levels:
            res = measure_level(svc, c, duration_s, client)
            runs.append(res)
            print(f"  [{name}] c={c:<4d} {res['throughput_rps']:8.1f} req/s  p50 {_ms(res['p50_ms'])}  "
                  f"p99 {_ms(res['p99_ms'])}  batch {_f(res['mean_batch_size'])}  errors {res['errors']}  "
                  f"cpu/req: service {_f(res['service_cpu_ms_per_request'])} ms "
                  f"(event loop {_f(res['event_loop_cpu_ms_per_request'])}), "
                  f"load generator {_f(res['client_cpu_ms_per_request'])} ms", flush=True)
        return {"name": name, "settings": settings, "health": health, "runs": runs}
    finally:
        svc.stop()


def paired_ratio(router: str, device: str, settings: dict[str, Any], concurrency: int, rounds: int,
                 duration_s: float, workdir: Path, client: str, threads: int | None,
                 baseline_src: Path | None = None) -> dict[str, Any]:
    """Service throughput over raw predictor throughput (batch ``settings['max_batch_size']``),
    interleaved: raw, service, raw, service, ..., raw; round i's ratio is service_i over the mean of
    the raw runs before and after it. With ``baseline_src`` a second service runs that source tree
    (see :class:`Service`) in the same rounds, the two taking turns to go first. Returns the rounds
    and the medians (``baseline_*`` for the second service)."""
    predictor = _load(router, device, threads)
    bs = settings["max_batch_size"]
    svcs = {"": Service(router, device, settings, workdir)}
    if baseline_src is not None:
        svcs["baseline_"] = Service(router, device, settings, workdir, baseline_src)
    try:
        for svc in svcs.values():
            svc.wait_ready()
            asyncio.run(closed_loop(svc.base, concurrency, min(duration_s, 2.0), client))  # warm
        raws, out = [_raw_rate(predictor, bs, duration_s / 2)], []
        for i in range(rounds):
            runs = {k: measure_level(svcs[k], concurrency, duration_s, client)
                    for k in (list(svcs) if i % 2 == 0 else list(svcs)[::-1])}
            raws.append(_raw_rate(predictor, bs, duration_s / 2))
            raw_rps, raw_cpu = (raws[-2][0] + raws[-1][0]) / 2, (raws[-2][1] + raws[-1][1]) / 2
            row: dict[str, Any] = {"raw_prompts_per_s": raw_rps, "raw_cpu_ms_per_prompt": raw_cpu}
            for k, res in runs.items():
                row.update({f"{k}{name}": v for name, v in res.items()})
                row[f"{k}ratio"] = res["throughput_rps"] / raw_rps
                print(f"  [{k or 'service_'}ratio] c={concurrency} {res['throughput_rps']:7.1f} req/s  raw "
                      f"{raw_rps:7.1f} prompts/s  ratio {row[f'{k}ratio']:.3f}  cpu/req: service "
                      f"{res['service_cpu_ms_per_request']:.2f} ms (event loop "
                      f"{res['event_loop_cpu_ms_per_request']:.2f}), raw {raw_cpu:.2f} ms", flush=True)
            out.append(row)
    finally:
        for svc in svcs.values():
            svc.stop()
    keys = [f"{k}{name}" for k in svcs for name in
            ("ratio", "throughput_rps", "service_cpu_ms_per_request", "event_loop_cpu_ms_per_request",
             "inference_busy")] + ["raw_prompts_per_s", "raw_cpu_ms_per_prompt"]
    return {"concurrency": concurrency, "raw_batch_size": bs, "settings": settings,
            "baseline_src": str(baseline_src) if baseline_src else None, "rounds": out,
            "median": {k: float(np.median([r[k] for r in out])) for k in keys}}


def _load(router: str, device: str, threads: int | None) -> Any:
    from neural_router.serving.engine.service import load_router

    return load_router(router, device, None, threads)


def _raw_rate(predictor: Any, batch_size: int, duration_s: float) -> tuple[float, float]:
    """(prompts/s, CPU ms per prompt) of predictor.predict() on batches of the bench's prompts."""
    prompts = [PROMPTS[i % len(PROMPTS)] + f" #{i}" for i in range(batch_size)]
    predictor.predict(prompts)  # warm-up
    n, t0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < duration_s:
        predictor.predict(prompts)
        n += batch_size
    return n / (time.perf_counter() - t0), 1000 * (time.process_time() - cpu0) / n


def raw_throughput(router: str, device: str, batch_sizes: list[int], duration_s: float,
                   threads: int | None) -> dict[str, Any]:
    """Prompts/s of predictor.predict() alone (tokenisation + ONNX), same prompts, in this process."""
    predictor = _load(router, device, threads)
    out: dict[str, Any] = {"provider": str(predictor.provider), "by_batch_size": {}, "cpu_ms_per_prompt": {}}
    for bs in batch_sizes:
        rate, cpu_ms = _raw_rate(predictor, bs, duration_s)
        out["by_batch_size"][str(bs)], out["cpu_ms_per_prompt"][str(bs)] = rate, cpu_ms
        print(f"  [raw onnx] batch {bs:<4d} {rate:8.1f} prompts/s  cpu {cpu_ms:.2f} ms/prompt", flush=True)
    return out


def _ms(v: float | None) -> str:
    return f"{v:7.1f} ms" if v is not None else "      - ms"


def _f(v: float | None) -> str:
    return f"{v:5.1f}" if v is not None else "    -"


def print_table(result: dict[str, Any]) -> None:
    head = (f"{'config':<10} {'conc':>5} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
            f"{'batch':>6} {'429':>5} {'errors':>6}")
    print("\n" + head + "\n" + "-" * len(head))
    for cfg in result["services"]:
        for r in cfg["runs"]:
            def fmt(v: float | None) -> str:
                return f"{v:8.1f}" if v is not None else f"{'-':>8}"
            print(f"{cfg['name']:<10} {r['concurrency']:>5} {r['throughput_rps']:>8.1f} {fmt(r['p50_ms'])} "
                  f"{fmt(r['p95_ms'])} {fmt(r['p99_ms'])} {_f(r['mean_batch_size']):>6} "
                  f"{r['http_429']:>5} {r['errors']:>6}")
    raw = result["raw_onnx"]["by_batch_size"]
    print("\nraw predictor (no HTTP): " + ", ".join(f"batch {k}: {v:.1f} prompts/s" for k, v in raw.items()))
    if "ratio" in result:
        r = result["ratio"]
        for k in ("", "baseline_") if r["baseline_src"] else ("",):
            print(f"{k or 'service'}/raw at concurrency {r['concurrency']} (median of {len(r['rounds'])} "
                  f"interleaved rounds): {r['median'][k + 'ratio']:.3f}  "
                  f"(rounds: {', '.join(format(x[k + 'ratio'], '.3f') for x in r['rounds'])})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--router", required=True, help="exported router folder")
    p.add_argument("--out", required=True, help="where to write the JSON results")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--concurrency", default="1,8,32,128", help="comma-separated concurrency levels")
    p.add_argument("--duration-s", type=float, default=5.0, help="seconds per concurrency level")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=0.0)
    p.add_argument("--max-queue", type=int, default=4096)
    p.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime intra-op threads (service and raw run); default: all cores")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw",
                   help="load generator: raw keep-alive HTTP/1.1 on asyncio streams (light, the default) or "
                        "httpx (about 2 ms of CPU per request, taken from the service on a small machine)")
    p.add_argument("--skip-unbatched", action="store_true", help="only the batched configuration")
    p.add_argument("--ratio-rounds", type=int, default=3,
                   help="interleaved service/raw rounds for the service/raw ratio (0: not measured)")
    p.add_argument("--ratio-concurrency", type=int, default=32, help="concurrency of the ratio rounds")
    p.add_argument("--baseline-src", type=Path, default=None,
                   help="a source tree laid out as installed (DIR/neural_router with serving, training and "
                        "configs inside) whose service also runs in the ratio rounds, e.g. the code before "
                        "a change (docs/results.md shows how to lay out a commit)")
    a = p.parse_args(argv)
    levels = [int(x) for x in a.concurrency.split(",") if x.strip()]
    base: dict[str, Any] = {"max_wait_ms": a.max_wait_ms, "max_queue": a.max_queue, "request_timeout_s": 30,
                            "inference_threads": a.threads}
    configs = [("batched", {**base, "max_batch_size": a.max_batch_size})]
    if not a.skip_unbatched:
        configs.append(("unbatched", {**base, "max_batch_size": 1}))
    result: dict[str, Any] = {"router": a.router, "device": a.device, "duration_s": a.duration_s,
                              "client": a.client,
                              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                          "python": platform.python_version(),
                                          "load_average_at_start": os.getloadavg()},
                              "services": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in configs:
            print(f"service {name}: {settings}", flush=True)
            result["services"].append(run_service(name, a.router, a.device, settings, levels,
                                                  a.duration_s, Path(tmp), a.client))
    print("raw predictor throughput", flush=True)
    result["raw_onnx"] = raw_throughput(a.router, a.device, sorted({1, a.max_batch_size}),
                                        min(a.duration_s, 5.0), a.threads)
    if a.ratio_rounds > 0:
        print(f"service/raw ratio, {a.ratio_rounds} interleaved rounds", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            result["ratio"] = paired_ratio(a.router, a.device, configs[0][1], a.ratio_concurrency,
                                           a.ratio_rounds, a.duration_s, Path(tmp), a.client, a.threads,
                                           a.baseline_src)
    result["machine"]["load_average_at_end"] = os.getloadavg()  # others' load biases the figures
    print_table(result)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
