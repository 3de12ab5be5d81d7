"""The verified paths end to end through the CLI (DESIGN §7, round 3): a scripted stand-in model
(answers known in advance) distils MBPP with ``--keep verified`` and is evaluated on HumanEval
and MATH; kept trajectories, verdicts and pass@k are checked against the expected ones."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import pytest
import torch

from tabom.batch_decode import decode_texts
from tabom.cli import main
from tabom.decoding import DecodeConfig
from tabom.models import load_model
from tabom.models.scripted import save_scripted
from tabom.sandbox import bwrap_works
from tabom.tasks import make_task

DATA = Path(__file__).parent / "data"
MBPP = DATA / "mbpp" / "mbpp_sample.jsonl"
HUMANEVAL = DATA / "humaneval" / "HumanEval_sample.jsonl"
MATH = DATA / "math500" / "test_sample.jsonl"
needs_bwrap = pytest.mark.skipif(not bwrap_works(), reason="no working bubblewrap")
FAST = ["--decode.threshold", "0.9", "--num_threads", "1"]  # the script is certain: 1-2 forwards


def fence(code: str) -> str:
    return f"```python\n{code.replace(chr(13), '')}\n```"


def pass_at(n: int, c: int, k: int) -> float:
    return 1.0 if n - c < k else 1 - comb(n - c, k) / comb(n, k)


def test_the_scripted_model_writes_its_script(tmp_path):
    path = save_scripted(tmp_path / "m", {"Q1": ["yes"], "Q2": ["A1", "B2"]})
    dlm = load_model(str(path))
    assert dlm.spec.name == "scripted"
    cfg = DecodeConfig(temperature=1.0, gen_length=8)
    texts, _ = decode_texts(
        dlm, ["Q1", "Q2", "Q2", "Q2", "Q2", "?"], cfg, generator=torch.Generator().manual_seed(0)
    )
    assert texts[0] == "yes" and texts[5] == "" and set(texts[1:5]) == {"A1", "B2"}
    with pytest.raises(ValueError, match="distinct characters"):
        save_scripted(tmp_path / "x", {"Q": ["A1", "A2"]})
    with pytest.raises(ValueError, match="not in the tokenizer"):
        save_scripted(tmp_path / "x", {"Q": ["\t"]})


@needs_bwrap
def test_distill_mbpp_keeps_exactly_the_passing_trajectories(tmp_path):
    task = make_task("mbpp")
    ex = {e.id: e for e in task.load(MBPP)}
    good2, good3 = fence(ex["mbpp-2"].answer), fence(ex["mbpp-3"].answer)
    expected = {  # response -> verdict known in advance
        good2: True,
        "A\n" + good3: True,
        "B\n" + fence("def is_not_prime(n):\n    return n > 1"): False,
        fence("import sys\nsys.exit(0)"): False,
        "": False,  # mbpp-11 and mbpp-367 are not in the script: an empty answer
    }
    script = {
        ex["mbpp-2"].prompt: [good2],
        ex["mbpp-3"].prompt: [
            "A\n" + good3,
            "B\n" + fence("def is_not_prime(n):\n    return n > 1"),
        ],
        ex["mbpp-4"].prompt: [fence("import sys\nsys.exit(0)")],
    }
    model = str(save_scripted(tmp_path / "m", script))
    common = ["distill", "--model", model, "--task", "mbpp:gen_length=320,timeout=20,workers=2"]
    common += ["--prompts_file", str(MBPP), "--n_samples", "4", "--ks", "1,4"]
    common += ["--prompts_per_batch", "2", "--progress", "false", *FAST]
    assert main([*common, "--keep", "all", "--output", str(tmp_path / "all.jsonl")]) == 0
    assert main([*common, "--keep", "verified", "--output", str(tmp_path / "ok.jsonl")]) == 0
    every = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    kept = [json.loads(line) for line in (tmp_path / "ok.jsonl").read_text().splitlines()]
    assert len(every) == 5 * 4
    for r in every:
        assert r["verified"] is expected[r["response_text"]], r["id"]
    mbpp3 = [r["response_text"][0] for r in every if r["prompt_id"] == "mbpp-3"]
    assert set(mbpp3) == {"A", "B"}  # the seed draws both scripted answers
    assert [r["id"] for r in kept] == [r["id"] for r in every if r["verified"]]
    assert all(r["verified"] for r in kept) and len(kept) == 4 + mbpp3.count("A")
    summary = json.loads((tmp_path / "ok.jsonl.summary.json").read_text())["summary"]
    by_prompt = [sum(r["verified"] for r in every if r["prompt_id"] == p) for p in ex]
    assert summary["verified"] == len(kept)
    assert summary["pass_at"]["1"] == pytest.approx(len(kept) / 20)
    assert summary["pass_at"]["4"] == pytest.approx(sum(pass_at(4, c, 4) for c in by_prompt) / 5)


def eval_run(tmp_path, model: str, spec: str, n: int, ks: str) -> dict:
    out = tmp_path / "eval.json"
    # a spec with several fields is a YAML list item (a bare list splits at commas)
    argv = ["eval", "--model", model, "--tasks", json.dumps([spec]), "--n_samples", str(n)]
    argv += ["--ks", ks]
    argv += ["--sample_temperature", "1", "--output", str(out), *FAST]
    assert main(argv) == 0
    return json.loads(out.read_text())["results"][spec]


def check_scores(res: dict, expected: dict[str, bool], n: int, ks: list[int]) -> None:
    verdicts = [[expected[t] for t in row] for row in res["responses"]]
    assert res["correct"] == verdicts
    flat = [v for row in verdicts for v in row]
    assert res["accuracy"] == pytest.approx(sum(flat) / len(flat))
    for k in ks:
        want = sum(pass_at(n, sum(row), k) for row in verdicts) / len(verdicts)
        assert res["pass_at"][str(k)] == pytest.approx(want)
    assert any(flat) and not all(flat)


@needs_bwrap
def test_eval_scores_humaneval_by_running_the_tests(tmp_path):
    ex = {e.id: e for e in make_task("humaneval").load(HUMANEVAL)}
    whole_2 = "def truncate_number(number: float) -> float:\n    return number % 1.0"
    palindrome = "def make_palindrome(string: str) -> str:\n    return string + string[::-1]"
    expected = {
        ex["humaneval-0"].answer: True,  # a completion of the body, raw text
        "A\n" + fence(whole_2): True,  # a whole function in a block
        "B\n" + fence("def truncate_number(number):\n    return number"): False,
        fence(palindrome): False,  # uses the prompt's helper, but is wrong
        "    return None\n": False,
    }
    script = {
        ex["humaneval-0"].prompt: [ex["humaneval-0"].answer],
        ex["humaneval-2"].prompt: [
            "A\n" + fence(whole_2),
            "B\n" + fence("def truncate_number(number):\n    return number"),
        ],
        ex["humaneval-10"].prompt: [fence(palindrome)],
        ex["humaneval-53"].prompt: ["    return None\n"],
    }
    model = str(save_scripted(tmp_path / "m", script))
    res = eval_run(tmp_path, model, f"humaneval:gen_length=256,timeout=20@{HUMANEVAL}", 4, "1,2,4")
    check_scores(res, expected, 4, [1, 2, 4])
    assert {r[0] for r in res["responses"][1]} == {"A", "B"}


def test_eval_scores_math_with_math_verify(tmp_path):
    pytest.importorskip("math_verify")
    ex = {e.data["target"]: e for e in make_task("math").load(MATH)}
    assert set(ex) == {
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        "\\frac{14}{3}",
        "p - q",
        "9",
        "\\text{Evelyn}",
    }
    expected = {
        "So the point is $\\boxed{(3, \\dfrac{\\pi}{2})}$.": True,
        "A: \\boxed{4\\frac{2}{3}}": True,
        "B: \\boxed{\\frac{3}{14}}": False,
        "\\boxed{p-q}": True,
        "\\boxed{10^{10^{10^{10}}}}": False,  # bounded by the timeout
        "\\boxed{\\text{Evelyn}": False,  # never closes
    }
    script = {
        ex["\\left( 3, \\frac{\\pi}{2} \\right)"].prompt: [
            "So the point is $\\boxed{(3, \\dfrac{\\pi}{2})}$."
        ],
        ex["\\frac{14}{3}"].prompt: ["A: \\boxed{4\\frac{2}{3}}", "B: \\boxed{\\frac{3}{14}}"],
        ex["p - q"].prompt: ["\\boxed{p-q}"],
        ex["9"].prompt: ["\\boxed{10^{10^{10^{10}}}}"],
        ex["\\text{Evelyn}"].prompt: ["\\boxed{\\text{Evelyn}"],
    }
    model = str(save_scripted(tmp_path / "m", script))
    res = eval_run(tmp_path, model, f"math:gen_length=64,timeout=3@{MATH}", 2, "1,2")
    check_scores(res, expected, 2, [1, 2])
