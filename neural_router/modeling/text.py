"""Prompt -> token ids and request features, identical in training and inference.

Truncation keeps the head and the tail of a long prompt: the first ``head_tokens`` tokens (the
instruction, often a few-shot preamble that tells which task this is) and the last
``max_length - head_tokens - specials`` tokens (the actual question, which comes last). The middle
is dropped. ``truncated`` records when that happened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neural_router.inference.interface import RequestFeatures

N_FEATURES = 6


@dataclass
class Encoded:
    input_ids: np.ndarray       # [N, T] int64, padded to the longest row
    attention_mask: np.ndarray  # [N, T] int64
    input_tokens: np.ndarray    # [N] token count of the full prompt (before truncation)
    truncated: np.ndarray       # [N] bool


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    probe = "hello"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain):])
    return [], []


def head_tail(ids: list[int], budget: int, head_tokens: int) -> list[int]:
    if len(ids) <= budget:
        return ids
    head = min(head_tokens, budget)
    tail = budget - head
    return ids[:head] + (ids[-tail:] if tail > 0 else [])


def tokenize(tokenizer, prompts: list[str], max_length: int, head_tokens: int
             ) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """-> (token rows with special tokens, unpadded; full prompt token counts [N]; truncated [N])."""
    prefix, suffix = _special_affixes(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text")
    raw = tokenizer(list(prompts), add_special_tokens=False, truncation=False,
                    return_attention_mask=False)["input_ids"] if prompts else []
    rows = [prefix + head_tail(ids, budget, head_tokens) + suffix for ids in raw]
    n_tokens = np.array([len(ids) for ids in raw], dtype=np.int64)
    return rows, n_tokens, n_tokens > budget


def pad(rows: list[list[int]], pad_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    T = max((len(r) for r in rows), default=1)
    input_ids = np.full((len(rows), T), pad_id if pad_id is not None else 0, dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return input_ids, mask


def length_buckets(lengths: np.ndarray, max_batch: int, slack: float = 1.3) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (sorted ascending), so padding stays small:
    a new batch starts when it is full or a row is more than ``slack`` x the batch's shortest + 8."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    for k in range(1, len(order) + 1):
        if k == len(order) or k - start >= max_batch or lengths[order[k]] > slack * lengths[order[start]] + 8:
            batches.append(order[start:k])
            start = k
    return batches


def encode(tokenizer, prompts: list[str], max_length: int, head_tokens: int) -> Encoded:
    rows, n_tokens, truncated = tokenize(tokenizer, prompts, max_length, head_tokens)
    input_ids, mask = pad(rows, tokenizer.pad_token_id)
    return Encoded(input_ids, mask, n_tokens, truncated)


def non_ascii_fraction(text: str) -> float:
    if not text:
        return 0.0
    return sum(1 for ch in text if ord(ch) > 127) / len(text)


def request_features(prompts: list[str], input_tokens: np.ndarray,
                     features: list[RequestFeatures] | None = None) -> np.ndarray:
    """[N, N_FEATURES] float32: what the request carries beyond the encoder's view of its text.

    log prompt length (untruncated), share of non-ASCII characters (a language signal), image /
    audio / tool flags, and log of the requested max output tokens (0 when not given).
    """
    feats = features or [RequestFeatures()] * len(prompts)
    if len(feats) != len(prompts):
        raise ValueError(f"got {len(feats)} feature rows for {len(prompts)} prompts")
    out = np.zeros((len(prompts), N_FEATURES), dtype=np.float32)
    for i, (p, f) in enumerate(zip(prompts, feats)):
        out[i] = (np.log1p(input_tokens[i]) / 8.0, non_ascii_fraction(p), f.has_image, f.has_audio,
                  f.has_tools, np.log1p(f.max_output_tokens or 0) / 8.0)
    return out
