"""JSONL files: strict lines, line-numbered reads, appends, atomic writes (DESIGN §4, §8).

Every JSONL file tabom reads or writes goes through here: a bad line raises one
:class:`tabom.errors.DataFileError` naming file, line and field; :class:`JsonlWriter` appends
whole lines (one unbuffered ``write`` each, ``fsync`` on :meth:`JsonlWriter.sync`), so a kill
leaves at worst a torn last line, which :func:`drop_torn_tail` cuts. Trajectory files add their
schema on top (:mod:`tabom.trajectory`), the resumable store its sidecars
(:mod:`tabom.trajectory_store`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tabom.errors import DataFileError

MAX_DEPTH = 32
"""Deepest nesting of ``[`` / ``{`` a line may have (a trajectory record needs 3); deeper is
refused before parsing, so a hostile line never reaches Python's recursion limit."""


class StrictJsonError(ValueError):
    """Why a line is not strict JSON (raised inside ``json.loads``); ``key``: a repeated key."""

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


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """Write ``rows`` one a line to a new file, atomically (temporary file, fsync, rename).

    The temporary file's name carries the process id, so processes writing the same file at
    once (two ``tabom demo`` on one folder) never write into one another's temporary file;
    the last rename wins and a reader sees one whole file.

    Args:
        path: the file.
        rows: JSON objects, or records with a ``to_line()``
            (:class:`tabom.trajectory.TrajectoryRecord`).

    Returns:
        ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with JsonlWriter(tmp, mode="wb") as w:
        for row in rows:
            w.write(row)
        w.sync()
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line_number, object)`` for each non-blank line (a last line may lack its newline).

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
            rec = loads_line(line, path, i)
            if not isinstance(rec, dict):
                raise DataFileError(path, i, "<line>", "not a JSON object")
            out.append((i, rec))
    return out


def drop_torn_tail(path: str | Path, prefix: bytes | None = None) -> bool:
    """Cut a last line that has no newline (a write interrupted by a kill), with a warning.

    Call it only on a file whose complete lines were checked (``read_trajectories(...,
    torn_tail=True)``): it never decides on its own that a file is safe to cut.

    Args:
        path: the file.
        prefix: what the torn line must begin with (as far as it goes), e.g.
            :data:`tabom.trajectory.RECORD_PREFIX`; a tail that does not is not a torn line of ours.

    Returns:
        Whether anything was cut. The file then ends after its last complete line.

    Raises:
        DataFileError: the tail does not begin like ``prefix`` (nothing is cut).
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    chunk = 1 << 20
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        keep = pos = size
        while pos > 0 and keep == size:  # scan back for the last newline
            pos = max(0, pos - chunk)
            f.seek(pos)
            last = f.read(min(chunk, size - pos)).rfind(b"\n")
            keep = pos + last + 1 if last >= 0 else (0 if pos == 0 else size)
        f.seek(0)
        line = 1 + sum(f.read(min(chunk, keep - i)).count(b"\n") for i in range(0, keep, chunk))
        if prefix is not None:
            f.seek(keep)
            head = f.read(min(len(prefix), size - keep))
            if not prefix.startswith(head):
                raise DataFileError(
                    path,
                    line,
                    "<line>",
                    f"last line has no newline and does not begin like a line of this file "
                    f"({prefix.decode()}...); not touching it",
                )
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    warnings.warn(
        f"{path}:{line}: dropped a truncated last line ({size - keep} bytes, an interrupted "
        "write); it will be written again",
        RuntimeWarning,
        stacklevel=2,
    )
    return True


def loads_line(raw: bytes | str, path: str | Path, line: int) -> Any:
    """One line of strict JSON: no bare ``NaN`` / ``Infinity``, no repeated key, nesting at
    most :data:`MAX_DEPTH` (what Python's ``json`` accepts beyond RFC 8259 is refused).

    Raises:
        DataFileError: names file, line and (for a repeated key) the field.
    """
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if _depth(data) > MAX_DEPTH:
        reason = f"nested deeper than {MAX_DEPTH} levels of [ and {{"
        raise DataFileError(path, line, "<line>", reason)
    try:
        return json.loads(data, object_pairs_hook=_unique_keys, parse_constant=_bare_constant)
    except StrictJsonError as e:
        raise DataFileError(path, line, e.key or "<line>", e.reason) from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataFileError(path, line, "<line>", f"not valid JSON ({e})") from None


def iter_json_lines(path: str | Path, *, torn_tail: bool = False) -> Iterable[tuple[int, Any]]:
    """``(line, object)`` for each non-blank line of a JSONL file (strict: :func:`loads_line`).

    Args:
        path: the file.
        torn_tail: stop quietly at a last line without newline (a caller that checks the
            complete lines before repairing the file: :func:`drop_torn_tail`).

    Raises:
        DataFileError: a line is not valid JSON, or the last line has no newline
            (truncated: see :func:`drop_torn_tail`) and ``torn_tail`` is false.
    """
    path = Path(path)
    if path.is_dir():
        raise DataFileError(path, 0, "<file>", "is a folder, not a JSONL file")
    with path.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                if torn_tail:
                    return
                raise DataFileError(
                    path,
                    i,
                    "<line>",
                    "truncated last line (an interrupted write); rerun the "
                    "command that wrote the file to finish it",
                )
            if not raw.strip():
                continue
            yield i, loads_line(raw, path, i)


class JsonlWriter:
    """Appends whole lines to a JSONL file: one unbuffered ``write`` per line, ``fsync`` on sync.

    Use as a context manager; a kill can at worst leave the last line without its newline,
    which :func:`drop_torn_tail` removes.
    """

    def __init__(self, path: str | Path, *, mode: str = "ab") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, mode, buffering=0)  # noqa: SIM115 (closed in close())

    def write(self, item: Any) -> None:
        """Append one record (or any JSON object) as one line."""
        text = item.to_line() if hasattr(item, "to_line") else _json_line(item)
        data = memoryview(text.encode("utf-8"))
        while data:
            written = self._f.write(data)
            data = data[written:]

    def sync(self) -> None:
        """Flush to disk (``fsync``)."""
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n"


__all__ = [
    "MAX_DEPTH",
    "JsonlWriter",
    "StrictJsonError",
    "drop_torn_tail",
    "iter_json_lines",
    "loads_line",
    "read_jsonl",
    "write_jsonl",
]
