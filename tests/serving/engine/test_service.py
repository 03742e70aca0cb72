"""The routing engine with core types: router state, presets, constraints and decisions, no HTTP."""

from __future__ import annotations

import asyncio

import pytest

from neural_router.policy.routing import PRESETS, Constraints, Preferences
from neural_router.serving.config import EndpointOverride, ServeSettings
from neural_router.serving.engine.inputs import InputError, PresetError
from neural_router.serving.engine.metrics import ServingMetrics
from neural_router.serving.engine.service import RouterService, RouterState
from tests.serving.helpers import StubPredictor


def service(**settings: object) -> RouterService:
    return RouterService(StubPredictor(), ServeSettings(**settings), ServingMetrics())


def test_endpoint_overrides_must_name_pool_models() -> None:
    s = ServeSettings(endpoints={"big-latest": EndpointOverride(endpoint="http://127.0.0.1:9/v1", api_model="b")})
    spec = RouterState.build(StubPredictor(), s).pool.get("big")
    assert spec.endpoint == "http://127.0.0.1:9/v1" and spec.api_model == "b"
    with pytest.raises(ValueError, match="not in the router's pool"):
        RouterState.build(StubPredictor(), ServeSettings(endpoints={"gpt-17": EndpointOverride(endpoint="http://x/v1")}))


def test_presets_are_the_policys_preferences() -> None:
    svc = service()
    assert svc.preferences(None) == PRESETS["balanced"]
    assert svc.preferences("cheap") == PRESETS["cheap"]
    explicit = Preferences(cost_weight=2.0)
    assert svc.preferences("cheap", explicit) is explicit
    with pytest.raises(PresetError, match="unknown preset 'nope'"):
        svc.preferences("nope")


def test_constraints_resolve_aliases_and_refuse_unknown_models() -> None:
    svc = service()
    given = Constraints(min_quality=0.5, allowed_models=("big-latest", "small", "big"), denied_models=("mid",))
    c = svc.constraints(given)
    assert c == Constraints(min_quality=0.5, allowed_models=("big", "small"), denied_models=("mid",))
    assert svc.constraints(None) == Constraints()
    assert svc.constraints(None, restrict_to=["mid"]).allowed_models == ("mid",)
    with pytest.raises(InputError, match="constraints.denied_models: unknown model 'gpt-17'"):
        svc.constraints(Constraints(denied_models=("gpt-17",)))
    with pytest.raises(InputError, match="no allowed model has an endpoint"):
        svc.constraints(Constraints(allowed_models=("big",)), restrict_to=["small"])


def test_predict_and_choose_without_http() -> None:
    svc = service(max_wait_ms=0)

    async def go() -> str:
        await svc.batcher.start()
        try:
            prompt = svc.prompt("what is 2 + 2?")
            (row,) = await svc.predict([prompt])
            return svc.choose(row, prompt, PRESETS["quality"], Constraints()).model
        finally:
            await svc.batcher.stop()

    assert asyncio.run(go()) == "big"  # the stub ranks big first


def test_engine_refuses_prompts_it_cannot_route() -> None:
    svc = service(max_prompt_chars=10)
    with pytest.raises(InputError, match="prompt is empty"):
        svc.prompt("  ")
    with pytest.raises(InputError, match="max_prompt_chars"):
        svc.prompt("x" * 11)
