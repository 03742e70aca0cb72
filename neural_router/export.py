"""Export a trained router folder to ONNX (encoder + heads, dynamic batch and sequence axes).

The exported folder holds ``router.onnx`` (fp32), optionally ``router.int8.onnx`` (dynamic int8
quantisation for CPU), the tokenizer, ``router_config.json``, ``models.yaml``, the model card and
``export_report.json`` with the parity check against PyTorch on real prompts.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .model import RouterModel
from .predictors import ONNX_FILE, ONNX_INT8_FILE, OnnxPredictor, TorchPredictor

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
COPY_FILES = ("router_config.json", "models.yaml", "README.md", "training_metrics.json", "eval_report.json")
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


def export_onnx(router_dir: str | Path, output_dir: str | Path, int8: bool = False,
                prompts: list[str] | None = None, opset: int = 17) -> dict:
    """Write the ONNX folder and return the parity report (raises if fp32 parity fails)."""
    src, out = Path(router_dir), Path(output_dir)
    torch_pred = TorchPredictor.from_pretrained(src, device="cpu")
    model = torch_pred.model.cpu().eval()
    check = prompts or SAMPLE_PROMPTS
    ref = torch_pred.predict(check)  # before tracing: tracing leaves the module in a traced state
    out.mkdir(parents=True, exist_ok=True)
    for name in COPY_FILES:
        if (src / name).is_file() and src.resolve() != out.resolve():
            shutil.copy2(src / name, out / name)
    torch_pred.tokenizer.save_pretrained(str(out))

    from .text import N_FEATURES

    # the dummy batch must contain padding: with an all-ones mask the encoder skips masking and the
    # traced graph would ignore attention_mask altogether
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 9:] = 0
    dummy = (torch.full((2, 16), 1000, dtype=torch.long), mask, torch.zeros(2, N_FEATURES, dtype=torch.float32))
    with torch.no_grad():
        torch.onnx.export(
            _Exportable(model), dummy, str(out / ONNX_FILE), dynamo=False, opset_version=opset,
            input_names=["input_ids", "attention_mask", "features"],
            output_names=["quality", "out_tokens", "latency"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "features": {0: "batch"}, "quality": {0: "batch"}, "out_tokens": {0: "batch"},
                          "latency": {0: "batch"}})
    report: dict = {"onnx": ONNX_FILE, "opset": opset, "tolerance": PARITY_TOLERANCE}
    onnx_pred = OnnxPredictor(out, device="cpu")
    got = onnx_pred.predict(check)
    diff = float(np.max(np.abs(ref.quality - got.quality)))
    tok_rel = float(np.max(np.abs(ref.output_tokens - got.output_tokens) / np.maximum(ref.output_tokens, 1)))
    report["fp32"] = {"max_abs_diff_quality": diff, "max_rel_diff_out_tokens": tok_rel,
                      "prompts": len(check), "same_argmax": bool(np.array_equal(
                          ref.quality.argmax(1), got.quality.argmax(1)))}
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX parity check failed: max |quality diff| {diff:.2e} > {PARITY_TOLERANCE:.0e}")
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.WARNING)  # the quantizer logs every tensor at INFO on the root logger
        try:
            quantize_dynamic(str(out / ONNX_FILE), str(out / ONNX_INT8_FILE), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        q8 = OnnxPredictor(out, device="cpu", int8=True).predict(check)
        report["int8"] = {"onnx": ONNX_INT8_FILE,
                          "max_abs_diff_quality": float(np.max(np.abs(ref.quality - q8.quality))),
                          "same_argmax": bool(np.array_equal(ref.quality.argmax(1), q8.quality.argmax(1)))}
    (out / "export_report.json").write_text(json.dumps(report, indent=2))
    log.info("exported %s -> %s (fp32 max diff %.2e)", src, out, diff)
    return report
