"""neural_router.router.Router: predictions, routing under constraints and capabilities, input checks."""

import pytest

from neural_router import Constraints, Preferences, RequestFeatures, Router


def test_predictions_have_costs_from_pool_and_latency(tiny_trained_dir):
    r = Router.from_pretrained(tiny_trained_dir)
    p = r.predict(["hello weather movie", "python function class loop"])
    j_big, j_small = r.models.index("big"), r.models.index("small")
    assert (p.cost_usd[:, j_big] > p.cost_usd[:, j_small]).all()
    assert (p.latency_ms > 0).all() and (p.output_tokens >= 1).all()
    assert p.quality.shape == (2, 3) and ((0 <= p.quality) & (p.quality <= 1)).all()


@pytest.fixture(scope="module")
def router(tiny_router_dir):
    return Router.from_pretrained(tiny_router_dir)


def test_route_leaves_out_denied_models(router):
    res = router.route("hello movie", Preferences(), Constraints(denied_models=("big",)))
    assert res.model != "big" and "big" not in res.decision.fallbacks


def test_route_sends_an_image_to_the_model_that_accepts_images(router):
    img = router.route("describe this picture", features=RequestFeatures(has_image=True))
    assert img.model == "big"  # the only model declared to accept images


def test_route_skips_a_model_whose_context_window_is_too_small(router):
    long = router.route("word " * 600)  # 600 prompt tokens > small's 512-token context window
    assert long.model != "small" and long.truncated


def test_route_takes_dicts_as_well_as_dataclasses(router):
    as_dicts = router.route("hello movie", {"cost_weight": 0.5}, {"denied_models": ["big"]})
    as_classes = router.route("hello movie", Preferences(cost_weight=0.5), Constraints(denied_models=("big",)))
    assert as_dicts.model == as_classes.model != "big"


def test_route_refuses_an_empty_prompt(router):
    with pytest.raises(ValueError, match="the prompt is empty"):
        router.route("  ")


def test_route_refuses_a_list_and_points_to_predict(router):
    with pytest.raises(TypeError, match="predict\\(\\) takes a list"):
        router.route(["a", "b"])


def test_route_names_an_unknown_preference_field(router):
    with pytest.raises(ValueError, match="Preferences: .*unexpected keyword argument 'cost'"):
        router.route("hello", {"cost": 0.5})
