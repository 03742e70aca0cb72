"""The `neural-router` command line: train, eval, export, predict, route, serve, demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from neural_router.cli_options import add_model_options, given_options, positive_int
from neural_router.inference.interface import DEVICES


def _add_prefs(p: argparse.ArgumentParser) -> None:
    """Preference weights (defaults: :class:`~neural_router.policy.routing.Preferences`'s) and limits."""
    from neural_router.policy.routing import Preferences

    g = p.add_argument_group("preferences and constraints")
    for f in dataclasses.fields(Preferences):
        g.add_argument(f"--{f.name.replace('_', '-')}", type=float, default=f.default,
                       help=f"(default %(default)s; weights are in units of quality{WEIGHT_HELP.get(f.name, '')})")
    g.add_argument("--min-quality", type=float)
    g.add_argument("--max-cost-usd", type=float)
    g.add_argument("--max-latency-ms", type=float)
    g.add_argument("--allow", action="append", help="allowed model (repeatable)")
    g.add_argument("--deny", action="append", help="denied model (repeatable)")
    g.add_argument("--max-tokens", type=positive_int, help="requested max output tokens")
    g.add_argument("--image", action="store_true", help="the request carries an image")


WEIGHT_HELP = {"cost_weight": ": 0.5 = give up 0.5 quality to go from the most expensive candidate to a free one"}


def _add_precision(p: argparse.ArgumentParser, verb: str) -> None:
    """``--precision`` and its alias ``--int8``, for commands that load an exported router."""
    from neural_router.inference.predictors import PRECISIONS

    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help=f"which exported model to {verb}: auto = the export's default for the device (int8 on "
                        "CPU only when the export showed it decides like fp32; fp16 on CUDA when exported); a trained "
                        "(PyTorch) folder runs fp32, fp16 or bf16")
    p.add_argument("--int8", action="store_true", help="the same as --precision int8")


def chosen_precision(args) -> str:
    """The precision ``--precision`` and ``--int8`` ask for; ValueError when they contradict."""
    from neural_router.inference.predictors import requested_precision

    try:
        return requested_precision(args.precision, int8=args.int8)
    except ValueError:
        raise ValueError(f"--int8 is --precision int8; it contradicts --precision {args.precision}") from None


def port_number(text: str) -> int:
    value = int(text) if text.strip().isdigit() else 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 1 to 65535, got {text!r}")
    return value


def _train_options(p: argparse.ArgumentParser) -> None:
    from neural_router.training.config import TRAIN_FLAGS, TrainConfig

    p.add_argument("--data", action="append", required=True, help="file, folder or hub id (repeatable)")
    p.add_argument("--output", required=True)
    p.add_argument("--config", help="training YAML overriding the defaults (configs/train.yaml lists them)")
    p.add_argument("--pool", help="model pool YAML (default: configs/models.yaml)")
    add_model_options(p, TrainConfig, only=TRAIN_FLAGS)
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation written into the model card")


def _eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", required=True)
    p.add_argument("--data", action="append", help="default: the data the router was trained on")
    p.add_argument("--output", help="report folder (default: the router folder)")
    p.add_argument("--pool")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--pair", action="append", default=[], help="STRONG,WEAK two-model check (repeatable)")
    _add_precision(p, "evaluate")


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--int8", action="store_true",
                   help="also write a dynamic int8 model for CPU, its default there if it decides like fp32 on the "
                        "validation split (see export_report.json)")
    p.add_argument("--fp16", action="store_true",
                   help="also write an fp16 model for GPU (router.fp16.onnx, used automatically on CUDA)")
    p.add_argument("--no-optimize", action="store_true",
                   help="write the plain traced graph, without ONNX Runtime's transformer fusions (contrib ops)")


def _predict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--device", default="auto", choices=DEVICES)
    _add_precision(p, "run")


def _route_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_prefs(p)


def _score_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True,
                   help='JSONL lines {"prompt", "response", "reference"?, "request_id"?, "model"?, "latency_ms"?, "cost_usd"?}')
    p.add_argument("--scorer", required=True,
                   help='a type name (numeric, multiple_choice, exact_match, ...), a JSON spec with arguments, '
                        'e.g. \'{"type": "regex", "pattern": "..."}\', or module:function')
    p.add_argument("--output", help="JSONL with a score added to each line")
    p.add_argument("--feedback", help="feedback store URL: attach each score to its request_id")
    p.add_argument("--max-failures", type=positive_int, default=10,
                   help="stop after this many responses the scorer could not score (default 10; "
                        "the scores before are kept)")


def _update_options(p: argparse.ArgumentParser) -> None:
    """The router, the store and the output folder, then one option per UpdateConfig field."""
    from neural_router.training.config import UpdateConfig

    p.add_argument("--router", required=True, help="current router folder (trained, not ONNX)")
    p.add_argument("--feedback", required=True, help="feedback store: SQLAlchemy URL or SQLite path")
    p.add_argument("--output", required=True, help="parent folder of the new versioned router folder")
    add_model_options(p, UpdateConfig)


def _serve_options(p: argparse.ArgumentParser) -> None:
    from neural_router.serving.config import ServeSettings

    default = {name: ServeSettings.model_fields[name].default for name in ("host", "port", "device")}
    p.add_argument("--router", required=True)
    p.add_argument("--host", help=f"default from the config: {default['host']}")
    p.add_argument("--port", type=port_number, help=f"default from the config: {default['port']}")
    p.add_argument("--device", choices=DEVICES, help=f"default from the config: {default['device']}")
    p.add_argument("--config", help="serving YAML (default: built-in settings, same as configs/serve.yaml)")


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--output", required=True)


def _promote_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", required=True, help="router folder, at the path the replicas see it")
    p.add_argument("--store", required=True, help="the replicas' feedback store URL (feedback_url)")
    p.add_argument("--by", default=_user(), help="who promotes (default: the login name)")


def _rollback_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="the replicas' feedback store URL (feedback_url)")
    p.add_argument("--by", default=_user(), help="who rolls back (default: the login name)")


SUBCOMMANDS = {   # name -> (help, options)
    "train": ("fine-tune a router on labeled data", _train_options),
    "eval": ("evaluate a router and the baselines on the validation split", _eval_options),
    "export": ("export a trained router to ONNX", _export_options),
    "predict": ("per-model predictions for a JSONL file of prompts", _predict_options),
    "route": ("route one prompt and print the decision", _route_options),
    "score": ("score logged responses with a scorer; optionally record them as feedback", _score_options),
    "update": ("fine-tune a router from logged outcomes, with off-policy promotion check", _update_options),
    "serve": ("run the router microservice", _serve_options),
    "demo": ("train, evaluate, export and route sample prompts", _demo_options),
    "promote": ("make a router folder the one every replica serves (router registry)", _promote_options),
    "rollback": ("make every replica serve the router before the current one again", _rollback_options),
}


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; building it imports no torch (the training options are pydantic only)."""
    ap = argparse.ArgumentParser(prog="neural-router", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, (help_text, add_options) in SUBCOMMANDS.items():
        add_options(sub.add_parser(name, help=help_text))
    return ap


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):   # no login name (e.g. a container's uid without a passwd entry)
        return "cli"


def _prefs(args):
    from neural_router.policy.routing import Constraints, Preferences
    from neural_router.inference.interface import RequestFeatures

    prefs = Preferences(args.quality_weight, args.cost_weight, args.latency_weight)
    cons = Constraints(min_quality=args.min_quality, max_cost_usd=args.max_cost_usd,
                       max_latency_ms=args.max_latency_ms,
                       allowed_models=tuple(args.allow) if args.allow else None,
                       denied_models=tuple(args.deny or ()))
    return prefs, cons, RequestFeatures(has_image=args.image, max_output_tokens=args.max_tokens)


def cmd_train(args) -> int:
    from neural_router.training.evaluate import run_eval
    from neural_router.training.train import run_train

    from neural_router.training.config import TRAIN_FLAGS, TrainConfig

    out = run_train(args.data, args.output, args.config, args.pool, given_options(args, TrainConfig, TRAIN_FLAGS))
    if not args.no_eval:
        run_eval(out, None, None, args.pool, baselines=False)
    print(f"router saved to {out}")
    return 0


def cmd_eval(args) -> int:
    from neural_router.training.evaluate import print_summary, run_eval

    pairs = [tuple(p.split(",")) for p in args.pair]   # checked against the router's pool by run_eval
    report = run_eval(args.router, args.data, args.output, args.pool, baselines=not args.no_baselines,
                      pairs=pairs, precision=chosen_precision(args))
    print_summary(report)
    return 0


def cmd_export(args) -> int:
    from neural_router.inference.export import export_onnx

    report = export_onnx(args.router, args.output, int8=args.int8, fp16=args.fp16,
                         optimize=not args.no_optimize)
    print(json.dumps(report, indent=2))
    return 0


PREDICT_CHUNK = 2048  # prompts predicted and written at a time: a long file shows progress and keeps
                     # every finished chunk if the run is interrupted


def cmd_predict(args) -> int:
    from tqdm import tqdm

    from neural_router.inference.predictors import load_predictor

    from neural_router.jsonl import open_output, read_prompts

    ids, prompts = read_prompts(args.input)
    pred = load_predictor(args.router, device=args.device,  # before the output is truncated
                          precision=chosen_precision(args))
    with open_output(args.output) as f, \
            tqdm(total=len(prompts), desc="predict", unit="prompt", disable=None) as bar:
        for start in range(0, len(prompts), PREDICT_CHUNK):
            chunk = prompts[start:start + PREDICT_CHUNK]
            for i, row in zip(ids[start:start + PREDICT_CHUNK], pred.predict(chunk).as_dicts()):
                f.write(json.dumps({"id": i, "models": row}) + "\n")
            f.flush()
            bar.update(len(chunk))
    print(f"wrote {len(ids)} predictions to {args.output} ({pred.provider}, {pred.model_file}, {pred.precision})")
    return 0


def print_decision(result, prompt: str) -> None:
    from rich.console import Console
    from rich.table import Table

    d = result.decision
    t = Table(title=f"{prompt[:70]!r}")
    for col in ("model", "quality", "cost (USD)", "latency (ms)", "utility"):
        t.add_column(col, justify="left" if col == "model" else "right")
    row = result.predictions.as_dicts()[0]
    for m in sorted(row, key=lambda m: -d.utility.get(m, float("-inf"))):
        v = row[m]
        u = d.utility.get(m)
        t.add_row(("→ " if m == d.model else "  ") + m, f"{v['quality']:.3f}", f"{v['cost_usd']:.2e}",
                  f"{v['latency_ms']:.0f}", "excluded" if u is None else f"{u:.3f}")
    c = Console()
    c.print(t)
    c.print(f"[bold]{d.model}[/bold]: {d.reason}" + (" (prompt truncated)" if result.truncated else ""))


def cmd_route(args) -> int:
    from neural_router.router import Router

    if not args.prompt.strip():
        raise ValueError("--prompt is empty: give the text to route, e.g. --prompt 'What is 2 + 2?'")
    prefs, cons, feats = _prefs(args)
    result = Router.from_pretrained(args.router, device=args.device).route(args.prompt, prefs, cons, feats)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_decision(result, args.prompt)
    return 0


def _scorer_spec(text: str):
    """``--scorer``: a JSON object spec, or a type name / module:function as given."""
    spec = text.strip()
    if not spec.startswith("{"):
        return spec
    try:
        return json.loads(spec)
    except json.JSONDecodeError as e:
        raise ValueError(f"--scorer {text!r} is not valid JSON ({e.msg}); give e.g. "
                         "'{\"type\": \"numeric\"}', a type name such as numeric, or module:function") from None


def _score_summary(run, args, with_store: bool) -> int:
    """Print what a score run did; the exit code: 1 when a score was not made or not recorded."""
    print(f"scored {len(run.scores)} of {run.total} responses (mean {run.mean:.3f})"
          + (f", recorded {run.recorded} as feedback" if with_store else ""))
    if run.unrecorded:
        print(f"neural-router score: error: {run.unrecorded} score(s) were not recorded as feedback (named above); "
              "check their request_id against the store given with --feedback", file=sys.stderr)
    if not run.failed:
        return 1 if run.unrecorded else 0
    print(f"neural-router score: error: {run.failed} response(s) could not be scored"
          + (f"; stopped after {args.max_failures} failures (--max-failures), "
             f"{run.untried} line(s) not tried" if run.stopped else "")
          + ". Every score above was kept" + (f" in {args.output}" if args.output else "")
          + ("" if not with_store or not run.recorded else " and the recorded ones in the feedback store")
          + "; fix the scorer or those lines and score them again.", file=sys.stderr)
    return 1


def cmd_score(args) -> int:
    """Check the scorer, the input, the store and the output before the first (possibly expensive)
    score; then score (:func:`~neural_router.feedback.score_file.score_records`)."""
    from contextlib import ExitStack

    from neural_router.feedback.score_file import score_records
    from neural_router.feedback.scoring import load_scorer
    from neural_router.feedback.store import FeedbackStore
    from neural_router.jsonl import open_output, read_records

    scorer = load_scorer(_scorer_spec(args.scorer))
    records = read_records(args.input, "response")
    with ExitStack() as stack:
        store = stack.enter_context(FeedbackStore.from_url(args.feedback, must_exist=True)) if args.feedback else None
        out = stack.enter_context(open_output(args.output)) if args.output else None
        run = score_records(records, scorer, source=args.input, max_failures=args.max_failures, out=out, store=store)
    return _score_summary(run, args, store is not None)


def update_from_args(args) -> dict:
    """Run ``update`` with the options given (preferences given on the command line are fixed; none
    given = each request's logged ones); its result."""
    from neural_router.training.config import UpdateConfig
    from neural_router.training.update import run_update

    return run_update(args.router, args.feedback, args.output, UpdateConfig(**given_options(args, UpdateConfig)))


def cmd_update(args) -> int:
    print(json.dumps(update_from_args(args), indent=2, default=str))
    return 0


def cmd_serve(args) -> int:
    from neural_router.serving.api.app import serve

    serve(args.router, host=args.host, port=args.port, device=args.device, config_file=args.config)
    return 0


def cmd_demo(args) -> int:
    from neural_router.training.demo import run_demo

    run_demo(args.data, args.output)
    return 0


def cmd_promote(args) -> int:
    from neural_router.feedback.registry import promote_folder

    entry = promote_folder(args.router, args.store, args.by)
    if entry.evidence.get("promotion", {}).get("promote") is False:
        print(f"neural-router promote: warning: {args.router}/promotion.json advised against promoting it "
              f"({entry.evidence['promotion'].get('reason', 'no reason given')}); promoted anyway", file=sys.stderr)
    print(json.dumps(vars(entry), indent=2, default=str))
    return 0


def cmd_rollback(args) -> int:
    from neural_router.feedback.registry import rollback_registry

    print(json.dumps(vars(rollback_registry(args.store, args.by)), indent=2, default=str))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "predict": cmd_predict,
            "route": cmd_route, "serve": cmd_serve, "score": cmd_score, "update": cmd_update, "demo": cmd_demo,
            "promote": cmd_promote, "rollback": cmd_rollback}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError, KeyError) as e:   # OSError: e.g. an --output that is an existing file
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename:
            msg = f"cannot make the folder {e.filename}: a file is in the way ({e.strerror}); choose another path"
        print(f"neural-router {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
