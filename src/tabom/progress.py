"""Progress bars that read well in a log (DESIGN §8).

A bar that holds other bars (the demo's runs around each run's own bars) moves the cursor up
with ``ESC [A`` to redraw; a log file keeps those escapes as ``[A`` noise. Such an outer bar
is shown only where stderr is a terminal; the inner bars, one at a time, write plain lines.
"""

from __future__ import annotations

import sys
from typing import TextIO


def outer_bar(progress: bool, stream: TextIO | None = None) -> bool:
    """Whether to show a bar that other bars nest in: asked for, and ``stream`` (stderr) is
    a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(progress and isatty is not None and isatty())


__all__ = ["outer_bar"]
