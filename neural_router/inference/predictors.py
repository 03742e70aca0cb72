"""Predictors: a router folder -> Predictions, in PyTorch or ONNX Runtime.

Both share tokenisation (``text.encode``: head+tail truncation), request features and the
post-processing that turns network outputs into USD and milliseconds with the pool's profile:

    cost_usd   = (input_tokens * input_price + output_tokens * output_price) / 1e6 * cost_scale
    latency_ms = learned head where latency was measured, else ttft + output_tokens / tokens_per_s

``cost_scale`` is the per-model median ratio of observed to profile cost on the training data, so
observed costs take precedence over the profile.

Precision (which file of an exported folder runs): ``fp32`` ``router.onnx``, ``int8``
``router.int8.onnx``, ``fp16`` ``router.fp16.onnx``; ``auto`` is what the export recorded as the
default for the device (see :func:`recorded_default`). A trained (PyTorch) folder runs fp32, fp16
or ``bf16`` (``torch_runtime``; ``auto`` is fp32); int8 is an export's only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np

from neural_router.modeling.config import RouterConfig
from neural_router.pool import ModelPool
from neural_router.inference.interface import DEVICES, Predictions, RequestFeatures
from neural_router.modeling.text import length_buckets, pad, request_features, tokenize

log = logging.getLogger(__name__)

ONNX_FILE = "router.onnx"
ONNX_INT8_FILE = "router.int8.onnx"
ONNX_FP16_FILE = "router.fp16.onnx"  # for CUDA; written by `neural-router export --fp16`
EXPORT_REPORT = "export_report.json"  # parity, sizes and the recorded default precisions of an export
TORCH_FILE = "model.safetensors"

Precision = Literal["auto", "fp32", "int8", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "int8", "fp16", "bf16")  # bf16: trained (PyTorch) folders only
PRECISION_FILES = {"fp32": ONNX_FILE, "int8": ONNX_INT8_FILE, "fp16": ONNX_FP16_FILE}


VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
               "tokenizer.model")  # a router folder's tokenizer has at least one


class RouterLoadError(ValueError):
    """A router folder is missing, incomplete, corrupt or of an unsupported version."""


def finish(rc: RouterConfig, pool: ModelPool, quality: np.ndarray, out_tokens: np.ndarray,
           latency: np.ndarray, input_tokens: np.ndarray, truncated: np.ndarray) -> Predictions:
    sub = pool.subset(rc.models)
    cost = sub.cost_usd(input_tokens, out_tokens) * np.asarray(rc.cost_scale)
    lat = np.where(np.asarray(rc.latency_learned, dtype=bool), latency, sub.latency_ms(out_tokens))
    return Predictions(list(rc.models), quality.astype(np.float64), cost, lat.astype(np.float64),
                       out_tokens.astype(np.float64), input_tokens, truncated)


def require_router_folder(d: Path) -> None:
    """:class:`RouterLoadError` saying how to get one when the folder ``d`` does not exist."""
    if d.is_file():
        raise RouterLoadError(f"{d} is a file; a router is a folder (give the folder that "
                              "`neural-router train` or `neural-router export` wrote)")
    if not d.is_dir():
        raise RouterLoadError(f"router folder {d} does not exist; train one with `neural-router train` "
                              "or export one with `neural-router export`")


def require_trained_folder(d: Path) -> None:
    """:class:`RouterLoadError` unless ``d`` is a trained (PyTorch) router folder; an ONNX export is named
    as such, since export and update need the folder it was exported from."""
    require_router_folder(d)
    if (d / TORCH_FILE).is_file():
        return
    if (d / ONNX_FILE).is_file():
        raise RouterLoadError(f"{d} is an ONNX export, not a trained router folder (no model.safetensors); "
                              "give the folder `neural-router train` wrote, which it was exported from")
    raise RouterLoadError(f"{d}: model.safetensors is missing; train a router with `neural-router train`")


def _read_common(d: Path, pool: ModelPool | None) -> tuple[RouterConfig, ModelPool, object]:
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    require_router_folder(d)
    for name in ("router_config.json", "models.yaml"):
        if not (d / name).is_file():
            raise RouterLoadError(f"{d} is not a router folder: {name} is missing")
    try:
        rc = RouterConfig.from_json(d / "router_config.json")
    except (ValueError, TypeError) as e:
        raise RouterLoadError(f"{d}/router_config.json: {e}") from None
    try:
        folder_pool = ModelPool.from_yaml(d / "models.yaml")
        pool = pool or folder_pool
        pool.subset(rc.models)
    except (ValueError, KeyError) as e:
        raise RouterLoadError(f"{d}: pool does not cover the router's models: {e}") from None
    return rc, pool, load_tokenizer(d)


def load_tokenizer(d: Path):
    """The router folder's tokenizer; :class:`RouterLoadError` if its files are missing or corrupt."""
    from transformers import AutoTokenizer

    if not any((d / name).is_file() for name in VOCAB_FILES):
        # without one, transformers builds a tokenizer of only the special tokens, silently
        raise RouterLoadError(f"{d}: the tokenizer's vocabulary is missing (none of {', '.join(VOCAB_FILES)}); "
                              "copy the folder again from where it was trained or exported")
    try:
        return AutoTokenizer.from_pretrained(str(d))
    except Exception as e:  # noqa: BLE001 - tokenizer loading raises many types
        raise RouterLoadError(f"{d}: tokenizer files are missing or corrupt: {e}") from None


def requested_precision(precision: str = "auto", int8: bool = False, fp16: bool | None = None) -> str:
    """One precision from the ``precision`` choice and the older flags: ``int8=True`` is
    ``precision="int8"``, ``fp16=True`` is ``"fp16"`` and ``fp16=False`` is ``"fp32"`` (keep the fp32
    graph). ValueError for an unknown precision or flags that contradict each other."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if int8 and fp16:
        raise ValueError("choose int8 or fp16, not both")
    flag = "int8" if int8 else "fp16" if fp16 else "fp32" if fp16 is False else None
    if flag is None or precision == flag:
        return precision
    if precision != "auto":
        raise ValueError(f"precision {precision!r} contradicts {'int8' if int8 else 'fp16'}={bool(int8 or fp16)}; "
                         "give only the precision")
    return flag


def read_export_report(d: Path) -> dict:
    """The folder's ``export_report.json``, or {} when there is none or it cannot be read (a warning)."""
    path = d / EXPORT_REPORT
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("%s cannot be read (%s): using the fp32 graph unless a precision is given", path, e)
        return {}
    return report if isinstance(report, dict) else {}


def recorded_default(d: Path, on_cuda: bool) -> str:
    """What ``precision="auto"`` means for the exported folder ``d`` on this device.

    CUDA: the export's recorded ``default_precision.cuda``, else fp16 when ``router.fp16.onnx``
    exists, else fp32. CPU: the recorded ``default_precision.cpu`` (``neural-router export --int8``
    records int8 only when it measured int8 deciding like fp32), else fp32, so a folder exported
    without that record (older exports) runs fp32 on CPU. A recorded precision whose file is
    missing falls back to fp32, with a warning."""
    recorded = read_export_report(d).get("default_precision")
    recorded = recorded if isinstance(recorded, dict) else {}
    if on_cuda:
        chosen = recorded.get("cuda") or ("fp16" if (d / ONNX_FP16_FILE).is_file() else "fp32")
    else:
        chosen = recorded.get("cpu") or "fp32"
    if chosen not in PRECISION_FILES:
        log.warning("%s/%s records an unknown default precision %r: using fp32", d, EXPORT_REPORT, chosen)
        return "fp32"
    if not (d / PRECISION_FILES[chosen]).is_file():
        log.warning("%s records %s as the default but %s is missing: using fp32", d, chosen,
                    PRECISION_FILES[chosen])
        return "fp32"
    return chosen


class _Base:
    rc: RouterConfig
    pool: ModelPool
    tokenizer: object
    batch_size: int = 64

    @property
    def models(self) -> list[str]:
        return list(self.rc.models)

    @property
    def version(self) -> str:
        return self.rc.version

    @property
    def max_length(self) -> int:
        return self.rc.max_length

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray, feats: np.ndarray):
        raise NotImplementedError

    def predict(self, prompts: list[str], features: list[RequestFeatures] | None = None) -> Predictions:
        if isinstance(prompts, str):
            raise TypeError("predict() takes a list of prompts, not a single string")
        n, m = len(prompts), len(self.rc.models)
        quality, out_tok, lat = (np.zeros((n, m), dtype=np.float32) for _ in range(3))
        feats_in = features or [RequestFeatures()] * n
        rows, in_tok, trunc = tokenize(self.tokenizer, list(prompts), self.rc.max_length, self.rc.head_tokens)
        feats = request_features(list(prompts), in_tok, feats_in)
        for idx in length_buckets(np.array([len(r) for r in rows]), self.batch_size):
            ids, mask = pad([rows[i] for i in idx], self.tokenizer.pad_token_id)
            q, o, la = self._run(ids, mask, feats[idx])
            quality[idx], out_tok[idx], lat[idx] = q, o, la
        return finish(self.rc, self.pool, quality, out_tok, lat, in_tok, trunc)


class TorchPredictor(_Base):
    """Runs the trained PyTorch model (a folder written by ``neural-router train``).

    ``device`` (``auto``/``cuda``/``cpu``) and ``precision`` (``auto``/``fp32``/``fp16``/``bf16``) as
    :mod:`neural_router.inference.torch_runtime` resolves them: ``cuda`` without CUDA is a
    ``DeviceUnavailable`` error, ``auto`` precision is fp32; the encoder
    runs SDPA attention in that precision, pooling and heads in fp32. ``provider`` is
    ``torch-cuda`` or ``torch-cpu``, ``precision`` the one in force."""

    def __init__(self, model, tokenizer, pool: ModelPool, device: str = "cpu", precision: str = "fp32"):
        import torch

        from neural_router.inference import torch_runtime as rt

        device = rt.resolve_device(device)
        self.precision = rt.resolve_precision(precision, device)
        self.model = rt.prepare(model, device, self.precision)
        self.rc, self.tokenizer, self.pool, self.device = model.config, tokenizer, pool, device
        self.provider = f"torch-{device}"
        self.model_file = TORCH_FILE
        self.batch_size = rt.batch_size_for(device)
        self._torch = torch

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "auto",
                        pool: ModelPool | None = None, precision: str = "auto") -> "TorchPredictor":
        from neural_router.inference import torch_runtime as rt
        from neural_router.modeling.model import RouterModel

        d = Path(directory)
        rc, pool, tok = _read_common(d, pool)
        require_trained_folder(d)
        dev = rt.resolve_device(device)  # before loading the weights: a clear error, soon
        try:
            model = RouterModel.from_pretrained(d)
        except Exception as e:  # noqa: BLE001
            raise RouterLoadError(f"{d}: could not load the model weights: {e}") from None
        return cls(model, tok, pool, dev, precision)

    def _run(self, input_ids, attention_mask, feats):
        from neural_router.inference.torch_runtime import forward
        from neural_router.modeling.model import to_outputs

        t = self._torch
        with t.inference_mode():
            raw = forward(self.model, t.from_numpy(input_ids).to(self.device),
                          t.from_numpy(attention_mask).to(self.device), t.from_numpy(feats).to(self.device))
        o = to_outputs(raw)
        return o["quality"], o["out_tokens"], o["latency"]


class OnnxPredictor(_Base):
    """Runs an exported router in ONNX Runtime: CUDA when available, else CPU.

    The model file follows ``precision`` (see the module docstring): ``auto`` (the default) is
    the export's recorded default for the provider the session runs on (:func:`recorded_default`:
    fp16 on CUDA when exported with ``--fp16``; int8 on CPU only when the export showed it decides
    like fp32). ``int8=True`` and ``fp16=True/False`` are the older spellings of
    ``precision="int8"/"fp16"/"fp32"``. ``model_file`` names the file loaded and ``precision`` its
    precision. An explicit precision whose file is missing is a :class:`RouterLoadError`.

    ``io_binding`` (default: on for CUDA) runs through an ONNX Runtime IO binding: the inputs are
    copied to the session's device up front, the outputs are allocated on it and copied back to
    the host after the run. On CPU it is off by default (nothing to copy) but can be forced, which
    binds to host memory and runs the same code path (how the tests check it against
    ``session.run``).
    """

    def __init__(self, directory: str | Path, device: str = "auto", pool: ModelPool | None = None,
                 int8: bool = False, threads: int | None = None, io_binding: bool | None = None,
                 fp16: bool | None = None, precision: str = "auto"):
        import onnxruntime as ort

        wanted = requested_precision(precision, int8=int8, fp16=fp16)
        d = Path(directory)
        self.rc, self.pool, self.tokenizer = _read_common(d, pool)
        providers = self._providers(device, ort.get_available_providers())
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or int(os.environ.get("NEURAL_ROUTER_THREADS", "0")) or 0
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle threads must not spin: on a small shared CPU spinning halves throughput
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        cuda = "CUDAExecutionProvider"
        self.precision = wanted if wanted != "auto" else recorded_default(d, providers[0] == cuda)
        self.session = self._open(d, self.precision, so, providers)
        self.provider = self.session.get_providers()[0]
        if wanted == "auto" and providers[0] == cuda and self.provider != cuda:
            # the CUDA provider failed to initialise (e.g. missing CUDA/cuDNN libraries) and ONNX
            # Runtime fell back to CPU: load what the export recorded for CPU (never fp16 there)
            on_cpu = recorded_default(d, on_cuda=False)
            if on_cpu != self.precision:
                log.warning("CUDAExecutionProvider did not initialise; loading %s instead of %s on %s",
                            PRECISION_FILES[on_cpu], PRECISION_FILES[self.precision], self.provider)
                self.precision = on_cpu
                self.session = self._open(d, on_cpu, so, providers)
                self.provider = self.session.get_providers()[0]
        self.model_file = PRECISION_FILES[self.precision]
        self._ort = ort
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._set_binding(io_binding)

    def _providers(self, device: str, available: list[str]) -> list[str]:
        """The providers to ask for; sets ``cuda_fallback`` (CUDA wanted, the runtime has none)."""
        want_cuda = device in ("auto", "cuda")
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"]
                     if want_cuda and "CUDAExecutionProvider" in available else ["CPUExecutionProvider"])
        self.cuda_fallback = want_cuda and providers[0] != "CUDAExecutionProvider"
        if device == "cuda" and self.cuda_fallback:
            log.warning("CUDA requested but onnxruntime has no CUDAExecutionProvider here: using CPU")
        return providers

    def _set_binding(self, io_binding: bool | None) -> None:
        on_cuda = self.provider == "CUDAExecutionProvider"
        self.io_binding = on_cuda if io_binding is None else bool(io_binding)
        self._bind_device = "cuda" if on_cuda else "cpu"
        self._device_id = 0
        if on_cuda:
            opts = self.session.get_provider_options().get("CUDAExecutionProvider", {})
            self._device_id = int(opts.get("device_id", 0) or 0)

    @staticmethod
    def _open(d: Path, precision: str, so, providers: list[str]):
        import onnxruntime as ort

        if precision not in PRECISION_FILES:
            raise RouterLoadError(f"{d} is an ONNX export, which runs {', '.join(PRECISION_FILES)}; {precision} "
                                  "runs on the trained (PyTorch) folder it was exported from")
        path = d / PRECISION_FILES[precision]
        if not path.is_file():
            flag = "" if precision == "fp32" else f" --{precision}"
            raise RouterLoadError(f"{d}: {path.name} is missing; run `neural-router export{flag}` "
                                  "or choose another precision")
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # noqa: BLE001
            raise RouterLoadError(f"{path}: not a loadable ONNX model ({e}); re-export the router") from None

    def _run(self, input_ids, attention_mask, feats):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "features": feats}
        if self.io_binding:
            outs = self._run_bound(feeds)
        else:
            outs = self.session.run(self._output_names, feeds)
        by_name = dict(zip(self._output_names, outs))
        return by_name["quality"], by_name["out_tokens"], by_name["latency"]

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One run through an IO binding on the session's device (``cuda`` or ``cpu``).

        A binding per call: the session may run concurrently from several threads, a binding may not.
        """
        ort, dev, dev_id = self._ort, self._bind_device, self._device_id
        binding = self.session.io_binding()
        # the OrtValues must outlive the run: on CPU they wrap the numpy buffers, on CUDA they own
        # the device copies
        values = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), dev, dev_id)
                  for name, arr in feeds.items()}
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        for name in self._output_names:
            binding.bind_output(name, dev, dev_id)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())


def load_predictor(path: str | Path, device: str = "auto", pool: ModelPool | None = None,
                   int8: bool = False, threads: int | None = None, max_length: int | None = None,
                   precision: str = "auto"):
    """An exported folder (``router.onnx``) -> OnnxPredictor; a trained folder -> TorchPredictor.

    ``precision`` picks the exported file (see :class:`OnnxPredictor`; ``int8=True`` is
    ``precision="int8"``); a trained folder runs fp32, fp16 or bf16 on ``device`` (see
    :class:`TorchPredictor`), and asking it for int8 is a :class:`RouterLoadError` naming the export
    to run. ``max_length`` caps the prompt tokens kept
    (head + tail); it never exceeds what the router was trained with.
    """
    d = Path(path)
    if device not in DEVICES:
        raise ValueError(f"device must be auto, cuda or cpu, not {device!r}")
    wanted = requested_precision(precision, int8=int8)
    exported = (d / ONNX_FILE).is_file() or (wanted in PRECISION_FILES and (d / PRECISION_FILES[wanted]).is_file())
    if exported:
        pred = OnnxPredictor(d, device, pool, threads=threads, precision=wanted)
    elif wanted == "int8" and (d / TORCH_FILE).is_file():
        raise RouterLoadError(f"{d} is a trained router folder, which runs fp32, fp16 or bf16; for int8, export "
                              f"it with `neural-router export --router {d} --output DIR --int8` and use DIR")
    else:
        pred = TorchPredictor.from_pretrained(d, device, pool, precision=wanted)
    if max_length is not None:
        if max_length < pred.rc.head_tokens + 8:
            raise ValueError(f"max_length {max_length} is too small (head_tokens is {pred.rc.head_tokens})")
        if max_length > pred.rc.max_length:
            log.warning("max_length %d is above the router's trained max_length %d; keeping %d",
                        max_length, pred.rc.max_length, pred.rc.max_length)
        pred.rc.max_length = min(max_length, pred.rc.max_length)
    return pred
