"""The GPU check of issue 29, in one process: train, decide, time and serve the router on CUDA.

    bash benchmarks/gpu_check.sh            # on the GPU machine, with .gpu_bundle carried
    python benchmarks/gpu_check.py --bundle .gpu_bundle --out runs/gpu_check [--quick --device cpu]

Phases, in order; each is time-boxed (its own limit and what is left of ``--budget-s``), fails soft
(the error is recorded and the next phase runs) and the JSON is rewritten after each, so a killed
run still leaves what it measured:

1. ``environment``: torch, CUDA, the GPU, ONNX Runtime's providers.
2. ``encoder``: the bundle's fp16 encoder cast back to an fp32 folder (training starts from fp32).
3. ``train``: ``neural-router train`` (the default ``TrainConfig``, its encoder from the bundle) on
   the bundle's data, on the GPU through accelerate: seconds per epoch, epochs, total minutes. If it
   fails, an untrained router is built so the later phases still measure speed (parity then
   compares random heads, said in the JSON).
4. ``parity``: the trained router on its validation prompts, PyTorch fp32 on the CPU as the
   reference, against fp32/fp16/bf16 on the device and fp16 against fp32 on the device:
   largest |Δquality|, share of identical argmax choices, same policy choices, AIQ.
5. ``predictor``: the model's forward at 64 and 256 tokens for batch sizes 1..1024 in each
   precision: prompts/s, p50/p99 ms per batch, peak GPU memory; and ``predict()`` end to end.
6. ``service``: ``neural-router serve --device <device>`` on the trained folder, loaded through the
   dynamic batcher, under ``bench_serving``'s closed-loop load generator at concurrency
   1, 32, 256, 1024 on loopback: throughput, p50/p99, mean batch, errors, and its /healthz.
7. ``onnx``: ``onnxruntime.get_available_providers()``; with CUDA there, the fp16 export's parity
   check and the exported router's decisions against PyTorch fp32 (on the CPU provider only with
   ``--device cpu``, for a dry run).
8. ``compile``: on CUDA, eager vs ``torch.compile`` vs CUDA graphs (``mode="reduce-overhead"``) at
   fixed shapes, with compile times: whether they pay.

``--quick`` shrinks everything (a data subset, 2 epochs, few batch sizes, 2 s per concurrency level)
for a CPU dry run of the whole path.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


class Phases:
    """Runs named phases under a shared deadline, recording each result (or error) and rewriting
    the JSON file after each."""

    def __init__(self, out_json: Path, budget_s: float, result: dict[str, Any]) -> None:
        self.out_json, self.deadline, self.result = out_json, time.monotonic() + budget_s, result
        self.result.setdefault("phases", {})

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, box_s: float, fn: Callable[[float], Any]) -> Any:
        """``fn(seconds it may take)`` as phase ``name``; None when it failed or no time was left."""
        box = min(box_s, self.left())
        rec: dict[str, Any] = {"box_s": round(box, 1)}
        self.result["phases"][name] = rec
        if box < 3:
            rec.update(ok=False, skipped=f"no time left in --budget-s ({self.left():.0f} s)")
            self.save()
            return None
        print(f"== {name} (up to {box:.0f} s)", flush=True)
        t0 = time.monotonic()
        value = None
        try:
            value = fn(box)
            rec.update(ok=True, result=value)
        except Exception as e:  # noqa: BLE001 - fail soft: record and go on
            rec.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000],
                       traceback=traceback.format_exc()[-3000:])
            print(f"   {name} failed: {type(e).__name__}: {str(e)[:500]}", flush=True)
        rec["seconds"] = round(time.monotonic() - t0, 2)
        self.save()
        return value

    def save(self) -> None:
        self.out_json.write_text(json.dumps(self.result, indent=2, default=str) + "\n")


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ---- 1-2: environment, encoder ----------------------------------------------------------------------

def environment() -> dict[str, Any]:
    import torch
    import transformers

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "transformers": transformers.__version__,
                           "cuda_available": torch.cuda.is_available(), "cpu_count": __import__("os").cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_mib=round(props.total_memory / MIB),
                   capability=list(torch.cuda.get_device_capability(0)), sm_count=props.multi_processor_count)
    try:
        import onnxruntime as ort

        env.update(onnxruntime=ort.__version__, ort_providers=ort.get_available_providers())
    except ImportError as e:
        env["onnxruntime"] = f"not importable: {e}"
    env["packages"] = package_versions(("accelerate", "pyarrow", "datasets", "huggingface_hub", "fsspec", "pydantic",
                                        "fastapi", "uvicorn", "sqlalchemy", "safetensors", "tokenizers"))
    return env


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """{module: its version, or why it does not import}: what the phases will find."""
    import importlib

    found = {}
    for name in names:
        try:
            found[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except Exception as e:  # noqa: BLE001 - any import failure is a finding
            found[name] = f"not importable: {type(e).__name__}: {str(e)[:200]}"
    return found


def fp32_encoder(src: Path, dst: Path) -> dict[str, Any]:
    """The bundle's (fp16) encoder folder ``src`` copied to ``dst`` with fp32 weights and config."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    state = load_file(str(src / "model.safetensors"))
    save_file({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
              str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    for key in ("torch_dtype", "dtype"):
        if key in cfg:
            cfg[key] = "float32"
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return {"path": str(dst), "layers": cfg.get("num_hidden_layers"), "tensors": len(state)}


# ---- 3: training ------------------------------------------------------------------------------------

def subset_data(src: Path, dst: Path, rows: int) -> Path:
    """The first ``rows`` rows of the first CSV in ``src`` (a quick run's data), in ``dst``."""
    import pandas as pd

    dst.mkdir(parents=True, exist_ok=True)
    first = sorted(src.glob("*.csv"))[0]
    pd.read_csv(first).head(rows).to_csv(dst / first.name, index=False)
    return dst


def train(data: Path, encoder: Path, work: Path, box_s: float, quick: bool) -> dict[str, Any]:
    """``neural-router train`` in a subprocess (killed after ``box_s``; run in ``work``, see
    :func:`service`); epochs and their seconds."""
    import yaml

    out = work / "router"
    shutil.rmtree(out, ignore_errors=True)
    cfg: dict[str, Any] = {"encoder": str(encoder), "max_minutes": max(0.2, (box_s - 45) / 60)}
    if quick:
        cfg["epochs"] = 2
    (work / "train.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "neural_router", "train", "--data", str(data), "--output", str(out),
           "--config", str(work / "train.yaml")]
    log = work / "train.out"
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=work, stdout=f, stderr=subprocess.STDOUT, timeout=box_s)
    if done.returncode:
        raise RuntimeError(f"train exited {done.returncode}: {log.read_text()[-1500:]}")
    tm = json.loads((out / "training_metrics.json").read_text())
    minutes = [h["minutes"] for h in tm["history"]]
    epoch_s = [60 * (b - a) for a, b in zip([0.0, *minutes], minutes)]
    return {"router": str(out), "overrides": cfg, "epochs": len(epoch_s),
            "epoch_seconds": [round(s, 2) for s in epoch_s],
            "median_epoch_s": round(statistics.median(epoch_s), 2) if epoch_s else None,
            "train_minutes_total": round(tm["train_minutes"], 3), "train_prompts": tm["train_prompts"],
            "val_prompts": tm["val_prompts"], "last_epoch": tm["history"][-1] if tm["history"] else None}


def untrained_router(encoder: Path, work: Path) -> dict[str, Any]:
    """A router folder with ``encoder`` and untrained heads over the shipped pool (speed does not
    depend on the weights), for when training failed."""
    from transformers import AutoTokenizer

    from neural_router.configs import config_path
    from neural_router.modeling.model import RouterConfig, RouterModel
    from neural_router.pool import ModelPool

    pool = ModelPool.from_yaml(config_path("models.yaml"))
    names = pool.names[:11]
    rc = RouterConfig(models=names, binary=[True] * len(names), max_length=128, head_tokens=16)
    out = work / "untrained"
    RouterModel.from_encoder(rc, str(encoder)).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(encoder)).save_pretrained(str(out))
    pool.subset(names).to_yaml(out / "models.yaml")
    return {"router": str(out), "note": "untrained heads: parity compares random predictions"}


# ---- 4: decisions -----------------------------------------------------------------------------------

def eval_prompts(router: Path, quick: bool) -> tuple[list[str], Any, str]:
    """(prompts, their validation split or None, what they are) for the parity checks."""
    from neural_router.inference.export import SAMPLE_PROMPTS
    from neural_router.inference.int8_check import validation_split
    from neural_router.pool import ModelPool

    from neural_router.modeling.config import RouterConfig

    rc = RouterConfig.from_json(router / "router_config.json")
    val, what = validation_split(router, list(rc.models), ModelPool.from_yaml(router / "models.yaml"))
    if val is None:
        return list(SAMPLE_PROMPTS), None, f"export's sample prompts ({what})"
    return list(val.prompts), val, what


def parity(router: Path, device: str, precisions: list[str], quick: bool) -> dict[str, Any]:
    """Decisions of the device's precisions against PyTorch fp32 on the CPU (and fp16 vs fp32 on
    the device), with AIQ on the validation split when there is one."""
    import torch

    from neural_router.evaluation.report import router_aiq
    from neural_router.inference.predictors import TorchPredictor
    from neural_router.inference.torch_runtime import decision_parity

    prompts, val, what = eval_prompts(router, quick)
    ref_pred = TorchPredictor.from_pretrained(router, device="cpu", precision="fp32")
    ref = ref_pred.predict(prompts)
    out: dict[str, Any] = {"prompts": len(prompts), "data": what, "reference": "PyTorch fp32 on the CPU"}
    aiq = {"cpu_fp32": router_aiq(ref, val, ref_pred.pool)} if val is not None else {}
    preds = {}
    for prec in precisions:
        pred = TorchPredictor.from_pretrained(router, device=device, precision=prec)
        t0 = time.perf_counter()
        preds[prec] = pred.predict(prompts)
        label = f"{device}_{prec}"
        out[label] = {**decision_parity(ref, preds[prec]), "predict_s": round(time.perf_counter() - t0, 3)}
        if val is not None:
            aiq[label] = router_aiq(preds[prec], val, pred.pool)
            out[label]["aiq_diff"] = aiq[label] - aiq["cpu_fp32"]
        del pred
        if device == "cuda":
            torch.cuda.empty_cache()
    if "fp16" in preds and "fp32" in preds:
        out[f"{device}_fp16_vs_{device}_fp32"] = decision_parity(preds["fp32"], preds["fp16"])
    out["aiq"] = aiq
    return out


# ---- 5: predictor throughput ------------------------------------------------------------------------

def time_forward(model, ids, mask, feats, device: str, cell_s: float, max_reps: int = 50) -> list[float]:
    """Milliseconds of each of at least 3 (at most ``max_reps``, about ``cell_s`` s) synchronised
    forward passes, after 2 warm-ups."""
    import torch

    from neural_router.inference.torch_runtime import forward

    times: list[float] = []
    with torch.inference_mode():
        for _ in range(2):
            forward(model, ids, mask, feats)
        sync(device)
        start = time.perf_counter()
        while len(times) < 3 or (len(times) < max_reps and time.perf_counter() - start < cell_s):
            t0 = time.perf_counter()
            forward(model, ids, mask, feats)
            sync(device)
            times.append((time.perf_counter() - t0) * 1000)
    return times


def forward_grid(model, device: str, tokens: list[int], batches: list[int], cell_s: float,
                 deadline: float) -> list[dict[str, Any]]:
    """:func:`time_forward` at each (tokens, batch size) on random token ids; stops a token length's
    larger batches at an out-of-memory error, and everything at ``deadline``."""
    import torch

    rows: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(0)
    n_feat = model.config.n_features
    for n_tok in tokens:
        for bs in batches:
            if time.monotonic() > deadline:
                rows.append({"tokens": n_tok, "batch": bs, "skipped": "phase time box reached"})
                return rows
            ids = torch.randint(1000, 20000, (bs, n_tok), generator=gen).to(device)
            mask, feats = torch.ones_like(ids), torch.rand(bs, n_feat, generator=gen).to(device)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                ms = time_forward(model, ids, mask, feats, device, cell_s)
            except torch.cuda.OutOfMemoryError:
                rows.append({"tokens": n_tok, "batch": bs, "error": "out of memory"})
                torch.cuda.empty_cache()
                break
            p50 = float(np.percentile(ms, 50))
            rows.append({"tokens": n_tok, "batch": bs, "reps": len(ms), "p50_ms": round(p50, 3),
                         "p99_ms": round(float(np.percentile(ms, 99)), 3),
                         "prompts_per_s": round(bs * 1000 / p50, 1),
                         "peak_mem_mib": round(torch.cuda.max_memory_allocated() / MIB, 1) if device == "cuda" else None})
    return rows


def predictor(router: Path, device: str, precisions: list[str], tokens: list[int], batches: list[int],
              cell_s: float, box_s: float) -> dict[str, Any]:
    """Per precision: the forward grid and ``predict()`` end to end (tokenisation included) on
    real-looking prompts at the predictor's batch size."""
    import torch

    from bench_serving import PROMPTS
    from neural_router.inference.predictors import TorchPredictor

    deadline = time.monotonic() + box_s
    out: dict[str, Any] = {}
    for i, prec in enumerate(precisions):
        until = time.monotonic() + (deadline - time.monotonic()) / (len(precisions) - i)
        pred = TorchPredictor.from_pretrained(router, device=device, precision=prec)
        weights = torch.cuda.memory_allocated() / MIB if device == "cuda" else None
        prompts = [PROMPTS[k % len(PROMPTS)] + f" #{k}" for k in range(max(batches))]
        pred.predict(prompts[:8])
        t0 = time.perf_counter()
        pred.predict(prompts)
        e2e = len(prompts) / (time.perf_counter() - t0)
        grid = forward_grid(pred.model, device, tokens, batches, cell_s, until - 1)
        out[prec] = {"weights_mib": round(weights, 1) if weights is not None else None,
                     "predict_prompts_per_s": round(e2e, 1), "predict_prompts": len(prompts),
                     "predict_batch_size": pred.batch_size, "forward": grid}
        best = max((r.get("prompts_per_s", 0) for r in grid), default=0)
        print(f"   {prec}: predict() {e2e:8.1f} prompts/s; forward best {best:10.1f} prompts/s", flush=True)
        del pred
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


# ---- 6-8: service, ONNX, compile --------------------------------------------------------------------

def service(router: Path, device: str, precision: str, levels: list[int], duration_s: float,
            max_batch: int, work: Path) -> dict[str, Any]:
    """The service on ``router`` (``--device``, ``precision``) under the closed-loop load generator."""
    import bench_serving

    # start the service outside the working tree: `python -m neural_router` puts its cwd first on
    # sys.path, and the tree's neural_router/ lacks training/ and serving/ where gpu_check.sh links
    # them in (the package is not installed on the GPU machine)
    bench_serving.REPO = work
    settings = {"precision": precision, "max_batch_size": max_batch, "max_wait_ms": 0.0, "max_queue": 8192,
                "request_timeout_s": 30.0}
    return bench_serving.run_service(f"{device}-{precision}", str(router), device, settings, levels, duration_s, work)


def onnx(router: Path, device: str, work: Path, box_s: float, quick: bool) -> dict[str, Any]:
    """ONNX Runtime's providers; with CUDA among them (or ``--device cpu``), the fp16 export, its
    parity report and the exported router's decisions against PyTorch fp32 on the CPU."""
    import onnxruntime as ort

    from neural_router.inference.predictors import OnnxPredictor, TorchPredictor
    from neural_router.inference.torch_runtime import decision_parity

    providers = ort.get_available_providers()
    res: dict[str, Any] = {"onnxruntime": ort.__version__, "providers": providers}
    cuda = "CUDAExecutionProvider" in providers
    if not cuda and device != "cpu":
        res["skipped"] = ("ONNX Runtime here offers no CUDAExecutionProvider (a CPU build): "
                          "the export's parity on the GPU cannot be checked")
        return res
    out = work / "onnx"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "neural_router", "export", "--router", str(router), "--output", str(out), "--fp16"]
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=max(box_s - 20, 10))
    if done.returncode:
        raise RuntimeError(f"export exited {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
    res["export_report"] = json.loads((out / "export_report.json").read_text())
    prompts, _, what = eval_prompts(router, quick)
    exported = OnnxPredictor(out, device="cuda" if cuda else "cpu")
    ref = TorchPredictor.from_pretrained(router, device="cpu", precision="fp32").predict(prompts)
    res.update(provider=exported.provider, model_file=exported.model_file, data=what,
               parity_vs_torch_cpu_fp32=decision_parity(ref, exported.predict(prompts)))
    return res


def compile_modes(router: Path, box_s: float, shapes: list[tuple[int, int]]) -> dict[str, Any]:
    """fp16 forward on CUDA at fixed (batch, tokens): eager, ``torch.compile`` and CUDA graphs
    (``reduce-overhead``); a mode is started only with at least 60 s left."""
    import torch

    from neural_router.inference.predictors import TorchPredictor

    deadline = time.monotonic() + box_s
    pred = TorchPredictor.from_pretrained(router, device="cuda", precision="fp16")
    model, eager_encoder = pred.model, pred.model.encoder
    res: dict[str, Any] = {}
    for mode in ("eager", "default", "reduce-overhead"):
        if mode != "eager" and deadline - time.monotonic() < 60:
            res[mode] = {"skipped": "less than 60 s left"}
            continue
        model.encoder = eager_encoder if mode == "eager" else torch.compile(eager_encoder, mode=mode, dynamic=False)
        rows = []
        for bs, n_tok in shapes:
            ids = torch.randint(1000, 20000, (bs, n_tok), device="cuda")
            mask, feats = torch.ones_like(ids), torch.rand(bs, model.config.n_features, device="cuda")
            t0 = time.perf_counter()
            ms = time_forward(model, ids, mask, feats, "cuda", 1.0)
            rows.append({"batch": bs, "tokens": n_tok, "first_calls_s": round(time.perf_counter() - t0, 2),
                         "p50_ms": round(float(np.percentile(ms, 50)), 3)})
        res[mode] = rows
    model.encoder = eager_encoder
    return res


# ---- main ---------------------------------------------------------------------------------------------

def raise_open_files() -> None:
    """Lift the soft limit of open files to the hard one: 1024 connections need more than 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def print_summary(result: dict[str, Any]) -> None:
    """A few lines: each phase's status and the headline numbers."""
    for name, rec in result["phases"].items():
        state = "ok" if rec.get("ok") else (rec.get("skipped") or rec.get("error", "failed"))[:100]
        print(f"{name:12s} {rec.get('seconds', 0):7.1f} s  {state}")
    res = lambda n: (result["phases"].get(n) or {}).get("result") or {}  # noqa: E731
    if res("train"):
        print(f"train: {res('train')['epochs']} epochs, median {res('train')['median_epoch_s']} s/epoch")
    for key, val in res("parity").items():
        if isinstance(val, dict) and "max_abs_quality_diff" in val:
            print(f"parity {key}: max|dq| {val['max_abs_quality_diff']:.5f}, same argmax {val['same_argmax_share']:.4f}")
    for run in (res("service").get("runs") or []):
        print(f"service c={run['concurrency']:<5d} {run['throughput_rps']:9.1f} req/s  p50 {run['p50_ms'] or 0:.1f} ms  "
              f"p99 {run['p99_ms'] or 0:.1f} ms  errors {run['errors']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(REPO / ".gpu_bundle"), help="what make_gpu_bundle.py built")
    p.add_argument("--out", default=str(REPO / "runs" / "gpu_check"), help="folder for gpu_check.json")
    p.add_argument("--work", default=None, help="scratch folder (default: OUT/../gpu_check_work)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of every phase")
    p.add_argument("--budget-s", type=float, default=300.0, help="all phases together")
    p.add_argument("--skip", default="", help="comma-separated phases to skip (train, parity, predictor, "
                                               "service, onnx, compile)")
    return p.parse_args(argv)


def sizes(args: argparse.Namespace) -> dict[str, Any]:
    """The run's sizes and time boxes (``--quick``: a dry run's)."""
    if args.quick:
        return {"rows": 60, "tokens": [64, 256], "batches": [1, 8, 32], "cell_s": 0.2, "levels": [1, 8],
                "duration_s": 2.0, "max_batch": 32, "boxes": {"train": 240, "parity": 120, "predictor": 90,
                                                              "service": 90, "onnx": 180, "compile": 60}}
    return {"rows": None, "tokens": [64, 256], "batches": [2 ** k for k in range(11)], "cell_s": 0.3,
            "levels": [1, 32, 256, 1024], "duration_s": 4.0, "max_batch": 256,
            "boxes": {"train": 120, "parity": 45, "predictor": 75, "service": 60, "onnx": 60, "compile": 90}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_serving
    raise_open_files()
    bundle, out = Path(args.bundle), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out.parent / "gpu_check_work"
    work.mkdir(parents=True, exist_ok=True)
    cfg, skip = sizes(args), set(filter(None, args.skip.split(",")))
    result: dict[str, Any] = {"args": vars(args), "sizes": cfg, "started_unix": time.time()}
    ph = Phases(out / "gpu_check.json", args.budget_s, result)
    box = cfg["boxes"]
    env = ph.run("environment", 60, lambda _: environment()) or {}
    if args.device == "cuda" and not env.get("cuda_available"):
        print("gpu_check: error: --device cuda but PyTorch sees no CUDA device (use --device cpu for a dry run)",
              file=sys.stderr)
        return 2
    enc = ph.run("encoder", 60, lambda _: fp32_encoder(bundle / "encoder", work / "encoder_fp32"))
    if enc is None:
        return 1
    data = sorted(p for p in (bundle / "data").iterdir() if p.is_dir())[0]
    if cfg["rows"]:
        data = subset_data(data, work / "data_subset", cfg["rows"])
    trained = None if "train" in skip else ph.run(
        "train", box["train"], lambda s: train(data, work / "encoder_fp32", work, s, args.quick))
    made = trained or ph.run("untrained_router", 60, lambda _: untrained_router(work / "encoder_fp32", work))
    if made is None:
        return 1
    router = Path(made["router"])
    precisions = ["fp32", "fp16", "bf16"] if args.device == "cuda" else ["fp32", "bf16"]
    steps: dict[str, Callable[[float], Any]] = {
        "parity": lambda s: parity(router, args.device, precisions, args.quick),
        "predictor": lambda s: predictor(router, args.device, precisions, cfg["tokens"], cfg["batches"],
                                         cfg["cell_s"], s),
        "service": lambda s: service(router, args.device, "fp16" if args.device == "cuda" else "fp32",
                                     cfg["levels"], cfg["duration_s"], cfg["max_batch"], work),
        "onnx": lambda s: onnx(router, args.device, work, s, args.quick),
        "compile": lambda s: (compile_modes(router, s, [(64, 128), (256, 128)]) if args.device == "cuda"
                              else {"skipped": "CUDA only"}),
    }
    for name, fn in steps.items():
        if name not in skip:
            ph.run(name, box[name], fn)
    result["finished_unix"] = time.time()
    ph.save()
    print_summary(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
