"""The demo's capability test (issue 22): metrics per model, paired changes, the verdict rule.

``capability_metrics`` on the shipped base model: the NELBO of each domain's reference responses
is the estimator's on the same pairs; the three decoding orders are what ``evaluate_task``
gives under each order (left to right commits positions in order); the base model knows its
old domain better than its new one in likelihood and in accuracy. The verdict is checked on
hand-made results whose intervals are known; the paired interval against a loop.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from tabom.commands.demo.capability import (
    STRATEGIES,
    arm_changes,
    capability_metrics,
    capability_section,
    paired_ci,
    verdict,
)
from tabom.likelihood import LikelihoodConfig, estimate_nelbo
from tabom.likelihood_sets import response_ids
from tabom.models import load_model
from tabom.tasks import NEW_DOMAIN, OLD_DOMAIN, make_task


@pytest.mark.slow
def test_capability_metrics_on_the_base_model():
    dlm = load_model("tiny-base")
    gen = torch.Generator().manual_seed(3)
    new, old = make_task(NEW_DOMAIN), make_task(OLD_DOMAIN)
    splits = {"test": new.generate(24, gen), "old_test": old.generate(24, gen)}
    lk = LikelihoodConfig(n_samples=8)
    cap = capability_metrics(dlm, NEW_DOMAIN, OLD_DOMAIN, splits, lk, seed=0)
    pairs = [(dlm.encode_prompt(e.prompt), response_ids(dlm, e.answer, new.gen_length))
             for e in splits["test"]]
    kw = {"mask_token_id": dlm.mask_token_id, "pad_token_id": dlm.spec.pad_token_id}
    est = estimate_nelbo(dlm, pairs, lk, **kw)
    assert cap["nelbo"]["new"]["per_item"] == pytest.approx(est.nelbo.tolist(), rel=1e-5)
    assert cap["nelbo"]["new"]["tokens"] == 24 * new.gen_length
    for d in ("new", "old"):
        for name in STRATEGIES:
            c = cap["correct"][d][name]
            assert len(c) == 24 and cap["accuracy"][d][name] == pytest.approx(sum(c) / 24)
    # the demo passes its own confidence-order runs instead of decoding them again
    known = {(d, "confidence"): cap["correct"][d]["confidence"] for d in ("new", "old")}
    again = capability_metrics(dlm, NEW_DOMAIN, OLD_DOMAIN, splits, lk, seed=0, known=known)
    assert again["correct"] == cap["correct"] and again["accuracy"] == cap["accuracy"]
    # the base model was pretrained on the old domain: lower NELBO, higher accuracy there
    assert cap["nelbo"]["old"]["per_token"] < cap["nelbo"]["new"]["per_token"]
    assert cap["accuracy"]["old"]["confidence"] > cap["accuracy"]["new"]["confidence"]


def test_left_to_right_strategy_commits_in_order():
    from tabom.decoding import decode, pad_prompts

    dlm = load_model("tiny-base")
    ids, mask = pad_prompts([dlm.encode_prompt("12+34=")], dlm.spec.pad_token_id)
    cfg = STRATEGIES["left-to-right"].resolve(6)
    out = decode(dlm, ids, mask, cfg, mask_token_id=dlm.mask_token_id)
    assert out.decoding_order[0].tolist() == list(range(6))


def test_paired_interval_is_the_mean_difference_and_its_normal_interval():
    a, b = [1.0, 2.0, 4.0, 3.0], [0.5, 2.5, 2.0, 1.0]
    d = [x - y for x, y in zip(a, b, strict=True)]
    m, lo, hi = paired_ci(a, b)
    half = 1.96 * statistics.stdev(d) / math.sqrt(4)
    assert (m, lo, hi) == pytest.approx((statistics.fmean(d), m - half, m + half))


def fake(nelbo_new: list[float], acc: dict[str, list[bool]]) -> dict:
    n = len(nelbo_new)
    correct = {"new": acc, "old": {k: [True] * n for k in STRATEGIES}}
    return {
        "capability": {
            "nelbo": {
                "new": {"per_token": sum(nelbo_new) / n, "se": 0.0, "tokens": n, "per_item": nelbo_new},
                "old": {"per_token": 1.0, "se": 0.0, "tokens": n, "per_item": [1.0] * n},
            },
            "correct": correct,
            "accuracy": {d: {k: sum(v) / n for k, v in c.items()} for d, c in correct.items()},
        }
    }


def test_verdict_separates_likelihood_one_order_and_none():
    n = 40
    flat = [1.0 + 0.01 * (i % 3) for i in range(n)]
    wrong = {k: [i % 4 == 0 for i in range(n)] for k in STRATEGIES}
    gain_conf = {**wrong, "confidence": [i % 10 != 0 for i in range(n)]}
    results = {
        "base": [fake(flat, wrong)],
        "likely": [fake([v - 0.5 for v in flat], gain_conf)] * 2,
        "one-order": [fake(flat, gain_conf)] * 2,
        "nothing": [fake(flat, wrong)],
    }
    assert verdict(arm_changes(results, "likely")).startswith("in likelihood and in accuracy under confidence")
    assert verdict(arm_changes(results, "one-order")) == (
        "in one decoding order only (confidence), not in likelihood"
    )
    assert verdict(arm_changes(results, "nothing")) == "none"
    ch = arm_changes(results, "likely")
    assert ch["nelbo_new"][0] == pytest.approx(-0.5) and ch["nelbo_new"][2] < 0
    lines = capability_section(results, ["base", "likely", "one-order", "nothing"], LikelihoodConfig())
    assert any(line.startswith("| one-order |") and "one decoding order only" in line for line in lines)
