"""Is there per-prompt signal to route on? Within each benchmark, can the prompt's text tell which of
the two best models will do better on it?

    python benchmarks/routing_signal.py --router DIR [DIR ...]
        [--output benchmarks/results/routing_signal.json]

For each router folder, its data is split as training split it (same fraction and salt), and for
each source benchmark (``eval_name`` / the file it came from) with at least ``--min-prompts``
validation prompts:

- the two models with the best *training* mean on that benchmark, A and B;
- ``router corr``: the correlation, over the validation prompts, between the router's predicted
  difference q_A - q_B and the observed one s_A - s_B;
- ``ridge corr``: the same for a ridge regression fitted on the training prompts to exactly that
  difference, on the frozen encoder's mean-pooled embeddings (the features of the kNN/MLP baselines;
  the penalty chosen by 5-fold cross-validation on the training prompts);
- the gain over the better of A and B on the validation prompts when each prompt goes to whichever of
  the two that predictor favours;
- ``difficulty corr``: the mean over models of the correlation between the router's predicted quality
  and the observed score (how well it tells hard prompts from easy ones, shared by all models);
- ``quality-only gain``: quality-only routing's gain over the benchmark's best single model, as
  ``neural-router eval`` reports it.

Routing *within* a benchmark needs the second and third columns, which a router's
difficulty predictions do not supply: difficulty moves every model's score together. A correlation's
standard error is about 1/sqrt(n). Prints a table per router and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--router", nargs="+", required=True, metavar="DIR",
                    help="trained router folders (their training_metrics.json names data and split)")
    ap.add_argument("--min-prompts", type=int, default=20,
                    help="skip benchmarks with fewer validation prompts than this")
    ap.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "routing_signal.json"))
    return ap.parse_args(argv)


def corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (up to rounding)."""
    if len(x) < 2 or np.allclose(x, x[0], rtol=0, atol=1e-9) or np.allclose(y, y[0], rtol=0, atol=1e-9):
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Centered ridge regression: returns (feature mean, weights, intercept)."""
    mu = x.mean(0)
    xc = x - mu
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ (y - y.mean()))
    return mu, w, float(y.mean())


def ridge_cv(x: np.ndarray, y: np.ndarray, folds: int = 5, lambdas=LAMBDAS) -> float:
    """The penalty with the lowest 5-fold squared error (folds by position; callers pass shuffled rows)."""
    fold = np.arange(len(y)) % folds
    errs = []
    for lam in lambdas:
        e = 0.0
        for k in range(folds):
            tr, te = fold != k, fold == k
            mu, w, b = ridge_fit(x[tr], y[tr], lam)
            e += float(np.sum(((x[te] - mu) @ w + b - y[te]) ** 2))
        errs.append(e)
    return float(lambdas[int(np.argmin(errs))])


def benchmark_signal(s_tr: np.ndarray, s_va: np.ndarray, q_va: np.ndarray, e_tr: np.ndarray,
                     e_va: np.ndarray, models: list[str]) -> dict:
    """The table's columns for one benchmark (arrays restricted to its prompts, [n, M] scores with NaN
    for unobserved pairs, [n, D] embeddings)."""
    means = np.nanmean(s_tr, 0)
    means = np.where(np.isnan(means), -np.inf, means)
    a, b = (int(i) for i in np.argsort(-means)[:2])
    keep_tr = ~np.isnan(s_tr[:, a]) & ~np.isnan(s_tr[:, b])
    keep_va = ~np.isnan(s_va[:, a]) & ~np.isnan(s_va[:, b])
    d_tr = s_tr[keep_tr, a] - s_tr[keep_tr, b]
    d_va = s_va[keep_va, a] - s_va[keep_va, b]
    sa, sb = s_va[keep_va, a], s_va[keep_va, b]
    better = max(sa.mean(), sb.mean())
    dq = q_va[keep_va, a] - q_va[keep_va, b]
    perm = np.random.default_rng(0).permutation(int(keep_tr.sum()))
    lam = ridge_cv(e_tr[keep_tr][perm], d_tr[perm])
    mu, w, c = ridge_fit(e_tr[keep_tr], d_tr, lam)
    dr = (e_va[keep_va] - mu) @ w + c
    observed = ~np.isnan(s_va)
    per_model = [corr(q_va[observed[:, j], j], s_va[observed[:, j], j]) for j in range(len(models))]
    difficulty = [r for r in per_model if not np.isnan(r)]
    best_single = np.nanmean(s_va, 0)
    pick = np.argmax(np.where(observed, q_va, -np.inf), 1)
    rows = np.flatnonzero(observed[np.arange(len(pick)), pick])
    return {
        "n_val": int(keep_va.sum()), "n_train": int(keep_tr.sum()),
        "model_a": models[a], "model_b": models[b], "differ_share": float(np.mean(d_va != 0)),
        "router_corr": corr(dq, d_va), "ridge_corr": corr(dr, d_va), "ridge_lambda": lam,
        "router_top2_gain": float(np.where(dq >= 0, sa, sb).mean() - better),
        "ridge_top2_gain": float(np.where(dr >= 0, sa, sb).mean() - better),
        "difficulty_corr": float(np.mean(difficulty)) if difficulty else float("nan"),
        "quality_only_gain": float(s_va[rows, pick[rows]].mean() - np.nanmax(best_single)),
    }


def one_router(router_dir: str, min_prompts: int, embed_cache: dict) -> dict:
    from neural_router.evaluation.report import frozen_embeddings
    from neural_router.inference.predictors import load_predictor
    from neural_router.training.evaluate import split_as_trained

    d = Path(router_dir)
    tm = json.loads((d / "training_metrics.json").read_text())
    predictor = load_predictor(d, device="cpu")
    train, val, salt = split_as_trained(tm, None, predictor.models, predictor.pool, d / "training_metrics.json")
    models = list(train.models)
    encoder = tm.get("config", {}).get("encoder", "default")
    missing = [p for p in dict.fromkeys(train.prompts + val.prompts) if (encoder, p) not in embed_cache]
    if missing:
        for p, e in zip(missing, frozen_embeddings(missing, encoder)):
            embed_cache[(encoder, p)] = e
    emb = lambda x: np.stack([embed_cache[(encoder, p)] for p in x.prompts])  # noqa: E731
    q_va = np.asarray(predictor.predict(val.prompts).quality)
    q_va = q_va[:, [list(predictor.models).index(m) for m in models]]
    e_tr, e_va = emb(train), emb(val)
    src_tr, src_va = np.array(train.sources), np.array(val.sources)
    benchmarks = {}
    for name in sorted(set(val.sources)):
        t, v = src_tr == name, src_va == name
        if v.sum() < min_prompts or t.sum() < 2 * min_prompts:
            continue
        benchmarks[name] = benchmark_signal(train.scores[t], val.scores[v], q_va[v], e_tr[t], e_va[v], models)
    return {"router": str(d), "split_salt": salt, "benchmarks": benchmarks}


def print_table(rep: dict) -> None:
    print(f"\n{rep['router']} (split salt {rep['split_salt']!r})")
    print(f"{'benchmark':<16} {'n':>5} {'A vs B':<44} {'router corr':>11} {'ridge corr':>10} "
          f"{'router top-2':>12} {'ridge top-2':>11} {'difficulty':>10} {'quality-only':>12}")
    for name, r in rep["benchmarks"].items():
        pair = f"{r['model_a'].split('/')[-1][:21]} vs {r['model_b'].split('/')[-1][:18]}"
        print(f"{name:<16} {r['n_val']:>5} {pair:<44} {r['router_corr']:>+11.3f} {r['ridge_corr']:>+10.3f} "
              f"{r['router_top2_gain']:>+12.3f} {r['ridge_top2_gain']:>+11.3f} {r['difficulty_corr']:>+10.3f} "
              f"{r['quality_only_gain']:>+12.3f}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    cache: dict = {}
    reports = [one_router(d, args.min_prompts, cache) for d in args.router]
    for rep in reports:
        print_table(rep)
    report = {"command": " ".join(sys.argv), "routers": reports}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
