"""Command-line options made from a pydantic settings class, so that a setting's default, range and
help live in one place (the class) and the command line only reads them.

:func:`add_model_options` adds one ``--flag`` per field: its help is the field's description plus its
default, numbers are range-checked by argparse from the field's ``ge``/``gt``/``le``/``lt`` (a bad
value is refused naming the flag before any work starts), booleans are switches, and every other
value is checked by the class's own validator. An option not given is absent from the parsed
namespace (``argparse.SUPPRESS``), so :func:`given_options` returns only what the user set and the
class supplies every other default. ``json_schema_extra`` of a field may name its ``flag``,
``metavar``, ``nargs``, ``append`` (repeatable), ``off`` (also takes 'off' = None) or ``cli: False``
(not an option).
"""

from __future__ import annotations

import argparse
import math
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError


def number_in(low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False,
              off: bool = False):
    """An argparse type: a finite number in the interval (``off`` also takes 'off', as None), so that a
    bad value is refused naming the flag before any work starts."""
    interval = (f"{'(' if open_low else '['}{low:g}, " + (f"{high:g}{')' if open_high else ']'}"
                                                        if math.isfinite(high) else "inf)"))

    def parse(text: str) -> float | None:
        if off and text.strip().lower() in ("off", "none"):
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = (math.isfinite(value) and (value > low if open_low else value >= low)
                  and (value < high if open_high else value <= high))
        if not inside:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}" + (" or 'off'" if off else "")
                                             + f", got {text!r}")
        return value
    return parse


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    return whole_number(1)(text)


def whole_number(low: int | None = None, *, off: bool = False):
    """An argparse type: a whole number, at least ``low`` when given (``off`` also takes 'off')."""
    def parse(text: str) -> int | None:
        if off and text.strip().lower() in ("off", "none"):
            return None
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or (low is not None and value < low):
            what = f"a whole number of at least {low}" if low is not None else "a whole number"
            raise argparse.ArgumentTypeError(f"expected {what}" + (" or 'off'" if off else "") + f", got {text!r}")
        return value
    return parse


def _base_type(annotation: Any) -> Any:
    """``float | None`` -> float; ``tuple[str, ...] | None`` -> tuple[str, ...]."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) > 1 and set(args) <= {str, Path}:
            return str   # a path: taken as given
        return args[0] if len(args) == 1 else annotation
    return annotation


def _bounds(field) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in field.metadata:
        for key in ("ge", "gt", "le", "lt"):
            if getattr(m, key, None) is not None:
                out[key] = getattr(m, key)
    return out


def _number_type(kind: type, field, off: bool):
    b = _bounds(field)
    if kind is int:
        return whole_number(b.get("ge", b["gt"] + 1 if "gt" in b else None), off=off)
    low, open_low = (b["gt"], True) if "gt" in b else (b.get("ge", -math.inf), False)
    high, open_high = (b["lt"], True) if "lt" in b else (b.get("le", math.inf), False)
    return number_in(low, high, open_low=open_low, open_high=open_high, off=off)


def _validated_by(model: type[BaseModel], name: str):
    """An argparse type that runs the class's own validation of field ``name`` on the text."""
    def parse(text: str) -> Any:
        try:
            return getattr(model.model_validate({name: text}), name)
        except ValidationError as e:
            raise argparse.ArgumentTypeError(e.errors()[0]["msg"].removeprefix("Value error, ")) from None
    return parse


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else f"{value:g}" \
        if isinstance(value, float) else str(value)


def _help(field) -> str:
    text = (field.description or "").replace("%", "%%")
    d = field.default
    if d is not None and not isinstance(d, bool):
        text += f" (default: {_shown(d)})"
    return text.strip()


def add_model_options(parser, model: type[BaseModel], only: Iterable[str] | None = None,
                      exclude: Iterable[str] = ()) -> None:
    """One option per field of ``model`` (those in ``only`` when given, none of ``exclude``)."""
    names = list(only) if only is not None else list(model.model_fields)
    for name in names:
        field = model.model_fields[name]
        extra = dict(field.json_schema_extra or {})
        if name in set(exclude) or extra.get("cli") is False:
            continue
        off = bool(extra.get("off"))
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help(field)}
        if "metavar" in extra:
            kw["metavar"] = extra["metavar"]
        kind = _base_type(field.annotation)
        if kind is bool:
            kw["action"] = "store_false" if field.default else "store_true"
        elif kind in (int, float):
            kw["type"] = _number_type(kind, field, off)
        elif extra.get("nargs") or extra.get("append"):
            kw["nargs" if extra.get("nargs") else "action"] = extra.get("nargs") or "append"
        elif kind is not str:
            kw["type"] = _validated_by(model, name)
        parser.add_argument(extra.get("flag") or "--" + name.replace("_", "-"), **kw)


def given_options(args: argparse.Namespace, model: type[BaseModel], only: Iterable[str] | None = None
                  ) -> dict[str, Any]:
    """The fields of ``model`` (those in ``only`` when given, as passed to :func:`add_model_options`)
    set on the command line."""
    names = set(only) if only is not None else set(model.model_fields)
    return {k: v for k, v in vars(args).items() if k in names}
