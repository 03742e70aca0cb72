"""Does the int8 model decide like the fp32 one? The check behind int8 as the default on CPU.

``neural-router export --int8`` runs both ONNX models on the router's validation split (the data,
fraction and salt ``training_metrics.json`` records, :func:`split_as_trained`) and measures:

- the share of prompts on which both pick the same model, for each of :data:`CHECK_PREFERENCES`
  (argmax of the policy's utility over all candidates, no constraints);
- the AIQ of each on the split's true outcomes (:func:`router_aiq`) and their difference.

int8 becomes the default on CPU (``default_precision.cpu`` in ``export_report.json``, which
``precision="auto"`` follows) only when every share is at least :data:`INT8_MIN_SAME_CHOICE`,
``|ΔAIQ|`` is at most :data:`INT8_MAX_AIQ_DIFF` and the split holds at least
:data:`INT8_MIN_PROMPTS` prompts. When the validation data cannot be loaded (moved, another
machine, no ``training_metrics.json``) the shares are measured on the export's parity prompts, for
information only: int8 is not made the default, and the report says why.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from neural_router.card import data_label
from neural_router.data.dataset import RoutingDataset
from neural_router.evaluation.report import router_aiq, split_as_trained
from neural_router.inference.interface import Predictions, Predictor
from neural_router.policy.routing import DEFAULT_PRESET, PRESETS, Preferences, utility
from neural_router.pool import ModelPool

log = logging.getLogger(__name__)

INT8_MIN_SAME_CHOICE = 0.98
"""Least share of validation prompts on which int8 must pick the same model as fp32, under each of
:data:`CHECK_PREFERENCES`, for int8 to be the CPU default: int8 may change at most one routing
decision in fifty."""

INT8_MAX_AIQ_DIFF = 0.005
"""Largest ``|AIQ(int8) - AIQ(fp32)|`` on the validation split for int8 to be the CPU default. AIQ
is a mean quality over the cost range (scores in [0, 1]), so this is half a percentage point of
quality."""

INT8_MIN_PROMPTS = 200
"""Least number of validation prompts the check needs: with fewer, one differing choice moves the
share by more than a quarter of the ``1 - INT8_MIN_SAME_CHOICE`` allowed, too coarse to show it."""

CHECK_PREFERENCES: dict[str, Preferences] = {"quality-only": Preferences(), DEFAULT_PRESET: PRESETS[DEFAULT_PRESET]}
"""The preferences the choices are compared under: quality only (``Preferences()``, the CLI's
default) and the service's default preset (``policy.routing.DEFAULT_PRESET``)."""


def same_choice_share(ref: Predictions, got: Predictions, prefs: Preferences) -> float:
    """Share of requests on which ``ref`` and ``got`` give the same model the highest utility."""
    a = utility(ref.quality, ref.cost_usd, ref.latency_ms, prefs).argmax(axis=1)
    b = utility(got.quality, got.cost_usd, got.latency_ms, prefs).argmax(axis=1)
    return float(np.mean(a == b)) if len(a) else math.nan


def validation_split(router_dir: Path, models: list[str], pool: ModelPool) -> tuple[RoutingDataset | None, str]:
    """(the router's validation split, a shareable description of it), or (None, why it cannot be
    had): no ``training_metrics.json``, its data not loadable here, or an empty split."""
    tm_path = router_dir / "training_metrics.json"
    if not tm_path.is_file():
        return None, f"{router_dir.name} has no training_metrics.json naming the training data"
    try:
        tm = json.loads(tm_path.read_text())
        _, val, salt = split_as_trained(tm, None, models, pool, tm_path)
    except (ValueError, OSError) as e:   # DataError is a ValueError
        return None, f"the validation data could not be loaded ({type(e).__name__}: {str(e)[:300]})"
    if not len(val):
        return None, "the validation split is empty"
    names = ", ".join(data_label(p) for p in tm.get("data", []))
    return val, f"validation split of {names} (val_fraction {tm.get('val_fraction')}, salt {salt!r})"


def int8_verdict(measured: dict[str, Any], on_validation: bool) -> tuple[bool, str]:
    """(make int8 the CPU default, why) from :func:`check_int8`'s measurements (keys ``prompts``,
    ``same_choice`` {preferences: share} and, on validation data, ``aiq_diff``)."""
    if not on_validation:
        return False, "not measured on the validation split, so fp32 stays the default"
    shares = measured["same_choice"]
    worst = min(shares, key=lambda k: shares[k])
    if measured["prompts"] < INT8_MIN_PROMPTS:
        return False, (f"only {measured['prompts']} validation prompts (< {INT8_MIN_PROMPTS}): too few to show "
                       "int8 decides like fp32, so fp32 stays the default")
    if not shares[worst] >= INT8_MIN_SAME_CHOICE:
        return False, (f"int8 picks the same model as fp32 on {shares[worst]:.1%} of prompts ({worst}), "
                       f"below {INT8_MIN_SAME_CHOICE:.0%}: fp32 stays the default")
    if not abs(measured["aiq_diff"]) <= INT8_MAX_AIQ_DIFF:
        return False, (f"AIQ changes by {measured['aiq_diff']:+.4f} in int8, more than {INT8_MAX_AIQ_DIFF}: "
                       "fp32 stays the default")
    return True, (f"int8 picks the same model as fp32 on at least {shares[worst]:.1%} of prompts and AIQ "
                  f"changes by {measured['aiq_diff']:+.4f}: int8 is the default on CPU")


def check_int8(fp32: Predictor, int8: Predictor, router_dir: str | Path, pool: ModelPool,
               fallback_prompts: list[str]) -> dict[str, Any]:
    """Measure how the ``int8`` predictor decides against ``fp32`` (see the module docstring) on the
    validation split of the trained folder ``router_dir`` (or ``fallback_prompts`` without it)
    and return the measurements, the rule and the verdict (``default_on_cpu``, ``reason``)."""
    val, data = validation_split(Path(router_dir), list(fp32.models), pool)
    prompts = val.prompts if val is not None else list(fallback_prompts)
    if val is None:
        log.warning("int8 check: %s; measuring on %d parity prompts only", data, len(prompts))
        data = f"parity prompts ({data})"
    ref, got = fp32.predict(prompts), int8.predict(prompts)
    measured: dict[str, Any] = {"data": data, "prompts": len(prompts),
                                "same_choice": {name: same_choice_share(ref, got, p)
                                                for name, p in CHECK_PREFERENCES.items()}}
    if val is not None:
        a32, a8 = router_aiq(ref, val, pool), router_aiq(got, val, pool)
        measured.update(aiq_fp32=a32, aiq_int8=a8, aiq_diff=a8 - a32)
    default, reason = int8_verdict(measured, on_validation=val is not None)
    rule = {"min_same_choice": INT8_MIN_SAME_CHOICE, "max_abs_aiq_diff": INT8_MAX_AIQ_DIFF,
            "min_prompts": INT8_MIN_PROMPTS}
    return {"decisions": measured, "rule": rule, "default_on_cpu": default, "reason": reason}
