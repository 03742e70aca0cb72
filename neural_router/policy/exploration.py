"""Exploration on top of the routing policy, with the propensity of every choice.

The greedy policy (:func:`neural_router.policy.routing.route`) always sends a request to the model
with the highest predicted utility, so the outcomes it logs say nothing about the other models. Exploring a
little, and logging the probability with which the served model was picked (its *propensity*),
turns logged traffic into data for training and for off-policy evaluation (inverse propensity
weighting). Everything here is a pure function; randomness comes from the ``numpy.random.Generator``
passed in, so a seeded generator gives reproducible choices.

Candidates
    Only models the policy found *eligible* (the keys of ``Decision.utility``: hard limits such as
    context window, modalities and allowed/denied lists are met) are ever chosen. When the request
    has a soft constraint (``min_quality``, ``max_cost_usd``, ``max_latency_ms``), there is no
    exploration (propensity 1) unless ``explore_with_constraints`` is set; then exploration is
    limited to the eligible models predicted to meet every soft constraint (none or one such model:
    no exploration).

Policies (``ExplorationConfig.kind``)
    ``none``: the greedy choice, propensity 1.

    ``epsilon_greedy``: with probability ``epsilon`` a candidate drawn uniformly, else the greedy
    choice. With K candidates the greedy model has propensity ``(1 - ε) + ε/K``, every other one
    ``ε/K``.

    ``margin`` (either kind): candidates are further limited to the models whose policy utility is
    within ``margin`` of the greedy choice's (boosted models always stay). Exploration is then
    spent on near-ties, where an outcome can change a decision, and propensities stay large
    (small importance weights). No near-tie: no exploration, propensity 1.

    ``thompson``: each candidate's quality is drawn from ``Beta(q·n, (1 − q)·n)`` (``q`` the
    predicted quality, ``n`` its strength, below), utility is recomputed with the policy's own
    formula (:func:`neural_router.policy.routing.utility`, cost and latency normalised among the eligible
    models) and the best model wins. Its propensity has no closed form; it is estimated by Monte
    Carlo (``propensity_draws`` more draws from the same generator, counting the actual draw too,
    so the estimate is never 0).

    The strength ``n`` is ``thompson_pseudo_count`` for every model, unless
    ``thompson_evidence_half`` (``k``) is set: then it follows the router's evidence for each model,
    ``n_m = max(2, n0 · e_m / (e_m + k))`` with ``e_m`` the number of outcomes of model ``m`` the
    router was trained on (``evidence``, from its ``training_metrics.json``; see
    :func:`read_evidence`) and ``n0 = thompson_pseudo_count``. The draw's variance,
    ``q(1 − q) / (n_m + 1)``, is then about ``q(1 − q) · (1 + k / e_m) / n0``: a floor the
    predictor never gets below, plus a part that shrinks as ``1 / e_m``. A model the router has
    seen few outcomes of (a new pool member) gets wide draws and so more of the traffic, without a
    separate boost; one it has seen thousands of is explored only where its prediction is close.

Cold start (``boost_models``)
    New pool members have few outcomes. When a boosted model is a candidate, with probability
    ``boost_epsilon`` a boosted candidate is drawn uniformly instead of applying the policy above;
    propensities account for the mixture exactly (for Thompson, up to the Monte Carlo estimate).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from neural_router.policy.routing import Constraints, Decision, Preferences, _check_number, utility

ExplorationKind = Literal["none", "epsilon_greedy", "thompson"]
KINDS: tuple[str, ...] = ("none", "epsilon_greedy", "thompson")
_Q_CLIP = 1e-3  # Beta parameters must be > 0: predicted qualities are clipped to [1e-3, 1 - 1e-3]
_N_MIN = 2.0    # weakest Thompson strength: Beta(2q, 2(1 - q)), uniform at q = 0.5


@dataclass(frozen=True)
class ExplorationConfig:
    """How much, and how, the router explores (see the module docstring)."""

    kind: ExplorationKind = "none"
    epsilon: float = 0.05
    thompson_pseudo_count: float = 20.0
    explore_with_constraints: bool = False
    boost_models: tuple[str, ...] = ()
    boost_epsilon: float = 0.2
    propensity_draws: int = 200
    margin: float | None = None  # explore only among models within this utility of the best
    thompson_evidence_half: float | None = None  # per-model Thompson strength from the evidence
    evidence: Mapping[str, float] = field(default_factory=dict)  # outcomes seen per model

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ExplorationConfig.kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        for name in ("epsilon", "boost_epsilon"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"ExplorationConfig.{name} must be a number in [0, 1], got {v!r}")
        n = self.thompson_pseudo_count
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not (math.isfinite(n) and n > 0):
            raise ValueError(f"ExplorationConfig.thompson_pseudo_count must be a finite number > 0, got {n!r}")
        if isinstance(self.boost_models, str):
            raise ValueError("ExplorationConfig.boost_models must be a tuple of model names, not a string")
        object.__setattr__(self, "boost_models", tuple(self.boost_models))
        if self.kind == "epsilon_greedy" and self.boost_models and self.epsilon + self.boost_epsilon > 1:
            raise ValueError(f"ExplorationConfig: epsilon + boost_epsilon must be <= 1, got "
                             f"{self.epsilon} + {self.boost_epsilon}")
        _check_number("ExplorationConfig.margin", self.margin, optional=True)
        _check_number("ExplorationConfig.thompson_evidence_half", self.thompson_evidence_half, optional=True)
        if self.thompson_evidence_half is not None and not self.thompson_evidence_half > 0:
            raise ValueError(f"ExplorationConfig.thompson_evidence_half must be > 0 (or None for a fixed "
                             f"strength), got {self.thompson_evidence_half!r}")
        evidence = dict(self.evidence)
        for m, e in evidence.items():
            if isinstance(e, bool) or not isinstance(e, (int, float)) or not (math.isfinite(e) and e >= 0):
                raise ValueError(f"ExplorationConfig.evidence[{m!r}] must be a count >= 0, got {e!r}")
        object.__setattr__(self, "evidence", evidence)
        if not isinstance(self.propensity_draws, int) or self.propensity_draws < 1:
            raise ValueError(f"ExplorationConfig.propensity_draws must be an integer >= 1, "
                             f"got {self.propensity_draws!r}")

    @property
    def name(self) -> str:
        """The policy name logged with each decision, e.g. ``epsilon_greedy(0.05)``."""
        if self.kind == "none":
            return "greedy"
        base = (f"epsilon_greedy({self.epsilon:g})" if self.kind == "epsilon_greedy"
                else f"thompson({self.thompson_pseudo_count:g})" if self.thompson_evidence_half is None
                else f"thompson({self.thompson_pseudo_count:g},evidence/{self.thompson_evidence_half:g})")
        if self.margin is not None:
            base += f"@margin({self.margin:g})"
        if self.boost_models and self.boost_epsilon > 0:
            base += f"+boost({self.boost_epsilon:g})"
        return base

    def strength(self, models: Sequence[str]) -> np.ndarray:
        """[len(models)] Thompson strength ``n`` of each model (see the module docstring)."""
        n0 = float(self.thompson_pseudo_count)
        if self.thompson_evidence_half is None:
            return np.full(len(models), n0)
        e = np.array([float(self.evidence.get(m, 0.0)) for m in models])
        return np.maximum(_N_MIN, n0 * e / (e + self.thompson_evidence_half))


def read_evidence(router_dir: str | Path) -> dict[str, int]:
    """Outcomes per model that the router in ``router_dir`` was trained on
    (``training_metrics.json`` → ``summary.observed_per_model``, written by ``neural-router train``
    and ``update``; an exported folder carries the file too). Raises ValueError, saying how to
    fix it, when the folder has no such counts."""
    path = Path(router_dir) / "training_metrics.json"
    try:
        counts = json.loads(path.read_text())["summary"]["observed_per_model"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: no per-model outcome counts (summary.observed_per_model) to scale "
                         f"Thompson sampling by ({type(e).__name__}: {e}); use a router folder written "
                         "by `neural-router train`/`update`/`export`, or set "
                         "exploration.thompson_evidence_half to null (a fixed strength)") from None
    return {str(m): int(n) for m, n in counts.items()}


class Exploration(NamedTuple):
    """The served model, the probability the logging policy gave it, and that policy's name."""

    model: str
    propensity: float
    policy: str
    explored: bool = False        # True when ``model`` differs from the greedy choice
    constrained: bool = False     # True when soft constraints switched exploration off


def has_soft_constraints(constraints: Constraints | None) -> bool:
    return constraints is not None and any(
        v is not None for v in (constraints.min_quality, constraints.max_cost_usd, constraints.max_latency_ms))


def _arrays(models: Sequence[str], quality: np.ndarray, cost: np.ndarray,
            latency: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q, c, l = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (quality, cost, latency))
    for name, a in (("quality", q), ("cost", c), ("latency", l)):
        if a.shape != (len(models),):
            raise ValueError(f"explore: {name} has {a.size} values for {len(models)} models")
        if not np.isfinite(a).all():
            raise ValueError(f"explore: {name} contains NaN or inf")
    return q, c, l


def _meets(q: float, c: float, l: float, cons: Constraints) -> bool:
    return ((cons.min_quality is None or q >= cons.min_quality)
            and (cons.max_cost_usd is None or c <= cons.max_cost_usd)
            and (cons.max_latency_ms is None or l <= cons.max_latency_ms))


def candidates(decision: Decision, models: Sequence[str], quality: np.ndarray, cost: np.ndarray,
               latency: np.ndarray, cfg: ExplorationConfig,
               constraints: Constraints | None = None) -> tuple[list[str], bool]:
    """(models exploration may pick, in ``models`` order; whether soft constraints switched it off).

    Always a subset of the eligible models (``decision.utility``) that contains ``decision.model``.
    """
    eligible = [m for m in models if m in decision.utility]
    if decision.model not in eligible:
        raise ValueError(f"explore: the decision's model {decision.model!r} is not among its eligible "
                         f"models ({', '.join(eligible)})")
    if cfg.kind == "none":
        return [decision.model], False
    if has_soft_constraints(constraints):
        assert constraints is not None
        if not cfg.explore_with_constraints or not decision.feasible:
            return [decision.model], True
        q, c, l = _arrays(models, quality, cost, latency)
        pos = {m: j for j, m in enumerate(models)}
        feasible = [m for m in eligible if _meets(q[pos[m]], c[pos[m]], l[pos[m]], constraints)]
        if decision.model not in feasible:  # the policy's own check is authoritative
            feasible = sorted({*feasible, decision.model}, key=pos.__getitem__)
        feasible = _near_best(decision, feasible, cfg)
        return feasible, len(feasible) < 2
    return _near_best(decision, eligible, cfg), False


def _near_best(decision: Decision, cands: list[str], cfg: ExplorationConfig) -> list[str]:
    """Keep the candidates whose policy utility is within ``cfg.margin`` of the greedy choice's (all
    of them without a margin; boosted new models always stay). Exploring only near-ties spends the
    exploration budget where the router's decision is uncertain, not on models it rightly rejects."""
    if cfg.margin is None:
        return cands
    best = decision.utility[decision.model]
    return [m for m in cands if m == decision.model or m in cfg.boost_models
            or decision.utility[m] >= best - cfg.margin]


def _boost_probs(cands: list[str], cfg: ExplorationConfig) -> tuple[float, np.ndarray]:
    """(mixture weight β of the boost branch, its distribution over the candidates)."""
    boosted = np.array([m in cfg.boost_models for m in cands], dtype=np.float64)
    if not boosted.any() or cfg.boost_epsilon == 0:
        return 0.0, np.zeros(len(cands))
    return float(cfg.boost_epsilon), boosted / boosted.sum()


def _thompson_setup(decision: Decision, models: Sequence[str], quality: np.ndarray, cost: np.ndarray,
                    latency: np.ndarray, cands: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                    list[str], np.ndarray]:
    """(q, c, l of the eligible models, their names, mask of the candidates among them)."""
    q, c, l = _arrays(models, quality, cost, latency)
    eligible = np.array([m in decision.utility for m in models])
    names = [m for m, e in zip(models, eligible) if e]
    return q[eligible], c[eligible], l[eligible], names, np.array([m in cands for m in names])


def _thompson_winners(q: np.ndarray, c: np.ndarray, l: np.ndarray, cand_mask: np.ndarray,
                      prefs: Preferences, n: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws] index (into the eligible arrays) of the best candidate under sampled qualities.
    Utility is the policy's, normalised among all eligible models as the policy does."""
    qc = np.clip(q, _Q_CLIP, 1 - _Q_CLIP)
    sampled = rng.beta(qc * n, (1 - qc) * n, size=(draws, len(qc)))
    u = utility(sampled, np.broadcast_to(c, sampled.shape), np.broadcast_to(l, sampled.shape), prefs)
    return np.argmax(np.where(cand_mask, u, -np.inf), axis=1)


def _thompson_frequencies(decision: Decision, models: Sequence[str], quality: np.ndarray,
                          cost: np.ndarray, latency: np.ndarray, prefs: Preferences,
                          cfg: ExplorationConfig, rng: np.random.Generator, cands: list[str],
                          draws: int) -> np.ndarray:
    """[len(cands)] share of ``draws`` Thompson draws each candidate wins."""
    q, c, l, names, mask = _thompson_setup(decision, models, quality, cost, latency, cands)
    wins = _thompson_winners(q, c, l, mask, prefs, cfg.strength(names), draws, rng)
    freq = np.bincount(wins, minlength=len(names)) / draws
    return np.array([freq[names.index(m)] for m in cands])


def action_probabilities(decision: Decision, models: Sequence[str], quality: np.ndarray,
                         cost: np.ndarray, latency: np.ndarray, prefs: Preferences,
                         cfg: ExplorationConfig, rng: np.random.Generator | None = None,
                         constraints: Constraints | None = None,
                         draws: int | None = None) -> dict[str, float]:
    """P(each model is served) under ``cfg``: exact for none/epsilon-greedy, a Monte Carlo estimate
    (``draws`` samples, default ``cfg.propensity_draws``) for Thompson. Sums to 1; models that are
    not candidates get 0."""
    cands, _ = candidates(decision, models, quality, cost, latency, cfg, constraints)
    out = {m: 0.0 for m in models}
    if len(cands) == 1:
        out[cands[0]] = 1.0
        return out
    beta, boost = _boost_probs(cands, cfg)
    if cfg.kind == "epsilon_greedy":
        greedy = np.array([m == decision.model for m in cands], dtype=np.float64)
        p = (1 - cfg.epsilon - beta) * greedy + cfg.epsilon / len(cands) + beta * boost
    else:
        if rng is None:
            raise ValueError("action_probabilities: Thompson sampling needs an rng")
        ts = _thompson_frequencies(decision, models, quality, cost, latency, prefs, cfg, rng, cands,
                                   draws or cfg.propensity_draws)
        p = (1 - beta) * ts + beta * boost
    for m, v in zip(cands, p):
        out[m] = float(v)
    return out


def explore(decision: Decision, models: Sequence[str], quality: np.ndarray, cost: np.ndarray,
            latency: np.ndarray, prefs: Preferences, cfg: ExplorationConfig,
            rng: np.random.Generator, constraints: Constraints | None = None) -> Exploration:
    """Pick the model to serve for one request and the probability of that pick.

    ``decision`` is the policy's greedy decision over ``models`` with their [M] predicted
    ``quality``, ``cost`` and ``latency`` (the arrays given to :func:`~neural_router.policy.routing.route`);
    ``constraints`` are the request's (soft constraints may switch exploration off).
    """
    cands, constrained = candidates(decision, models, quality, cost, latency, cfg, constraints)
    if len(cands) == 1:
        return Exploration(decision.model, 1.0, "greedy" if cfg.kind == "none" else cfg.name,
                           False, constrained)
    beta, boost = _boost_probs(cands, cfg)
    k = len(cands)
    if cfg.kind == "epsilon_greedy":
        greedy = np.array([m == decision.model for m in cands], dtype=np.float64)
        p = (1 - cfg.epsilon - beta) * greedy + cfg.epsilon / k + beta * boost
        j = int(rng.choice(k, p=p / p.sum()))
        return Exploration(cands[j], float(p[j]), cfg.name, cands[j] != decision.model, False)
    # Thompson sampling (mixed with the boost branch)
    if beta > 0 and rng.random() < beta:
        j = int(rng.choice(k, p=boost))
    else:
        q, c, l, names, mask = _thompson_setup(decision, models, quality, cost, latency, cands)
        won = int(_thompson_winners(q, c, l, mask, prefs, cfg.strength(names), 1, rng)[0])
        j = cands.index(names[won])
    n = cfg.propensity_draws
    ts = _thompson_frequencies(decision, models, quality, cost, latency, prefs, cfg, rng, cands, n)
    # the draw actually made counts as one more sample, so the estimate is never 0
    ts_j = (ts[j] * n + 1) / (n + 1)
    propensity = min(1.0, (1 - beta) * ts_j + beta * float(boost[j]))
    return Exploration(cands[j], float(propensity), cfg.name, cands[j] != decision.model, False)
