"""The error classes of tabom (DESIGN §8).

Every error that is the user's to fix (a bad flag, file, record or setting) derives from
:class:`TabomError`; ``tabom.cli.main`` prints its one-line message and exits with code 2 for
every command. It subclasses ``ValueError`` so code that caught ``ValueError`` keeps working.
:class:`DataFileError` is the one error of a bad line in any file tabom reads (task data,
trajectories, sidecars, JSONL): it names the file, the 1-based line and the field.
"""

from __future__ import annotations

from pathlib import Path


class TabomError(ValueError):
    """A user-fixable error; the message names the flag, file, line or field."""


class DataFileError(TabomError):
    """A file is malformed or does not fit the model; names file, 1-based line and field.

    Attributes:
        path: the file.
        line: the 1-based line (0: the file as a whole).
        field: the field (``<line>``: the line as a whole, ``<file>``: the file).
    """

    def __init__(self, path: str | Path, line: int, field_name: str, reason: str) -> None:
        self.path, self.line, self.field = str(path), line, field_name
        super().__init__(f"{path}:{line}: field {field_name!r}: {reason}")


__all__ = ["DataFileError", "TabomError"]
