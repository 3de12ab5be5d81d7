"""The ``tabom`` lm-evaluation-harness model on a local GSM8K task, offline (DESIGN §7).

A task YAML written here reads a few documents of the real GSM8K test file with the ``json``
dataset builder; ``lm_eval.simple_evaluate`` runs it with the ``tabom`` model on a tiny
Dream-style stand-in (shifted logits, 4-D mask). The harness's responses must be exactly what
:func:`tabom.decoding.decode` produces for the same prompts, and its exact-match score must be
what the logged samples give.
"""

from __future__ import annotations

import re

import pytest

from realdata import needs, real_data

lm_eval = pytest.importorskip("lm_eval")

from tabom.batch_decode import response_text  # noqa: E402
from tabom.decoding import DecodeConfig, decode, pad_prompts  # noqa: E402
from tabom.models import load_model  # noqa: E402
from tabom.models.standin import build_standin, save_standin  # noqa: E402

DATA = real_data("gsm8k/test.jsonl")
TASK = "tabom_gsm8k_local"
GEN = 16

pytestmark = needs("gsm8k/test.jsonl")

YAML = f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {DATA}
output_type: generate_until
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer.split('####')[-1].strip()}}}}"
generation_kwargs:
  until: ["Question:", "\\n\\n"]
  max_gen_toks: {GEN}
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
filter_list:
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: take_first
num_fewshot: 0
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    model, tok = build_standin("dream", max_length=1024, seed=3)
    return str(save_standin(model, tok, tmp_path_factory.mktemp("lm_eval") / "m", backend="dream"))


def test_cut_at_stops():
    from tabom.lm_eval_adapter import cut_at_stops

    assert cut_at_stops("12 Question: 3", ["Question:", "\n\n"]) == "12 "
    assert cut_at_stops("abc", ["", "x"]) == "abc"


def test_settings_are_checked_at_init_without_a_placeholder_length(model_dir):
    from tabom.lm_eval_adapter import TabomLM

    lm = TabomLM(pretrained=model_dir, block_length=16)  # T comes with each request
    cfg = lm.decode_config(32)
    assert (cfg.gen_length, cfg.steps, cfg.block_length) == (32, 32, 16)
    with pytest.raises(ValueError, match=r"block_length \(16\) must divide"):
        lm.decode_config(8)
    with pytest.raises(ValueError, match="model_args.score: 'nope' is not one of"):
        TabomLM(pretrained=model_dir, score="nope")
    with pytest.raises(ValueError, match="block_length"):
        TabomLM(pretrained=model_dir, gen_length=8, block_length=16)  # T fixed: checked now


def test_model_args_are_the_decode_config_fields_read_as_flags(model_dir, monkeypatch):
    """The adapter declares no decode setting of its own: every ``DecodeConfig`` field is a
    model arg, read from the harness's strings with the field's type and range."""
    import dataclasses

    from lm_eval.utils import simple_parse_args_string

    import tabom.lm_eval_adapter as adapter

    monkeypatch.setattr(adapter, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    args = simple_parse_args_string(
        "pretrained=x,tokens_per_step=2,top_p=0.9,threshold=none,cache=prefix,score=entropy"
    )
    # the settings are read before the model loads: a bad one costs no load
    for bad, flag in [("top_p=1.5", "model_args.top_p"), ("steps=0", "model_args.steps"),
                      ("tokens_per_step=two", "model_args.tokens_per_step"),
                      ("topk=3", "unknown field 'topk'")]:  # fmt: skip
        with pytest.raises(ValueError, match=flag):
            adapter.TabomLM(**simple_parse_args_string(f"pretrained=x,{bad}"))
    monkeypatch.setattr(adapter, "load_model", lambda *a, **k: load_model(model_dir))
    lm = adapter.TabomLM(**args)
    want = DecodeConfig(tokens_per_step=2, top_p=0.9, cache="prefix", score="entropy")
    assert lm.decode == want
    assert lm.decode_config(8).steps == 4  # tokens_per_step: a field the adapter never named
    every = {f.name: getattr(want, f.name) for f in dataclasses.fields(DecodeConfig)}
    assert adapter.TabomLM(pretrained="x", **every).decode == want


@pytest.mark.slow
def test_simple_evaluate_runs_a_local_gsm8k_task(model_dir, tmp_path):
    from lm_eval.tasks import TaskManager

    import tabom.lm_eval_adapter  # noqa: F401  (registers the model)

    (tmp_path / f"{TASK}.yaml").write_text(YAML)
    out = lm_eval.simple_evaluate(
        model="tabom",
        model_args=f"pretrained={model_dir},steps={GEN},batch_size=2",
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(tmp_path)),
        limit=3,
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = out["samples"][TASK]
    assert len(samples) == 3

    # 1) the harness's responses are our decoder's, cut at EOS and at the until strings
    dlm = load_model(model_dir)
    prompts = [s["arguments"][0][0] for s in samples]  # (context, gen_kwargs)
    assert prompts[0].startswith("Question: ") and prompts[0].endswith("\nAnswer:")
    ids, mask = pad_prompts([dlm.tokenizer(p)["input_ids"] for p in prompts], dlm.spec.pad_token_id)
    cfg = DecodeConfig(gen_length=GEN, steps=GEN)
    res = decode(dlm, ids, mask, cfg, mask_token_id=dlm.mask_token_id)
    for s, row in zip(samples, res.response_ids.tolist(), strict=True):
        text = response_text(dlm.tokenizer, row, dlm.spec.stop_ids)
        text = re.split(r"Question:|\n\n", text)[0]
        assert s["resps"] == [[text]]

    # 2) the score is the mean of the logged per-sample exact matches
    em = [s["exact_match"] for s in samples]
    for s in samples:
        found = re.findall(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", s["resps"][0][0])
        extracted = [a or b for a, b in found][-1] if found else "[invalid]"
        assert s["filtered_resps"] == [extracted]
        assert s["exact_match"] == float(extracted == s["target"])
    score = out["results"][TASK]["exact_match,flexible-extract"]
    assert score == pytest.approx(sum(em) / 3)
