"""Decision logging and ``POST /v1/feedback``: the service side of learning from outcomes.

With ``feedback_url`` set, every routed request (``/v1/route``, each ``/v1/route/batch`` item, routed
``/v1/chat/completions`` calls) is logged in a :class:`neural_router.feedback.FeedbackStore`: request
id, time, prompt (or only its hash with ``retention: hash``), per-model predictions, the served model,
its propensity, the preferences (and soft constraints) and the exploration policy, and the router
version. Writes run on a small thread pool of their own (never on the event loop); a request waits
for its decision to be committed (at most ``feedback_timeout_s``) so a returned ``request_id`` is
always known to ``/v1/feedback``, on any replica sharing the database. A failing store never fails
routing: the error is logged and counted (``router_decisions_logged_total{status!="ok"}``).

Outcomes arrive through ``POST /v1/feedback`` or, for proxied calls carrying a reference answer,
from the configured scorer (graded in the background after the answer was returned). A proxied
call's decision names the model that served the answer (a fallback, when the router's choice
failed; see ``serving/proxy.py``) and keeps the rest under ``context["proxy"]``; feedback for such
a request must be about that model: the service saw which model answered, so an outcome filed
under another one would be credited to a model that never answered. For ``/v1/route`` decisions
the client calls the model itself (possibly one of the ``fallbacks``), so feedback may name any
of the request's predicted models.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from neural_router.feedback.store import (DuplicateFeedbackError, FeedbackStore, InvalidFeedbackError,
                                    Outcome, UnknownRequestError)
from neural_router.inference.interface import Predictions
from neural_router.feedback.scoring import Scorer, ScoringError, load_scorer

from neural_router.serving.config import ServeSettings
from neural_router.serving.api.prometheus import ServingMetrics
from neural_router.serving.api.schemas import ErrorResponse, FeedbackRequest, FeedbackResponse
from neural_router.serving.engine.service import clean_text

log = logging.getLogger(__name__)
T = TypeVar("T")
FEEDBACK_PATH = "/v1/feedback"


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
    context: dict = field(default_factory=dict)   # request features and constraints (see routes)


def safe_url(url: str) -> str:
    """The URL with any password masked (for logs and messages)."""
    try:
        return make_url(url).render_as_string(hide_password=True) if "://" in url else url
    except Exception:  # noqa: BLE001 - not a URL we can parse: say nothing about it
        return "<feedback_url>"


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
        self.scorer: Scorer | None = load_scorer(settings.scorer) if settings.scorer is not None else None
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


# ---- the endpoint ---------------------------------------------------------------------------------

router = APIRouter()


@router.post(FEEDBACK_PATH, response_model=FeedbackResponse, tags=["feedback"],
             summary="Report how a routed request went",
             responses={
                 400: {"model": ErrorResponse, "description": "Body is not parseable (e.g. invalid UTF-8)."},
                 401: {"model": ErrorResponse, "description": "Missing or wrong bearer key (api_key)."},
                 404: {"model": ErrorResponse, "description": "No decision was logged under request_id."},
                 409: {"model": ErrorResponse, "description": "This request already has feedback "
                                                              "for this model."},
                 413: {"model": ErrorResponse, "description": "Body larger than max_body_bytes."},
                 422: {"model": ErrorResponse, "description": "Invalid body: score outside "
                                                              "score_range or not a number, model not "
                                                              "among the request's predictions, not "
                                                              "the model that answered a proxied "
                                                              "request, ..."},
                 503: {"model": ErrorResponse, "description": "Feedback is disabled (no feedback_url) "
                                                              "or the store is unavailable."}})
async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
    """Store the outcome of a request routed by ``/v1/route``, ``/v1/route/batch`` or the proxy:
    its ``score`` (on the configured ``score_range``) and optionally the measured latency, cost,
    output tokens and answer text. ``model`` defaults to the model the decision names: the router's
    choice for ``/v1/route``, the model that answered for the proxy (a fallback, when the choice
    failed). For a ``/v1/route`` request, feedback for another of its predicted models (e.g. a
    fallback the client called) is accepted too; for a proxied request the service knows which model
    answered, and feedback naming another model (or for a request no model answered) is a 422 that
    names the model that answered."""
    fb: FeedbackLog = request.app.state.feedback
    model = body.model
    if model is not None:
        svc = request.app.state.service
        for state in (svc.state, svc.previous):  # aliases of the current (or previous) pool
            if state is not None and (name := state.pool.resolve(model)) is not None:
                model = name
                break
    try:  # lone surrogates (valid JSON escapes) cannot be stored: such an id matches no request
        outcome = await fb.add_feedback(clean_text(body.request_id), body.score,
                                        model=None if model is None else clean_text(model),
                                        latency_ms=body.latency_ms, cost_usd=body.cost_usd,
                                        output_tokens=body.output_tokens,
                                        response=None if body.response is None else clean_text(body.response))
    except (FeedbackDisabledError, FeedbackUnavailableError) as e:
        raise HTTPException(503, str(e)) from None
    except UnknownRequestError as e:
        raise HTTPException(404, str(e)) from None
    except DuplicateFeedbackError as e:
        raise HTTPException(409, str(e)) from None
    except InvalidFeedbackError as e:
        raise HTTPException(422, str(e)) from None
    return FeedbackResponse(**{k: getattr(outcome, k) for k in FeedbackResponse.model_fields})
