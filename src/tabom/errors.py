"""The one error base class of tabom (DESIGN §8).

Every error that is the user's to fix (a bad flag, file, record or setting) derives from
:class:`TabomError`; ``tabom.cli.main`` prints its one-line message and exits with code 2 for
every command. It subclasses ``ValueError`` so code that caught ``ValueError`` keeps working.
"""

from __future__ import annotations


class TabomError(ValueError):
    """A user-fixable error; the message names the flag, file, line or field."""


__all__ = ["TabomError"]
