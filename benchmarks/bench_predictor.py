"""Predictor speed, side by side in one run: PyTorch vs ONNX fp32 vs ONNX int8 (the MiniLM router), and a
bert-base-sized router (the size of RouteLLM's BERT router) in ONNX fp32 as the reference.

    python benchmarks/bench_predictor.py [--router EXPORTED_DIR --trained TRAINED_DIR] [--threads 2] [--out bench.json]
        [--compare LABEL=EXPORTED_DIR ...]

Without --router a MiniLM router with untrained heads is built and exported (speed does not depend on
the weights). With a trained folder the same router is also exported without the transformer fusions
(`export --no-optimize`) and timed in the same run, for the fused-vs-plain ratio. Reports p50/p90
latency of one 64-token prompt and batched throughput at 64 tokens.
Medians of repeated runs; the machine is shared, so compare rows of the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


import numpy as np  # noqa: E402
from neural_router.cli_options import positive_int  # noqa: E402


def make_router(out: Path, encoder_config=None) -> Path:
    """An (untrained) router folder with the given encoder, exported to ONNX fp32 + int8."""
    from transformers import AutoTokenizer

    from neural_router.inference.export import export_onnx
    from neural_router.modeling.model import RouterConfig, RouterModel, resolve_encoder
    from neural_router.pool import ModelPool

    pool = ModelPool.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "models.yaml")
    names = pool.names[:11]
    rc = RouterConfig(models=names, binary=[True] * len(names), max_length=256, head_tokens=32)
    model = (RouterModel.from_encoder(rc, "default") if encoder_config is None
             else RouterModel.from_encoder_config(rc, encoder_config))
    trained = out / "trained"
    model.save_pretrained(trained)
    AutoTokenizer.from_pretrained(resolve_encoder("default")).save_pretrained(str(trained))
    pool.subset(names).to_yaml(trained / "models.yaml")
    export_onnx(trained, out / "onnx", int8=True)
    return out / "onnx"


def prompt_of(tokenizer, n_tokens: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    words = "the model router quality cost latency request answer question prompt token data".split()
    text = " ".join(rng.choice(words, n_tokens))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: n_tokens - 2]
    return tokenizer.decode(ids)


def time_single(predictor, prompts: list[str], repeats: int) -> list[float]:
    predictor.predict(prompts[:1])  # warm-up
    out = []
    for i in range(repeats):
        t = time.perf_counter()
        predictor.predict([prompts[i % len(prompts)]])
        out.append((time.perf_counter() - t) * 1000)
    return out


def time_batched(predictor, prompts: list[str], repeats: int) -> list[float]:
    predictor.predict(prompts)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        predictor.predict(prompts)
        out.append(len(prompts) / (time.perf_counter() - t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--router", help="exported router folder (router.onnx, router.int8.onnx, model weights)")
    ap.add_argument("--trained", help="the trained (PyTorch) folder the export came from, for the PyTorch row")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--tokens", type=positive_int, default=64)
    ap.add_argument("--batch", type=positive_int, default=64)
    ap.add_argument("--repeats", type=positive_int, default=30)
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=EXPORTED_DIR",
                    help="also time another exported router (fp32 and int8) in the same run, e.g. "
                         "'MiniLM 4 layers=runs/rb_l4_onnx' (repeatable)")
    ap.add_argument("--no-bert-base", action="store_true")
    ap.add_argument("--no-unfused", action="store_true",
                    help="skip the rows of the plain graph (export --no-optimize) next to the fused one")
    ap.add_argument("--out", default="runs/bench_predictor.json",
                    help="JSON results (the table in docs/results.md: benchmarks/results/bench_predictor.json)")
    args = ap.parse_args()
    if args.router and not (Path(args.router) / "router.onnx").is_file():
        raise SystemExit(f"--router {args.router}: no router.onnx there; give the folder `neural-router export` "
                         "wrote (and the trained folder as --trained)")

    import torch
    from transformers import BertConfig
    from transformers import logging as hf_logging

    from neural_router.inference.export import export_onnx
    from neural_router.inference.predictors import OnnxPredictor, TorchPredictor

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    os.environ["NEURAL_ROUTER_THREADS"] = str(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="nr-bench-"))
    onnx_dir = Path(args.router) if args.router else make_router(tmp / "minilm")
    trained_dir = Path(args.trained) if args.trained else (
        onnx_dir if (onnx_dir / "model.safetensors").is_file() else tmp / "minilm" / "trained")
    candidates = {}
    enc_cfg = trained_dir / "config.json"
    layers = json.loads(enc_cfg.read_text()).get("num_hidden_layers") if enc_cfg.is_file() else None
    name = f"MiniLM {layers}-layer router" if layers else "MiniLM router"
    if (trained_dir / "model.safetensors").is_file():
        candidates[f"{name} PyTorch fp32"] = lambda: TorchPredictor.from_pretrained(trained_dir, device="cpu")
    if (trained_dir / "model.safetensors").is_file() and not args.no_unfused:
        plain_dir = tmp / "unfused"
        export_onnx(trained_dir, plain_dir, int8=True, optimize=False)
        candidates[f"{name} ONNX fp32, unfused"] = lambda: OnnxPredictor(plain_dir, "cpu", threads=args.threads)
        candidates[f"{name} ONNX int8, unfused"] = lambda: OnnxPredictor(plain_dir, "cpu", int8=True,
                                                                            threads=args.threads)
    candidates[f"{name} ONNX fp32"] = lambda: OnnxPredictor(onnx_dir, "cpu", threads=args.threads)
    candidates[f"{name} ONNX int8"] = lambda: OnnxPredictor(onnx_dir, "cpu", int8=True, threads=args.threads)
    for spec in args.compare:
        label, sep, path = spec.partition("=")
        if not sep or not (Path(path) / "router.onnx").is_file():
            raise SystemExit(f"--compare {spec!r}: expected LABEL=EXPORTED_DIR with a router.onnx in it")
        candidates[f"{label} ONNX fp32"] = lambda d=Path(path): OnnxPredictor(d, "cpu", threads=args.threads)
        if (Path(path) / "router.int8.onnx").is_file():
            candidates[f"{label} ONNX int8"] = lambda d=Path(path): OnnxPredictor(d, "cpu", int8=True,
                                                                                   threads=args.threads)
    if not args.no_bert_base:
        bert_dir = make_router(tmp / "bert-base", BertConfig())  # bert-base: 12 layers, 768 hidden
        candidates["bert-base ONNX fp32 (reference)"] = lambda: OnnxPredictor(bert_dir, "cpu", threads=args.threads)

    rows = []
    for label, factory in candidates.items():
        pred = factory()
        single_prompts = [prompt_of(pred.tokenizer, args.tokens, s) for s in range(8)]
        batch_prompts = [prompt_of(pred.tokenizer, args.tokens, s) for s in range(args.batch)]
        lat = time_single(pred, single_prompts, args.repeats)
        thr = time_batched(pred, batch_prompts, max(3, args.repeats // 5))
        rows.append({"predictor": label, "p50_ms_single": statistics.median(lat),
                     "p90_ms_single": float(np.percentile(lat, 90)), "prompts_per_s_batched": statistics.median(thr)})
        print(f"{label:40s} p50 {rows[-1]['p50_ms_single']:7.2f} ms   p90 {rows[-1]['p90_ms_single']:7.2f} ms   "
              f"batched {rows[-1]['prompts_per_s_batched']:8.1f} prompts/s", flush=True)
    base = next((r for r in rows if r["predictor"] == f"{name} ONNX fp32"), None)
    if base:
        for r in rows:
            r["speedup_vs_onnx_fp32_batched"] = r["prompts_per_s_batched"] / base["prompts_per_s_batched"]
    result = {"threads": args.threads, "tokens": args.tokens, "batch": args.batch, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
