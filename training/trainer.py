"""Fine-tune a RouterModel on a RoutingDataset with accelerate (CPU here, one or many GPUs elsewhere).

Cheap on CPU without giving up quality:
* prompts are truncated head + tail to ``max_length`` tokens (see ``text.py``),
* the embeddings and the lower ``freeze_layers`` encoder layers are frozen and, with
  ``cache_activations``, their output is computed once and stored (fp16), so every epoch runs only
  the top layers,
* batches are bucketed by length so padding stays small.

Losses are masked: a prompt/model pair that was never observed contributes nothing. Quality uses
binary cross-entropy with the (possibly graded) score as a soft target; output tokens and latency
use squared error in log space, where observed.

Learning from logged outcomes (``training/update.py``) adds three optional inputs to
:func:`train_router`, none of which changes anything when left out:

* ``init_from``: start from an existing router (same encoder and trunk; the heads' rows of the
  models it knows are copied, a model it does not know starts from a cold-start prior);
* ``sample_weights[N, M]``: per (prompt, model) importance weights in every masked loss (weighted
  mean over the observed cells), e.g. clipped 1/propensity for logged outcomes, 1 for labeled data;
* ``activation_cache``: an :class:`ActivationCache` that keeps frozen-layer activations between
  runs whose frozen layers are identical (successive updates of one router), so a prompt goes
  through the frozen layers once.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from neural_router.data.dataset import DataConfig, RoutingDataset
from neural_router.modeling.model import DEFAULT_ENCODER, HEADS, RouterConfig, RouterModel, resolve_encoder
from neural_router.pool import ModelPool
from neural_router.modeling.text import encode, request_features

log = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    encoder: str = DEFAULT_ENCODER
    max_length: int = Field(default=128, ge=8)
    head_tokens: int = Field(default=16, ge=0)
    encoder_layers: int | None = Field(
        default=None, ge=0, description="keep only the encoder's first N layers (a smaller, faster router); "
                                        "None or 0 = all (configs/train.yaml sets 4)")
    freeze_layers: int = Field(default=5, description="embeddings + this many lower layers frozen; -1 = all")
    cache_activations: bool = True
    hidden: int = 256
    dropout: float = 0.1
    epochs: int = Field(default=10, ge=1)
    patience: int = Field(default=2, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr_encoder: float = 5e-5
    lr_head: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    loss_out_tokens: float = 0.1
    loss_latency: float = 0.1
    loss_rank: float = Field(default=0.0, ge=0, description=(
        "weight of a listwise ranking loss on the quality logits (RouterDC-style): per prompt, the "
        "cross-entropy between a softmax over the observed models' logits and softmax(scores / "
        "rank_temperature); prompts with fewer than two observed models, or where all scored the same, "
        "carry no ranking and are skipped. 0 = off"))
    rank_temperature: float = Field(default=0.1, gt=0)
    init_quality_bias: bool = Field(default=False, description=(
        "a router trained from scratch starts each model's quality bias at the logit of its mean "
        "training score (weighted, clipped to [0.02, 0.98]) instead of 0 (p = 0.5), so that a router "
        "trained on little data (a few optimizer steps) is calibrated from the start; updates and a "
        "new pool member's cold-start prior start from the parent as before"))
    adversarial_sources: float = Field(default=0.0, ge=0, description=(
        "weight of a gradient-reversal adversary that tries to tell each training prompt's source "
        "(benchmark) from the trunk's features: the trunk is pushed to drop what only names the "
        "benchmark, so the quality heads lean on what transfers to benchmarks never seen. 0 = off"))
    seed: int = 0
    soup: int = Field(default=1, ge=1, description="average the weights of this many fine-tunes that start "
                      "from the same weights with seeds seed, seed+1, ... (a uniform model soup; "
                      "1 = one fine-tune)")
    max_minutes: float | None = Field(default=None, description="stop after this many minutes of training")
    data: DataConfig = Field(default_factory=DataConfig)


@dataclass
class Tensors:
    """Everything the loop needs for one split, as tensors."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    lengths: np.ndarray
    features: torch.Tensor
    scores: torch.Tensor        # NaN = unobserved
    log_out: torch.Tensor
    log_lat: torch.Tensor
    hidden: list[torch.Tensor] | None = None
    weights: torch.Tensor | None = None   # [N, M] per-cell loss weights; None = all 1
    input_tokens: np.ndarray | None = None  # [N] full prompt length in tokens (before truncation)
    sources: np.ndarray | None = None       # [N] source (benchmark) index, for adversarial_sources


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cost_calibration(ds: RoutingDataset, pool: ModelPool, input_tokens: np.ndarray) -> list[float]:
    """Per model: median of observed cost / profile cost, where costs were observed (else 1)."""
    sub = pool.subset(ds.models)
    out_tokens = np.where(np.isnan(ds.output_tokens), np.nanmedian(ds.output_tokens) if
                          np.isfinite(ds.output_tokens).any() else 256.0, ds.output_tokens)
    profile = sub.cost_usd(input_tokens, out_tokens)
    scale = []
    for j in range(len(ds.models)):
        ok = np.isfinite(ds.cost_usd[:, j]) & (profile[:, j] > 0)
        r = ds.cost_usd[ok, j] / profile[ok, j]
        scale.append(float(np.clip(np.median(r), 0.05, 20.0)) if ok.sum() >= 5 else 1.0)
    return scale


def build_router_config(ds: RoutingDataset, pool: ModelPool, cfg: TrainConfig,
                        input_tokens: np.ndarray) -> RouterConfig:
    med_out = [float(np.nanmedian(ds.output_tokens[:, j])) if np.isfinite(ds.output_tokens[:, j]).any()
               else 256.0 for j in range(len(ds.models))]
    return RouterConfig(
        models=list(ds.models), binary=[bool(b) for b in ds.binary_models()], encoder=cfg.encoder,
        max_length=cfg.max_length, head_tokens=cfg.head_tokens, hidden=cfg.hidden, dropout=cfg.dropout,
        latency_learned=[bool(np.isfinite(ds.latency_ms[:, j]).any()) for j in range(len(ds.models))],
        cost_scale=cost_calibration(ds, pool, input_tokens), default_output_tokens=med_out,
        version=time.strftime("%Y%m%d-%H%M%S"))


def to_tensors(ds: RoutingDataset, tokenizer, max_length: int, head_tokens: int) -> Tensors:
    enc = encode(tokenizer, ds.prompts, max_length, head_tokens)
    feats = request_features(ds.prompts, enc.input_tokens)
    return Tensors(enc.input_ids, enc.attention_mask, enc.attention_mask.sum(1),
                   torch.tensor(feats), torch.tensor(ds.scores, dtype=torch.float32),
                   torch.tensor(np.log1p(ds.output_tokens), dtype=torch.float32),
                   torch.tensor(np.log(np.maximum(ds.latency_ms, 1e-3)), dtype=torch.float32),
                   input_tokens=enc.input_tokens)


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Batches of similar length; shuffled order (and jittered lengths) when rng is given."""
    if rng is None:
        order = np.argsort(lengths, kind="stable")
    else:
        order = np.argsort(lengths + rng.uniform(0, 8, len(lengths)), kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def make_batch(t: Tensors, idx: np.ndarray, device) -> dict[str, torch.Tensor]:
    T = int(t.lengths[idx].max())
    b = {"attention_mask": torch.tensor(t.attention_mask[idx, :T], device=device),
         "features": t.features[idx].to(device), "scores": t.scores[idx].to(device),
         "log_out": t.log_out[idx].to(device), "log_lat": t.log_lat[idx].to(device)}
    if t.weights is not None:
        b["weights"] = t.weights[idx].to(device)
    if t.sources is not None:
        b["source"] = torch.as_tensor(t.sources[idx], device=device)
    if t.hidden is not None:
        H = t.hidden[idx[0]].shape[-1]
        h = torch.zeros(len(idx), T, H, dtype=torch.float32)
        for k, i in enumerate(idx):
            h[k, : t.hidden[i].shape[0]] = t.hidden[i].float()
        b["hidden"] = h.to(device)
    else:
        b["input_ids"] = torch.tensor(t.input_ids[idx, :T], device=device)
    return b


def masked_losses(out: dict[str, torch.Tensor], b: dict[str, torch.Tensor], cfg: TrainConfig):
    """Masked losses; with ``b["weights"]`` each observed cell counts with its weight (weighted mean)."""
    w = b.get("weights")

    def masked(target, fn):
        m = torch.isfinite(target)
        if w is not None:
            m = m & (w > 0)
        if not m.any():
            return out["quality_logits"].sum() * 0.0, 0
        return fn(m), int(m.sum())

    def reduce(per_cell, m):
        if w is None:
            return per_cell.mean()
        return (per_cell * w[m]).sum() / w[m].sum()

    q, nq = masked(b["scores"], lambda m: reduce(F.binary_cross_entropy_with_logits(
        out["quality_logits"][m], b["scores"][m], reduction="none"), m))
    o, _ = masked(b["log_out"], lambda m: reduce(
        F.mse_loss(out["log_out_tokens"][m], b["log_out"][m], reduction="none"), m))
    lat, _ = masked(b["log_lat"], lambda m: reduce(
        F.mse_loss(out["log_latency"][m], b["log_lat"][m], reduction="none"), m))
    total = q + cfg.loss_out_tokens * o + cfg.loss_latency * lat
    parts = {"quality": float(q.detach()), "out_tokens": float(o.detach()), "latency": float(lat.detach()), "n": nq}
    if cfg.loss_rank > 0:
        rank = rank_loss(out["quality_logits"], b["scores"], w, cfg.rank_temperature)
        total = total + cfg.loss_rank * rank
        parts["rank"] = float(rank.detach())
    return total, parts


def rank_loss(logits: torch.Tensor, scores: torch.Tensor, weights: torch.Tensor | None,
              temperature: float) -> torch.Tensor:
    """Listwise ranking loss over each prompt's observed models: cross-entropy between
    softmax(logits) and softmax(scores / temperature), averaged over the prompts that rank anything
    (two or more observed models with different scores), each weighted by its cells' mean weight."""
    m = torch.isfinite(scores)
    if weights is not None:
        m = m & (weights > 0)
    s = scores.nan_to_num(0.0)
    hi = s.masked_fill(~m, -math.inf).amax(1)
    lo = s.masked_fill(~m, math.inf).amin(1)
    rows = (m.sum(1) >= 2) & (hi - lo > 1e-6)
    if not rows.any():
        return logits.sum() * 0.0
    m, s, z = m[rows], s[rows], logits[rows]
    target = torch.softmax((s / temperature).masked_fill(~m, -math.inf), dim=1)
    logp = torch.log_softmax(z.masked_fill(~m, -math.inf), dim=1).masked_fill(~m, 0.0)
    ce = -(target * logp).sum(1)
    if weights is None:
        return ce.mean()
    rw = (weights[rows] * m).sum(1) / m.sum(1)
    return (ce * rw).sum() / rw.sum().clamp_min(1e-12)


def run_model(model: RouterModel, b: dict[str, torch.Tensor], start_layer: int):
    if "hidden" in b:
        return model.forward_from(b["hidden"], b["attention_mask"], b["features"], start_layer)
    return model(b["input_ids"], b["attention_mask"], b["features"])


class ActivationCache:
    """Frozen-layer activations kept between training runs and predictions.

    Entries are keyed by a fingerprint of the frozen weights (embeddings + the first ``n_layers``
    layers), ``n_layers`` and the token ids of the prompt, so a cache can be shared safely between
    routers: a router whose frozen layers differ simply misses. Typical use: successive updates of
    one router (their frozen layers never change) in one process. Stored as fp16 like the trainer's
    own cache (about ``tokens x hidden x 2`` bytes per prompt).
    """

    def __init__(self) -> None:
        self._store: dict[tuple[str, int], dict[tuple[int, ...], torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self._store.values())

    def fingerprint(self, model: RouterModel, n_layers: int) -> str:
        """Hash of the weights the first ``n_layers`` layers' output depends on."""
        enc = model.encoder
        tensors = list(enc.embeddings.state_dict().items())
        for k, layer in enumerate(enc.encoder.layer[:n_layers]):
            tensors += [(f"{k}.{n}", t) for n, t in layer.state_dict().items()]
        h = hashlib.blake2b(digest_size=16)
        h.update(str(n_layers).encode())
        for name, t in tensors:
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def table(self, model: RouterModel, n_layers: int) -> dict[tuple[int, ...], torch.Tensor]:
        return self._store.setdefault((self.fingerprint(model, n_layers), n_layers), {})


@torch.no_grad()
def cache_hidden(model: RouterModel, t: Tensors, n_layers: int, batch_size: int, desc: str,
                 cache: ActivationCache | None = None) -> None:
    from tqdm.auto import tqdm

    model.eval()
    t.hidden = [None] * len(t.lengths)  # type: ignore[list-item]
    todo = np.arange(len(t.lengths))
    keys: list[tuple[int, ...]] = []
    table: dict[tuple[int, ...], torch.Tensor] | None = None
    if cache is not None:
        table = cache.table(model, n_layers)
        keys = [tuple(int(x) for x in t.input_ids[i, : t.lengths[i]]) for i in range(len(t.lengths))]
        missing = []
        for i, k in enumerate(keys):
            h = table.get(k)
            if h is None:
                missing.append(i)
            else:
                t.hidden[i] = h
        cache.hits += len(keys) - len(missing)
        cache.misses += len(missing)
        todo = np.array(missing, dtype=np.int64)
    if not len(todo):
        return
    for idx in tqdm(bucket_batches(t.lengths[todo], batch_size * 2, None), desc=desc, leave=False,
                    disable=None):   # None: bars on a terminal only, not in a redirected log
        idx = todo[idx]
        T = int(t.lengths[idx].max())
        h = model.hidden_after(torch.tensor(t.input_ids[idx, :T]), torch.tensor(t.attention_mask[idx, :T]),
                               n_layers)
        for k, i in enumerate(idx):
            t.hidden[i] = h[k, : t.lengths[i]].to(torch.float16).clone()
            if table is not None:
                table[keys[i]] = t.hidden[i]


@torch.no_grad()
def evaluate_loss(model, t: Tensors, cfg: TrainConfig, start_layer: int, device) -> tuple[float, np.ndarray]:
    model.eval()
    tot, n, preds = 0.0, 0, np.zeros(tuple(t.scores.shape), dtype=np.float32)
    for idx in bucket_batches(t.lengths, cfg.batch_size * 2, None):
        b = make_batch(t, idx, device)
        out = run_model(model, b, start_layer)
        _, parts = masked_losses(out, b, cfg)
        tot += parts["quality"] * parts["n"]
        n += parts["n"]
        preds[idx] = torch.sigmoid(out["quality_logits"]).float().cpu().numpy()
    return tot / max(n, 1), preds


def frozen_layer_count(model: RouterModel, cfg: TrainConfig) -> int:
    """How many encoder layers the trainer runs once and caches (0: no activation cache)."""
    if not (cfg.cache_activations and cfg.freeze_layers != 0 and model.supports_layer_cache()):
        return 0
    return model.num_layers() if cfg.freeze_layers < 0 else min(cfg.freeze_layers, model.num_layers())


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _logits(p: np.ndarray) -> np.ndarray:
    """Elementwise logit of predicted qualities, clipped to [1e-6, 1 - 1e-6] (float64)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def known_models_mean_quality(train: RoutingDataset, init_from: RouterModel) -> float:
    """The default cold-start prior: mean observed score of the models ``init_from`` knows (in
    ``train``), else the mean of its quality heads' sigmoid(bias)."""
    cols = [j for j, m in enumerate(train.models) if m in init_from.config.models]
    s = train.scores[:, cols] if cols else np.zeros((0, 0))
    if np.isfinite(s).any():
        return float(np.nanmean(s))
    return float(torch.sigmoid(init_from.quality.bias.detach()).mean())


def model_from_parent(rc: RouterConfig, parent: RouterModel, train: RoutingDataset,
                      cold_start_prior: float | None = None) -> RouterModel:
    """A RouterModel for ``rc.models`` initialised from ``parent``: the encoder, feature norm and trunk
    are copied; each head row of a model the parent knows is copied; a new model's rows start as
    the mean of the known rows (an "average known model" in logit space), its quality bias shifted
    so that its prior is ``cold_start_prior`` (default: the mean quality of the known models) and
    its output-token bias set from ``rc.default_output_tokens``."""
    old = parent.config
    model = RouterModel(rc, copy.deepcopy(parent.encoder).cpu())
    for p in model.encoder.parameters():  # the parent may come back from training partly frozen
        p.requires_grad_(True)
    model.feature_norm.load_state_dict(parent.feature_norm.state_dict())
    model.trunk.load_state_dict(parent.trunk.state_dict())
    known = [m for m in rc.models if m in old.models]
    if not known:
        raise ValueError("init_from shares no model with the new router; nothing to start from")
    mean_q = known_models_mean_quality(train, parent)
    prior = mean_q if cold_start_prior is None else float(cold_start_prior)
    if not 0.0 < prior < 1.0:
        raise ValueError(f"cold_start_prior must be in (0, 1), got {prior}")
    shift = _logit(prior) - _logit(mean_q)
    known_idx = [old.models.index(m) for m in known]
    with torch.no_grad():
        for name in HEADS:
            src, dst = getattr(parent, name), getattr(model, name)
            w_mean = src.weight[known_idx].mean(0)
            b_mean = src.bias[known_idx].mean()
            for j, m in enumerate(rc.models):
                if m in old.models:
                    i = old.models.index(m)
                    dst.weight[j] = src.weight[i]
                    dst.bias[j] = src.bias[i]
                elif name == "quality":
                    dst.weight[j] = w_mean
                    dst.bias[j] = b_mean + shift
                elif name == "out_tokens":
                    dst.weight[j] = 0.0
                    dst.bias[j] = math.log1p(rc.default_output_tokens[j])
                else:
                    dst.weight[j] = w_mean
                    dst.bias[j] = b_mean
    new = [m for m in rc.models if m not in old.models]
    if new:
        log.info("new models %s start from the cold-start prior %.3f", ", ".join(new), prior)
    return model


def _config_from_parent(rc: RouterConfig, parent: RouterConfig, train: RoutingDataset) -> RouterConfig:
    """Keep the parent's input settings; per model, keep the parent's calibration where the new data
    has too little to estimate it (no costs / output tokens / latencies observed)."""
    rc.encoder, rc.max_length, rc.head_tokens, rc.hidden = (parent.encoder, parent.max_length,
                                                             parent.head_tokens, parent.hidden)
    for j, m in enumerate(rc.models):
        if m not in parent.models:
            continue
        i = parent.models.index(m)
        if np.isfinite(train.cost_usd[:, j]).sum() < 5:
            rc.cost_scale[j] = parent.cost_scale[i]
        if not np.isfinite(train.output_tokens[:, j]).any():
            rc.default_output_tokens[j] = parent.default_output_tokens[i]
        rc.latency_learned[j] = bool(rc.latency_learned[j] or parent.latency_learned[i])
        if not np.isfinite(train.scores[:, j]).any():
            rc.binary[j] = parent.binary[i]
    return rc


def _check_weights(w: np.ndarray | None, ds: RoutingDataset | None, name: str) -> np.ndarray | None:
    if w is None:
        return None
    w = np.asarray(w, dtype=np.float32)
    shape = ds.scores.shape if ds is not None else None
    if w.shape != shape:
        raise ValueError(f"{name} has shape {w.shape}, expected {shape} (prompts x models of its data)")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{name} must be finite and >= 0")
    return w


def train_router(train: RoutingDataset, val: RoutingDataset | None, pool: ModelPool, cfg: TrainConfig,
                 encoder_config=None, progress: bool = True, init_from: RouterModel | None = None,
                 sample_weights: np.ndarray | None = None, cold_start_prior: float | None = None,
                 activation_cache: ActivationCache | None = None,
                 val_sample_weights: np.ndarray | None = None, interpolate: float = 1.0,
                 row_interpolate: np.ndarray | None = None, bias_calibration: float | None = None,
                 head_transfer: float | None = None, head_transfer_models: Sequence[str] = (),
                 head_refit: float | None = None):
    """Fine-tune and return (model, tokenizer, history). ``encoder_config`` -> random tiny encoder.

    ``init_from``: start from this router instead of the pretrained encoder (its encoder, trunk and
    the head rows of the models it knows; ``encoder_config`` is then ignored). The new router's
    models are ``train.models``; a model ``init_from`` does not know starts from
    ``cold_start_prior`` (default: the mean quality of the known models, see
    :func:`model_from_parent`). Input settings (max_length, head_tokens, hidden) follow the parent.

    ``sample_weights``: ``[len(train), len(train.models)]`` non-negative loss weights per (prompt,
    model) cell (only observed cells matter; 0 drops a cell). Losses become weighted means.
    ``val_sample_weights``: the same for ``val`` (the early-stopping loss).

    ``activation_cache``: reuse/keep frozen-layer activations across calls (see
    :class:`ActivationCache`).

    ``interpolate``: the returned weights are ``interpolate * trained + (1 - interpolate) * start``
    (WiSE-FT style; 1 = the trained weights). With ``init_from`` the start is the parent (and the
    cold-start rows of new models), so an update moves only part of the way from the serving router.
    ``row_interpolate``: ``[len(train.models)]``, the same share per model for its head rows (the
    encoder and trunk use ``interpolate``).
    ``head_refit``: no fine-tune; only the quality head is refitted, by weighted logistic regression
    on the trunk features of ``init_from`` (encoder and trunk unchanged), penalised toward its
    current rows with this strength (:func:`refit_quality_head`). Needs ``init_from``.
    ``bias_calibration``: after training (and interpolating), shift each model's quality bias so
    that its mean prediction on its observed training cells (weighted by ``sample_weights``) moves
    to their mean score, shrunk toward no shift by this many pseudo-observations
    (:func:`calibrate_quality_bias`; None = off). A head row that a few epochs and interpolation
    left short of its data (a new pool member's) is then no longer held back by its starting point.
    ``head_transfer`` (with ``head_transfer_models``): after that, the quality head row of each
    listed model is replaced by a weighted sum of the other models' rows plus a bias, fitted to
    its observed training cells, with a prior at the plain average as strong as this many cells
    (:func:`fit_head_mixture`). A model with few outcomes then has K + 1 numbers to learn
    ("which known models does it behave like, and how much better") instead of a whole row.
    """
    from accelerate import Accelerator
    from transformers import AutoTokenizer
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    set_seed(cfg.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(cfg.encoder))

    sample_weights = _check_weights(sample_weights, train, "sample_weights")
    val_sample_weights = _check_weights(val_sample_weights, val, "val_sample_weights")
    if init_from is not None:
        cfg = cfg.model_copy(update={"max_length": init_from.config.max_length,
                                     "head_tokens": init_from.config.head_tokens,
                                     "hidden": init_from.config.hidden})
    # tokenise each split once; the router config's cost calibration needs the train prompts' lengths
    tr = to_tensors(train, tokenizer, cfg.max_length, cfg.head_tokens)
    va = (to_tensors(val, tokenizer, cfg.max_length, cfg.head_tokens)
          if val is not None and len(val) and head_refit is None else None)   # the refit has no epochs to validate
    if cfg.adversarial_sources > 0:
        names = sorted(set(train.sources))
        if len(names) < 2:
            raise ValueError(f"adversarial_sources needs training prompts from two or more sources "
                             f"(benchmarks); these come from {names}")
        tr.sources = np.array([names.index(x) for x in train.sources], dtype=np.int64)
    rc = build_router_config(train, pool, cfg, tr.input_tokens)
    if init_from is not None:
        rc = _config_from_parent(rc, init_from.config, train)
        model = model_from_parent(rc, init_from, train, cold_start_prior)
    elif encoder_config is not None:
        model = RouterModel.from_encoder_config(rc, encoder_config)
    else:
        model = RouterModel.from_encoder(rc, cfg.encoder)
    if cfg.init_quality_bias and init_from is None:
        with torch.no_grad():
            model.quality.bias.copy_(torch.as_tensor(initial_quality_bias(train.scores, sample_weights)))
    if cfg.encoder_layers and init_from is None and cfg.encoder_layers != model.num_layers():
        level = logging.INFO if cfg.encoder == DEFAULT_ENCODER else logging.WARNING
        log.log(level, "keeping the first %d of the encoder's %d layers (encoder_layers; 0 keeps all)",
                cfg.encoder_layers, model.num_layers())
        model.truncate_encoder(cfg.encoder_layers)
    if not 0.0 < interpolate <= 1.0:
        raise ValueError(f"interpolate must be in (0, 1], got {interpolate}")
    if row_interpolate is not None:
        row_interpolate = np.asarray(row_interpolate, dtype=np.float32)
        if row_interpolate.shape != (len(train.models),) or not ((row_interpolate > 0) & (row_interpolate <= 1)).all():
            raise ValueError(f"row_interpolate must hold one share in (0, 1] per model ({len(train.models)}), "
                             f"got {row_interpolate.tolist()}")
    if bias_calibration is not None and bias_calibration < 0:   # fail before training, not after it
        raise ValueError(f"bias_calibration must be >= 0 (pseudo-observations), got {bias_calibration}")
    if head_transfer is not None and not (math.isfinite(head_transfer) and head_transfer > 0):
        raise ValueError(f"head_transfer must be a finite pseudo count > 0, got {head_transfer}")
    unknown = [m for m in head_transfer_models if m not in train.models]
    if unknown:
        raise ValueError(f"head_transfer_models {unknown} are not in the training data's models "
                         f"({', '.join(train.models)})")
    mix_back = interpolate < 1.0 or row_interpolate is not None
    # the starting weights: what interpolation mixes back in, and where every fine-tune of a soup starts
    start_state = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                   if mix_back or cfg.soup > 1 else None)
    model.freeze_lower(cfg.freeze_layers)
    if sample_weights is not None:
        tr.weights = torch.tensor(sample_weights, dtype=torch.float32)
    if va is not None and val_sample_weights is not None:
        va.weights = torch.tensor(val_sample_weights, dtype=torch.float32)

    start_layer = frozen_layer_count(model, cfg)
    if start_layer:
        cache_hidden(model, tr, start_layer, cfg.batch_size, "caching frozen layers (train)",
                     activation_cache)
        if va is not None:
            cache_hidden(model, va, start_layer, cfg.batch_size, "caching frozen layers (val)",
                         activation_cache)

    states, history, epochs = [], [], []
    if head_refit is not None:   # no fine-tune: the quality head alone, refitted on the frozen trunk
        if init_from is None:
            raise ValueError("head_refit refits the quality head of an existing router: pass init_from")
        feats = trunk_features(model, tr, cfg, start_layer, device)
        history = [{"epoch": 0, "head_refit": refit_quality_head(model, tr, feats, head_refit)}]
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    for run in range(cfg.soup if head_refit is None else 0):
        if run:   # every fine-tune starts from the same weights; the first continues the seeded stream
            model.load_state_dict(start_state)
            set_seed(cfg.seed + run)
        state, hist = _fit(model, tr, va, cfg, start_layer, cfg.seed + run, accelerator, progress)
        states.append(state)
        epochs.append(len(hist))
        history += [{**rec, "run": run + 1} for rec in hist] if cfg.soup > 1 else hist
    raw = model
    raw.load_state_dict(states[0] if len(states) == 1 else
                        {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
                         for k, v in states[0].items()})
    if cfg.soup > 1:
        log.info("averaged the weights of %d fine-tunes (soup; epochs %s)", cfg.soup, epochs)
    if mix_back:
        rows = torch.from_numpy(row_interpolate) if row_interpolate is not None else None
        mixed = {}
        for k, v in raw.state_dict().items():
            a = interpolate
            if rows is not None and k.split(".")[0] in HEADS:   # one share per model row
                a = rows.to(v.device).view(-1, *([1] * (v.dim() - 1)))
            mixed[k] = a * v + (1 - a) * start_state[k].to(v.device) if v.is_floating_point() else v
        raw.load_state_dict(mixed)
    w = sample_weights if sample_weights is not None else np.ones_like(train.scores, dtype=np.float32)
    if bias_calibration is not None:
        _, pred = evaluate_loss(raw, tr, cfg, start_layer, device)
        shift = calibrate_quality_bias(train.scores, pred, w, bias_calibration)
        with torch.no_grad():
            raw.quality.bias += torch.as_tensor(shift, dtype=raw.quality.bias.dtype, device=raw.quality.bias.device)
        if history:   # recorded with the last epoch, so len(history) still counts epochs
            history[-1]["quality_bias_shift"] = dict(zip(train.models, np.round(shift, 4).tolist()))
        log.info("quality bias recalibrated (pseudo count %g): %s", bias_calibration,
                 {m: round(float(x), 3) for m, x in zip(train.models, shift) if abs(x) >= 0.01})
    if head_transfer is not None and head_transfer_models:
        _, pred = evaluate_loss(raw, tr, cfg, start_layer, device)   # after any bias shift
        mixes = transfer_heads(raw, train, pred, w, head_transfer, head_transfer_models)
        if history:
            history[-1]["head_transfer"] = mixes
    raw.eval().cpu()
    return raw, tokenizer, history


def _fit(model: RouterModel, tr: Tensors, va: Tensors | None, cfg: TrainConfig, start_layer: int,
         seed: int, accelerator, progress: bool) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """One fine-tune of ``model`` (in place) with early stopping on ``va``; returns the weights of its
    best epoch (the last one without ``va``) and its history. ``seed`` orders the batches (the
    caller seeds torch's generator, which drives dropout)."""
    from tqdm.auto import tqdm

    device = accelerator.device
    head_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
    enc_params = [p for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    groups = [{"params": head_params, "lr": cfg.lr_head}]
    if enc_params:
        groups.append({"params": enc_params, "lr": cfg.lr_encoder})
    adversary = None
    if cfg.adversarial_sources > 0 and tr.sources is not None:
        adversary = torch.nn.Linear(model.config.hidden, int(tr.sources.max()) + 1).to(device)
        groups.append({"params": list(adversary.parameters()), "lr": cfg.lr_head})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(tr.lengths) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(total * cfg.warmup_fraction))
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - max(0, s - warm) / max(1, total - warm)))
    wrapped, optimizer, sched = accelerator.prepare(model, optimizer, sched)
    raw = accelerator.unwrap_model(wrapped)
    if adversary is not None:   # the trunk's features of the current batch, for the adversary
        trunk_out, hook = capture_trunk(raw)

    rng = np.random.default_rng(seed)
    history, best, best_state, bad = [], math.inf, None, 0
    t0 = time.time()
    for epoch in range(cfg.epochs):
        wrapped.train()
        if cfg.freeze_layers < 0:
            raw.encoder.eval()  # a fully frozen encoder runs without dropout, as when it was cached
        running, seen = 0.0, 0
        bar = tqdm(bucket_batches(tr.lengths, cfg.batch_size, rng), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=None if progress else True, leave=False)   # a terminal only, as above
        for idx in bar:
            b = make_batch(tr, idx, device)
            out = run_model(raw, b, start_layer)
            loss, parts = masked_losses(out, b, cfg)
            if adversary is not None:
                logits = adversary(GradientReversal.apply(trunk_out[0], cfg.adversarial_sources))
                loss = loss + F.cross_entropy(logits, b["source"])
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(wrapped.parameters(), 1.0)
            optimizer.step()
            sched.step()
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        rec = {"epoch": epoch + 1, "train_loss": running / max(seen, 1), "minutes": (time.time() - t0) / 60}
        if va is not None:
            rec["val_quality_loss"], _ = evaluate_loss(raw, va, cfg, start_layer, device)
            if rec["val_quality_loss"] < best - 1e-5:
                best, bad = rec["val_quality_loss"], 0
                best_state = {k: v.detach().clone() for k, v in raw.state_dict().items()}
            else:
                bad += 1
        history.append(rec)
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 5) if isinstance(v, float) else v for k, v in rec.items()})
        if va is not None and bad >= cfg.patience:
            log.info("early stop: validation loss did not improve for %d epochs", cfg.patience)
            break
        if cfg.max_minutes is not None and (time.time() - t0) / 60 > cfg.max_minutes:
            log.info("stopping: time budget of %.1f minutes reached", cfg.max_minutes)
            break
    if adversary is not None:
        hook.remove()
    if best_state is None:
        best_state = {k: v.detach().clone() for k, v in raw.state_dict().items()}
    return best_state, history


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient flows back multiplied by ``-scale`` (Ganin & Lempitsky, 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.scale * grad, None


def capture_trunk(model: RouterModel):
    """Hook ``model.trunk``: returns ``(last, handle)``, where ``last[0]`` is the trunk's output (what
    the heads read) of the latest forward pass; ``handle.remove()`` unhooks it."""
    last: list[torch.Tensor | None] = [None]
    return last, model.trunk.register_forward_hook(lambda _m, _i, out: last.__setitem__(0, out))


def trunk_features(model: RouterModel, t: Tensors, cfg: TrainConfig, start_layer: int, device) -> torch.Tensor:
    """The trunk's output (what the heads read) for every prompt of ``t``, in eval mode: ``[N, hidden]``
    (on the CPU; the model runs on ``device``)."""
    model.to(device).eval()
    feats = torch.zeros(len(t.lengths), model.config.hidden)
    last, hook = capture_trunk(model)
    try:
        with torch.no_grad():
            for idx in bucket_batches(t.lengths, cfg.batch_size * 2, None):
                run_model(model, make_batch(t, idx, device), start_layer)
                feats[torch.as_tensor(idx)] = last[0].float().cpu()
    finally:
        hook.remove()
    return feats


def refit_quality_head(model: RouterModel, t: Tensors, feats: torch.Tensor, strength: float) -> dict:
    """Refit every model's quality head row (weights and bias) on fixed trunk features by weighted
    logistic regression (soft labels for graded scores), penalised toward the current row:
    ``sum_i w_im BCE(z_i . W_m + b_m, s_im) + strength / 2 * |(W_m, b_m) - (W0_m, b0_m)|^2``.
    Convex and deterministic: the same data gives the same head, more data moves it further."""
    if not (math.isfinite(strength) and strength > 0):
        raise ValueError(f"head_refit must be a finite penalty > 0, got {strength}")
    head = model.quality
    W0, b0 = head.weight.detach().float().cpu().clone(), head.bias.detach().float().cpu().clone()
    S = t.scores.float()
    w = t.weights.float() if t.weights is not None else torch.ones_like(S)
    obs = torch.isfinite(S) & (w > 0)
    y, wm = S.nan_to_num(0.0), torch.where(obs, w, torch.zeros_like(w))
    W, b = W0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=300, tolerance_grad=1e-6, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        bce = F.binary_cross_entropy_with_logits(feats @ W.T + b, y, reduction="none")
        loss = (bce * wm).sum() + 0.5 * strength * (((W - W0) ** 2).sum() + ((b - b0) ** 2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        head.weight.copy_(W.detach().to(head.weight))
        head.bias.copy_(b.detach().to(head.bias))
    return {"strength": strength, "observed": int(obs.sum()),
            "bias_shift": [round(float(x), 4) for x in (b - b0).detach()],
            "weight_change": round(float((W - W0).detach().norm()), 4)}


def fit_head_mixture(basis_logits: np.ndarray, y: np.ndarray, w: np.ndarray, pseudo_count: float,
                     c0: float = 0.0, steps: int = 25) -> tuple[np.ndarray, float]:
    """Weighted logistic regression of ``y`` (scores in [0, 1]) on ``basis_logits`` ([n, K], the
    other models' quality logits on the same prompts): ``(alpha [K], c)`` minimising
    ``sum w * CE(y, sigmoid(basis_logits @ alpha + c))`` plus a Gaussian prior at ``alpha = 1/K``,
    ``c = c0`` (the cold-start row: the average of the known rows, shifted by ``c0``), per
    coordinate as strong as ``pseudo_count`` cells at p = 0.5 (precision ``pseudo_count / 4`` times
    the feature's weighted mean square over the cells), by Newton steps. With few cells the fit
    stays near the average model; as they accumulate it moves to the models the target behaves
    like. The known models' logits are strongly correlated, so their sum (how steep the target's
    logit is) can move further from 1 than one coordinate's prior alone would suggest; in the replay
    (benchmarks/FEEDBACK.md) that helped: a g-prior, as strong in every direction, learned the new model slower
    and ended lower."""
    n, k = basis_logits.shape
    x = np.concatenate([basis_logits, np.ones((n, 1))], axis=1).astype(np.float64)
    w = w.astype(np.float64)
    y = y.astype(np.float64)
    prior = np.concatenate([np.full(k, 1.0 / k), [c0]])
    reg = np.diag(pseudo_count / 4 * np.maximum((x ** 2 * w[:, None]).sum(0) / max(w.sum(), 1e-12), 1e-3))
    theta = prior.copy()
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ theta, -30, 30)))
        grad = x.T @ (w * (p - y)) + reg @ (theta - prior)
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + reg + 1e-9 * np.eye(k + 1)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:k], float(theta[k])


def transfer_heads(model: RouterModel, train: RoutingDataset, pred: np.ndarray, weights: np.ndarray,
                   pseudo_count: float, targets: Sequence[str]) -> dict[str, dict]:
    """Replace the quality head row of each model in ``targets`` that has observed training cells
    by a mixture of the other (non-target) models' rows fitted with :func:`fit_head_mixture` on
    ``pred`` (the model's [N, M] predicted qualities on ``train``). Returns, per model, the mixture
    weights, the bias and the number of cells it was fitted on."""
    cols = [train.models.index(m) for m in model.config.models]
    if cols != list(range(len(cols))):
        raise ValueError("transfer_heads: the router's models must be the training data's, in order")
    z = _logits(pred)
    basis = [j for j, m in enumerate(train.models) if m not in targets]
    if not basis:
        raise ValueError("head_transfer_models lists every model: nothing left to transfer from")
    out = {}
    with torch.no_grad():
        W, b = model.quality.weight, model.quality.bias
        for m in targets:
            j = train.models.index(m)
            obs = np.isfinite(train.scores[:, j]) & (weights[:, j] > 0)
            if not obs.any():
                continue
            c0 = float(b[j] - b[basis].mean())
            alpha, c = fit_head_mixture(z[obs][:, basis], train.scores[obs, j], weights[obs, j], pseudo_count, c0)
            a = torch.as_tensor(alpha, dtype=W.dtype, device=W.device)
            W[j] = a @ W[basis]
            b[j] = a @ b[basis] + c
            out[m] = {"n": int(obs.sum()), "bias": round(c, 6),
                      "weights": {train.models[k]: round(float(x), 6) for k, x in zip(basis, alpha)}}
            log.info("head transfer for %s from %d outcomes: %s", m, int(obs.sum()),
                     {k: v for k, v in out[m]["weights"].items() if abs(v) >= 0.05})
    return out


def initial_quality_bias(scores: np.ndarray, weights: np.ndarray | None = None,
                         lo: float = 0.02, hi: float = 0.98) -> np.ndarray:
    """Per model, the logit of its mean observed score (weighted by ``weights`` where given),
    clipped to ``[lo, hi]`` so that an all-0 or all-1 model keeps a finite bias; a model without
    observed cells gets 0 (p = 0.5). The starting quality bias of ``TrainConfig.init_quality_bias``."""
    obs = np.isfinite(scores)
    w = np.where(obs, 1.0 if weights is None else weights, 0.0).astype(np.float64)
    tot = w.sum(0)
    mean = np.where(tot > 0, (w * np.where(obs, scores, 0.0)).sum(0) / np.maximum(tot, 1e-12), 0.5)
    return _logits(np.clip(mean, lo, hi)).astype(np.float32)


def calibrate_quality_bias(scores: np.ndarray, pred: np.ndarray, weights: np.ndarray, pseudo_count: float,
                           steps: int = 5) -> np.ndarray:
    """Per model, the logit shift ``d`` that minimises the weighted cross-entropy of
    ``sigmoid(logit(pred) + d)`` against the observed ``scores`` plus ``pseudo_count * d**2 / 8``
    (a Gaussian prior at no shift, as strong as ``pseudo_count`` cells at p = 0.5), by Newton steps.
    Unobserved cells (NaN score) and zero weights do not count; a model without any gets 0."""
    if pseudo_count < 0:
        raise ValueError(f"bias_calibration must be >= 0 (pseudo-observations), got {pseudo_count}")
    obs = np.isfinite(scores) & (weights > 0)
    y = np.where(obs, scores, 0.0).astype(np.float64)
    w = np.where(obs, weights, 0.0).astype(np.float64)
    z = _logits(pred)
    d = np.zeros(scores.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z + d)))
        grad = (w * (p - y)).sum(0) + pseudo_count * d / 4
        hess = (w * p * (1 - p)).sum(0) + pseudo_count / 4
        d = np.where(hess > 0, d - grad / np.maximum(hess, 1e-12), 0.0)
    return np.where(obs.any(0), d, 0.0)
