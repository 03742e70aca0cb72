"""The cost-quality plot `neural-router eval` writes: the router, every baseline it evaluated and
the single models, on one figure."""

from __future__ import annotations

import numpy as np

from neural_router.data.dataset import DataConfig, load_routing_data
from neural_router.evaluation import metrics as M
from neural_router.evaluation import report as R
from neural_router.inference.interface import Predictions
from neural_router.pool import ModelPool


def test_plot_draws_the_router_solid_baselines_dashed_and_single_models(tmp_path):
    from matplotlib.figure import Figure

    ax = Figure().add_subplot(1, 1, 1)
    c = np.geomspace(1e-4, 1e-2, 20)
    M._draw_curve(ax, c, np.linspace(0.5, 0.9, 20), "router", "C0", main=True)
    M._draw_curve(ax, c, np.linspace(0.5, 0.8, 20), "knn", "C1", main=False)
    M._draw_single_models(ax, {"org/big": (1e-2, 0.85), "small": (1e-4, 0.5), "unpriced": (0.0, 0.7)})
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["router", "knn", "single models", "single models (hull)"]
    styles = {line.get_label(): (line.get_linestyle(), line.get_linewidth()) for line in ax.get_lines()}
    assert styles["router"][0] == "-" and styles["knn"][0] == "--" and styles["router"][1] > styles["knn"][1]
    assert sorted(t.get_text() for t in ax.texts) == ["big", "small"]   # org/ prefix dropped, unpriced left out
    # two models at nearly the same point: their labels go to different sides
    ax = Figure().add_subplot(1, 1, 1)
    M._draw_single_models(ax, {"a": (1e-3, 0.70), "b": (1.05e-3, 0.705), "far": (1e-1, 0.2)})
    offsets = {t.get_text(): (tuple(t.xyann), t.get_horizontalalignment()) for t in ax.texts}
    assert offsets["a"] != offsets["b"] and offsets["far"] == offsets["a"]
    path = M.plot_cost_quality({"router": (c, np.linspace(0.5, 0.9, 20))}, {"a": (1e-3, 0.7)}, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_plots_every_router_it_evaluated(tiny_data_file, tiny_pool_file, tmp_path, monkeypatch):
    pool = ModelPool.from_yaml(tiny_pool_file)
    train, test = load_routing_data([str(tiny_data_file)], pool, DataConfig()).split(0.3, "s")
    rng = np.random.default_rng(0)
    n, m = len(test), len(test.models)
    preds = Predictions(list(test.models), rng.random((n, m)), rng.random((n, m)) * 1e-3, np.ones((n, m)),
                        np.ones((n, m)), np.ones(n))
    monkeypatch.setattr(R, "frozen_embeddings", lambda prompts, encoder: rng.random((len(prompts), 8)))
    drawn = {}

    def capture(curves, singles, path, title):
        drawn.update(curves=curves, singles=singles)
        return path
    monkeypatch.setattr(M, "plot_cost_quality", capture)
    report = R.evaluate(preds, train, test, pool, baselines=True, plot_path=tmp_path / "cq.png")
    assert set(report["routers"]) == {"neural-router", "knn", "mlp", "benchmark-prior"}
    names = [label.split(" (AIQ ")[0] for label in drawn["curves"]]
    assert names == ["neural-router", "knn", "mlp", "benchmark-prior"]   # the router first: drawn solid
    aiq = {k: v["aiq"] for k, v in report["routers"].items()}
    assert list(drawn["curves"])[0] == f"neural-router (AIQ {aiq['neural-router']:.3f})"
    assert set(drawn["singles"]) == set(test.models)
