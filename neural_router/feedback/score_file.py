"""Score a file of logged responses and attach each score to its logged request.

What ``neural-router score`` runs: every score is written to the output file and recorded in the
feedback store as soon as it exists, so a failure part way keeps every score before it. The caller
checks the input, the scorer, the output path and the store before the first (possibly expensive)
score.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import TextIO

from neural_router.feedback.scoring import Scorer, ScoringError
from neural_router.feedback.store import FeedbackError, FeedbackStore


@dataclass
class ScoreRun:
    """What one pass over the records did."""

    total: int                                  # records given
    scores: list[float] = field(default_factory=list)
    recorded: int = 0                           # scores stored as feedback
    unrecorded: int = 0                         # scores the store refused (e.g. unknown request_id)
    failed: int = 0                             # responses the scorer could not score
    stopped: bool = False                       # max_failures reached before the end

    @property
    def mean(self) -> float:
        return sum(self.scores) / max(len(self.scores), 1)

    @property
    def untried(self) -> int:
        return self.total - len(self.scores) - self.failed


def _record(store: FeedbackStore, rec: dict, run: ScoreRun, where: str, err: TextIO) -> None:
    try:
        store.add_feedback(rec["request_id"], rec["score"], model=rec.get("model"),
                           latency_ms=rec.get("latency_ms"), cost_usd=rec.get("cost_usd"), response=rec["response"])
        run.recorded += 1
    except FeedbackError as e:
        run.unrecorded += 1
        print(f"{where}: request {rec['request_id']}: not recorded: {e}", file=err)


def score_records(records: list[tuple[int, dict]], scorer: Scorer, *, source: str, max_failures: int,
                  out: TextIO | None = None, store: FeedbackStore | None = None,
                  err: TextIO = sys.stderr) -> ScoreRun:
    """Score ``records`` ((line number, {"prompt"?, "response", "reference"?, "request_id"?, ...}))
    in order; each scored record gains ``score``, is written to ``out`` as a JSON line (flushed) and,
    with a ``request_id``, recorded in ``store``. A response the scorer cannot score is named on
    ``err`` (``source: line N``); after ``max_failures`` of them the run stops."""
    run = ScoreRun(total=len(records))
    for n, rec in records:
        try:
            rec["score"] = float(scorer.score(rec.get("prompt", ""), rec["response"], rec.get("reference")))
        except ScoringError as e:
            run.failed += 1
            print(f"{source}: line {n}: not scored: {e}", file=err)
            if run.failed >= max_failures:
                run.stopped = run.untried > 0
                break
            continue
        run.scores.append(rec["score"])
        if out is not None:
            out.write(json.dumps(rec) + "\n")
            out.flush()
        if store is not None and rec.get("request_id"):
            _record(store, rec, run, f"{source}: line {n}", err)
    return run
