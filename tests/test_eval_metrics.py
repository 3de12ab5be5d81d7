"""Evaluation metrics: Kendall τ-b by hand, forgetting arithmetic, alignment, ``tabom eval`` budgets."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch

from tabom.cli import main
from tabom.metrics import forgetting, kendall_tau_b, trajectory_alignment
from tabom.models.base import BackendSpec, DiffusionLM
from tabom.trajectory import TrajectoryRecord

# --------------------------------------------------------------------------- Kendall tau-b


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),  # same order
        ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),  # reversed
        ([1, 2, 3], [1, 3, 2], 1 / 3),  # one discordant pair of three
        ([1, 1, 2], [1, 2, 3], 2 / math.sqrt(2 * 3)),  # one tie in x: n1 = 1
        ([1, 1, 2, 2], [1, 1, 1, 2], 2 / math.sqrt(4 * 3)),  # ties in both
        ([0.5, 0.1, 0.9], [2, 1, 3], 1.0),  # floats, not ranks
    ],
)
def test_kendall_tau_b_hand_cases(x, y, expected):
    assert kendall_tau_b(x, y) == pytest.approx(expected)
    assert kendall_tau_b(y, x) == pytest.approx(expected)  # symmetric


def test_kendall_tau_b_undefined_cases():
    assert math.isnan(kendall_tau_b([1.0], [2.0]))  # one item: no pair
    assert math.isnan(kendall_tau_b([3, 3, 3], [1, 2, 3]))  # every pair tied in x
    with pytest.raises(ValueError, match="x values"):
        kendall_tau_b([1, 2], [1, 2, 3])


def _tau_b_naive(x: list[float], y: list[float]) -> float:
    """The textbook count over pairs: (concordant − discordant) / sqrt((n0 − n1)(n0 − n2))."""
    conc = disc = tx = ty = 0
    pairs = list(itertools.combinations(range(len(x)), 2))
    for i, j in pairs:
        dx, dy = x[i] - x[j], y[i] - y[j]
        tx += dx == 0
        ty += dy == 0
        conc += dx * dy > 0
        disc += dx * dy < 0
    n0 = len(pairs)
    return (conc - disc) / math.sqrt((n0 - tx) * (n0 - ty))


def test_kendall_tau_b_matches_pair_count_with_ties():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 5, 9):
        for _ in range(10):
            x = torch.randint(0, 3, (n,), generator=gen).tolist()
            y = torch.randint(0, 4, (n,), generator=gen).tolist()
            if len(set(x)) < 2 or len(set(y)) < 2:
                continue
            assert kendall_tau_b(x, y) == pytest.approx(_tau_b_naive(x, y))


# --------------------------------------------------------------------------- forgetting


def test_forgetting_arithmetic_and_flips():
    before = [True, True, False, False, True]
    after = [True, False, True, False, False]
    f = forgetting(before, after)
    assert (f.before, f.after) == (pytest.approx(0.6), pytest.approx(0.4))
    assert f.forgetting == pytest.approx(0.2)
    assert (f.correct_to_wrong, f.wrong_to_correct, f.n_items) == (2, 1, 5)
    assert f.forgetting == pytest.approx((f.correct_to_wrong - f.wrong_to_correct) / f.n_items)
    gained = forgetting([False, False], [True, False])
    assert gained.forgetting == pytest.approx(-0.5) and gained.wrong_to_correct == 1


def test_forgetting_rejects_mismatched_items():
    with pytest.raises(ValueError, match="items"):
        forgetting([True], [True, False])
    with pytest.raises(ValueError, match="no items"):
        forgetting([], [])


# --------------------------------------------------------------------------- alignment


class _PositionEntropyModel(torch.nn.Module):
    """Logits whose entropy grows with the position: position j is sharp in proportion to -j."""

    def __init__(self, vocab: int = 8) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        b, length = input_ids.shape
        sharp = 10.0 - torch.arange(length, dtype=torch.float) * 1.5  # (L,) falling
        logits = torch.zeros(b, length, self.vocab)
        logits[..., 1] = sharp  # token 1 dominates less and less: entropy rises with j
        return SimpleNamespace(logits=logits)


def _record(order: list[int], response: list[int]) -> TrajectoryRecord:
    return TrajectoryRecord(
        id="p#0",
        prompt_id="p",
        sample=0,
        prompt="ab",
        prompt_token_ids=[3, 4],
        response_token_ids=response,
        decoding_order=order,
        response_text="",
        method="confidence",
        data_source="test",
        verified=True,
        gen={},
    )


def _fake_dlm() -> DiffusionLM:
    spec = BackendSpec(
        name="tiny", mask_token_id=7, shift_logits=False, eos_token_id=2, pad_token_id=0
    )
    return DiffusionLM(_PositionEntropyModel(), tokenizer=None, spec=spec)


def test_alignment_left_to_right_matches_rising_entropy():
    dlm = _fake_dlm()
    left = _record([0, 1, 2, 3], [5, 5, 5, 2])  # decoded left to right: lowest entropy first
    a = trajectory_alignment(dlm, [left])
    assert a.tau == pytest.approx(1.0) and a.tau_initial == pytest.approx(1.0)
    assert a.n_states == 3  # states s = 0, 1, 2 have >= 2 masked positions; s = 3 has one
    right = _record([3, 2, 1, 0], [5, 5, 5, 2])
    assert trajectory_alignment(dlm, [right]).tau == pytest.approx(-1.0)
    both = trajectory_alignment(dlm, [left, right])
    assert both.tau == pytest.approx(0.0) and both.n_records == 2
    # entropy of the next-decoded token rises along the left-to-right trajectory
    assert all(x < y for x, y in zip(a.entropy_next, a.entropy_next[1:], strict=False))
    # TDS: variance over the masked positions before the first EOS (position 3) only
    assert a.tds_per_step[0] > 0 and math.isnan(a.tds_per_step[2])


# --------------------------------------------------------------------------- tabom eval


@pytest.fixture
def tiny_model(model_dir):
    return model_dir


def test_eval_budgets_forgetting_and_alignment(tmp_path, tiny_model, capsys):
    traj = tmp_path / "traj.jsonl"
    argv = ["distill", "--model", tiny_model, "--task", "addition:max_digits=2", "--n_prompts"]
    argv += ["3", "--n_samples", "1", "--decode.temperature", "0", "--keep", "all", "--ks", "1"]
    assert main([*argv, "--output", str(traj), "--progress", "false"]) == 0
    out = tmp_path / "res.json"
    argv = ["eval", "--model", tiny_model, "--tasks", "addition:max_digits=2", "--n_examples"]
    argv += ["5", "--budget_tokens_per_step", "1,2", "--budget_scores", "confidence,entropy"]
    argv += ["--baseline", tiny_model, "--trajectories", str(traj), "--output", str(out)]
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "acc confidence@2" in printed and "correct→wrong" in printed and "tau-b" in printed
    res = json.loads(out.read_text())
    spec = "addition:max_digits=2"
    assert set(res["budgets"][spec]) == {"confidence@1", "confidence@2", "entropy@1", "entropy@2"}
    assert res["results"][spec]["nfe_per_answer"] == 4.0  # T = 4, one token per step
    f = res["forgetting"][spec]  # the model against itself: nothing forgotten, nothing flipped
    assert f["forgetting"] == 0 and f["correct_to_wrong"] == f["wrong_to_correct"] == 0
    assert res["alignment"]["n_records"] == 3 and -1 <= res["alignment"]["tau"] <= 1


def test_eval_loads_a_lora_adapter(tmp_path, tiny_model, capsys):
    peft = pytest.importorskip("peft")
    from tabom.models import load_model

    dlm = load_model(tiny_model)
    lora = peft.LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "v_proj"])
    peft.get_peft_model(dlm.model, lora).save_pretrained(tmp_path / "adapter")
    outs = []
    for extra in ([], ["--adapter", str(tmp_path / "adapter")]):
        out = tmp_path / f"r{len(extra)}.json"
        argv = ["eval", "--model", tiny_model, "--tasks", "addition:max_digits=2"]
        assert main([*argv, "--n_examples", "4", "--output", str(out), *extra]) == 0
        outs.append(json.loads(out.read_text())["results"]["addition:max_digits=2"])
    # a fresh LoRA adapter has B = 0: merged, it leaves the model's answers unchanged
    assert outs[0]["responses"] == outs[1]["responses"]


def test_eval_set_file_for_a_task_without_data_files_names_the_spec(tmp_path):
    from tabom.commands.eval import load_eval_set

    path = tmp_path / "x.jsonl"
    path.write_text("{}\n")
    with pytest.raises(ValueError, match=r"eval set 'addition@.*x\.jsonl'.*no data files"):
        load_eval_set(f"addition@{path}", None, 0)
