"""JSON Lines files in and out of the command line's ``predict`` and ``score``.

Input is checked whole before any work starts, so a bad line costs nothing; every bad line is named in
one error. Output files are opened with their folder created and a clear error when they cannot be
written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from neural_router.validation import Problems, json_lines


def read_records(path: str | Path, required: str, nonempty: bool = False) -> list[tuple[int, dict]]:
    """(line number, record) for each non-empty line of a JSONL file; each must be an object with a
    string ``required`` (not blank with ``nonempty``). ValueError naming the first few bad lines (the
    rest counted) when any line is bad; FileNotFoundError when the file does not exist."""
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


def read_prompts(path: str | Path) -> tuple[list, list[str]]:
    """(ids, prompts) of a JSONL file of ``{"id"?, "prompt"}`` lines; a line without ``id`` is named by
    its line number."""
    records = read_records(path, "prompt", nonempty=True)
    return [rec.get("id", n) for n, rec in records], [rec["prompt"] for _, rec in records]


def open_output(path: str | Path) -> TextIO:
    """Open an output file for writing, creating its folder; ValueError (not a traceback) for a path
    that cannot be written (a folder, no permission)."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--output {path}: cannot write it ({e.strerror}); give a file path in a "
                         "writable folder") from None
