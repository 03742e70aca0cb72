"""``POST /v1/feedback``: outcomes of routed requests, stored by the decision log
(:mod:`neural_router.serving.engine.decisions`).

A proxied call's decision names the model that served the answer (a fallback, when the router's
choice failed; see ``serving/api/proxy.py``) and keeps the rest under ``context["proxy"]``; feedback
for such a request must be about that model: the service saw which model answered, so an outcome
filed under another one would be credited to a model that never answered. For ``/v1/route``
decisions the client calls the model itself (possibly one of the ``fallbacks``), so feedback may name
any of the request's predicted models.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from neural_router.feedback.store import DuplicateFeedbackError, InvalidFeedbackError, UnknownRequestError

from neural_router.serving.api.schemas import ErrorResponse, FeedbackRequest, FeedbackResponse
from neural_router.serving.engine.decisions import FeedbackDisabledError, FeedbackLog, FeedbackUnavailableError
from neural_router.serving.engine.inputs import clean_text

FEEDBACK_PATH = "/v1/feedback"
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
