"""Generic JSONL files: whole-file atomic writes and line-numbered reads (DESIGN §4, §8).

Trajectory files add their own schema and append-only resumable writer on top
(:mod:`tabom.trajectory`); everything else a command writes as JSONL goes through here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tabom.errors import DataFileError

MAX_DEPTH = 32
"""Deepest nesting of ``[`` / ``{`` a line may have (a trajectory record needs 3); deeper is
refused before parsing, so a hostile line never reaches Python's recursion limit."""


class StrictJsonError(ValueError):
    """Why one line is not strict JSON; ``key`` is the repeated key, if that is the reason."""

    def __init__(self, reason: str, key: str | None = None) -> None:
        self.reason, self.key = reason, key
        super().__init__(reason)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrictJsonError("duplicate key in the object", key=key)
        out[key] = value
    return out


def _bare_constant(name: str) -> Any:
    raise StrictJsonError(f"bare {name} is not JSON (write null, or a finite number)")


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


def _depth(raw: bytes) -> int:
    """The deepest ``[`` / ``{`` nesting of one line (strings skipped), capped past MAX_DEPTH."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return 0  # cannot be deeper than the brackets it has
    depth = top = 0
    for m in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        depth += 1 if m.group() in (b"[", b"{") else -1
        if depth > top:
            top = depth
            if top > MAX_DEPTH:
                break
    return top


def loads_strict(raw: bytes | str) -> Any:
    """One line of strict JSON: no bare ``NaN`` / ``Infinity``, no repeated key, nesting at
    most :data:`MAX_DEPTH` (what Python's ``json`` accepts beyond RFC 8259 is refused).

    Raises:
        StrictJsonError: why the line is not strict JSON.
    """
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if _depth(data) > MAX_DEPTH:
        raise StrictJsonError(f"nested deeper than {MAX_DEPTH} levels of [ and {{")
    try:
        return json.loads(data, object_pairs_hook=_unique_keys, parse_constant=_bare_constant)
    except StrictJsonError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise StrictJsonError(f"not valid JSON ({e})") from None


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rows`` one JSON object a line, atomically (temporary file, fsync, rename).

    Returns:
        ``path``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line_number, object)`` for each non-blank line.

    Raises:
        FileNotFoundError: no such file.
        DataFileError: a line is not a JSON object; names file, line and (for a repeated
            key) the field.
    """
    path = Path(path)
    out: list[tuple[int, dict[str, Any]]] = []
    with path.open("rb") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = loads_strict(line)
            except StrictJsonError as e:
                raise DataFileError(path, i, e.key or "<line>", e.reason) from None
            if not isinstance(rec, dict):
                raise DataFileError(path, i, "<line>", "not a JSON object")
            out.append((i, rec))
    return out


__all__ = [
    "MAX_DEPTH",
    "StrictJsonError",
    "loads_strict",
    "read_jsonl",
    "write_jsonl",
]
