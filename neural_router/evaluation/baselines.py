"""Reference routers over precomputed arrays, evaluated with the same code as the real router.

Each baseline predicts ``pred_quality[N_test, M]`` (and, where it can, ``pred_cost[N_test, M]``) so
that :func:`~neural_router.evaluation.metrics.cost_quality_curve` and
:func:`~neural_router.evaluation.metrics.aiq` score it.
Embeddings come in as numpy arrays from the caller; nothing here loads an encoder. Baselines that
only predict quality route with the per-model mean training cost (:func:`mean_cost_predictor`).
Random / single-model / oracle reference points live in :mod:`neural_router.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from numpy.typing import ArrayLike

from neural_router.evaluation.metrics import FloatArray, nanmean

__all__ = ["KNNBaseline", "MLPBaseline", "BenchmarkPriorBaseline", "mean_cost_predictor"]


def _check_xy(emb: ArrayLike, scores: ArrayLike) -> tuple[FloatArray, FloatArray]:
    x = np.asarray(emb, dtype=np.float64)
    y = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need emb [N, D] and scores [N, M] with the same N, got {x.shape}, {y.shape}")
    return x, y


def mean_cost_predictor(costs_train: ArrayLike) -> FloatArray:
    """Per-model mean observed cost ``[M]`` (NaN for a model never observed); use as ``pred_cost``."""
    c = np.asarray(costs_train, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"costs_train must be [N, M], got {c.shape}")
    return nanmean(c, axis=0)


class KNNBaseline:
    """k-nearest-neighbour router: per model, the mean score of the k most cosine-similar training
    prompts on which that model was observed (NaN entries are skipped, not counted as neighbours).

    A model with fewer than k observations uses all of them; one with none predicts NaN.
    """

    def __init__(self, k: int = 40, chunk_size: int = 1024) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = int(k)
        self.chunk_size = int(chunk_size)
        self._emb: FloatArray | None = None
        self._scores: FloatArray | None = None

    @staticmethod
    def _normalise(x: FloatArray) -> FloatArray:
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.maximum(norm, 1e-12)

    def fit(self, emb_train: ArrayLike, scores: ArrayLike) -> "KNNBaseline":
        x, y = _check_xy(emb_train, scores)
        self._emb = self._normalise(x)
        self._scores = y
        return self

    def predict(self, emb: ArrayLike) -> FloatArray:
        """``pred_quality[N_test, M]``."""
        if self._emb is None or self._scores is None:
            raise RuntimeError("fit() first")
        x = np.asarray(emb, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self._emb.shape[1]:
            raise ValueError(f"emb must be [N, {self._emb.shape[1]}], got {x.shape}")
        x = self._normalise(x)
        n_test, m = x.shape[0], self._scores.shape[1]
        out = np.full((n_test, m), np.nan)
        observed = [np.nonzero(np.isfinite(self._scores[:, j]))[0] for j in range(m)]
        for start in range(0, n_test, self.chunk_size):
            sims = x[start:start + self.chunk_size] @ self._emb.T  # [B, N_train]
            for j, idx in enumerate(observed):
                if idx.size == 0:
                    continue
                s_j = sims[:, idx]
                k = min(self.k, idx.size)
                if k < idx.size:
                    top = np.argpartition(-s_j, k - 1, axis=1)[:, :k]
                else:
                    top = np.broadcast_to(np.arange(idx.size), (s_j.shape[0], idx.size))
                out[start:start + s_j.shape[0], j] = self._scores[idx[top], j].mean(axis=1)
        return out


class MLPBaseline:
    """One-hidden-layer MLP (``D -> hidden -> M``, ReLU) trained with a masked BCE-with-logits loss on
    soft targets (scores clipped to [0, 1]; NaN entries carry no loss), Adam, minibatches.

    Inputs are standardised with the training mean/std. The output bias starts at the logit of each
    model's mean score. Deterministic for a given ``seed`` (the global torch RNG is left untouched).
    ``batch_size=None`` trains full-batch. ``predict`` returns sigmoid probabilities ``[N, M]``.

    ``num_threads`` (default 1) caps torch's intra-op threads during ``fit``/``predict`` and is
    restored afterwards: the net is too small to gain from threads, which on a busy CPU cost more in
    contention than they save (``None`` keeps torch's setting).
    """

    def __init__(self, hidden: int = 256, epochs: int = 60, lr: float = 1e-3,
                 weight_decay: float = 1e-4, seed: int = 0, batch_size: int | None = 256,
                 dropout: float = 0.1, num_threads: int | None = 1) -> None:
        self.hidden = int(hidden)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.batch_size = batch_size
        self.dropout = float(dropout)
        self.num_threads = num_threads
        self._net: object | None = None
        self._mu: FloatArray | None = None
        self._sd: FloatArray | None = None
        self.loss_history: list[float] = []

    @contextmanager
    def _threads(self) -> Iterator[None]:
        import torch

        before = torch.get_num_threads()
        if self.num_threads is not None and self.num_threads != before:
            torch.set_num_threads(int(self.num_threads))
        try:
            yield
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    def fit(self, emb_train: ArrayLike, scores: ArrayLike) -> "MLPBaseline":
        with self._threads():
            return self._fit(emb_train, scores)

    def _fit(self, emb_train: ArrayLike, scores: ArrayLike) -> "MLPBaseline":
        import torch
        from torch import nn

        x, y = _check_xy(emb_train, scores)
        n, d = x.shape
        m = y.shape[1]
        self._mu = x.mean(axis=0)
        self._sd = x.std(axis=0) + 1e-6
        xt = torch.as_tensor((x - self._mu) / self._sd, dtype=torch.float32)
        mask_np = np.isfinite(y)
        yt = torch.as_tensor(np.clip(np.where(mask_np, y, 0.0), 0.0, 1.0), dtype=torch.float32)
        mt = torch.as_tensor(mask_np, dtype=torch.float32)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = nn.Sequential(nn.Linear(d, self.hidden), nn.ReLU(), nn.Dropout(self.dropout),
                                nn.Linear(self.hidden, m))
            prior = np.clip(np.nan_to_num(nanmean(y, axis=0), nan=0.5), 1e-3, 1 - 1e-3)
            with torch.no_grad():
                net[-1].bias.copy_(torch.as_tensor(np.log(prior / (1 - prior)), dtype=torch.float32))
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            gen = torch.Generator().manual_seed(self.seed)
            bs = n if not self.batch_size else min(int(self.batch_size), n)
            self.loss_history = []
            net.train()
            for _ in range(self.epochs):
                perm = torch.randperm(n, generator=gen)
                total, weight = 0.0, 0.0
                for start in range(0, n, bs):
                    b = perm[start:start + bs]
                    mb = mt[b]
                    denom = mb.sum()
                    if denom.item() == 0:
                        continue
                    logits = net(xt[b])
                    loss_el = nn.functional.binary_cross_entropy_with_logits(logits, yt[b],
                                                                             reduction="none")
                    loss = (loss_el * mb).sum() / denom
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item() * denom.item()
                    weight += denom.item()
                self.loss_history.append(total / weight if weight else float("nan"))
        net.eval()
        self._net = net
        return self

    def predict_logits(self, emb: ArrayLike) -> FloatArray:
        import torch

        if self._net is None or self._mu is None or self._sd is None:
            raise RuntimeError("fit() first")
        x = np.asarray(emb, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self._mu.shape[0]:
            raise ValueError(f"emb must be [N, {self._mu.shape[0]}], got {x.shape}")
        xt = torch.as_tensor((x - self._mu) / self._sd, dtype=torch.float32)
        with torch.no_grad(), self._threads():
            return self._net(xt).numpy().astype(np.float64)  # type: ignore[operator]

    def predict(self, emb: ArrayLike) -> FloatArray:
        """``pred_quality[N_test, M]`` in (0, 1)."""
        z = self.predict_logits(emb)
        return 1.0 / (1.0 + np.exp(-z))


class BenchmarkPriorBaseline:
    """Per-group (e.g. source benchmark) prior: each model's mean score and mean cost on the training
    prompts of the prompt's group. Unseen groups -- and models never observed in a group -- fall back
    to the model's global mean."""

    def __init__(self) -> None:
        self._quality: dict[str, FloatArray] = {}
        self._cost: dict[str, FloatArray] = {}
        self._global_quality: FloatArray | None = None
        self._global_cost: FloatArray | None = None

    def fit(self, groups: Sequence[str], scores: ArrayLike, costs: ArrayLike) -> "BenchmarkPriorBaseline":
        s = np.asarray(scores, dtype=np.float64)
        c = np.asarray(costs, dtype=np.float64)
        g = np.asarray([str(v) for v in groups], dtype=object)
        if s.ndim != 2 or s.shape != c.shape or g.shape != (s.shape[0],):
            raise ValueError(f"need groups [N], scores and costs [N, M]; got {g.shape}, {s.shape}, {c.shape}")
        self._global_quality = nanmean(s, axis=0)
        self._global_cost = nanmean(c, axis=0)
        self._quality, self._cost = {}, {}
        for name in np.unique(g):
            rows = g == name
            q = nanmean(s[rows], axis=0)
            k = nanmean(c[rows], axis=0)
            self._quality[str(name)] = np.where(np.isfinite(q), q, self._global_quality)
            self._cost[str(name)] = np.where(np.isfinite(k), k, self._global_cost)
        return self

    def predict(self, groups: Sequence[str]) -> tuple[FloatArray, FloatArray]:
        """``(pred_quality[N, M], pred_cost[N, M])``."""
        if self._global_quality is None or self._global_cost is None:
            raise RuntimeError("fit() first")
        gq, gc = self._global_quality, self._global_cost
        q = np.stack([self._quality.get(str(v), gq) for v in groups]) if len(groups) else np.zeros((0, gq.size))
        c = np.stack([self._cost.get(str(v), gc) for v in groups]) if len(groups) else np.zeros((0, gc.size))
        return q.astype(np.float64), c.astype(np.float64)
