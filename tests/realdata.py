"""Where the tests find real files: small copies vendored under ``tests/`` first.

A clone on any machine passes the default test run: what a test reads is in the repository
(``tests/data`` and ``tests/fixtures``, each folder with its source's licence). A test that
wants a larger optional file (the whole GSM8K training set, say) asks :func:`real_data`, which
falls back to ``../shared/data`` beside the clone and returns ``None`` where neither has it, so
the test skips with the path in its reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
VENDORED = TESTS / "data"
SHARED = TESTS.parents[1] / "shared" / "data"
REAL_CODE = TESTS / "fixtures" / "real-code"
"""Tiny LLaDA / Dream checkpoints with the real modeling code's logits (see its README.md)."""


def real_data(relative: str) -> Path | None:
    """``tests/data/RELATIVE`` if vendored, else ``../shared/data/RELATIVE``, else ``None``."""
    for root in (VENDORED, SHARED):
        if (root / relative).exists():
            return root / relative
    return None


def needs(relative: str) -> pytest.MarkDecorator:
    """Skip unless :func:`real_data` finds ``relative`` (the reason names both places)."""
    return pytest.mark.skipif(
        real_data(relative) is None,
        reason=f"{relative} is neither vendored under {VENDORED} nor in {SHARED}",
    )
