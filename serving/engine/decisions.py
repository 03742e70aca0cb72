"""The decision log and outcomes: the service side of learning from feedback.

With ``feedback_url`` set, every routed request (``/v1/route``, each ``/v1/route/batch`` item, routed
``/v1/chat/completions`` calls) is logged in a :class:`neural_router.feedback.store.FeedbackStore`:
request id, time, prompt (or only its hash with ``retention: hash``), per-model predictions, the
served model, its propensity, the preferences (and soft constraints), the exploration policy and the
router version. Writes run on a small thread pool of their own (never on the event loop); a request
waits for its decision to be committed (at most ``feedback_timeout_s``) so a returned
``request_id`` is always known to ``/v1/feedback``, on any replica sharing the database. A failing
store never fails routing: the error is logged and counted
(``router_decisions_logged_total{status!="ok"}``).

Outcomes arrive through ``POST /v1/feedback`` or, for proxied calls carrying a reference answer,
from the configured scorer (graded in the background after the answer was returned).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from neural_router.feedback.scoring import Scorer, ScoringError, load_service_scorer
from neural_router.feedback.store import (DuplicateFeedbackError, FeedbackStore, InvalidFeedbackError,
                                          Outcome, UnknownRequestError, decision_context, safe_url)
from neural_router.inference.interface import Predictions
from neural_router.policy.routing import Constraints, Preferences

from neural_router.serving.config import ServeSettings
from neural_router.serving.engine.inputs import PreparedPrompt
from neural_router.serving.engine.metrics import ServingMetrics
from neural_router.serving.engine.service import Choice, RouterState

log = logging.getLogger(__name__)
T = TypeVar("T")


class FeedbackDisabledError(RuntimeError):
    """No feedback_url is configured."""


class FeedbackUnavailableError(RuntimeError):
    """The store could not be reached or failed."""


@dataclass(frozen=True)
class DecisionRecord:
    """Everything logged about one routed request."""

    request_id: str
    prompt: str
    model: str
    predictions: Predictions  # one row
    router_version: str
    propensity: float
    preferences: dict[str, float]
    exploration: str
    input_tokens: int
    context: dict = field(default_factory=dict)   # request features and constraints (decision_context)


def open_store(settings: ServeSettings) -> FeedbackStore | None:
    """The configured store, or None when feedback is off. ValueError with a clear message when
    it cannot be opened."""
    if not settings.feedback_url:
        return None
    try:
        return FeedbackStore.from_url(settings.feedback_url, settings.retention)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy, driver and OS errors alike
        raise ValueError(f"cannot open the feedback store {safe_url(settings.feedback_url)}: "
                         f"{type(e).__name__}: {e}") from None


class FeedbackLog:
    """The app's store, scorer and writer threads."""

    def __init__(self, settings: ServeSettings, metrics: ServingMetrics,
                 store: FeedbackStore | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store if store is not None else open_store(settings)
        self.scorer: Scorer | None = None if settings.scorer is None else load_service_scorer(
            settings.scorer, allow_unsandboxed=settings.allow_unsandboxed_code)
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.store is not None

    # ---- lifecycle ---------------------------------------------------------------------------
    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="feedback")
        return self._executor

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), functools.partial(fn, *args, **kwargs))

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Let background grading finish (up to ``timeout_s``), drain the writers, close the store."""
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for t in pending:
                t.cancel()
        if self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(self._executor.shutdown, wait=True))
            self._executor = None
        if self.store is not None:
            self.store.close()

    # ---- decisions ---------------------------------------------------------------------------
    def _write(self, records: list[DecisionRecord]) -> int:
        assert self.store is not None
        ok = 0
        for r in records:
            try:
                self.store.log_decision(
                    request_id=r.request_id, prompt=r.prompt, model=r.model, predictions=r.predictions,
                    router_version=r.router_version, propensity=r.propensity,
                    preferences=r.preferences, exploration=r.exploration, input_tokens=r.input_tokens,
                    context=r.context)
            except Exception as e:  # noqa: BLE001 - logging must never fail routing
                self.metrics.decisions_logged.labels("error").inc()
                log.error("could not log decision %s: %s: %s", r.request_id, type(e).__name__, e)
            else:
                ok += 1
                self.metrics.decisions_logged.labels("ok").inc()
        return ok

    async def log_decisions(self, records: list[DecisionRecord]) -> int:
        """Write ``records`` off the event loop; returns how many were stored (0 when disabled)."""
        if self.store is None or not records:
            return 0
        try:
            return await asyncio.wait_for(self._run(self._write, records), self.settings.feedback_timeout_s)
        except asyncio.TimeoutError:
            self.metrics.decisions_logged.labels("timeout").inc(len(records))
            log.warning("decision log: %d write(s) not done within feedback_timeout_s=%gs; answering "
                        "anyway (the write continues)", len(records), self.settings.feedback_timeout_s)
            return 0

    # ---- outcomes ----------------------------------------------------------------------------
    async def add_feedback(self, request_id: str, score: float, *, source: str = "api",
                           score_range: tuple[float, float] | None = None, **fields: Any) -> Outcome:
        """Store one outcome. Raises FeedbackDisabledError, the store's UnknownRequestError /
        DuplicateFeedbackError / InvalidFeedbackError, or FeedbackUnavailableError."""
        if self.store is None:
            self.metrics.feedback.labels(source, "disabled").inc()
            raise FeedbackDisabledError(
                "feedback is disabled on this service: set feedback_url (NEURAL_ROUTER_FEEDBACK_URL) "
                "to log decisions and accept /v1/feedback")
        if self.settings.retention == "hash":
            fields["response"] = None  # no texts kept under hash retention
        try:
            outcome = await self._run(self.store.add_feedback, request_id, score,
                                      score_range=score_range or self.settings.score_range, **fields)
        except UnknownRequestError:
            self.metrics.feedback.labels(source, "unknown_request").inc()
            raise
        except DuplicateFeedbackError:
            self.metrics.feedback.labels(source, "duplicate").inc()
            raise
        except InvalidFeedbackError:
            self.metrics.feedback.labels(source, "invalid").inc()
            raise
        except SQLAlchemyError as e:
            self.metrics.feedback.labels(source, "error").inc()
            log.error("feedback store error: %s: %s", type(e).__name__, e)
            raise FeedbackUnavailableError(f"the feedback store failed ({type(e).__name__}); "
                                           "retry later") from None
        self.metrics.feedback.labels(source, "ok").inc()
        return outcome

    def grade_later(self, request_id: str, model: str, prompt: str, response: str, reference: str,
                    **fields: Any) -> None:
        """Score ``response`` against ``reference`` with the configured scorer in the background
        and store the outcome (scorer failures are logged and counted, never raised)."""
        if self.scorer is None or self.store is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._grade(request_id, model, prompt, response, reference, fields))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _grade(self, request_id: str, model: str, prompt: str, response: str, reference: str,
                     fields: dict[str, Any]) -> None:
        assert self.scorer is not None
        try:
            score = await asyncio.to_thread(self.scorer.score, prompt, response, reference)
        except ScoringError as e:
            self.metrics.feedback.labels("scorer", "scoring_error").inc()
            log.warning("scorer could not grade request %s: %s", request_id, e)
            return
        except Exception as e:  # noqa: BLE001 - a user scorer misbehaving
            self.metrics.feedback.labels("scorer", "scoring_error").inc()
            log.error("scorer raised %s on request %s: %s", type(e).__name__, request_id, e)
            return
        try:
            await self.add_feedback(request_id, score, source="scorer", score_range=(0.0, 1.0),
                                    model=model, response=response, **fields)
        except Exception as e:  # noqa: BLE001 - counted by add_feedback; nobody to tell but the log
            log.warning("could not store the graded outcome of request %s: %s", request_id, e)


def logged_preferences(prefs: Preferences, cons: Constraints) -> dict[str, float]:
    """What the decision log keeps of the preferences: the weights and any soft constraint."""
    out = {"quality_weight": prefs.quality_weight, "cost_weight": prefs.cost_weight,
           "latency_weight": prefs.latency_weight}
    for name in ("min_quality", "max_cost_usd", "max_latency_ms"):
        value = getattr(cons, name)
        if value is not None:
            out[name] = float(value)
    return out


def decision_record(request_id: str, state: RouterState, prompt: PreparedPrompt, row: Predictions,
                    choice: Choice, prefs: Preferences, cons: Constraints) -> DecisionRecord:
    """The record of one routed request (``row``: its one-row predictions) under ``request_id``."""
    return DecisionRecord(request_id=request_id, prompt=prompt.text, model=choice.model, predictions=row,
                          router_version=state.version, propensity=choice.propensity,
                          preferences=logged_preferences(prefs, cons),
                          exploration=choice.exploration.policy, input_tokens=int(row.input_tokens[0]),
                          context=decision_context(prompt.features, cons))
