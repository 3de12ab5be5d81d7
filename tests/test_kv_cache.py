"""The approximate KV caches of ``--decode.cache`` (issue 18, :mod:`tabom.kv_cache`).

The cache is approximate by design, so what is tested is its plumbing: rebuilt from the
current state at every step (``cache_check``) and still read through the cached forward (the
block, or the block and its suffix, against cached keys under a 4-D mask), it decodes like the
exact sampler: the same tokens and steps, entropies to float rounding (the cached forward runs
fewer rows through each matrix product and the attention sums its keys in another order, so
bit-equality is not expected). Then: what the cached forward runs, the trajectory file's
``gen.cache``, and the refusals.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tabom.commands.distill import DistillConfig, distill
from tabom.decoding import DecodeConfig, decode, pad_prompts
from tabom.errors import DataFileError
from tabom.models import TinyModelConfig, build_tiny, save_model
from tabom.models.base import DiffusionLM
from tabom.trajectory import read_trajectories

SMALL = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]

pytestmark = pytest.mark.usefixtures("one_thread")


def peaked(dlm: DiffusionLM) -> DiffusionLM:
    """A random model whose proposals are far from uniform (head weights x 30), so that the
    scores of different positions are not within float rounding of each other."""
    with torch.no_grad():
        dlm.model.get_output_embeddings().weight.mul_(30)
    return dlm


@pytest.fixture(scope="module")
def models() -> dict[str, DiffusionLM]:
    return {
        "tiny": peaked(build_tiny(SMALL, seed=1)),
        "tiny-dream": peaked(build_tiny(dataclasses.replace(SMALL, family="qwen2"), seed=2)),
    }


def run(dlm, cfg, **kw):
    ids, mask = pad_prompts(PROMPTS, dlm.spec.pad_token_id)
    return decode(dlm, ids, mask, cfg, mask_token_id=dlm.mask_token_id,
                  generator=torch.Generator().manual_seed(5), **kw)  # fmt: skip


BUDGETS = [
    dict(steps=12, block_length=4),
    dict(steps=6, block_length=6, score="entropy"),
    dict(threshold=0.2, block_length=4, score="margin"),
    dict(steps=12, block_length=4, temperature=1.0, top_p=0.9),
    dict(steps=12, block_length=12),  # one block: prefix = prompt only
]


def assert_rounding_tie(dlm, cfg, exact, checked) -> None:
    """The cached run parted from the exact one: only allowed at a greedy step where the two
    positions chosen had scores within float rounding of each other (the cached forward rounds
    otherwise; seen under ``ATEN_CPU_CAPABILITY=default``: confidences 3.0e-7 apart), from
    the same state. Anything else (another state, a clear score gap, sampling) fails."""
    assert cfg.temperature == 0 and cfg.threshold is None, "a sampled run parted: not a tie"
    T = cfg.gen_length
    d_e, d_c = exact.decoding_order, checked.decoding_order
    differ = d_e != d_c
    step = int(torch.minimum(d_e[differ], d_c[differ]).min())
    before = d_e < step
    assert torch.equal(before, d_c < step)  # the same state before the step
    assert torch.equal(exact.sequences[:, -T:][before], checked.sequences[:, -T:][before])
    row = int(differ.nonzero()[0, 0])
    x = exact.sequences[row].clone()
    x[-T:][~before[row]] = dlm.mask_token_id
    logits = dlm(x[None], exact.attention_mask[row][None])[0, -T:].float()  # (T, V)
    logits[:, dlm.mask_token_id] = float("-inf")
    q = logits.softmax(-1)
    top = q.topk(2, dim=-1).values
    score = {"confidence": top[:, 0], "margin": top[:, 0] - top[:, 1],
             "entropy": (q * q.clamp_min(1e-30).log()).sum(-1)}[cfg.score]  # fmt: skip
    picked = ((d_e[row] == step) | (d_c[row] == step)) & ~before[row]
    assert int(picked.sum()) >= 2 and float(score[picked].max() - score[picked].min()) < 1e-4


@pytest.mark.parametrize("kind", ["tiny", "tiny-dream"])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("budget", BUDGETS, ids=lambda b: ",".join(f"{k}={v}" for k, v in b.items()))
def test_refreshing_every_step_reproduces_the_exact_sampler(models, kind, mode, budget):
    dlm = models[kind]
    exact = run(dlm, DecodeConfig(gen_length=12, record_entropy=True, **budget))
    cfg = DecodeConfig(gen_length=12, record_entropy=True, cache=mode, **budget)
    checked = run(dlm, cfg, cache_check=True)
    if not torch.equal(checked.decoding_order, exact.decoding_order):  # a rounding tie, or a bug
        assert_rounding_tie(dlm, cfg, exact, checked)
        return
    assert torch.equal(checked.sequences, exact.sequences)
    assert checked.nfe == exact.nfe
    torch.testing.assert_close(checked.decode_entropy, exact.decode_entropy, rtol=0,
                               atol=1e-5, equal_nan=True)  # fmt: skip


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_the_cached_forward_runs_the_block_and_refreshes_at_block_starts(models, mode):
    dlm = models["tiny-dream"]  # shifted logits: the block reads the columns one to the left
    cfg = DecodeConfig(gen_length=12, steps=12, block_length=4, cache=mode, record_entropy=True)
    widths: list[tuple[int, int]] = []
    hidden_states = dlm.hidden_states

    def recording(input_ids, attention_mask=None, **kw):
        widths.append(tuple(input_ids.shape))
        return hidden_states(input_ids, attention_mask, **kw)

    dlm.hidden_states = recording
    try:
        out = run(dlm, cfg)
    finally:
        del dlm.hidden_states
    P, L = 6, 18
    full = (3, L)  # per block: one full forward (its first step), then 3 cached steps
    for b, s in enumerate((0, 4, 8)):
        # dual: the block's 4 columns; prefix: the block and after, from the column the
        # block's first logit reads (one to the left: shifted logits)
        cached = (3, 4) if mode == "dual" else (3, L - (P + s - 1))
        assert widths[4 * b : 4 * b + 4] == [full, cached, cached, cached]
    assert len(widths) == 12
    assert (out.decoding_order >= 0).all() and out.nfe == 12


def test_the_cache_is_approximate_and_recorded_as_such(models):
    # on a random model the stale cache changes some choices: it is not the exact sampler
    dlm = models["tiny"]
    exact = run(dlm, DecodeConfig(gen_length=12, steps=12, block_length=4, record_entropy=True))
    diffs = 0
    for mode in ("prefix", "dual"):
        cfg = DecodeConfig(gen_length=12, steps=12, block_length=4, cache=mode,
                           record_entropy=True)  # fmt: skip
        approx = run(dlm, cfg)
        assert (approx.decoding_order >= 0).all()
        diffs += int((approx.decode_entropy - exact.decode_entropy).abs().max() > 1e-4)
    assert diffs >= 1


def test_unsupported_models_and_bad_modes_are_refused():
    cfg = DecodeConfig(gen_length=4, steps=4, cache="dual")
    ids = torch.tensor([[4, 5]])
    with pytest.raises(ValueError, match="decode.cache dual: needs a tabom model"):
        decode(lambda i, m: torch.zeros(*i.shape, 8), ids, torch.ones_like(ids), cfg,
               mask_token_id=2)  # fmt: skip
    with pytest.raises(ValueError, match="cache: 'full' is not one of"):
        DecodeConfig(cache="full")  # type: ignore[arg-type]


def test_distill_records_the_cache_and_old_files_read_as_none(tmp_path):
    model = tmp_path / "m"
    save_model(build_tiny(SMALL, seed=0), model)
    common = dict(model=str(model), task="addition:min_digits=1,max_digits=2", n_prompts=3,
                  n_samples=1, ks=[1], keep="all", progress=False, prompts_per_batch=3)  # fmt: skip
    exact = tmp_path / "exact.jsonl"
    distill(DistillConfig(**common, output=str(exact), decode=DecodeConfig(temperature=0.0)))
    cached = tmp_path / "cached.jsonl"
    distill(DistillConfig(**common, output=str(cached),
                          decode=DecodeConfig(temperature=0.0, cache="prefix")))  # fmt: skip
    (rec_exact,) = read_trajectories(exact)[:1]
    (rec_cached,) = read_trajectories(cached)[:1]
    assert rec_exact.gen["cache"] == "none" and rec_exact.decode_config().cache == "none"
    assert rec_cached.gen["cache"] == "prefix" and rec_cached.decode_config().cache == "prefix"
    # a file written before the cache was recorded (no gen.cache) decoded exactly
    old = json.loads(exact.read_text().splitlines()[0])
    del old["gen"]["cache"]
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
    assert read_trajectories(tmp_path / "old.jsonl")[0].decode_config().cache == "none"
    # a file whose cache value is not one of the modes is refused, naming the field
    bad = tmp_path / "bad.jsonl"
    lines = cached.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["gen"]["cache"] = "full"
    bad.write_text(json.dumps(rec) + "\n")
    with pytest.raises(DataFileError, match="gen.cache"):
        read_trajectories(bad)
