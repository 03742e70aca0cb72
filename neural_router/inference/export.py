"""Export a trained router folder to ONNX (encoder + heads, dynamic batch and sequence axes).

The exported folder holds ``router.onnx`` (fp32), optionally ``router.int8.onnx`` (dynamic int8
quantisation for CPU) and ``router.fp16.onnx`` (fp16 weights and compute with fp32 inputs and
outputs, for CUDA: ``OnnxPredictor`` picks it there automatically), the tokenizer,
``router_config.json``, ``models.yaml``, the model card and ``export_report.json`` with the parity
check against PyTorch on real prompts and ``default_precision`` {cpu, cuda}: the precision
``precision="auto"`` runs on each device. CPU's is int8 only when the int8 file was shown to
decide like fp32 on the router's validation split (:mod:`neural_router.inference.int8_check`,
whose verdict and measurements ``report["int8"]`` records); else fp32. CUDA's is fp16 when that
file was written, else fp32.

``router.onnx`` is, by default, the graph after ONNX Runtime's transformer fusions (one ``Attention``
op per layer, ``EmbedLayerNormalization``, ``SkipLayerNormalization``, ``BiasGelu``: contrib ops that
every ONNX Runtime build runs), and the int8 file is quantised from it (``QAttention``). The fused
graph passes the same parity check as the plain one; if an encoder's graph cannot be fused or the
fused one fails parity, the plain graph is written instead and the report says why.
``optimize=False`` (``--no-optimize``) writes the plain graph, for runtimes without those ops. The
fp16 file is converted from the plain graph.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neural_router.card import write_model_card
from neural_router.modeling.model import RouterModel
from neural_router.inference.predictors import (EXPORT_REPORT, ONNX_FILE, ONNX_FP16_FILE, ONNX_INT8_FILE,
                                                OnnxPredictor, TorchPredictor)

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
COPY_FILES = ("router_config.json", "config.json", "models.yaml", "training_metrics.json", "eval_report.json",
              "promotion.json")   # the model card is written anew, for the ONNX folder
SAMPLE_PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the n-th Fibonacci number using memoization.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Question: Which gas do plants absorb from the atmosphere?\nA. Oxygen\nB. Carbon dioxide\n"
    "C. Nitrogen\nD. Helium\nAnswer:",
    "运行中变压器温度最高的部分是\nA. 绕组\nB. 变压器油\nC. 引线\nD. 铁芯\n答案：",
    "Summarise the following text. " + "The quick brown fox jumps over the lazy dog. " * 80,
]


class _Exportable(nn.Module):
    def __init__(self, model: RouterModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, features):
        raw = self.model(input_ids, attention_mask, features)
        return (torch.sigmoid(raw["quality_logits"]),
                (torch.exp(raw["log_out_tokens"].clamp(max=12)) - 1.0).clamp(min=1),
                torch.exp(raw["log_latency"].clamp(max=14)))


# the element-wise ops that turn the heads' logits into outputs (sigmoid, exp of the log-heads, clamps)
_OUTPUT_TAIL_OPS = {"Sigmoid", "Exp", "Clip", "Sub", "Add", "Mul", "Div", "Identity", "Constant"}


def _fp32_output_tail(graph) -> list[str]:
    """Names of the nodes that must stay fp32 in the fp16 graph: the heads' projections and the
    post-processing after them. ``exp`` of the log-token and log-latency heads overflows fp16 above
    65504 (the exported clamps allow up to e^12 and e^14), and fp16 logits would cost ~0.4 % of
    every token and latency estimate; these ops are tiny, so keeping them fp32 costs nothing."""
    producer = {out: node for node in graph.node for out in node.output}
    keep: list[str] = []
    seen: set[str] = set()
    todo = [o.name for o in graph.output]
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("Gemm", "MatMul"):  # a head's projection: keep it, stop there
            keep.append(node.name)
        elif node.op_type in _OUTPUT_TAIL_OPS:
            keep.append(node.name)
            todo.extend(node.input)
    return keep


def convert_fp16(src: str | Path, dst: str | Path) -> list[str]:
    """Write ``dst``: the fp32 ONNX graph ``src`` in fp16, inputs and outputs kept fp32/int64.

    Returns the nodes kept in fp32 (see ``_fp32_output_tail``). Raises if the graph is invalid."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    keep = _fp32_output_tail(model.graph)
    half = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
    # the converter appends the casts of the graph inputs at the end of the node list
    OnnxModel.graph_topological_sort(half.graph)
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))
    return keep


def _parity(ref, got) -> dict:
    """How far an exported model's predictions are from PyTorch's on the same prompts."""
    return {"max_abs_diff_quality": float(np.max(np.abs(ref.quality - got.quality))),
            "max_rel_diff_out_tokens": float(np.max(np.abs(ref.output_tokens - got.output_tokens)
                                                    / np.maximum(ref.output_tokens, 1))),
            "same_argmax": bool(np.array_equal(ref.quality.argmax(1), got.quality.argmax(1)))}


def _fp16_report(out: Path, check: list[str], ref) -> dict:
    """Size of ``router.fp16.onnx`` and its parity with PyTorch, run on the CPU provider when it can
    run the fp16 graph (recent ONNX Runtime CPU builds do); otherwise parity is left to the GPU."""
    path = out / ONNX_FP16_FILE
    entry: dict = {"onnx": ONNX_FP16_FILE, "size_bytes": path.stat().st_size,
                   "size_ratio_vs_fp32": round(path.stat().st_size / (out / ONNX_FILE).stat().st_size, 3)}
    try:
        got = OnnxPredictor(out, device="cpu", precision="fp16").predict(check)
    except Exception as e:  # noqa: BLE001 - missing fp16 CPU kernels surface as various ORT errors
        log.warning("the CPU provider cannot run %s (%s): its parity is checked only on GPU", path.name, e)
        entry.update(parity_provider=None,
                     parity_note=f"not run: the CPU provider cannot run the fp16 graph ({type(e).__name__}: "
                                 f"{str(e)[:200]}); check parity on GPU")
        return entry
    if not all(np.isfinite(a).all() for a in (got.quality, got.output_tokens, got.latency_ms)):
        path.unlink()
        raise RuntimeError(f"fp16 export gives non-finite outputs; {ONNX_FP16_FILE} was not written")
    entry.update(parity_provider="CPUExecutionProvider", **_parity(ref, got),
                 parity_note="computed with the CPU provider's fp16 kernels; CUDA's may differ slightly")
    return entry


@contextmanager
def _root_log_level(level: int):
    """ONNX Runtime's optimizer and quantizer log every pass / tensor at INFO on the root logger."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)


def fuse_transformer(src: str | Path, dst: str | Path, encoder_config) -> dict[str, int]:
    """Write ``dst``: ``src`` after ONNX Runtime's offline BERT fusions; returns the fused-op counts.

    Attention fusion matches the graph traced with eager attention (the traced SDPA graph has a
    pattern the fuser does not recognise)."""
    from onnxruntime.transformers.optimizer import optimize_model

    with _root_log_level(logging.WARNING):
        fused = optimize_model(str(src), model_type="bert", opt_level=0,
                               num_heads=getattr(encoder_config, "num_attention_heads", 0),
                               hidden_size=getattr(encoder_config, "hidden_size", 0))
        fused.save_model_to_file(str(dst))
        return {k: v for k, v in fused.get_fused_operator_statistics().items() if v}


def _fuse_checked(plain: Path, out: Path, model: RouterModel, check: list[str], ref) -> tuple[dict, dict | None]:
    """Fuse ``plain`` into ``out/router.onnx``; returns what happened and, when the fused graph is kept
    (it passed parity), its parity (else None: the caller writes the plain graph)."""
    try:
        ops = fuse_transformer(plain, out / ONNX_FILE, model.encoder.config)
        got = _parity(ref, OnnxPredictor(out, device="cpu", precision="fp32").predict(check))
    except Exception as e:  # noqa: BLE001 - the fuser and ORT raise many types on graphs they do not know
        log.warning("graph fusion failed (%s: %s); writing the plain graph", type(e).__name__, e)
        return {"used": False, "note": f"fusion failed: {type(e).__name__}: {str(e)[:200]}"}, None
    if got["max_abs_diff_quality"] > PARITY_TOLERANCE:
        log.warning("the fused graph fails parity (%.2e); writing the plain graph", got["max_abs_diff_quality"])
        return {"used": False, "fused_ops": ops, "note": f"fused graph failed parity: {got}"}, None
    return {"used": True, "fused_ops": ops}, got


def _trace(model: RouterModel, path: Path, opset: int) -> None:
    from neural_router.modeling.text import N_FEATURES

    # the dummy batch must contain padding: with an all-ones mask the encoder skips masking and the
    # traced graph would ignore attention_mask altogether
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 9:] = 0
    dummy = (torch.full((2, 16), 1000, dtype=torch.long), mask, torch.zeros(2, N_FEATURES, dtype=torch.float32))
    with torch.no_grad():
        torch.onnx.export(
            _Exportable(model), dummy, str(path), dynamo=False, opset_version=opset,
            input_names=["input_ids", "attention_mask", "features"],
            output_names=["quality", "out_tokens", "latency"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "features": {0: "batch"}, "quality": {0: "batch"}, "out_tokens": {0: "batch"},
                          "latency": {0: "batch"}})


def _set_eager_attention(model: RouterModel) -> None:
    """Eager attention: the same math as SDPA, traced into the pattern the attention fuser knows."""
    try:
        model.encoder.set_attn_implementation("eager")
    except (AttributeError, ValueError) as e:
        log.info("cannot switch %s to eager attention (%s): attention may stay unfused",
                 type(model.encoder).__name__, e)


def _prepare_folder(src: Path, out: Path, tokenizer, int8: bool, fp16: bool) -> None:
    """Copy the trained folder's metadata and tokenizer into ``out``; remove what an earlier export
    left there that this one will not rewrite (a stale fp16 file would be picked up on CUDA, a stale
    report's recorded default precision would be followed)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in COPY_FILES:
        if (src / name).is_file() and src.resolve() != out.resolve():
            shutil.copy2(src / name, out / name)
    tokenizer.save_pretrained(str(out))
    (out / EXPORT_REPORT).unlink(missing_ok=True)
    for name, wanted in ((ONNX_INT8_FILE, int8), (ONNX_FP16_FILE, fp16)):
        if not wanted:
            (out / name).unlink(missing_ok=True)


def _write_graphs(model: RouterModel, out: Path, check: list[str], ref, opset: int, fp16: bool,
                  optimize: bool) -> dict:
    """Trace, fuse (``optimize``) and check ``router.onnx``, and convert ``router.fp16.onnx``
    (``fp16``); returns their part of the report. RuntimeError when fp32 parity fails."""
    report: dict = {"onnx": ONNX_FILE, "opset": opset, "tolerance": PARITY_TOLERANCE}
    with tempfile.TemporaryDirectory(prefix="nr-export-") as tmp:
        plain = Path(tmp) / "plain.onnx"
        if optimize:
            _set_eager_attention(model)
        _trace(model, plain, opset)
        parity = None
        if optimize:
            report["fusion"], parity = _fuse_checked(plain, out, model, check, ref)
        if parity is None:  # not fused (or fusion rejected): the plain graph, checked the same way
            shutil.copy2(plain, out / ONNX_FILE)
            parity = _parity(ref, OnnxPredictor(out, device="cpu", precision="fp32").predict(check))
        report["fp32"] = {**parity, "prompts": len(check), "size_bytes": (out / ONNX_FILE).stat().st_size}
        diff = report["fp32"]["max_abs_diff_quality"]
        if diff > PARITY_TOLERANCE:
            raise RuntimeError(f"ONNX parity check failed: max |quality diff| {diff:.2e} > {PARITY_TOLERANCE:.0e}")
        if fp16:
            kept = convert_fp16(plain, out / ONNX_FP16_FILE)
            report["fp16"] = {**_fp16_report(out, check, ref), "fp32_nodes": len(kept)}
    return report


def _write_int8(src: Path, out: Path, check: list[str], ref) -> dict:
    """Quantise ``router.onnx`` to ``router.int8.onnx``; returns its parity with PyTorch on
    ``check`` and the int8 check's verdict (:func:`check_int8`) for the report."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from neural_router.inference.int8_check import check_int8

    with _root_log_level(logging.WARNING):
        # the fused graph's contrib ops have no ONNX shape inference; their outputs are float
        quantize_dynamic(str(out / ONNX_FILE), str(out / ONNX_INT8_FILE), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
    fp32 = OnnxPredictor(out, device="cpu", precision="fp32")
    q8 = OnnxPredictor(out, device="cpu", precision="int8")
    verdict = check_int8(fp32, q8, src, fp32.pool, check)
    log.info("int8 check: %s", verdict["reason"])
    return {"onnx": ONNX_INT8_FILE, **_parity(ref, q8.predict(check)),
            "size_bytes": (out / ONNX_INT8_FILE).stat().st_size, **verdict}


def export_onnx(router_dir: str | Path, output_dir: str | Path, int8: bool = False,
                prompts: list[str] | None = None, opset: int = 17, fp16: bool = False,
                optimize: bool = True) -> dict:
    """Write the ONNX folder and return its report (raises if fp32 parity fails).

    ``int8`` also writes ``router.int8.onnx`` (CPU; the default there only when the int8 check
    passes, see the module docstring), ``fp16`` also ``router.fp16.onnx`` (CUDA); ``optimize`` fuses
    the transformer ops. ``prompts`` are the parity prompts (default :data:`SAMPLE_PROMPTS`).
    Model files of an earlier export into the same folder that this one does not rewrite are
    removed, so the folder never mixes two exports."""
    src, out = Path(router_dir), Path(output_dir)
    torch_pred = TorchPredictor.from_pretrained(src, device="cpu")
    model = torch_pred.model.cpu().eval()
    check = prompts or SAMPLE_PROMPTS
    ref = torch_pred.predict(check)  # before tracing: tracing leaves the module in a traced state
    _prepare_folder(src, out, torch_pred.tokenizer, int8, fp16)
    report = _write_graphs(model, out, check, ref, opset, fp16, optimize)
    if int8:
        report["int8"] = _write_int8(src, out, check, ref)
    report["default_precision"] = {
        "cpu": "int8" if int8 and report["int8"]["default_on_cpu"] else "fp32",
        "cuda": "fp16" if fp16 else "fp32"}
    (out / EXPORT_REPORT).write_text(json.dumps(report, indent=2))
    write_model_card(out)
    log.info("exported %s -> %s (fp32 max diff %.2e; default on CPU %s, on CUDA %s)", src, out,
             report["fp32"]["max_abs_diff_quality"], *report["default_precision"].values())
    return report
