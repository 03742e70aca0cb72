"""Labeled request/outcome data: load, validate, merge and split.

Three input formats, detected from the columns of each table:

* **wide** (RouterBench): one row per prompt; ``prompt``, optional ``eval_name``/``sample_id``, a score
  column ``<model>`` per model, optional ``<model>|total_cost`` and ``<model>|model_response``
  (response length gives output tokens) and ``<model>|latency_ms``.
* **routerdc** (RouterDC JSON): ``{"question": str, "scores": {model: float}}``; the benchmark name is
  taken from the file name (``mmlu_train.json`` -> ``mmlu``).
* **long**: one row per observed outcome: ``prompt, model, score`` and optional ``cost_usd,
  latency_ms, input_tokens, output_tokens, source, id``. Logged live traffic looks like this.

Files are read with the ``datasets`` library (CSV, JSON, JSONL, Parquet); a folder means every such
file in it; anything else is taken as a Hugging Face hub id. Several sources with different model
pools can be combined: a prompt/model pair that was never observed stays NaN and is masked out of
every loss. Prompts that occur more than once are merged (observations averaged).
"""

from __future__ import annotations

import ast
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from neural_router.pool import ModelPool
from neural_router.validation import Problems, json_lines

log = logging.getLogger(__name__)

FILE_SUFFIXES = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
CHARS_PER_TOKEN = 4.0  # output tokens estimated from response text: ceil(len(chars) / 4)
SPLIT_SUFFIXES = ("_train", "_test", "_validation", "_val", "_dev")


class DataError(ValueError):
    """Bad input data; the message names the file, row and column and says how to fix it."""


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score_min: float = 0.0
    score_max: float = 1.0
    on_error: Literal["raise", "skip"] = Field(
        default="raise", description="'skip' drops bad rows/cells, counts and logs them")
    unknown_models: Literal["raise", "skip"] = Field(
        default="raise", description="a model the pool does not know: error, or drop its columns/rows")
    val_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    split_salt: str = Field(default="", description="change to draw a different deterministic split")


@dataclass
class RoutingDataset:
    """N prompts x M models of outcomes; NaN marks a pair that was never observed."""

    prompts: list[str]
    models: list[str]
    scores: np.ndarray                 # [N, M] in [score_min, score_max], NaN = unobserved
    cost_usd: np.ndarray               # [N, M] NaN = not measured
    latency_ms: np.ndarray             # [N, M] NaN = not measured
    output_tokens: np.ndarray          # [N, M] NaN = not measured
    sources: list[str] = field(default_factory=list)   # benchmark / origin of each prompt
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n, m = len(self.prompts), len(self.models)
        for name in ("scores", "cost_usd", "latency_ms", "output_tokens"):
            arr = getattr(self, name)
            if arr.shape != (n, m):
                raise ValueError(f"{name} has shape {arr.shape}, expected {(n, m)}")
        self.sources = self.sources or ["unknown"] * n
        self.ids = self.ids or [str(i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def mask(self) -> np.ndarray:
        return ~np.isnan(self.scores)

    def binary_models(self) -> np.ndarray:
        """[M] True where every observed score of that model is 0 or 1."""
        s = self.scores
        return np.array([bool(np.all(np.isin(s[~np.isnan(s[:, j]), j], (0.0, 1.0))))
                         for j in range(s.shape[1])])

    def subset(self, idx) -> "RoutingDataset":
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return RoutingDataset([self.prompts[i] for i in idx], list(self.models),
                              self.scores[idx], self.cost_usd[idx], self.latency_ms[idx],
                              self.output_tokens[idx], [self.sources[i] for i in idx],
                              [self.ids[i] for i in idx])

    def select_models(self, models: list[str]) -> "RoutingDataset":
        """Restrict to some models and drop prompts with no observation left."""
        cols = [self.models.index(m) for m in models]
        keep = ~np.all(np.isnan(self.scores[:, cols]), axis=1)
        sub = self.subset(keep)
        return RoutingDataset(sub.prompts, list(models), sub.scores[:, cols], sub.cost_usd[:, cols],
                              sub.latency_ms[:, cols], sub.output_tokens[:, cols], sub.sources,
                              sub.ids)

    def split(self, val_fraction: float = 0.2, salt: str = "") -> tuple["RoutingDataset", "RoutingDataset"]:
        """Deterministic train/validation split by prompt hash (same prompt -> same side, always)."""
        u = np.array([prompt_hash_unit(p, salt) for p in self.prompts])
        val = u < val_fraction
        return self.subset(~val), self.subset(val)

    def summary(self) -> dict[str, Any]:
        return {"prompts": len(self), "models": len(self.models),
                "observed_pairs": int(self.mask.sum()),
                "observed_per_model": {m: int(n) for m, n in zip(self.models, self.mask.sum(0))},
                "sources": {s: self.sources.count(s) for s in sorted(set(self.sources))}}


def recorded_sources(paths: list[str]) -> list[str]:
    """The data sources to record in a router's metrics: local paths made absolute (so ``eval`` and
    ``update`` find them from any folder), hub ids unchanged."""
    return [str(Path(p).resolve()) if Path(p).exists() else str(p) for p in paths]


def load_recorded_data(paths: list[str], where: str, pool: ModelPool, config: DataConfig) -> RoutingDataset:
    """:func:`load_routing_data` on the data a router's metrics file names; a failure says where the
    paths came from and how to give others."""
    try:
        return load_routing_data(paths, pool, config)
    except DataError as e:
        raise DataError(f"{e}\n(these are the router's training data, as {where} records them; pass --data "
                        "to use other paths)") from None


def prompt_hash_unit(prompt: str, salt: str = "") -> float:
    h = hashlib.sha1((salt + "\x00" + prompt).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def unwrap_text(value: Any) -> str:
    """RouterBench stores prompts/responses as the repr of a one-element list: "['text']"."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    text = str(value)
    s = text.strip()
    if len(s) >= 4 and s[0] == "[" and s[-1] == "]" and s[1] in "'\"":
        try:
            parsed = ast.literal_eval(s)
        except (ValueError, SyntaxError):
            return text
        if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
            return "\n".join(parsed)
    return text


def estimate_tokens(text: str) -> float:
    return float(max(1, math.ceil(len(text) / CHARS_PER_TOKEN)))


# --------------------------------------------------------------------------------------------------
# Reading tables


def _expand(path: str) -> list[tuple[str, str | None]]:
    """-> [(location, builder)] where builder is a datasets builder name or None for a hub id."""
    p = Path(path)
    if p.is_dir():
        # the folder's data files and those of its subfolders (a folder of sources, such as
        # ../shared/data with routerbench/ and routerdc7/), hidden entries skipped
        files = sorted(f for f in p.rglob("*") if f.suffix in FILE_SUFFIXES and f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            raise DataError(f"{p}: folder has no data files ({', '.join(FILE_SUFFIXES)}), nor do its "
                            "subfolders; point --data at a file or a folder of files")
        return [(str(f), FILE_SUFFIXES[f.suffix]) for f in files]
    if p.is_file():
        if p.suffix not in FILE_SUFFIXES:
            raise DataError(f"{p}: unsupported file type {p.suffix!r}; use one of "
                            f"{', '.join(FILE_SUFFIXES)}")
        return [(str(p), FILE_SUFFIXES[p.suffix])]
    if p.exists():
        raise DataError(f"{p}: neither a file nor a folder")
    if path.count("/") == 1 and not path.startswith((".", "/")):
        return [(path, None)]  # looks like a hub id (org/name)
    raise DataError(f"{path}: no such file or folder (hub ids look like 'org/name')")


def _ragged_csv_rows(location: str) -> str:
    """'' if every CSV record has as many fields as the header; else the first few that do not (a
    ragged row would otherwise shift its cells under other columns, or fail with no row named)."""
    import csv

    bad, header, start = [], None, 1
    with open(location, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        for fields in reader:
            if header is None:
                header = len(fields)
            elif fields and len(fields) != header:
                span = f"line {start}" + (f"-{reader.line_num}" if reader.line_num > start else "")
                bad.append(f"{span}: {len(fields)} fields")
            start = reader.line_num + 1
    if not bad:
        return ""
    return (f"{location}: {len(bad)} row(s) do not have the header's {header} fields ({'; '.join(bad[:5])}"
            f"{'; ...' if len(bad) > 5 else ''}); quote fields that contain commas, quotes or line breaks")


def _bad_json_line(location: str) -> str:
    """The first line of a JSON Lines file that is not a JSON object, named; '' if none is."""
    with open(location, encoding="utf-8", errors="replace") as f:
        for n, _, problem in json_lines(f):
            if problem:
                return f"{location}: line {n}: {problem}"
    return ""


def _read_table(location: str, builder: str | None) -> list[dict[str, Any]]:
    import datasets

    if builder == "csv" and (problem := _ragged_csv_rows(location)):
        raise DataError(problem)
    datasets.disable_progress_bars()
    try:
        if builder is None:
            ds = datasets.load_dataset(location, split="train")
        else:
            ds = datasets.load_dataset(builder, data_files=location, split="train")
    except Exception as e:  # datasets raises many types; name the file and pass the reason on
        if location.endswith(".jsonl") and (problem := _bad_json_line(location)):
            raise DataError(problem) from None
        raise DataError(f"{location}: could not be read as {builder or 'a hub dataset'}: {e}") from e
    return ds.to_list()


def _source_from_filename(location: str) -> str:
    stem = Path(location).stem
    for suf in SPLIT_SUFFIXES:
        if stem.endswith(suf):
            return stem[: -len(suf)]
    return stem


# --------------------------------------------------------------------------------------------------
# Accumulating observations


class _Builder:
    FIELDS = ("scores", "cost_usd", "latency_ms", "output_tokens")

    def __init__(self, pool: ModelPool, cfg: DataConfig):
        self.pool, self.cfg = pool, cfg
        self.index: dict[str, int] = {}
        self.prompts: list[str] = []
        self.sources: list[str] = []
        self.ids: list[str] = []
        self.sums = {f: [] for f in self.FIELDS}
        self.counts = {f: [] for f in self.FIELDS}
        self.skipped: dict[str, int] = {}
        self.unknown_seen: set[str] = set()
        self.errors = Problems()   # raised together once every file is read
        self.M = len(pool)

    def error(self, where: str, msg: str) -> None:
        """A problem the configuration does not allow skipping: noted, and raised with all the
        others by :meth:`raise_errors` (the row or cell is dropped meanwhile, as a skip would)."""
        self.errors.add(f"{where}: {msg}")

    def raise_errors(self) -> None:
        if not self.errors:
            return
        if self.errors.count == 1:
            raise DataError(self.errors.listed[0])
        raise DataError(f"{self.errors.count} problems in the data, nothing was loaded:\n" + self.errors.lines()
                        + "\nFix them, or set data.on_error: skip (data.unknown_models: skip for models the "
                          "pool does not know) to drop those cells and rows, counted in the log")

    def problem(self, where: str, msg: str, kind: str = "bad value") -> None:
        if self.cfg.on_error == "raise":
            self.error(where, msg)
            return
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        log.warning("skipping %s: %s", where, msg)

    def row(self, prompt: str, source: str, rid: str) -> int:
        key = prompt.strip()
        if key not in self.index:
            self.index[key] = len(self.prompts)
            self.prompts.append(prompt)
            self.sources.append(source)
            self.ids.append(rid)
            for f in self.FIELDS:
                self.sums[f].append(np.zeros(self.M))
                self.counts[f].append(np.zeros(self.M))
        return self.index[key]

    def add(self, i: int, j: int, fieldname: str, value: float) -> None:
        self.sums[fieldname][i][j] += value
        self.counts[fieldname][i][j] += 1

    def _parse(self, where: str, raw: Any, what: str) -> float | None:
        """A number, or None for an empty/NaN cell (unobserved) or a bad one (raised or skipped)."""
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            return None
        try:
            v = float(raw)
        except (TypeError, ValueError):
            self.problem(where, f"{what} {raw!r} is not a number")
            return None
        return None if math.isnan(v) else v

    def score(self, where: str, raw: Any) -> float | None:
        """Parse a score; None for an empty cell (unobserved). Raises/skips on a bad one."""
        v = self._parse(where, raw, "score")
        lo, hi = self.cfg.score_min, self.cfg.score_max
        if v is not None and not lo <= v <= hi:
            self.problem(where, f"score {v} is outside the configured range [{lo}, {hi}] "
                                "(set data.score_min/score_max, or rescale the scores)")
            return None
        return v

    def number(self, where: str, raw: Any, what: str) -> float | None:
        v = self._parse(where, raw, what)
        if v is not None and v < 0:
            self.problem(where, f"{what} {v} is negative")
            return None
        return v

    def model(self, where: str, name: str) -> int | None:
        canonical = self.pool.resolve(name)
        if canonical is None:
            if self.cfg.unknown_models == "raise":
                self.error(where, f"model {name!r} is not in the pool; add it to configs/models.yaml "
                                  "(or set data.unknown_models: skip)")
                return None
            self.skipped["unknown model"] = self.skipped.get("unknown model", 0) + 1
            if name not in self.unknown_seen:   # once per model: a long file names it on every row
                self.unknown_seen.add(name)
                log.warning("skipping model %r, which the pool does not know (first at %s)", name, where)
            return None
        return self.pool.names.index(canonical)

    def prompt(self, where: str, raw: Any) -> str | None:
        text = unwrap_text(raw)
        if not text.strip():
            self.problem(where, "prompt is empty", "empty prompt")
            return None
        return text

    def build(self) -> RoutingDataset:
        if not self.prompts:
            raise DataError("no usable rows were found in the given data")
        arrays = {}
        for f in self.FIELDS:
            s, c = np.stack(self.sums[f]), np.stack(self.counts[f])
            with np.errstate(invalid="ignore", divide="ignore"):
                arrays[f] = np.where(c > 0, s / np.maximum(c, 1), np.nan).astype(np.float32)
        observed = ~np.all(np.isnan(arrays["scores"]), axis=0)
        models = [m for m, o in zip(self.pool.names, observed) if o]
        keep = np.flatnonzero(observed)
        rows = np.flatnonzero(~np.all(np.isnan(arrays["scores"]), axis=1))
        if self.skipped:
            log.warning("data: skipped %s", ", ".join(f"{v} x {k}" for k, v in self.skipped.items()))
        return RoutingDataset([self.prompts[i] for i in rows], models,
                              *(arrays[f][rows][:, keep] for f in self.FIELDS),
                              sources=[self.sources[i] for i in rows],
                              ids=[self.ids[i] for i in rows])


def _add_wide(b: _Builder, location: str, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0].keys())
    skip = {"prompt", "eval_name", "sample_id", "oracle_model_to_route_to", "id", "source", ""}
    score_cols = [c for c in columns if "|" not in c and c not in skip and not c.startswith("Unnamed")]
    models: dict[str, int] = {}
    for c in score_cols:
        j = b.model(f"{location}, column {c!r}", c)
        if j is not None:
            models[c] = j
    if not models:   # raised at the end of loading, with the columns' unknown models if any were named
        b.error(location, f"wide format but no model score columns were found (columns: {', '.join(columns)})")
        return
    for r, rec in enumerate(rows, start=1):
        where = f"{location}, row {r}"
        prompt = b.prompt(f"{where}, column 'prompt'", rec.get("prompt"))
        if prompt is None:
            continue
        i = b.row(prompt, str(rec.get("eval_name") or _source_from_filename(location)),
                  str(rec.get("sample_id") or rec.get("id") or f"{Path(location).name}:{r}"))
        for col, j in models.items():
            s = b.score(f"{where}, column {col!r}", rec.get(col))
            if s is None:
                continue
            b.add(i, j, "scores", s)
            cost = b.number(f"{where}, column '{col}|total_cost'", rec.get(f"{col}|total_cost"), "cost")
            if cost is not None:
                b.add(i, j, "cost_usd", cost)
            lat = b.number(f"{where}, column '{col}|latency_ms'", rec.get(f"{col}|latency_ms"), "latency")
            if lat is not None:
                b.add(i, j, "latency_ms", lat)
            resp = rec.get(f"{col}|model_response")
            if resp is not None:
                b.add(i, j, "output_tokens", estimate_tokens(unwrap_text(resp)))


def _add_routerdc(b: _Builder, location: str, rows: list[dict[str, Any]]) -> None:
    source = _source_from_filename(location)
    cache: dict[str, int | None] = {}
    for r, rec in enumerate(rows, start=1):
        where = f"{location}, row {r}"
        prompt = b.prompt(f"{where}, field 'question'", rec.get("question"))
        scores = rec.get("scores")
        if prompt is None:
            continue
        if not isinstance(scores, dict):
            b.problem(f"{where}, field 'scores'", "must be an object {model: score}")
            continue
        i = b.row(prompt, source, str(rec.get("id") or f"{Path(location).name}:{r}"))
        for name, raw in scores.items():
            if name not in cache:
                cache[name] = b.model(f"{where}, field 'scores.{name}'", name)
            j = cache[name]
            if j is None:
                continue
            s = b.score(f"{where}, field 'scores.{name}'", raw)
            if s is not None:
                b.add(i, j, "scores", s)


def _add_long(b: _Builder, location: str, rows: list[dict[str, Any]]) -> None:
    default_source = _source_from_filename(location)
    for r, rec in enumerate(rows, start=1):
        where = f"{location}, row {r}"
        prompt = b.prompt(f"{where}, column 'prompt'", rec.get("prompt"))
        if prompt is None:
            continue
        name = rec.get("model")
        if not isinstance(name, str) or not name:
            b.problem(f"{where}, column 'model'", "model name is missing")
            continue
        j = b.model(f"{where}, column 'model'", name)
        if j is None:
            continue
        s = b.score(f"{where}, column 'score'", rec.get("score"))
        if s is None:
            if rec.get("score") in (None, ""):
                b.problem(f"{where}, column 'score'", "score is missing")
            continue
        i = b.row(prompt, str(rec.get("source") or default_source), str(rec.get("id") or f"{Path(location).name}:{r}"))
        b.add(i, j, "scores", s)
        for col, fieldname, what in (("cost_usd", "cost_usd", "cost"), ("latency_ms", "latency_ms", "latency"),
                                     ("output_tokens", "output_tokens", "output tokens")):
            v = b.number(f"{where}, column {col!r}", rec.get(col), what)
            if v is not None:
                b.add(i, j, fieldname, v)


def detect_format(location: str, columns: list[str]) -> str:
    cols = set(columns)
    if {"question", "scores"} <= cols:
        return "routerdc"
    if {"prompt", "model", "score"} <= cols:
        return "long"
    if "prompt" in cols:
        return "wide"
    raise DataError(
        f"{location}: cannot tell the format from its columns ({', '.join(sorted(cols)) or 'none'}). "
        "Expected wide (prompt + one score column per model), RouterDC (question, scores) or long "
        "(prompt, model, score); check for misnamed columns")


def load_routing_data(paths: list[str] | str, pool: ModelPool,
                      config: DataConfig | None = None) -> RoutingDataset:
    """Read and merge every source into one RoutingDataset whose models follow the pool's order."""
    cfg = config or DataConfig()
    b = _Builder(pool, cfg)
    for path in [paths] if isinstance(paths, str) else paths:
        for location, builder in _expand(str(path)):
            rows = _read_table(location, builder)
            if not rows:
                raise DataError(f"{location}: the file has no rows")
            fmt = detect_format(location, list(rows[0].keys()))
            {"wide": _add_wide, "routerdc": _add_routerdc, "long": _add_long}[fmt](b, location, rows)
            log.info("read %s (%s, %d rows)", location, fmt, len(rows))
    b.raise_errors()
    return b.build()
