"""One seed scheme: how every random stream of a run follows from its ``seed`` (DESIGN §6-7,
STYLE 7: every random function takes a ``torch.Generator``).

A run's ``seed`` seeds its one main stream directly (:func:`generator` without a purpose: the
generated prompts of ``tabom eval``, ``gt_task`` instances, the likelihood draws). Every further
stream is :func:`derive` ``(seed, purpose, *keys)``, a sha256 of the purpose, the seed and the
keys: streams of different purposes, groups, steps or processes are independent, and a stream
depends only on its keys, never on the order in which a run reaches it (a resumed or sharded
run draws the same). The purposes: ``distill`` (``prompts``; ``group, g``), ``train`` (the
masks of ``step, slot``), ``lm-eval`` (``rank``), ``demo-val`` and ``demo-align``.

Three derivations predate the scheme and stay ``seed + k`` (:func:`offset`) because outputs
that must not move rest on them: the data order of epoch e (``seed + e``; the golden tier's
stored losses), ``tabom pretrain``'s per-process streams (``seed + r × 1_000_003``, masks
``+ 1``) and the periodic-eval sets (``seed + 10_000``; the shipped models' recipes, whose
``stop_at`` reads that eval). Moving them onto :func:`derive` regenerates those numbers and
models, so it is one edit each when that is wanted.
"""

from __future__ import annotations

import hashlib

import torch


def derive(seed: int, purpose: str, *keys: object) -> int:
    """The seed of stream ``purpose`` / ``keys`` of a run seeded ``seed``.

    Args:
        seed: the run's seed.
        purpose: what the stream draws (``"distill"``, ``"train"``, ...).
        keys: what tells its streams apart (a group index, an optimizer step, a process).

    Returns:
        A 63-bit seed: the first 8 bytes (little-endian) of the sha256 of
        ``"tabom-{purpose}:{seed}:{key}:..."``, top bit cleared.
    """
    text = ":".join(map(str, (f"tabom-{purpose}", seed, *keys)))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def generator(
    seed: int,
    purpose: str | None = None,
    *keys: object,
    device: torch.device | str | None = None,
) -> torch.Generator:
    """A ``torch.Generator`` on ``device``: seeded ``seed`` (no purpose: the run's main stream)
    or :func:`derive` ``(seed, purpose, *keys)``."""
    value = seed if purpose is None else derive(seed, purpose, *keys)
    return torch.Generator(device=device or "cpu").manual_seed(value)


def offset(seed: int, k: int) -> int:
    """``seed + k``: the scheme before :func:`derive`, kept only where pinned outputs rest on
    it (the module docstring lists where)."""
    return seed + k


__all__ = ["derive", "generator", "offset"]
