"""How a trained (PyTorch) router runs: its device, its precision, its attention kernel and its
forward pass, plus the measure of whether two runs decide alike (:func:`decision_parity`).

Device (:func:`resolve_device`): ``auto`` is CUDA when PyTorch sees a CUDA device, else the CPU;
``cuda`` where PyTorch sees none is :class:`DeviceUnavailable` (a ValueError saying what to do),
never a silent fall-back; ``cpu`` is the CPU.

Precision (:func:`resolve_precision`): ``fp32``, ``fp16`` or ``bf16``, chosen by the deployment;
``auto`` is fp32 on either device, as the folder was trained: a lower precision becomes a default
only once it is shown to decide like fp32 (``benchmarks/gpu_check.py`` measures that on a GPU, as
``export --int8`` does for int8 on the CPU). ``int8`` is an ONNX export's precision:
asking a trained folder for it is a ValueError naming the export. A low precision casts the
encoder only (its weights and activations: half the memory, the GPU's tensor cores); the mean
pooling and the heads run in fp32 on the encoder's output cast up (:func:`forward`), so that the
sum over a long prompt cannot overflow fp16 and the heads' sigmoid and exp keep fp32 resolution.
Outputs are always fp32.

Attention (:func:`use_sdpa`): the encoder's attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (fused flash / memory-efficient kernels on
CUDA) where the encoder supports it; it computes what the encoder's own ("eager") attention
computes, up to rounding.

Batching: the predictor groups prompts of similar length (``modeling.text.length_buckets``, in
``predictors._Base.predict``) into batches of :func:`batch_size_for` the device.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from neural_router.inference.interface import DEVICES, Predictions

log = logging.getLogger(__name__)

TORCH_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

CPU_BATCH_SIZE = 64
"""Prompts per forward pass on the CPU (larger batches add padding, not speed, on a few cores)."""

CUDA_BATCH_SIZE = 256
"""Prompts per forward pass on CUDA: a GPU needs many rows in flight to be busy; length bucketing
keeps the padding of such a batch small."""


class DeviceUnavailable(ValueError):
    """The device asked for cannot run here (``cuda`` where PyTorch sees no CUDA device)."""


def cuda_available() -> bool:
    """PyTorch sees a usable CUDA device (the one place this module asks; tests replace it)."""
    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> str:
    """``auto`` | ``cuda`` | ``cpu`` -> the device a router runs on (``cuda`` or ``cpu``).

    ValueError for another name; :class:`DeviceUnavailable` for ``cuda`` when PyTorch sees no CUDA
    device (the message names PyTorch's build and the ways out)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if device == "auto":
        return "cpu"
    build = torch.version.cuda
    why = (f"this PyTorch ({torch.__version__}) is built without CUDA" if build is None
           else f"this PyTorch ({torch.__version__}, CUDA {build}) finds no usable GPU or driver")
    raise DeviceUnavailable(f"device 'cuda' was asked for, but {why}; run with device 'cpu' or 'auto', "
                            "or install a CUDA build of PyTorch on a machine with an NVIDIA GPU")


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` | ``fp32`` | ``fp16`` | ``bf16`` on the resolved ``device`` -> ``fp32``, ``fp16`` or
    ``bf16`` (``auto``: fp32, see the module docstring; ``device`` is where it will run, so that
    a measured default per device can be added here). ValueError for ``int8`` (an ONNX export's)
    or an unknown name."""
    if precision == "int8":
        raise ValueError("a trained (PyTorch) router runs fp32, fp16 or bf16; int8 is an ONNX export's "
                         "precision: run `neural-router export --int8` and serve the export")
    if precision not in TORCH_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(TORCH_PRECISIONS)}, not {precision!r}")
    return "fp32" if precision == "auto" else precision


def batch_size_for(device: str) -> int:
    """Prompts per forward pass on ``device`` (:data:`CUDA_BATCH_SIZE` or :data:`CPU_BATCH_SIZE`)."""
    return CUDA_BATCH_SIZE if device == "cuda" else CPU_BATCH_SIZE


def use_sdpa(encoder: torch.nn.Module, implementation: str = "sdpa") -> str:
    """Switch the Hugging Face ``encoder``'s attention to ``implementation`` (``sdpa`` or ``eager``)
    and return the one in force: an encoder that does not support it keeps its own (logged)."""
    setter = getattr(encoder, "set_attn_implementation", None)
    try:
        if setter is None:
            raise ValueError("no set_attn_implementation")
        setter(implementation)
    except (ValueError, ImportError, AttributeError) as e:
        log.info("encoder %s keeps its attention (%s): %s", type(encoder).__name__,
                 attention_of(encoder), e)
    return attention_of(encoder)


def attention_of(encoder: torch.nn.Module) -> str:
    """The attention implementation the encoder runs (``sdpa``, ``eager``, ...; ``unknown``)."""
    return str(getattr(getattr(encoder, "config", None), "_attn_implementation", None) or "unknown")


def prepare(model: torch.nn.Module, device: str, precision: str) -> torch.nn.Module:
    """``model`` (a RouterModel) in eval mode on ``device`` with SDPA attention and its encoder in
    ``precision`` (fp32, fp16 or bf16; the heads stay fp32). Changes the model in place and
    returns it."""
    model = model.eval().to(device)
    use_sdpa(model.encoder)
    model.encoder.to(DTYPES[precision])
    return model


def forward(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            features: torch.Tensor) -> dict[str, torch.Tensor]:
    """RouterModel's forward with the encoder in its own dtype and the pooling and heads in fp32:
    the same raw outputs (``quality_logits``, ``log_out_tokens``, ``log_latency``, fp32)."""
    from neural_router.modeling.model import mean_pool

    hidden = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model.heads(mean_pool(hidden.float(), attention_mask), features.float())


def decision_parity(ref: Predictions, got: Predictions) -> dict[str, Any]:
    """How ``got`` decides against ``ref`` (the same prompts, e.g. fp16 on CUDA vs fp32 on the CPU).

    Returns ``prompts``; ``max_abs_quality_diff`` (largest |Δ predicted quality| over prompts and
    models, in [0, 1]); ``same_argmax_share`` (share of prompts whose highest predicted quality is
    the same model); ``same_choice`` (per preferences of ``int8_check.CHECK_PREFERENCES``: share of
    prompts on which the policy picks the same model). ValueError when the two do not cover the
    same prompts and models."""
    from neural_router.inference.int8_check import CHECK_PREFERENCES, same_choice_share

    if list(ref.models) != list(got.models) or ref.quality.shape != got.quality.shape:
        raise ValueError(f"cannot compare predictions of shape {ref.quality.shape} ({len(ref.models)} models) "
                         f"with {got.quality.shape} ({len(got.models)} models): run both on the same prompts")
    n = len(ref.quality)
    diff = np.abs(np.asarray(ref.quality, np.float64) - np.asarray(got.quality, np.float64))
    same = ref.quality.argmax(axis=1) == got.quality.argmax(axis=1) if n else np.zeros(0, bool)
    return {"prompts": n, "max_abs_quality_diff": float(diff.max()) if n else 0.0,
            "same_argmax_share": float(same.mean()) if n else float("nan"),
            "same_choice": {name: same_choice_share(ref, got, p) for name, p in CHECK_PREFERENCES.items()}}
