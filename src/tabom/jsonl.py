"""Generic JSONL files: whole-file atomic writes and line-numbered reads (DESIGN §4, §8).

Trajectory files add their own schema and append-only resumable writer on top
(:mod:`tabom.trajectory`); everything else a command writes as JSONL goes through here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tabom.errors import TabomError


class JsonlError(TabomError):
    """A JSONL line that is not a JSON object; the message names file and line."""


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


def read_jsonl(
    path: str | Path, *, error: Callable[[Path, int, str], Exception] | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """``(line_number, object)`` for each non-blank line.

    Args:
        path: the file.
        error: builds the exception for a bad line from ``(path, line, reason)``; default a
            :class:`JsonlError` ``"FILE:LINE: reason"`` (tasks pass their ``DataFileError``).

    Raises:
        FileNotFoundError: no such file.
        JsonlError: (or ``error``'s exception) a line is not a JSON object; names file and line.
    """
    path = Path(path)
    make = error or (lambda p, i, why: JsonlError(f"{p}:{i}: {why}"))
    out: list[tuple[int, dict[str, Any]]] = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise make(path, i, f"not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise make(path, i, "not a JSON object")
            out.append((i, rec))
    return out


__all__ = ["JsonlError", "read_jsonl", "write_jsonl"]
