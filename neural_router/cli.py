"""The `neural-router` command line: train, eval, export, predict, route, serve, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from neural_router.cli_options import add_model_options, given_options, positive_int


def _add_prefs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preferences and constraints")
    g.add_argument("--quality-weight", type=float, default=1.0)
    g.add_argument("--cost-weight", type=float, default=0.0,
                   help="0.5 = give up 0.5 quality to go from the most expensive candidate to a free one")
    g.add_argument("--latency-weight", type=float, default=0.0)
    g.add_argument("--min-quality", type=float)
    g.add_argument("--max-cost-usd", type=float)
    g.add_argument("--max-latency-ms", type=float)
    g.add_argument("--allow", action="append", help="allowed model (repeatable)")
    g.add_argument("--deny", action="append", help="denied model (repeatable)")
    g.add_argument("--max-tokens", type=positive_int, help="requested max output tokens")
    g.add_argument("--image", action="store_true", help="the request carries an image")


def _add_precision(p: argparse.ArgumentParser, verb: str) -> None:
    """``--precision`` and its alias ``--int8``, for commands that load an exported router."""
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8", "fp16"],
                   help=f"which exported model to {verb}: auto = the export's default for the device (int8 on "
                        "CPU only when the export showed it decides like fp32; fp16 on CUDA when exported)")
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


def build_parser() -> argparse.ArgumentParser:
    from neural_router.training.config import TRAIN_FLAGS, TrainConfig, add_update_arguments

    ap = argparse.ArgumentParser(prog="neural-router", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a router on labeled data")
    p.add_argument("--data", action="append", required=True, help="file, folder or hub id (repeatable)")
    p.add_argument("--output", required=True)
    p.add_argument("--config", help="training YAML overriding the defaults (configs/train.yaml lists them)")
    p.add_argument("--pool", help="model pool YAML (default: configs/models.yaml)")
    add_model_options(p, TrainConfig, only=TRAIN_FLAGS)
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation written into the model card")

    p = sub.add_parser("eval", help="evaluate a router and the baselines on the validation split")
    p.add_argument("--router", required=True)
    p.add_argument("--data", action="append", help="default: the data the router was trained on")
    p.add_argument("--output", help="report folder (default: the router folder)")
    p.add_argument("--pool")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--pair", action="append", default=[], help="STRONG,WEAK two-model check (repeatable)")
    _add_precision(p, "evaluate")

    p = sub.add_parser("export", help="export a trained router to ONNX")
    p.add_argument("--router", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--int8", action="store_true",
                   help="also write a dynamic int8 model for CPU, its default there if it decides like fp32 on the "
                        "validation split (see export_report.json)")
    p.add_argument("--fp16", action="store_true",
                   help="also write an fp16 model for GPU (router.fp16.onnx, used automatically on CUDA)")
    p.add_argument("--no-optimize", action="store_true",
                   help="write the plain traced graph, without ONNX Runtime's transformer fusions (contrib ops)")

    p = sub.add_parser("predict", help="per-model predictions for a JSONL file of prompts")
    p.add_argument("--router", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    _add_precision(p, "run")

    p = sub.add_parser("route", help="route one prompt and print the decision")
    p.add_argument("--router", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_prefs(p)

    p = sub.add_parser("score", help="score logged responses with a scorer; optionally record them as feedback")
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

    p = sub.add_parser("update", help="fine-tune a router from logged outcomes, with off-policy promotion check")
    add_update_arguments(p)

    p = sub.add_parser("serve", help="run the router microservice")
    p.add_argument("--router", required=True)
    p.add_argument("--host", help="default from the config: 127.0.0.1")
    p.add_argument("--port", type=port_number, help="default from the config: 8000")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], help="default from the config: auto")
    p.add_argument("--config", help="serving YAML (default: built-in settings, same as configs/serve.yaml)")

    p = sub.add_parser("demo", help="train, evaluate, export and route sample prompts")
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--output", required=True)

    p = sub.add_parser("promote", help="make a router folder the one every replica serves (router registry)")
    p.add_argument("--router", required=True, help="router folder, at the path the replicas see it")
    p.add_argument("--store", required=True, help="the replicas' feedback store URL (feedback_url)")
    p.add_argument("--by", default=_user(), help="who promotes (default: the login name)")

    p = sub.add_parser("rollback", help="make every replica serve the router before the current one again")
    p.add_argument("--store", required=True, help="the replicas' feedback store URL (feedback_url)")
    p.add_argument("--by", default=_user(), help="who rolls back (default: the login name)")
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


def read_jsonl_records(path: str, required: str, nonempty: bool = False) -> list[tuple[int, dict]]:
    """(line number, record) for each non-empty line of a JSONL file; each must be an object with a
    string ``required`` (not blank with ``nonempty``). The whole file is checked before anything is
    done with it, and every bad line is reported in one error (the first few named, the rest counted)."""
    from neural_router.validation import Problems, json_lines

    records, problems = [], Problems()
    if Path(path).is_dir():
        raise ValueError(f"input {path} is a folder; give a JSONL file (one JSON object per line)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"input file {path} does not exist (expected JSONL: one JSON object per line)")
    with open(path, encoding="utf-8") as f:
        for n, rec, problem in json_lines(f):
            if rec is not None and not isinstance(rec.get(required), str):
                problem = f"expected an object with a string {required!r}"
            elif rec is not None and nonempty and not rec[required].strip():
                problem = f"{required!r} is empty"
            if problem:
                problems.add(f"line {n}: {problem}")
            else:
                records.append((n, rec))
    if problems:
        raise ValueError(f"{path}: {problems.count} bad line(s), nothing was processed:\n{problems.lines()}\n"
                         f"Each line must be a JSON object such as {{\"id\": 1, \"{required}\": \"...\"}}")
    return records


def read_jsonl(path: str) -> tuple[list, list[str]]:
    records = read_jsonl_records(path, "prompt", nonempty=True)
    return [rec.get("id", n) for n, rec in records], [rec["prompt"] for _, rec in records]


PREDICT_CHUNK = 2048  # prompts predicted and written at a time: a long file shows progress and keeps
                     # every finished chunk if the run is interrupted


def open_output(path: str):
    """Open an output file for writing, creating its folder (as ``predict`` and ``score`` both do); a
    path that cannot be written (a folder, no permission) is a clear error, not a traceback."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--output {path}: cannot write it ({e.strerror}); give a file path in a "
                         "writable folder") from None


def cmd_predict(args) -> int:
    from tqdm import tqdm

    from neural_router.inference.predictors import load_predictor

    ids, prompts = read_jsonl(args.input)
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


def cmd_score(args) -> int:
    """Score each response and, as soon as it is scored, write it to ``--output`` and attach it to its
    request in ``--feedback``. The input, the scorer, the output path and the store are all checked
    before the first (possibly expensive) score, and a failure part way keeps every score before it."""
    from contextlib import ExitStack

    from neural_router.feedback.store import FeedbackError, FeedbackStore
    from neural_router.feedback.scoring import ScoringError, load_scorer

    spec = args.scorer.strip()
    if spec.startswith("{"):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ValueError(f"--scorer {args.scorer!r} is not valid JSON ({e.msg}); give e.g. "
                             "'{\"type\": \"numeric\"}', a type name such as numeric, or module:function") from None
    scorer = load_scorer(spec)   # a JSON spec, a bare type name or module:function
    records = read_jsonl_records(args.input, "response")
    scored, recorded, unrecorded, failed = [], 0, 0, 0
    with ExitStack() as stack:
        store = stack.enter_context(FeedbackStore.from_url(args.feedback, must_exist=True)) if args.feedback else None
        out = None
        if args.output:
            out = stack.enter_context(open_output(args.output))
        for n, rec in records:
            try:
                rec["score"] = float(scorer.score(rec.get("prompt", ""), rec["response"], rec.get("reference")))
            except ScoringError as e:
                failed += 1
                print(f"{args.input}: line {n}: not scored: {e}", file=sys.stderr)
                if failed >= args.max_failures:
                    break
                continue
            scored.append(rec)
            if out is not None:
                out.write(json.dumps(rec) + "\n")
                out.flush()
            if store is not None and rec.get("request_id"):
                try:
                    store.add_feedback(rec["request_id"], rec["score"], model=rec.get("model"),
                                       latency_ms=rec.get("latency_ms"), cost_usd=rec.get("cost_usd"),
                                       response=rec["response"])
                    recorded += 1
                except FeedbackError as e:
                    unrecorded += 1
                    print(f"{args.input}: line {n}: request {rec['request_id']}: not recorded: {e}", file=sys.stderr)
    mean = sum(r["score"] for r in scored) / max(len(scored), 1)
    print(f"scored {len(scored)} of {len(records)} responses (mean {mean:.3f})"
          + (f", recorded {recorded} as feedback" if store is not None else ""))
    if unrecorded:
        print(f"neural-router score: error: {unrecorded} score(s) were not recorded as feedback (named above); "
              "check their request_id against the store given with --feedback", file=sys.stderr)
    if not failed:
        return 1 if unrecorded else 0
    stopped = failed >= args.max_failures and len(scored) + failed < len(records)
    print(f"neural-router score: error: {failed} response(s) could not be scored"
          + (f"; stopped after {args.max_failures} failures (--max-failures), "
             f"{len(records) - len(scored) - failed} line(s) not tried" if stopped else "")
          + ". Every score above was kept" + (f" in {args.output}" if args.output else "")
          + ("" if store is None or not recorded else " and the recorded ones in the feedback store")
          + "; fix the scorer or those lines and score them again.", file=sys.stderr)
    return 1


def cmd_update(args) -> int:
    from neural_router.training.update import run_from_args

    print(json.dumps(run_from_args(args), indent=2, default=str))
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
