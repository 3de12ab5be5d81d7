"""The one seed scheme (``tabom.seeding``): the streams distill and train drew before the scheme
existed are the ones it draws now (the golden tier's numbers rest on them), and streams of
different purposes, keys or seeds are apart."""

from __future__ import annotations

import hashlib

import torch

from tabom.commands.train import micro_seed
from tabom.seeding import derive, generator, offset


def sha_seed(text: str) -> int:
    """The hash seed as distill's ``derive_seed`` and train's ``micro_seed`` wrote it."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def test_derive_keeps_the_streams_distill_and_train_drew():
    assert derive(3, "distill", "group", 1) == sha_seed("tabom-distill:3:group:1")
    assert derive(3, "distill", "prompts") == sha_seed("tabom-distill:3:prompts")
    assert derive(5, "train", 2, 7) == sha_seed("tabom-train:5:2:7") == micro_seed(5, 2, 7)
    assert 0 <= derive(2**40, "train", 0, 0) < 2**63


def test_streams_of_other_purposes_keys_or_seeds_are_apart():
    seeds = {
        derive(0, "distill", "group", 1),
        derive(0, "distill", "group", 2),
        derive(1, "distill", "group", 1),
        derive(0, "train", "group", 1),
        derive(0, "lm-eval", 0),
        derive(0, "lm-eval", 1),
    }
    assert len(seeds) == 6


def test_generator_is_the_main_stream_or_a_derived_one():
    def draws(g: torch.Generator) -> list[float]:
        return torch.rand(4, generator=g).tolist()

    assert draws(generator(7)) == draws(torch.Generator().manual_seed(7))
    want = torch.Generator().manual_seed(derive(7, "lm-eval", 1))
    assert draws(generator(7, "lm-eval", 1)) == draws(want)
    assert draws(generator(7, "lm-eval", 1)) != draws(generator(7, "lm-eval", 0))
    assert offset(7, 10_000) == 10_007
