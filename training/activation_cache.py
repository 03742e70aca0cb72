"""Frozen-layer activations computed once: the embeddings and lower encoder layers that training
does not change run once per prompt, their output is kept (fp16) and every epoch, update or
prediction runs only the layers above.

:class:`ActivationCache` keeps them between runs (successive updates of one router, the folds of a
benchmark) keyed by a fingerprint of the frozen weights, so a router whose frozen layers differ
simply misses. :func:`cached_predictor` is the PyTorch predictor reading them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from neural_router.inference.predictors import TorchPredictor
from neural_router.modeling.model import RouterModel, to_outputs
from neural_router.modeling.text import encode
from neural_router.pool import ModelPool
from neural_router.training.batches import Tensors, bucket_batches
from neural_router.training.config import TrainConfig


class ActivationCache:
    """Frozen-layer activations kept between training runs and predictions.

    Entries are keyed by a fingerprint of the frozen weights (embeddings + the first ``n_layers``
    layers), ``n_layers`` and the token ids of the prompt, so a cache can be shared safely between
    routers: a router whose frozen layers differ simply misses. Stored as fp16 like the trainer's
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
        """The entries of ``model``'s first ``n_layers`` layers: token ids -> [tokens, hidden] fp16."""
        return self._store.setdefault((self.fingerprint(model, n_layers), n_layers), {})


def frozen_layer_count(model: RouterModel, cfg: TrainConfig) -> int:
    """How many encoder layers the trainer runs once and caches (0: no activation cache)."""
    if not (cfg.cache_activations and cfg.freeze_layers != 0 and model.supports_layer_cache()):
        return 0
    return model.num_layers() if cfg.freeze_layers < 0 else min(cfg.freeze_layers, model.num_layers())


def _lookup(t: Tensors, table: dict, cache: ActivationCache) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Fill ``t.hidden`` from ``table``; returns (rows still to compute, every row's key)."""
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
    return np.array(missing, dtype=np.int64), keys


@torch.no_grad()
def cache_hidden(model: RouterModel, t: Tensors, n_layers: int, batch_size: int, desc: str,
                 cache: ActivationCache | None = None) -> None:
    """Set ``t.hidden`` to every prompt's output of the first ``n_layers`` layers (fp16, unpadded),
    read from / added to ``cache`` when given."""
    from tqdm.auto import tqdm

    model.eval()
    t.hidden = [None] * len(t.lengths)  # type: ignore[list-item]
    todo, keys, table = np.arange(len(t.lengths)), [], None
    if cache is not None:
        table = cache.table(model, n_layers)
        todo, keys = _lookup(t, table, cache)
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


class _CachedPredictor(TorchPredictor):
    """The PyTorch predictor with its lower ``n_layers`` layers read from an :class:`ActivationCache`
    (computed there first for prompts it lacks)."""

    def __init__(self, model: RouterModel, tokenizer, pool: ModelPool, n_layers: int, cache: ActivationCache,
                 batch_size: int = 64):
        super().__init__(model, tokenizer, pool, "cpu")
        self.n_layers, self.cache, self.batch_size = n_layers, cache, batch_size

    def predict(self, prompts, features=None):
        if isinstance(prompts, str):
            raise TypeError("predict() takes a list of prompts, not a single string")
        rc = self.rc
        enc = encode(self.tokenizer, list(prompts), rc.max_length, rc.head_tokens)
        none = torch.zeros(0)
        t = Tensors(enc.input_ids, enc.attention_mask, enc.attention_mask.sum(1), none, none, none, none)
        cache_hidden(self.model, t, self.n_layers, self.batch_size, "caching frozen layers (predict)", self.cache)
        return super().predict(prompts, features)

    def _run(self, input_ids, attention_mask, feats):
        table = self.cache.table(self.model, self.n_layers)
        lengths = attention_mask.sum(1)
        hidden = torch.zeros(len(input_ids), input_ids.shape[1], self.model.encoder.config.hidden_size)
        for k in range(len(input_ids)):
            h = table[tuple(int(x) for x in input_ids[k, : lengths[k]])]
            hidden[k, : h.shape[0]] = h.float()
        with torch.inference_mode():
            raw = self.model.forward_from(hidden, torch.from_numpy(attention_mask), torch.from_numpy(feats),
                                          self.n_layers)
        o = to_outputs(raw)
        return o["quality"], o["out_tokens"], o["latency"]


def cached_predictor(model: RouterModel, tokenizer, pool: ModelPool, cfg: TrainConfig | None = None,
                     cache: ActivationCache | None = None) -> TorchPredictor:
    """The PyTorch predictor of an in-memory router on the CPU. With a ``cache`` (and ``cfg`` saying
    which layers are frozen) the frozen layers are read from / written to it, so routers sharing
    them encode each prompt once; otherwise the plain predictor."""
    model = model.eval().cpu()
    n_layers = frozen_layer_count(model, cfg) if cfg is not None else 0
    if cache is None or n_layers == 0:
        return TorchPredictor(model, tokenizer, pool, "cpu")
    return _CachedPredictor(model, tokenizer, pool, n_layers, cache)


def predict_router(model: RouterModel, tokenizer, pool: ModelPool, prompts: list[str],
                   cfg: TrainConfig | None = None, cache: ActivationCache | None = None):
    """Predictions of an in-memory router for ``prompts`` (:func:`cached_predictor`)."""
    return cached_predictor(model, tokenizer, pool, cfg, cache).predict(list(prompts))
