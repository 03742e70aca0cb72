"""The routing policy: turn per-model estimates for one request into a choice.

Everything here is a pure function over numpy arrays; nothing holds state between calls.

Utility
    ``utility = quality_weight * quality
                - cost_weight * cost / max(cost)
                - latency_weight * latency / max(latency)``

    Cost and latency are normalised per request by the most expensive / slowest candidate among
    those considered, so the weights are scale-free: ``cost_weight=0.5`` means "willing to give up
    0.5 quality to go from the most expensive candidate to a free one". The same holds for latency.

Hard limits (never broken)
    A model is *eligible* only if its context window holds the prompt plus the requested output
    (``request.max_output_tokens``, or ``DEFAULT_OUTPUT_TOKENS`` when unset), it accepts every
    modality of the request, it is in ``allowed_models`` (when given) and not in ``denied_models``.
    If nothing is eligible, :func:`route` raises :class:`NoEligibleModelError`.

Soft constraints (``min_quality``, ``max_cost_usd``, ``max_latency_ms``)
    Eligible models meeting all of them are *feasible*; the feasible model with the highest utility
    wins. If none is feasible, the policy does not fail: it picks the eligible model with the
    smallest total relative violation

        (min_quality - q) / min_quality + (c - max_cost) / max_cost + (l - max_latency) / max_latency

    (each term counted only when that constraint is broken), ties broken by utility. The decision
    then has ``feasible=False``, ``violated`` names the constraints the chosen model breaks, and
    ``reason`` says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from neural_router.inference.interface import RequestFeatures

if TYPE_CHECKING:
    from neural_router.pool import ModelPool

DEFAULT_OUTPUT_TOKENS = 256  # output budget assumed when a request does not set max_output_tokens
_EPS = 1e-12


class NoEligibleModelError(ValueError):
    """No model in the pool can serve the request within its hard capability limits."""


# ---- configuration ----------------------------------------------------------------------------

def _check_number(name: str, value: float | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class Preferences:
    """How much each objective matters. Cost and latency weights are in units of quality."""

    quality_weight: float = 1.0
    cost_weight: float = 0.0
    latency_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("quality_weight", "cost_weight", "latency_weight"):
            _check_number(f"Preferences.{name}", getattr(self, name))
        if self.quality_weight == self.cost_weight == self.latency_weight == 0:
            raise ValueError("Preferences: quality_weight, cost_weight and latency_weight are all 0; "
                             "set at least one to a positive value (default quality_weight=1.0)")


# Named preference sets: the service's built-in presets (``"preset"`` in /v1/route, model
# ``"router:<name>"`` in the proxy) and the demo's; ``DEFAULT_PRESET`` is used when none is named.
PRESETS: dict[str, Preferences] = {
    "balanced": Preferences(quality_weight=1.0, cost_weight=0.3, latency_weight=0.1),
    "quality": Preferences(quality_weight=1.0, cost_weight=0.0, latency_weight=0.0),
    "cheap": Preferences(quality_weight=1.0, cost_weight=1.0, latency_weight=0.0),
    "fast": Preferences(quality_weight=1.0, cost_weight=0.0, latency_weight=1.0),
}
DEFAULT_PRESET = "balanced"


def _names(field_name: str, value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ValueError(f"Constraints.{field_name} must be a tuple of model names, not the string "
                         f"{value!r}; write ({value!r},)")
    names = tuple(value)
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"Constraints.{field_name} must contain model names (str), got {names!r}")
    return names


@dataclass(frozen=True)
class Constraints:
    """Soft limits (quality, cost, latency) and hard model allow/deny lists. ``None`` = no limit."""

    min_quality: float | None = None
    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    allowed_models: tuple[str, ...] | None = None
    denied_models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.min_quality is not None and (isinstance(self.min_quality, bool) or not isinstance(
                self.min_quality, (int, float, np.integer, np.floating)) or not math.isfinite(self.min_quality)):
            raise ValueError(f"Constraints.min_quality must be a finite number or None, got {self.min_quality!r}")
        _check_number("Constraints.max_cost_usd", self.max_cost_usd, optional=True)
        _check_number("Constraints.max_latency_ms", self.max_latency_ms, optional=True)
        allowed = _names("allowed_models", self.allowed_models)
        if allowed is not None and not allowed:
            raise ValueError("Constraints.allowed_models is empty, which would exclude every model; "
                             "use None for no restriction")
        object.__setattr__(self, "allowed_models", allowed)
        object.__setattr__(self, "denied_models", _names("denied_models", self.denied_models))


@dataclass(frozen=True, eq=False)
class Capabilities:
    """Hard per-model limits, in the same column order as the prediction arrays."""

    context_window: np.ndarray              # [M] int, prompt + output tokens a model can hold
    modalities: tuple[frozenset[str], ...]  # [M] input kinds each model accepts

    def __post_init__(self) -> None:
        cw = np.asarray(self.context_window)
        if cw.ndim != 1 or not np.issubdtype(cw.dtype, np.integer):
            raise ValueError(f"Capabilities.context_window must be a 1-D integer array, "
                             f"got shape {cw.shape} dtype {cw.dtype}")
        if (cw <= 0).any():
            raise ValueError("Capabilities.context_window must be > 0 for every model")
        mods = tuple(frozenset(m) for m in self.modalities)
        if len(mods) != len(cw):
            raise ValueError(f"Capabilities: context_window has {len(cw)} models but modalities has "
                             f"{len(mods)}; give one entry per model")
        object.__setattr__(self, "context_window", cw.astype(np.int64))
        object.__setattr__(self, "modalities", mods)

    @classmethod
    def from_pool(cls, pool: "ModelPool") -> "Capabilities":
        return cls(pool.context_windows(), tuple(frozenset(m.modalities) for m in pool.models))


@dataclass(frozen=True)
class Decision:
    """The chosen model and why."""

    model: str
    index: int                  # column of ``model`` in the arrays passed to route()
    reason: str
    fallbacks: list[str]        # other eligible models, best first
    utility: dict[str, float]   # utility of every eligible model
    violated: list[str] = field(default_factory=list)  # soft constraints the choice breaks
    feasible: bool = True       # False when no eligible model met every soft constraint


# ---- scoring ----------------------------------------------------------------------------------

def _normalise(x: np.ndarray, top: np.ndarray | None = None) -> np.ndarray:
    """Divide by the largest value along the last axis (per request), or by ``top`` (one value per
    request, i.e. ``x.shape[:-1]``) when given; a top <= 0 divides by 1, so all-zero rows stay 0."""
    x = np.asarray(x, dtype=np.float64)
    t = x.max(axis=-1, keepdims=True) if top is None else np.asarray(top, dtype=np.float64)[..., None]
    return x / np.where(t > 0, t, 1.0)


def weighted_utility(quality: np.ndarray, cost: np.ndarray, latency: np.ndarray,
                     quality_weight: float | np.ndarray, cost_weight: float | np.ndarray,
                     latency_weight: float | np.ndarray, cost_max: np.ndarray | None = None,
                     latency_max: np.ndarray | None = None) -> np.ndarray:
    """The utility formula of the module docstring on [..., M] estimates -> [..., M].

    Weights are scalars or arrays that broadcast against the estimates (``w[:, None]`` for one weight
    per request). Cost and latency are divided by their per-request maximum, or by ``cost_max`` /
    ``latency_max`` (one value per request) when given, e.g. fixed maxima that make the utility of
    two routers comparable. Inputs are not validated: :func:`utility` is the checked entry point.
    """
    q, c, l = (np.asarray(a, dtype=np.float64) for a in (quality, cost, latency))
    return (quality_weight * q - cost_weight * _normalise(c, cost_max)
            - latency_weight * _normalise(l, latency_max))


def utility(quality: np.ndarray, cost: np.ndarray, latency: np.ndarray,
            prefs: Preferences) -> np.ndarray:
    """[..., M] estimates -> [..., M] utility, cost and latency normalised per request (last axis).

    ``cost_weight=0.5`` = willing to give up 0.5 quality to go from the most expensive candidate to
    a free one; likewise ``latency_weight`` against the slowest candidate.
    """
    return weighted_utility(quality, cost, latency, prefs.quality_weight, prefs.cost_weight,
                            prefs.latency_weight)


def pessimistic_quality(quality: np.ndarray, evidence: np.ndarray, penalty: float) -> np.ndarray:
    """Quality lowered by ``penalty`` standard errors of what the router knows about each model.

    ``quality`` is [..., M]; ``evidence`` is [M], the outcomes of each model the router was trained on
    (:func:`neural_router.policy.exploration.read_evidence`). Returns
    ``clip(q - penalty * sqrt(q (1 - q) / (evidence + 1)), 0, 1)``: the binomial standard error of a
    mean of that many outcomes, so a model known from 30 outcomes is marked down about 2.6x as much
    as one known from 200. Routing on it (pessimism in the face of uncertainty) keeps a few lucky
    outcomes of a rarely served model from moving all the traffic to it. ``penalty=0`` returns
    ``quality`` unchanged. A model with no outcomes at all (a new pool member) loses up to
    ``penalty * 0.5``, so it gets traffic only from exploration.
    """
    _check_number("penalty", penalty)
    q = np.asarray(quality, dtype=np.float64)
    e = np.asarray(evidence, dtype=np.float64)
    if e.shape != q.shape[-1:]:
        raise ValueError(f"pessimistic_quality: evidence has shape {e.shape}, expected ({q.shape[-1]},): "
                         "one outcome count per model, in the quality columns' order")
    if (e < 0).any() or not np.isfinite(e).all():
        raise ValueError(f"pessimistic_quality: evidence must be finite counts >= 0, got {e.tolist()}")
    if penalty == 0:
        return q
    return np.clip(q - penalty * np.sqrt(np.clip(q * (1 - q), 0, None) / (e + 1)), 0.0, 1.0)


def _violations(q: np.ndarray, c: np.ndarray, l: np.ndarray,
                cons: Constraints) -> dict[str, np.ndarray]:
    """Relative shortfall per soft constraint, [M] each, 0 where met."""
    out = {}
    if cons.min_quality is not None:
        out["min_quality"] = np.maximum(cons.min_quality - q, 0) / max(abs(cons.min_quality), _EPS)
    if cons.max_cost_usd is not None:
        out["max_cost_usd"] = np.maximum(c - cons.max_cost_usd, 0) / max(cons.max_cost_usd, _EPS)
    if cons.max_latency_ms is not None:
        out["max_latency_ms"] = np.maximum(l - cons.max_latency_ms, 0) / max(cons.max_latency_ms, _EPS)
    return out


# ---- routing one request ----------------------------------------------------------------------

def _exclusions(models: Sequence[str], cons: Constraints, caps: Capabilities,
                request: RequestFeatures, needed_tokens: int) -> list[list[str]]:
    """Per model, the hard limits it fails (empty list = eligible)."""
    known = set(models)
    for field_name, names in (("allowed_models", cons.allowed_models or ()),
                              ("denied_models", cons.denied_models)):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"Constraints.{field_name} names unknown model(s) {', '.join(map(repr, unknown))}; "
                             f"known models: {', '.join(models)}")
    reasons: list[list[str]] = []
    for j, m in enumerate(models):
        r = []
        if m in cons.denied_models:
            r.append("denied_models")
        if cons.allowed_models is not None and m not in cons.allowed_models:
            r.append("allowed_models")
        if caps.context_window[j] < needed_tokens:
            r.append("context window")
        missing = request.modalities - caps.modalities[j]
        if missing:
            r.append(f"modality {'+'.join(sorted(missing))}")
        reasons.append(r)
    return reasons


def _summary(reasons: list[list[str]]) -> str:
    """'excluded: 2 by context window, 1 by denied_models' (each model counted once, first reason)."""
    counts: dict[str, int] = {}
    for r in reasons:
        if r:
            counts[r[0]] = counts.get(r[0], 0) + 1
    return "excluded: " + ", ".join(f"{n} by {why}" for why, n in counts.items()) if counts else ""


def route(models: list[str], quality: np.ndarray, cost: np.ndarray, latency: np.ndarray,
          prefs: Preferences, constraints: Constraints, capabilities: Capabilities,
          request: RequestFeatures, input_tokens: int) -> Decision:
    """Choose a model for one request from [M] estimates (see the module docstring for the rules)."""
    M = len(models)
    q, c, l = (np.asarray(a, dtype=np.float64) for a in (quality, cost, latency))
    for name, a in (("quality", q), ("cost", c), ("latency", l)):
        if a.shape != (M,):
            raise ValueError(f"route: {name} has shape {a.shape}, expected ({M},) (one value per model)")
        if not np.isfinite(a).all():
            raise ValueError(f"route: {name} contains NaN or inf; fix the predictor output")
    if len(capabilities.context_window) != M:
        raise ValueError(f"route: capabilities cover {len(capabilities.context_window)} models but "
                         f"{M} were given; build them from the same pool")
    if input_tokens < 0:
        raise ValueError(f"route: input_tokens must be >= 0, got {input_tokens}")

    out_tokens = DEFAULT_OUTPUT_TOKENS if request.max_output_tokens is None else request.max_output_tokens
    needed = int(input_tokens) + int(out_tokens)
    reasons = _exclusions(models, constraints, capabilities, request, needed)
    eligible = np.array([not r for r in reasons])
    if not eligible.any():
        groups: dict[str, list[str]] = {}
        for m, r in zip(models, reasons):
            for why in r:
                groups.setdefault(why, []).append(m)
        detail = "; ".join(f"{why}: {', '.join(ms)}" for why, ms in groups.items())
        raise NoEligibleModelError(
            f"no model can serve this request ({needed} tokens incl. {out_tokens} output, modalities "
            f"{'+'.join(sorted(request.modalities))}); excluded by {detail}")

    idx = np.flatnonzero(eligible)  # utility is normalised among eligible models only
    u = utility(q[idx], c[idx], l[idx], prefs)
    viol = _violations(q[idx], c[idx], l[idx], constraints)
    total = sum(viol.values(), np.zeros(len(idx)))
    feasible = total == 0
    # feasible first (by utility), then infeasible by total violation, then utility, then cost
    order = np.lexsort((idx, c[idx], -u, total, ~feasible))
    best = int(order[0])
    j = int(idx[best])

    stats = f"(q={q[j]:.2f}, ${c[j]:.4g}, {l[j]:.0f} ms)"
    pool_txt = f"{len(idx)} eligible model{'s' if len(idx) != 1 else ''}"
    if feasible[best]:
        among = pool_txt if feasible.all() else f"{int(feasible.sum())} of {pool_txt} meeting constraints"
        reason = f"highest utility {stats} among {among}"
        violated: list[str] = []
    else:
        violated = [k for k, v in viol.items() if v[best] > 0]
        reason = (f"no eligible model meets every constraint; closest compromise {stats} among "
                  f"{pool_txt}, violating {', '.join(violated)}")
    excluded = _summary(reasons)
    if excluded:
        reason += f"; {excluded}"
    return Decision(model=models[j], index=j, reason=reason,
                    fallbacks=[models[int(idx[k])] for k in order[1:]],
                    utility={models[int(i)]: float(v) for i, v in zip(idx, u)},
                    violated=violated, feasible=bool(feasible[best]))


# ---- threshold calibration (RouteLLM style) and its checks ------------------------------------

def _check_2d(**arrays: np.ndarray) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=np.float64) for a in arrays.values()]
    shape = out[0].shape
    for name, a in zip(arrays, out):
        if a.ndim != 2 or a.shape != shape:
            raise ValueError(f"{name} must be [N, M] like the others ({shape}), got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or inf")
    return out


def _check_fraction(name: str, fraction: float) -> None:
    if not (isinstance(fraction, (int, float, np.floating)) and 0.0 <= fraction <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {fraction!r}")


def calibrate_threshold(strong_minus_weak_quality: np.ndarray, strong_fraction: float) -> float:
    """Threshold t such that routing to the strong model when ``score >= t`` sends about
    ``strong_fraction`` of this sample there (exact unless scores tie). 0 -> inf, 1 -> min(score)."""
    _check_fraction("calibrate_threshold: strong_fraction", strong_fraction)
    s = np.asarray(strong_minus_weak_quality, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.isfinite(s).all():
        raise ValueError("calibrate_threshold: scores must be a non-empty 1-D array of finite numbers")
    k = int(round(strong_fraction * s.size))
    return math.inf if k == 0 else float(np.sort(s)[::-1][k - 1])


def calibrate_cost_weight(quality: np.ndarray, cost: np.ndarray, latency: np.ndarray,
                          models: list[str], target_model: str, fraction: float,
                          prefs_quality_weight: float = 1.0, latency_weight: float = 0.0) -> float:
    """Cost weight under which about ``fraction`` of the sample is routed to ``target_model``.

    Uses the same per-request normalised utility as :func:`utility`. The target's share is scanned on
    a log grid of weights to find the achievable range and a bracket, then refined by bisection; the
    smallest weight reaching the fraction is returned. Raises ValueError if it is out of range.
    """
    _check_fraction("calibrate_cost_weight: fraction", fraction)
    q, c, l = _check_2d(quality=quality, cost=cost, latency=latency)
    if q.shape[1] != len(models):
        raise ValueError(f"calibrate_cost_weight: arrays have {q.shape[1]} columns but {len(models)} models")
    if target_model not in models:
        raise ValueError(f"calibrate_cost_weight: unknown target_model {target_model!r}; "
                         f"known models: {', '.join(models)}")
    t = models.index(target_model)
    Preferences(prefs_quality_weight, 0.0, latency_weight)  # validate the fixed weights
    qw, lw = float(prefs_quality_weight), float(latency_weight)
    base = weighted_utility(q, c, l, qw, 0.0, lw)  # utility without the cost term
    cn = _normalise(c)

    def share(w: float) -> float:
        u = base - w * cn
        tied = u == u.max(axis=1, keepdims=True)
        return float((np.argmin(np.where(tied, cn, np.inf), axis=1) == t).mean())

    # above w_max the cost term outweighs every quality and latency gap: cheapest always wins
    gaps = np.diff(np.sort(cn, axis=1), axis=1)
    min_gap = gaps[gaps > 0].min() if (gaps > 0).any() else 1.0
    w_max = 2 * (qw * np.ptp(q) + lw + _EPS) / min_gap
    w_min = min(max(qw, lw, _EPS) * 1e-4, w_max / 10)
    grid = np.concatenate([[0.0], np.geomspace(w_min, w_max, 400)])
    shares = np.array([share(w) for w in grid])
    if not shares.min() - 1e-9 <= fraction <= shares.max() + 1e-9:
        raise ValueError(f"calibrate_cost_weight: {target_model!r} can only receive between "
                         f"{shares.min():.3f} and {shares.max():.3f} of this sample, not {fraction}")
    err = shares - fraction
    hit = np.flatnonzero(np.abs(err) < 0.5 / len(q))
    if hit.size:
        return float(grid[hit[0]])
    k = int(np.flatnonzero(np.sign(err[:-1]) != np.sign(err[1:]))[0])  # first bracket
    lo, hi, s_lo = grid[k], grid[k + 1], err[k]
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        e = share(mid) - fraction
        if abs(e) < 0.5 / len(q):
            return float(mid)
        if np.sign(e) == np.sign(s_lo):
            lo, s_lo = mid, e
        else:
            hi = mid
    return float(lo if abs(share(lo) - fraction) <= abs(share(hi) - fraction) else hi)
