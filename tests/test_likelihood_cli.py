"""``tabom likelihood`` through ``main(argv)``: the table's numbers are the estimator's (DESIGN §7).

The JSON the command writes must hold, per set, the NELBO of every reference response as
:func:`tabom.likelihood.estimate_nelbo` gives it for the same pairs and seed, pooled per token;
a text file is scored over its rolling windows; bad input is one line and exit code 2.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tabom.cli import main
from tabom.likelihood import LikelihoodConfig, estimate_nelbo
from tabom.likelihood_sets import response_ids, rolling_windows
from tabom.models import load_model
from tabom.tasks import make_task

SPEC = "addition:max_digits=2"


def test_the_command_reports_the_estimators_numbers(model_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("12+34=0046\n" * 20)
    out = tmp_path / "r.json"
    argv = ["likelihood", "--model", model_dir, "--tasks", SPEC, "--n_examples", "6",
            "--texts", str(text), "--likelihood.n_samples", "8", "--max_length", "64",
            "--output", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "perplexity bound" in table and SPEC in table
    res = json.loads(out.read_text())["results"]
    dlm = load_model(model_dir)
    task = make_task(SPEC)
    examples = task.generate(6, torch.Generator().manual_seed(0))
    pairs = [(dlm.encode_prompt(ex.prompt), response_ids(dlm, ex.answer, task.gen_length))
             for ex in examples]
    kw = {"mask_token_id": dlm.mask_token_id, "pad_token_id": dlm.spec.pad_token_id}
    est = estimate_nelbo(dlm, pairs, LikelihoodConfig(n_samples=8), **kw)
    answers = res[0]
    assert answers["n_tokens"] == 6 * task.gen_length
    assert answers["per_item"] == pytest.approx(est.nelbo.tolist(), rel=1e-5)
    assert answers["nelbo_per_token"] == pytest.approx(float(est.nelbo.sum()) / (6 * task.gen_length), rel=1e-5)
    assert answers["ppl_bound"] == pytest.approx(math.exp(answers["nelbo_per_token"]))
    assert 0 < answers["se"] < answers["nelbo_per_token"]
    tokens = dlm.tokenizer(text.read_text(), add_special_tokens=False)["input_ids"]
    windows = rolling_windows(tokens, dlm.spec.eos_token_id, 64)
    assert res[1]["n_sequences"] == len(windows) == math.ceil(len(tokens) / 63)
    assert res[1]["n_tokens"] == len(tokens)


def test_bad_input_is_one_line_and_exit_2(model_dir, tmp_path, capsys):
    assert main(["likelihood", "--model", model_dir, "--likelihood.n_samples", "0"]) == 2
    assert "--likelihood.n_samples: 0 is out of range" in capsys.readouterr().err
    assert main(["likelihood", "--model", model_dir, "--texts", str(tmp_path / "no.txt")]) == 2
    assert "texts: no such file" in capsys.readouterr().err
    assert main(["likelihood", "--likelihood.draws", "sobol"]) == 2
    assert "--likelihood.draws" in capsys.readouterr().err
