"""Pluggable scorers: turn (prompt, response, reference) into a score in [0, 1].

Scores label logged traffic (see :mod:`neural_router.feedback`) so it can become training data.
Every scorer has ``score(prompt, response, reference=None) -> float``; a scorer that cannot judge
(missing reference, judge unreachable, user function misbehaving) raises :class:`ScoringError`.
Scorers are built from config with :func:`load_scorer`::

    load_scorer({"type": "numeric", "tolerance": 1e-6})
    load_scorer("multiple_choice")
    load_scorer("my_package.scorers:score_fn")

:class:`CodeTestScorer` runs untrusted model output: by default in a bubblewrap sandbox with
resource limits (:mod:`neural_router.feedback.sandbox`: no network, no view of the caller's files,
environment or processes). Where bubblewrap is missing or fails its start-up check, building the
scorer fails with :class:`NoSandboxError` naming the fixes: install bubblewrap, or opt in to
unsandboxed execution with ``{"type": "code_tests", "sandbox": "none"}`` (``neural-router score``),
or, in the service, the ``allow_unsandboxed_code`` setting (:func:`load_service_scorer`).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import numbers
import os
import re
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx

from neural_router.feedback.sandbox import Limits, Runner, Sandbox, SandboxError, Unsandboxed

log = logging.getLogger(__name__)


class ScoringError(Exception):
    """The scorer could not produce a score for this input."""


class ScorerConfigError(ValueError):
    """A scorer spec or constructor argument is invalid."""


@runtime_checkable
class Scorer(Protocol):
    def score(self, prompt: str, response: str, reference: str | None = None) -> float: ...


def _need_reference(reference: str | None, who: str) -> str:
    if reference is None:
        raise ScoringError(f"{who} needs a reference answer")
    return reference


# --------------------------------------------------------------------------------------------------
# Exact match and regex

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style: lower case, drop punctuation and articles, collapse whitespace."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


@dataclass(frozen=True)
class ExactMatchScorer:
    """1 if the response equals the reference (after :func:`normalize_answer` when ``normalize``)."""

    normalize: bool = True

    def score(self, prompt: str, response: str, reference: str | None = None) -> float:
        ref = _need_reference(reference, "exact match")
        if self.normalize:
            return float(normalize_answer(response) == normalize_answer(ref))
        return float(response.strip() == ref.strip())


@dataclass(frozen=True)
class RegexScorer:
    """1 if ``pattern`` is found in the response. With ``group`` set, the first match's captured
    group must also equal the reference (stripped; case-folded when ``ignore_case``)."""

    pattern: str
    group: int | str | None = None
    ignore_case: bool = False
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            regex = re.compile(self.pattern, re.IGNORECASE if self.ignore_case else 0)
        except re.error as e:
            raise ScorerConfigError(f"invalid regex {self.pattern!r}: {e}") from e
        if self.group is not None:
            known = self.group in regex.groupindex if isinstance(self.group, str) \
                else 0 <= self.group <= regex.groups
            if not known:
                raise ScorerConfigError(f"regex {self.pattern!r} has no group {self.group!r}")
        object.__setattr__(self, "_regex", regex)

    def score(self, prompt: str, response: str, reference: str | None = None) -> float:
        m = self._regex.search(response)
        if m is None:
            return 0.0
        if self.group is None:
            return 1.0
        ref = _need_reference(reference, "regex scorer with a group").strip()
        got = (m.group(self.group) or "").strip()
        if self.ignore_case:
            return float(got.casefold() == ref.casefold())
        return float(got == ref)


# --------------------------------------------------------------------------------------------------
# Numeric answers (GSM8K style)

_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ANSWER_IS = re.compile(r"answer\s+is", re.IGNORECASE)


def extract_number(text: str) -> float | None:
    """The number after the last ``####``, else the first one after the last "answer is", else the
    last number in the text. Thousands commas and ``$`` are ignored."""
    clean = _THOUSANDS.sub("", text.replace("$", ""))
    for marker in (clean.rfind("####"), max((m.end() for m in _ANSWER_IS.finditer(clean)), default=-1)):
        if marker >= 0:
            m = _NUMBER.search(clean, marker)
            if m is not None:
                return float(m.group())
    found = _NUMBER.findall(clean)
    return float(found[-1]) if found else None


@dataclass(frozen=True)
class NumericAnswerScorer:
    """1 if the response's answer number is within ``tolerance`` (absolute) of the reference's.
    The reference may be a bare number or a full GSM8K solution ending in ``#### 42``."""

    tolerance: float = 1e-6

    def __post_init__(self) -> None:
        if not (isinstance(self.tolerance, numbers.Real) and self.tolerance >= 0):
            raise ScorerConfigError(f"tolerance {self.tolerance!r} must be a number >= 0")

    def score(self, prompt: str, response: str, reference: str | None = None) -> float:
        ref = extract_number(_need_reference(reference, "numeric answer"))
        if ref is None:
            raise ScoringError(f"reference {reference!r} contains no number")
        got = extract_number(response)
        return float(got is not None and abs(got - ref) <= self.tolerance)


# --------------------------------------------------------------------------------------------------
# Multiple choice


@dataclass(frozen=True)
class MultipleChoiceScorer:
    """1 if the letter chosen in the response equals the reference letter (case-insensitive).

    The chosen letter is, in order: the whole response being a letter ("B", "(b)", "B."); a letter
    after "answer"/"answer is"/"answer:" ("Answer: B", "The answer is (b)."; a lower-case letter only
    when punctuation or the end follows it, so "the answer is a bit..." is not "a"); a capital in
    parentheses ("(C)"), the last one; else a capital standing alone as a word, if only one such
    letter occurs. No letter found scores 0."""

    choices: str = "ABCDE"
    _patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        letters = self.choices.upper()
        if not letters or not letters.isalpha() or len(set(letters)) != len(letters):
            raise ScorerConfigError(f"choices {self.choices!r} must be distinct letters")
        up, low = re.escape(letters), re.escape(letters.lower())
        object.__setattr__(self, "_patterns", (
            re.compile(rf"^\s*\(?([{up}{low}])\)?\s*[.:)]?\s*$"),
            re.compile(rf"(?i:answer)\s*(?:(?i:is)\s*)?[:\-]?\s*(?:\(([{up}{low}])\)|([{up}])\b"
                       rf"|([{low}])(?=\s*$|[.,;:!)\]]))"),
            re.compile(rf"\(([{up}])\)"),
            re.compile(rf"\b([{up}])\b"),
        ))

    def extract(self, response: str) -> str | None:
        whole, after_answer, parens, bare = self._patterns
        m = whole.match(response)
        if m:
            return m.group(1).upper()
        hits = [next(g for g in h.groups() if g) for h in after_answer.finditer(response)]
        if hits:
            return hits[-1].upper()
        hits = parens.findall(response)
        if hits:
            return str(hits[-1])
        distinct = set(bare.findall(response))
        return distinct.pop() if len(distinct) == 1 else None

    def score(self, prompt: str, response: str, reference: str | None = None) -> float:
        ref = self.extract(_need_reference(reference, "multiple choice"))
        if ref is None:
            raise ScoringError(f"reference {reference!r} is not one of the letters {self.choices}")
        return float(self.extract(response) == ref)


# --------------------------------------------------------------------------------------------------
# Code with tests

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(response: str) -> str:
    """The ```python (or ```py) fenced blocks joined; else any fenced blocks; else the whole text."""
    blocks = _FENCE.findall(response)
    py = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
    chosen = py or [code for _, code in blocks]
    return "\n\n".join(chosen) if chosen else response


class NoSandboxError(ScorerConfigError):
    """A code_tests scorer was asked to sandbox the code and no sandbox works on this machine
    (``reason`` says why), or a service was asked to run the code unsandboxed without leave."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


SANDBOX_KINDS = ("bwrap", "none")
_INSTALL_BWRAP = ("install bubblewrap (apt-get install bubblewrap) and let it create namespaces (a "
                  "container may have to allow them)")
_ALLOW_IN_SERVICE = "set allow_unsandboxed_code: true (NEURAL_ROUTER_ALLOW_UNSANDBOXED_CODE=1)"


@dataclass(frozen=True)
class CodeTestScorer:
    """1 if the response's code followed by the reference test code runs to exit status 0 within
    ``timeout_s``; a failure, crash, limit breach or timeout scores 0.

    ``sandbox="bwrap"`` (the default) runs each program in :class:`~neural_router.feedback.sandbox.Sandbox`
    (no network, read-only system view, no access to the caller's files, environment or processes,
    limits on CPU seconds, ``memory_mb`` per process, ``max_processes`` and ``max_file_mb``);
    building the scorer checks that the sandbox starts and raises :class:`NoSandboxError` (saying how
    to fix it) when it does not. ``sandbox="none"`` is the explicit opt-out: ``python -I`` in an
    empty temp dir with only the time limit. ``python`` is the interpreter; by default this process's
    own, resolved out of any virtual environment (so the code sees the standard library, not this
    environment's packages); a virtual environment's python offers its packages read-only."""

    timeout_s: float = 10.0
    python: str | None = None
    sandbox: str = "bwrap"
    memory_mb: int = 1024
    max_processes: int = 16
    max_file_mb: int = 16
    _runner: Runner = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout_s, numbers.Real) and self.timeout_s > 0):
            raise ScorerConfigError(f"timeout_s {self.timeout_s!r} must be > 0")
        for name in ("memory_mb", "max_processes", "max_file_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ScorerConfigError(f"{name} {value!r} must be a whole number >= 1")
        if self.sandbox not in SANDBOX_KINDS:
            raise ScorerConfigError(f"sandbox {self.sandbox!r} must be one of {', '.join(SANDBOX_KINDS)}")
        python = self.python or os.path.realpath(sys.executable)
        limits = Limits(timeout_s=float(self.timeout_s), memory_mb=self.memory_mb,
                        max_processes=self.max_processes, max_file_mb=self.max_file_mb)
        runner: Runner = Unsandboxed(python, limits)
        if self.sandbox == "bwrap":
            try:
                runner = Sandbox.open(python, limits)
            except SandboxError as e:
                raise NoSandboxError(f"the code_tests scorer runs model-written code only in a sandbox, "
                                     f"and none works here: {e}. To fix it, {_INSTALL_BWRAP}, or accept "
                                     f"running the code unsandboxed with the scorer spec "
                                     f'{{"type": "code_tests", "sandbox": "none"}}', reason=str(e)) from None
        object.__setattr__(self, "_runner", runner)

    def score(self, prompt: str, response: str, reference: str | None = None) -> float:
        tests = _need_reference(reference, "code test")
        program = extract_code(response).rstrip() + "\n\n\n" + tests.rstrip() + "\n"
        try:
            result = self._runner.run(program)
        except SandboxError as e:
            raise ScoringError(str(e)) from e
        if result.exit_code is None:
            log.debug("code test timed out after %ss", self.timeout_s)
        elif not result.passed:
            log.debug("code test failed (exit %s): %s", result.exit_code, result.stderr)
        return float(result.passed)


def load_service_scorer(spec: dict[str, Any] | str, *, allow_unsandboxed: bool) -> Scorer:
    """:func:`load_scorer` for a long-running service, which must not run model-written code
    unsandboxed unless its operator said so (``allow_unsandboxed``): a code_tests scorer whose
    sandbox does not work, or whose spec says ``"sandbox": "none"``, raises :class:`NoSandboxError`
    naming both fixes; with ``allow_unsandboxed`` it runs unsandboxed, with a warning in the log."""
    try:
        scorer = load_scorer(spec)
    except NoSandboxError as e:
        if not allow_unsandboxed:
            message = (f"the code_tests scorer runs model-written code only in a sandbox, and none "
                       f"works here: {e.reason}. To fix it, {_INSTALL_BWRAP}, or {_ALLOW_IN_SERVICE} "
                       f"to accept running the code unsandboxed")
            log.error(message)
            raise NoSandboxError(message, e.reason) from None
        log.warning("no sandbox for model-written code (%s); running it UNSANDBOXED as "
                    "allow_unsandboxed_code says", e.reason)
        args = {"type": spec} if isinstance(spec, str) else dict(spec)
        return load_scorer({**args, "sandbox": "none"})
    if isinstance(scorer, CodeTestScorer):
        if scorer.sandbox == "none" and not allow_unsandboxed:
            message = (f"the scorer spec says sandbox: none, and this service does not run "
                       f"model-written code unsandboxed unless told to: {_ALLOW_IN_SERVICE}, or drop "
                       f"sandbox: none")
            log.error(message)
            raise NoSandboxError(message)
        log.log(logging.WARNING if scorer.sandbox == "none" else logging.INFO,
                "code_tests scorer: model-written code runs %s", "UNSANDBOXED" if scorer.sandbox == "none"
                else "in a bubblewrap sandbox")
    return scorer


# --------------------------------------------------------------------------------------------------
# LLM judge

JUDGE_SYSTEM = ("You are a strict grader. Rate how well the response answers the question, from 1 "
                "(useless or wrong) to 10 (fully correct and helpful). If a reference answer is "
                "given, judge correctness against it. End your reply with a line 'Rating: N'.")
_RATING = re.compile(r"rating\s*[:=]?\s*\[*\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_BARE_RATING = re.compile(r"^\s*\[*\s*(\d+(?:\.\d+)?)\s*\]*\s*(?:/\s*10)?\s*\.?\s*$")


def parse_rating(text: str) -> float:
    """The last "Rating: N" in the text (or the whole text being a number), N in [1, 10]."""
    hits = _RATING.findall(text)
    bare = _BARE_RATING.match(text)
    if hits:
        value = float(hits[-1])
    elif bare:
        value = float(bare.group(1))
    else:
        raise ScoringError(f"judge reply has no rating: {text[:200]!r}")
    if not 1.0 <= value <= 10.0:
        raise ScoringError(f"judge rating {value} is outside 1-10")
    return value


@dataclass(frozen=True)
class LLMJudgeScorer:
    """Ask an OpenAI-compatible chat model (``POST {base_url}/chat/completions``) for a 1-10
    rating; the score is ``(rating - 1) / 9``. The bearer key is read from the environment
    variable ``api_key_env`` when it is set (local servers often need none). Any failure (timeout,
    HTTP error, malformed body, no rating) raises :class:`ScoringError`."""

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 30.0
    max_tokens: int = 512

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ScorerConfigError(f"base_url {self.base_url!r} must start with http:// or https://")
        if not (isinstance(self.timeout_s, numbers.Real) and self.timeout_s > 0):
            raise ScorerConfigError(f"timeout_s {self.timeout_s!r} must be > 0")

    def messages(self, prompt: str, response: str, reference: str | None) -> list[dict[str, str]]:
        parts = [f"[Question]\n{prompt}"]
        if reference is not None:
            parts.append(f"[Reference answer]\n{reference}")
        parts.append(f"[Response]\n{response}")
        parts.append("Rate the response from 1 to 10. End with 'Rating: N'.")
        return [{"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": "\n\n".join(parts)}]

    def score(self, prompt: str, response: str, reference: str | None = None) -> float:
        headers = {}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = {"model": self.model, "messages": self.messages(prompt, response, reference),
                "temperature": 0, "max_tokens": self.max_tokens}
        url = self.base_url.rstrip("/") + "/chat/completions"
        try:
            r = httpx.post(url, json=body, headers=headers, timeout=self.timeout_s)
        except httpx.TimeoutException as e:
            raise ScoringError(f"judge {url} did not answer within {self.timeout_s}s") from e
        except httpx.HTTPError as e:
            raise ScoringError(f"judge {url} could not be reached: {e}") from e
        if r.status_code != 200:
            raise ScoringError(f"judge {url} answered HTTP {r.status_code}: {r.text[:200]}")
        try:
            content = r.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ScoringError(f"judge {url} sent no chat completion: {r.text[:200]!r}") from e
        if not isinstance(content, str):
            raise ScoringError(f"judge {url} sent no text content: {content!r}")
        return (parse_rating(content) - 1.0) / 9.0


# --------------------------------------------------------------------------------------------------
# User functions


@dataclass(frozen=True)
class FunctionScorer:
    """Call a user function ``module:function`` (``module:Class.attr`` works too) as
    ``fn(prompt, response, reference)``; it must return a real number in [0, 1]."""

    target: str
    _fn: Callable[..., Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        module_name, sep, attr = self.target.partition(":")
        if not sep or not module_name or not attr:
            raise ScorerConfigError(f"function scorer {self.target!r} must look like 'module:function'")
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as e:
            raise ScorerConfigError(f"cannot import module {module_name!r} for scorer "
                                    f"{self.target!r}: {e}") from e
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ScorerConfigError(f"{self.target!r}: {module_name} has no attribute {attr!r}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise ScorerConfigError(f"{self.target!r} is not callable")
        object.__setattr__(self, "_fn", obj)

    def score(self, prompt: str, response: str, reference: str | None = None) -> float:
        try:
            value = self._fn(prompt, response, reference)
        except Exception as e:
            raise ScoringError(f"scorer {self.target} raised {type(e).__name__}: {e}") from e
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ScoringError(f"scorer {self.target} returned {value!r}, not a number")
        v = float(value)
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ScoringError(f"scorer {self.target} returned {v}, outside [0, 1]")
        return v


# --------------------------------------------------------------------------------------------------
# From config

SCORER_TYPES: dict[str, type] = {
    "exact_match": ExactMatchScorer,
    "regex": RegexScorer,
    "numeric": NumericAnswerScorer,
    "multiple_choice": MultipleChoiceScorer,
    "code_tests": CodeTestScorer,
    "llm_judge": LLMJudgeScorer,
    "function": FunctionScorer,
}


def load_scorer(spec: dict[str, Any] | str) -> Scorer:
    """Build a scorer from config: ``{"type": NAME, **arguments}``, a bare type name, or a
    ``"module:function"`` string. Types: exact_match, regex, numeric, multiple_choice, code_tests,
    llm_judge, function."""
    if isinstance(spec, str):
        spec = {"type": "function", "target": spec} if ":" in spec else {"type": spec}
    if not isinstance(spec, dict):
        raise ScorerConfigError(f"a scorer spec is a mapping or a string, not {type(spec).__name__}")
    args = dict(spec)
    kind = args.pop("type", None)
    if kind not in SCORER_TYPES:
        raise ScorerConfigError(f"unknown scorer type {kind!r}; known types: "
                                f"{', '.join(SCORER_TYPES)} (or 'module:function')")
    cls = SCORER_TYPES[kind]
    params = {n: p for n, p in inspect.signature(cls).parameters.items()}
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise ScorerConfigError(f"scorer {kind!r} does not take {', '.join(unknown)}; "
                                f"it takes: {', '.join(params) or 'nothing'}")
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in args]
    if missing:
        raise ScorerConfigError(f"scorer {kind!r} needs {', '.join(missing)}")
    scorer: Scorer = cls(**args)
    return scorer
