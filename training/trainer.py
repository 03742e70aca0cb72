"""Fine-tune a RouterModel on a RoutingDataset with accelerate (CPU here, one or many GPUs elsewhere).

Cheap on CPU without giving up quality:
* prompts are truncated head + tail to ``max_length`` tokens (``modeling/text.py``),
* the embeddings and the lower ``freeze_layers`` encoder layers are frozen and, with
  ``cache_activations``, their output is computed once and stored (fp16, :mod:`.activation_cache`),
  so every epoch runs only the top layers,
* batches are bucketed by length so padding stays small.

:func:`train_router` trains a router from scratch. An update from logged outcomes
(:func:`neural_router.training.update.finetune.update_router`) runs the same steps from an existing
router: :func:`begin` (seed, tokenizer, tensors), :func:`ready` (freeze, cache the frozen layers)
and :func:`fit_soup` (the epochs, with early stopping, once per member of a model soup).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neural_router.data.dataset import RoutingDataset
from neural_router.modeling.model import RouterModel, resolve_encoder
from neural_router.pool import ModelPool
from neural_router.training.activation_cache import ActivationCache, cache_hidden, frozen_layer_count
from neural_router.training.batches import Tensors, bucket_batches, capture_trunk, make_batch, run_model, to_tensors
from neural_router.training.config import TrainConfig
from neural_router.training.losses import GradientReversal, evaluate_loss, masked_losses
from neural_router.training.router_init import build_router_config, new_model

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    """One training run: its settings, device, tokenizer, tensors and (after :func:`ready`) model."""

    cfg: TrainConfig
    accelerator: Any
    tokenizer: Any
    tr: Tensors
    va: Tensors | None
    model: RouterModel | None = None
    start_layer: int = 0


def check_weights(w: np.ndarray | None, ds: RoutingDataset | None, name: str) -> np.ndarray | None:
    """``w`` as float32 when it is one finite, non-negative weight per cell of ``ds``; else ValueError."""
    if w is None:
        return None
    w = np.asarray(w, dtype=np.float32)
    shape = ds.scores.shape if ds is not None else None
    if w.shape != shape:
        raise ValueError(f"{name} has shape {w.shape}, expected {shape} (prompts x models of its data)")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{name} must be finite and >= 0")
    return w


def begin(train: RoutingDataset, val: RoutingDataset | None, cfg: TrainConfig,
          sample_weights: np.ndarray | None = None, val_sample_weights: np.ndarray | None = None,
          validate: bool = True) -> Run:
    """Seed everything, load the tokenizer and tokenise each split once (``val`` only when
    ``validate``). ``sample_weights``/``val_sample_weights``: ``[prompts, models]`` per-cell loss
    weights (0 drops a cell; the losses become weighted means)."""
    from accelerate import Accelerator
    from transformers import AutoTokenizer
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    set_seed(cfg.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(cfg.encoder))
    sample_weights = check_weights(sample_weights, train, "sample_weights")
    val_sample_weights = check_weights(val_sample_weights, val, "val_sample_weights")
    tr = to_tensors(train, tokenizer, cfg.max_length, cfg.head_tokens)
    va = (to_tensors(val, tokenizer, cfg.max_length, cfg.head_tokens)
          if val is not None and len(val) and validate else None)
    if cfg.adversarial_sources > 0:
        names = sorted(set(train.sources))
        if len(names) < 2:
            raise ValueError(f"adversarial_sources needs training prompts from two or more sources "
                             f"(benchmarks); these come from {names}")
        tr.sources = np.array([names.index(x) for x in train.sources], dtype=np.int64)
    if sample_weights is not None:
        tr.weights = torch.tensor(sample_weights, dtype=torch.float32)
    if va is not None and val_sample_weights is not None:
        va.weights = torch.tensor(val_sample_weights, dtype=torch.float32)
    return Run(cfg, accelerator, tokenizer, tr, va)


def ready(run: Run, model: RouterModel, keep_start: bool, cache: ActivationCache | None = None
          ) -> dict[str, torch.Tensor] | None:
    """Make ``model`` the run's: freeze its lower layers and compute (or read from ``cache``) their
    activations. Returns its starting weights when ``keep_start`` (what a soup restarts from and an
    interpolation mixes back in), else None."""
    cfg = run.cfg
    start = {k: v.detach().clone() for k, v in model.state_dict().items()} if keep_start else None
    model.freeze_lower(cfg.freeze_layers)
    run.model, run.start_layer = model, frozen_layer_count(model, cfg)
    if run.start_layer:
        cache_hidden(model, run.tr, run.start_layer, cfg.batch_size, "caching frozen layers (train)", cache)
        if run.va is not None:
            cache_hidden(model, run.va, run.start_layer, cfg.batch_size, "caching frozen layers (val)", cache)
    return start


def fit_soup(run: Run, start: dict[str, torch.Tensor] | None, progress: bool) -> list[dict]:
    """Fine-tune ``run.model`` ``cfg.soup`` times from the same weights (``start``, needed when
    soup > 1; seeds seed, seed+1, ...) and load the mean of their best weights into it (a uniform
    model soup; one fine-tune: its best epoch). Returns the epochs' history (with ``run`` in a soup)."""
    cfg, model = run.cfg, run.model
    states, history, epochs = [], [], []
    for member in range(cfg.soup):
        if member:   # every fine-tune starts from the same weights; the first continues the seeded stream
            model.load_state_dict(start)
            set_seed(cfg.seed + member)
        state, hist = _fit(model, run.tr, run.va, cfg, run.start_layer, cfg.seed + member, run.accelerator,
                           progress)
        states.append(state)
        epochs.append(len(hist))
        history += [{**rec, "run": member + 1} for rec in hist] if cfg.soup > 1 else hist
    model.load_state_dict(states[0] if len(states) == 1 else
                          {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
                           for k, v in states[0].items()})
    if cfg.soup > 1:
        log.info("averaged the weights of %d fine-tunes (soup; epochs %s)", cfg.soup, epochs)
    return history


def train_router(train: RoutingDataset, val: RoutingDataset | None, pool: ModelPool, cfg: TrainConfig,
                 encoder_config=None, progress: bool = True, activation_cache: ActivationCache | None = None,
                 sample_weights: np.ndarray | None = None):
    """Train a router from scratch on ``train`` (early stopping on ``val``); returns (model on the
    CPU, tokenizer, history). ``encoder_config``: a random encoder of that shape instead of
    ``cfg.encoder`` (tests); ``activation_cache``: keep frozen-layer activations across calls;
    ``sample_weights``: per-cell loss weights (see :func:`begin`)."""
    run = begin(train, val, cfg, sample_weights)
    rc = build_router_config(train, pool, cfg, run.tr.input_tokens)
    model = new_model(rc, cfg, train, encoder_config, run.tr.weights.numpy() if run.tr.weights is not None
                      else None)
    start = ready(run, model, cfg.soup > 1, activation_cache)
    history = fit_soup(run, start, progress)
    return model.eval().cpu(), run.tokenizer, history


def _optimizer(model: RouterModel, tr: Tensors, cfg: TrainConfig, accelerator):
    """(wrapped model, optimizer, schedule, adversary or None): AdamW with warm-up then linear decay;
    the source adversary (``cfg.adversarial_sources``) trains with the heads' learning rate."""
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
    total = math.ceil(len(tr.lengths) / cfg.batch_size) * cfg.epochs
    warm = max(1, int(total * cfg.warmup_fraction))
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - max(0, s - warm) / max(1, total - warm)))
    wrapped, optimizer, sched = accelerator.prepare(model, optimizer, sched)
    return wrapped, optimizer, sched, adversary


def _epoch(wrapped, raw: RouterModel, tr: Tensors, cfg: TrainConfig, start_layer: int, accelerator,
           optimizer, sched, adversary, trunk_out, batches, desc: str, progress: bool) -> float:
    """One pass over ``batches``; returns the mean training loss."""
    from tqdm.auto import tqdm

    running, seen = 0.0, 0
    bar = tqdm(batches, desc=desc, disable=None if progress else True, leave=False)   # a terminal only
    for idx in bar:
        b = make_batch(tr, idx, accelerator.device)
        out = run_model(raw, b, start_layer)
        loss, _ = masked_losses(out, b, cfg)
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
    return running / max(seen, 1)


def _fit(model: RouterModel, tr: Tensors, va: Tensors | None, cfg: TrainConfig, start_layer: int,
         seed: int, accelerator, progress: bool) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """One fine-tune of ``model`` (in place) with early stopping on ``va``; returns the weights of its
    best epoch (the last one without ``va``) and its history. ``seed`` orders the batches (the
    caller seeds torch's generator, which drives dropout)."""
    wrapped, optimizer, sched, adversary = _optimizer(model, tr, cfg, accelerator)
    raw = accelerator.unwrap_model(wrapped)
    trunk_out, hook = capture_trunk(raw) if adversary is not None else (None, None)
    rng = np.random.default_rng(seed)
    history, best, best_state, bad = [], math.inf, None, 0
    t0 = time.time()
    for epoch in range(cfg.epochs):
        wrapped.train()
        if cfg.freeze_layers < 0:
            raw.encoder.eval()  # a fully frozen encoder runs without dropout, as when it was cached
        loss = _epoch(wrapped, raw, tr, cfg, start_layer, accelerator, optimizer, sched, adversary, trunk_out,
                      bucket_batches(tr.lengths, cfg.batch_size, rng), f"epoch {epoch + 1}/{cfg.epochs}", progress)
        rec = {"epoch": epoch + 1, "train_loss": loss, "minutes": (time.time() - t0) / 60}
        if va is not None:
            rec["val_quality_loss"], _ = evaluate_loss(raw, va, cfg, start_layer, accelerator.device)
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
    if hook is not None:
        hook.remove()
    return best_state or {k: v.detach().clone() for k, v in raw.state_dict().items()}, history
