"""A split as tensors, and the length-bucketed batches the trainer and the cached predictor run on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from neural_router.data.dataset import RoutingDataset
from neural_router.modeling.model import RouterModel
from neural_router.modeling.text import encode, request_features


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


def to_tensors(ds: RoutingDataset, tokenizer, max_length: int, head_tokens: int) -> Tensors:
    """``ds`` tokenised (head + tail truncation) with its request features and log-space targets."""
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
    """Rows ``idx`` of ``t`` on ``device``, cut to their longest prompt: cached ``hidden`` states
    (padded with zeros) when ``t`` has them, else ``input_ids``."""
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


def run_model(model: RouterModel, b: dict[str, torch.Tensor], start_layer: int):
    """The model's raw outputs on a batch: from the cached hidden states after ``start_layer``
    layers when the batch has them, else from the token ids."""
    if "hidden" in b:
        return model.forward_from(b["hidden"], b["attention_mask"], b["features"], start_layer)
    return model(b["input_ids"], b["attention_mask"], b["features"])


def capture_trunk(model: RouterModel):
    """Hook ``model.trunk``: returns ``(last, handle)``, where ``last[0]`` is the trunk's output (what
    the heads read) of the latest forward pass; ``handle.remove()`` unhooks it."""
    last: list[torch.Tensor | None] = [None]
    return last, model.trunk.register_forward_hook(lambda _m, _i, out: last.__setitem__(0, out))
