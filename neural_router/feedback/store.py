"""Decision log and feedback store: what the router chose, and how it went.

Every routed request can be logged as a *decision* (the chosen model, the probability with which it
was picked, the per-model predictions and the preferences in force); feedback later adds one
*outcome* per (request, model) with a score in [0, 1]. The store exports the outcomes in the "long"
training format of :mod:`neural_router.data` and yields (decision, outcome) pairs for off-policy
evaluation.

Backed by SQLAlchemy Core, so any SQLAlchemy URL works; tested with SQLite (the default) and
PostgreSQL (``postgresql+psycopg://user@host:port/db``). SQLite databases run in WAL mode with
``synchronous=FULL``: a call that returned has been committed and survives a crash of the process.

Methods are synchronous (blocking I/O); an async service should call them in a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (CheckConstraint, Column, DateTime, Engine, Float, ForeignKey, Integer,
                        MetaData, String, Table, Text, UniqueConstraint, create_engine, event, inspect,
                        select, text)
from sqlalchemy.engine import Connection, RowMapping, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.types import JSON

from neural_router.data.dataset import estimate_tokens
from neural_router.policy.routing import Constraints
from neural_router.inference.interface import Predictions, RequestFeatures

log = logging.getLogger(__name__)

Retention = Literal["full", "hash"]
PREDICTION_FIELDS = ("quality", "cost_usd", "latency_ms")
DEFAULT_SOURCE = "feedback"


class FeedbackError(Exception):
    """Base class of the store's errors."""


class UnknownRequestError(FeedbackError, LookupError):
    """No decision was logged under this request id."""


class DuplicateFeedbackError(FeedbackError):
    """The request already has feedback for this model."""


class DuplicateDecisionError(FeedbackError):
    """A decision with this request id was already logged."""


class InvalidFeedbackError(FeedbackError, ValueError):
    """Feedback that cannot be stored: score out of range or NaN, unknown model, negative cost..."""


class InvalidDecisionError(FeedbackError, ValueError):
    """A decision that cannot be logged: propensity outside (0, 1], chosen model not predicted..."""


PROXY_CONTEXT = "proxy"  # key of LoggedDecision.context where the service's proxy records which model answered


class NotServedModelError(InvalidFeedbackError):
    """Feedback on a proxied request for another model than the one that answered it (or for a
    request no model answered)."""


def check_served_model(request_id: str, context: dict[str, Any], model: str | None) -> None:
    """Raise :class:`NotServedModelError` when the decision's ``context`` says the proxy served the
    request with another model than ``model`` (None: the decision's own model, always the served
    one), or that no model answered it. Decisions without a proxy record are not checked."""
    proxy = context.get(PROXY_CONTEXT)
    if not isinstance(proxy, dict) or "served_model" not in proxy:
        return
    served, chosen = proxy["served_model"], proxy.get("chosen_model")
    if served is None:
        raise NotServedModelError(
            f"no model answered request {request_id!r}: every backend failed and the proxy answered "
            f"502, so there is no answer to score (it is not an outcome of {chosen!r})")
    if model is not None and model != served:
        how = f" (the proxy fell back to it after {chosen!r} failed)" if chosen and chosen != served else ""
        raise NotServedModelError(
            f"request {request_id!r} was answered by model {served!r}{how}, not {model!r}; "
            f"send its feedback with \"model\": {served!r} or without \"model\"")


class StoreUnavailableError(FeedbackError, ValueError):
    """The store cannot be opened: no such SQLite file (where one must exist), not a database, the
    server unreachable, bad credentials..."""


def safe_url(url: str | Path) -> str:
    """A store URL fit for messages and records: the password hidden; a plain path as it is."""
    text = str(url)
    if "://" not in text:
        return text
    try:
        return make_url(text).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for the record
        return "<unparseable url>"


# --------------------------------------------------------------------------------------------------
# Records returned by the store


@dataclass(frozen=True)
class LoggedDecision:
    """One row of the decision log: what the router chose for a request, with what it saw.

    Not :class:`neural_router.policy.routing.Decision` (the policy's choice for one request); this is
    that choice as stored, with the propensity, the predictions and the context needed to replay it.
    """

    request_id: str
    created_at: datetime                       # UTC
    router_version: str
    prompt: str | None                         # None when logged with retention="hash"
    prompt_sha256: str
    retention: Retention
    model: str                                 # the chosen model (the proxy: the model that answered)
    propensity: float                          # P(the logging policy picked its choice), in (0, 1]
    predictions: dict[str, dict[str, float]]   # {model: {"quality", "cost_usd", "latency_ms"}}
    preferences: dict[str, float]
    exploration: str                           # name of the exploration policy, e.g. "greedy"
    input_tokens: int | None = None
    # what else the policy saw (see decision_context); off-policy estimates replay the policy with it
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def served_by_fallback(self) -> bool:
        """The proxy answered with a fallback after the policy's choice failed: ``model`` is then not the
        policy's action, and ``propensity`` is not its probability (so its outcome is no off-policy sample)."""
        proxy = self.context.get(PROXY_CONTEXT) if self.context else None
        return isinstance(proxy, dict) and proxy.get("served_model") not in (None, proxy.get("chosen_model"))


def decision_context(features: RequestFeatures, constraints: Constraints) -> dict[str, Any]:
    """What the policy saw besides predictions and weights, as logged in ``LoggedDecision.context``: the
    request's features that are set (has_image, has_audio, has_tools, max_output_tokens) and, under
    ``"constraints"``, the constraints that are set (a limit of 0, e.g. max_cost_usd 0, is kept)."""
    ctx: dict[str, Any] = {k: v for k, v in asdict(features).items() if v}
    limits = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(constraints).items()
              if v is not None and v != ()}
    if limits:
        ctx["constraints"] = limits
    return ctx


def replay_context(ctx: Mapping[str, Any], known: list[str]) -> tuple[RequestFeatures, Constraints]:
    """The inverse of :func:`decision_context`, for a router that knows the models ``known``: names
    it does not know are dropped from allowed/denied lists (an allowed list left empty means no such
    limit)."""
    mot = ctx.get("max_output_tokens")
    features = RequestFeatures(has_image=bool(ctx.get("has_image")), has_audio=bool(ctx.get("has_audio")),
                               has_tools=bool(ctx.get("has_tools")),
                               max_output_tokens=int(mot) if mot is not None else None)
    c = ctx.get("constraints") or {}
    allowed = [m for m in (c.get("allowed_models") or []) if m in known]
    constraints = Constraints(min_quality=c.get("min_quality"), max_cost_usd=c.get("max_cost_usd"),
                              max_latency_ms=c.get("max_latency_ms"),
                              allowed_models=tuple(allowed) if allowed else None,
                              denied_models=tuple(m for m in (c.get("denied_models") or []) if m in known))
    return features, constraints


@dataclass(frozen=True)
class Outcome:
    id: int
    request_id: str
    model: str
    score: float                               # rescaled to [0, 1]
    latency_ms: float | None
    cost_usd: float | None
    output_tokens: int | None
    response: str | None
    created_at: datetime                       # UTC

    @property
    def output_tokens_estimate(self) -> float | None:
        """Logged output tokens, else estimated from the response text, else None."""
        if self.output_tokens is not None:
            return float(self.output_tokens)
        return estimate_tokens(self.response) if self.response is not None else None


# --------------------------------------------------------------------------------------------------
# Schema


def _tables(metadata: MetaData) -> tuple[Table, Table]:
    decisions = Table(
        "decisions", metadata,
        Column("request_id", String(128), primary_key=True),
        Column("created_at", DateTime(timezone=True), nullable=False, index=True),
        Column("router_version", String(256), nullable=False),
        Column("prompt", Text, nullable=True),
        Column("prompt_sha256", String(64), nullable=False, index=True),
        Column("retention", String(8), nullable=False),
        Column("model", String(256), nullable=False),
        Column("propensity", Float, nullable=False),
        Column("predictions", JSON, nullable=False),
        Column("preferences", JSON, nullable=False),
        Column("exploration", String(128), nullable=False),
        Column("input_tokens", Integer, nullable=True),
        Column("context", JSON, nullable=True),
        CheckConstraint("retention IN ('full', 'hash')", name="ck_decisions_retention"),
        CheckConstraint("propensity > 0 AND propensity <= 1", name="ck_decisions_propensity"),
    )
    outcomes = Table(
        "outcomes", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("request_id", String(128), ForeignKey("decisions.request_id", ondelete="CASCADE"),
               nullable=False, index=True),
        Column("model", String(256), nullable=False),
        Column("score", Float, nullable=False),
        Column("latency_ms", Float, nullable=True),
        Column("cost_usd", Float, nullable=True),
        Column("output_tokens", Integer, nullable=True),
        Column("response", Text, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("request_id", "model", name="uq_outcomes_request_model"),
        CheckConstraint("score >= 0 AND score <= 1", name="ck_outcomes_score"),
    )
    return decisions, outcomes


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
    finally:
        cur.close()


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _utc(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time the store writes is UTC."""
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _finite(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def open_engine(url: str | Path, must_exist: bool = False) -> Engine:
    """A SQLAlchemy engine for a store URL (see :meth:`FeedbackStore.from_url`): a plain path means a
    SQLite file there (its folder is created), ``postgresql://``/``postgres://`` use psycopg 3, SQLite
    connections run in WAL mode with ``synchronous=FULL``. Nothing is connected yet: a server that is
    down shows at the first query (turn that error into a message with :func:`unavailable`).
    :class:`StoreUnavailableError` for a URL that does not parse, a folder given as the SQLite file,
    a missing SQLite file when ``must_exist``, or a kind of database without a driver."""
    text = str(url)
    if "://" not in text:
        text = sqlite_url(text)
    try:
        parsed = make_url(text)
    except SQLAlchemyError as e:
        raise StoreUnavailableError(f"{safe_url(url)} is not a store URL ({e}); use e.g. "
                                    "sqlite:///path/feedback.db or postgresql://user:pw@host:5432/db") from None
    if parsed.drivername in ("postgresql", "postgres"):  # SQLAlchemy would pick psycopg2; we ship psycopg 3
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).expanduser()
        if path.is_dir():
            raise StoreUnavailableError(f"the feedback store {path} is a folder; give the SQLite file in it "
                                        f"(e.g. {path / 'feedback.db'})")
        if must_exist and not path.is_file():
            raise StoreUnavailableError(f"the feedback store {path} does not exist; give the file the "
                                        "service logs to (feedback_url in its serving config)")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(parsed)
    except (SQLAlchemyError, ImportError) as e:   # an unknown dialect, or its driver not installed
        raise StoreUnavailableError(f"{safe_url(url)}: this kind of database cannot be used ({e}); use "
                                    "sqlite:///path/feedback.db or postgresql://user:pw@host:5432/db") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def unavailable(url: str | Path, error: SQLAlchemyError, what: str = "the feedback store") -> StoreUnavailableError:
    """The :class:`StoreUnavailableError` for a database error met while opening ``what`` at ``url``."""
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    return StoreUnavailableError(f"cannot open {what} {safe_url(url)}: {reason}; check the URL, that the "
                                 "database server is running and reachable, and the credentials (a SQLite "
                                 "URL must name a SQLite database file)")


# --------------------------------------------------------------------------------------------------
# The store


class FeedbackStore:
    """Decisions and their outcomes in a SQL database. Safe to share between threads."""

    def __init__(self, engine: Engine, retention: Retention = "full") -> None:
        if retention not in ("full", "hash"):
            raise ValueError(f"retention must be 'full' or 'hash', not {retention!r}")
        self.engine = engine
        self.retention: Retention = retention
        self.metadata = MetaData()
        self.decisions, self.outcomes = _tables(self.metadata)
        self.metadata.create_all(engine)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns the current schema has and an existing store lacks (``decisions.context``),
        so that a store written without them keeps working; existing rows get NULL there."""
        have = {c["name"] for c in inspect(self.engine).get_columns("decisions")}
        if "context" not in have:
            log.info("feedback store: adding the missing decisions.context column")
            with self.engine.begin() as conn:
                conn.execute(text("ALTER TABLE decisions ADD COLUMN context JSON"))

    @classmethod
    def from_url(cls, url: str | Path, retention: Retention = "full", must_exist: bool = False) -> "FeedbackStore":
        """Open (and create the tables of) a store. ``url`` is a SQLAlchemy URL such as
        ``sqlite:///path/feedback.db`` or ``postgresql://user:pw@host:5432/db`` (driver:
        psycopg 3); a plain filesystem path means a SQLite file there. ``must_exist``: a SQLite file
        that is not there is an error rather than a new, empty store (for readers of the logs).
        :class:`StoreUnavailableError` when it cannot be opened."""
        engine = open_engine(url, must_exist=must_exist)
        try:
            if must_exist and "decisions" not in inspect(engine).get_table_names():
                engine.dispose()   # a reader never turns another database into a store
                raise StoreUnavailableError(f"{safe_url(url)} holds no feedback store (no decisions table); "
                                            "give the store the service logs to (feedback_url in its serving "
                                            "config)")
            return cls(engine, retention)
        except SQLAlchemyError as e:
            engine.dispose()
            raise unavailable(url, e) from None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "FeedbackStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ---------------------------------------------------------------------------------

    def log_decision(self, *, request_id: str, prompt: str, model: str,
                     predictions: Mapping[str, Mapping[str, float]] | Predictions,
                     router_version: str, propensity: float = 1.0,
                     preferences: Mapping[str, float] | None = None,
                     exploration: str = "greedy", input_tokens: int | None = None,
                     created_at: datetime | None = None,
                     context: Mapping[str, Any] | None = None) -> LoggedDecision:
        """Record what the router chose for one request. ``predictions`` is the per-model mapping
        of ``Predictions.as_dicts()`` (or a one-row ``Predictions``); ``propensity`` is the
        probability with which ``model`` was picked (1.0 for a deterministic policy)."""
        preds = self._check_predictions(predictions)
        if not request_id or len(request_id) > 128:
            raise InvalidDecisionError("request_id must be 1 to 128 characters")
        if model not in preds:
            raise InvalidDecisionError(f"chosen model {model!r} has no prediction "
                                       f"(predicted: {', '.join(preds)})")
        if not (_finite(propensity) and 0.0 < propensity <= 1.0):
            raise InvalidDecisionError(f"propensity {propensity!r} must be in (0, 1]")
        prefs = {str(k): float(v) for k, v in (preferences or {}).items()}
        if input_tokens is not None and input_tokens < 0:
            raise InvalidDecisionError(f"input_tokens {input_tokens} is negative")
        ctx = dict(context or {})
        try:
            json.dumps(ctx, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidDecisionError(f"context must be JSON (no NaN): {e}") from None
        decision = LoggedDecision(
            request_id=request_id, created_at=_utc(created_at or datetime.now(timezone.utc)),
            router_version=router_version,
            prompt=prompt if self.retention == "full" else None,
            prompt_sha256=prompt_sha256(prompt), retention=self.retention, model=model,
            propensity=float(propensity), predictions=preds, preferences=prefs,
            exploration=exploration,
            input_tokens=int(input_tokens) if input_tokens is not None else None, context=ctx)
        try:
            with self.engine.begin() as conn:
                if self._decision_row(conn, request_id) is not None:
                    raise DuplicateDecisionError(f"request {request_id!r} was already logged")
                conn.execute(self.decisions.insert().values(**decision.__dict__))
        except IntegrityError as e:  # a concurrent writer won the race
            raise DuplicateDecisionError(f"request {request_id!r} was already logged") from e
        return decision

    def add_feedback(self, request_id: str, score: float, model: str | None = None,
                     latency_ms: float | None = None, cost_usd: float | None = None,
                     response: str | None = None, score_range: tuple[float, float] = (0.0, 1.0),
                     output_tokens: int | None = None) -> Outcome:
        """Record how ``model`` (default: the chosen one) did on a logged request. ``score`` is on
        the scale ``score_range`` and is stored rescaled to [0, 1]."""
        lo, hi = float(score_range[0]), float(score_range[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise InvalidFeedbackError(f"score_range {score_range!r} must be finite with low < high")
        if not _finite(score):
            raise InvalidFeedbackError(f"score {score!r} is not a finite number")
        if not lo <= score <= hi:
            raise InvalidFeedbackError(f"score {score} is outside score_range [{lo}, {hi}]")
        for name, value in (("latency_ms", latency_ms), ("cost_usd", cost_usd),
                            ("output_tokens", output_tokens)):
            if value is not None and not (_finite(value) and value >= 0):
                raise InvalidFeedbackError(f"{name} {value!r} must be a finite number >= 0")
        target = model
        try:
            with self.engine.begin() as conn:
                row = self._decision_row(conn, request_id)
                if row is None:
                    raise UnknownRequestError(f"no decision was logged for request {request_id!r}")
                check_served_model(request_id, row["context"] or {}, model)
                target = row["model"] if model is None else model
                if target not in row["predictions"]:
                    raise InvalidFeedbackError(
                        f"model {target!r} was not among the predicted models of request "
                        f"{request_id!r} ({', '.join(row['predictions'])})")
                if self._has_outcome(conn, request_id, target):
                    raise DuplicateFeedbackError(
                        f"request {request_id!r} already has feedback for model {target!r}")
                values: dict[str, Any] = {
                    "request_id": request_id, "model": target, "score": (score - lo) / (hi - lo),
                    "latency_ms": None if latency_ms is None else float(latency_ms),
                    "cost_usd": None if cost_usd is None else float(cost_usd),
                    "output_tokens": None if output_tokens is None else int(output_tokens),
                    "response": response, "created_at": datetime.now(timezone.utc)}
                new_id = conn.execute(self.outcomes.insert().values(**values)).inserted_primary_key
        except IntegrityError as e:  # a concurrent writer won the race
            raise DuplicateFeedbackError(
                f"request {request_id!r} already has feedback for model {target!r}") from e
        assert new_id is not None
        return Outcome(id=int(new_id[0]), **values)

    # ---- reading ---------------------------------------------------------------------------------

    def get_decision(self, request_id: str) -> LoggedDecision:
        with self.engine.connect() as conn:
            row = self._decision_row(conn, request_id)
        if row is None:
            raise UnknownRequestError(f"no decision was logged for request {request_id!r}")
        return self._decision(row)

    def get_outcomes(self, request_id: str) -> list[Outcome]:
        q = (select(self.outcomes).where(self.outcomes.c.request_id == request_id)
             .order_by(self.outcomes.c.id))
        with self.engine.connect() as conn:
            return [self._outcome(r) for r in conn.execute(q).mappings()]

    def iter_logged(self, chosen_only: bool = True, router_version: str | None = None,
                    since: datetime | None = None) -> Iterator[tuple[LoggedDecision, Outcome]]:
        """(decision, outcome) pairs in logging order, for off-policy evaluation. By default only
        outcomes of the chosen model (whose probability is ``decision.propensity``), leaving out
        requests a fallback answered (:attr:`LoggedDecision.served_by_fallback`)."""
        d, o = self.decisions, self.outcomes
        q = select(d, *[c.label(f"o_{c.name}") for c in o.c]).join(o, o.c.request_id == d.c.request_id)
        if chosen_only:
            q = q.where(o.c.model == d.c.model)
        if router_version is not None:
            q = q.where(d.c.router_version == router_version)
        if since is not None:
            q = q.where(d.c.created_at >= _utc(since))
        q = q.order_by(d.c.created_at, d.c.request_id, o.c.id)
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=500).execute(q).mappings():
                outcome = {c.name: row[f"o_{c.name}"] for c in o.c}
                decision = self._decision(row)
                if chosen_only and decision.served_by_fallback:
                    continue
                yield decision, self._outcome(outcome)

    def export_long(self, path: str | Path | None = None, source: str = DEFAULT_SOURCE,
                    router_version: str | None = None) -> list[dict[str, Any]]:
        """Outcomes as rows of the long training format (``prompt, model, score, cost_usd,
        latency_ms, input_tokens, output_tokens, source, id``) plus ``propensity`` (of the chosen
        model; None for other models' rows) and ``chosen``. Decisions without outcomes are left
        out, and so are decisions logged with retention="hash" (no prompt to train on). With a
        ``path`` the rows are also written there as JSONL."""
        rows: list[dict[str, Any]] = []
        hashed = 0
        for dec, out in self.iter_logged(chosen_only=False, router_version=router_version):
            if dec.prompt is None:
                hashed += 1
                continue
            chosen = out.model == dec.model and not dec.served_by_fallback   # else an unweighted observation
            rows.append({"prompt": dec.prompt, "model": out.model, "score": out.score,
                         "cost_usd": out.cost_usd, "latency_ms": out.latency_ms,
                         "input_tokens": dec.input_tokens,
                         "output_tokens": out.output_tokens_estimate,
                         "source": source, "id": dec.request_id,
                         "propensity": dec.propensity if chosen else None, "chosen": chosen})
        if hashed:
            log.info("export_long: left out %d outcomes whose prompt was stored as a hash only", hashed)
        if path is not None:
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            with tmp.open("w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            tmp.replace(p)
        return rows

    # ---- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _check_predictions(predictions: Mapping[str, Mapping[str, float]] | Predictions
                           ) -> dict[str, dict[str, float]]:
        if isinstance(predictions, Predictions):
            if len(predictions) != 1:
                raise InvalidDecisionError(f"predictions has {len(predictions)} rows; give one request's")
            predictions = predictions.as_dicts()[0]
        if not predictions:
            raise InvalidDecisionError("predictions is empty")
        out: dict[str, dict[str, float]] = {}
        for m, est in predictions.items():
            missing = [f for f in PREDICTION_FIELDS if f not in est]
            if missing:
                raise InvalidDecisionError(f"prediction for {m!r} lacks {', '.join(missing)}")
            vals = {f: float(est[f]) for f in PREDICTION_FIELDS}
            if not all(math.isfinite(v) for v in vals.values()):
                raise InvalidDecisionError(f"prediction for {m!r} is not finite: {vals}")
            out[str(m)] = vals
        return out

    def _decision_row(self, conn: Connection, request_id: str) -> RowMapping | None:
        q = select(self.decisions).where(self.decisions.c.request_id == request_id)
        return conn.execute(q).mappings().first()

    def _has_outcome(self, conn: Connection, request_id: str, model: str) -> bool:
        q = select(self.outcomes.c.id).where(self.outcomes.c.request_id == request_id,
                                             self.outcomes.c.model == model)
        return conn.execute(q).first() is not None

    def _decision(self, row: Mapping[Any, Any]) -> LoggedDecision:
        return LoggedDecision(request_id=row["request_id"], created_at=_utc(row["created_at"]),
                              router_version=row["router_version"], prompt=row["prompt"],
                              prompt_sha256=row["prompt_sha256"], retention=row["retention"],
                              model=row["model"], propensity=float(row["propensity"]),
                              predictions=dict(row["predictions"]), preferences=dict(row["preferences"]),
                              exploration=row["exploration"], input_tokens=row["input_tokens"],
                              context=dict(row["context"] or {}))

    @staticmethod
    def _outcome(row: Mapping[Any, Any]) -> Outcome:
        return Outcome(id=int(row["id"]), request_id=row["request_id"], model=row["model"],
                       score=float(row["score"]), latency_ms=row["latency_ms"],
                       cost_usd=row["cost_usd"], output_tokens=row["output_tokens"],
                       response=row["response"], created_at=_utc(row["created_at"]))
