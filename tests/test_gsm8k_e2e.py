"""GSM8K end to end on the real data: distill -> train -> eval with a real tokenizer (DESIGN §7).

A byte-level BPE is trained offline on GSM8K training text with ``tokenizers`` and given a
LLaDA-style chat template; a tiny random bidirectional Llama saved as a ``llada`` checkpoint
decodes real test questions through the template. Accuracy is near zero; what is checked is
that every stage runs on real text and that the numbers are computed correctly: the prompt
ids are the templated question, and every verdict equals an independent parse of the answer.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction

import pytest

from realdata import needs, real_data
from tabom.cli import main
from tabom.commands.eval import load_eval_set
from tabom.models import load_model
from tabom.models.standin import build_standin, save_standin
from tabom.tasks import make_task

TEST, TRAIN = real_data("gsm8k/test.jsonl"), real_data("gsm8k/train.jsonl")
SPECIALS = ["<pad>", "<eos>", "<mask>", "<unk>", "<|user|>", "<|assistant|>", "<|eot_id|>"]
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot_id|>{% endfor %}"
    "<|assistant|>"
)  # like LLaDA's: the assistant header always follows
GEN = 32  # response tokens

pytestmark = [needs("gsm8k/test.jsonl"), needs("gsm8k/train.jsonl")]


def train_bpe(n_lines: int = 1500, vocab_size: int = 800):
    """A byte-level BPE trained on GSM8K training questions and answers, as a HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    with TRAIN.open(encoding="utf-8") as f:
        for _, line in zip(range(n_lines), f, strict=False):
            rec = json.loads(line)
            texts += [rec["question"], rec["answer"]]
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        mask_token="<mask>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:],
        padding_side="left",
    )
    tok.chat_template = TEMPLATE
    return tok


_NUM = re.compile(r"(?<![\w)])-?\d+(?:,\d{3})*(?:\.\d+)?|\d+(?:,\d{3})*(?:\.\d+)?")


def independent_answer(text: str) -> Fraction | None:
    """GSM8K's convention, written again: the number after the last ``####``, else the last one."""
    if "####" in text:
        m = re.match(r"[\s$:=*]*(-?[\d,]+(?:\.\d+)?)", text[text.rindex("####") + 4 :])
        found = [m[1]] if m else []
    else:
        found = _NUM.findall(text)
    if not found or len(found[-1]) > 64:
        return None
    return Fraction(found[-1].replace(",", ""))


def target_of(answer: str) -> Fraction:
    return Fraction(answer.split("####")[-1].strip().replace(",", ""))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    tok = train_bpe()
    model, tok = build_standin("llada", tokenizer=tok, hidden_size=64, max_length=512, seed=0)
    return str(save_standin(model, tok, tmp_path_factory.mktemp("gsm8k") / "m", backend="llada"))


def test_the_bpe_tokenizer_round_trips_real_text(model_dir):
    dlm = load_model(model_dir)
    assert 500 <= len(dlm.tokenizer) <= 1000
    question = json.loads(TEST.read_text(encoding="utf-8").splitlines()[0])["question"]
    ids = dlm.tokenizer(question, add_special_tokens=False)["input_ids"]
    assert dlm.tokenizer.decode(ids) == question and len(ids) < len(question) / 2
    assert dlm.spec.stop_token_ids == (dlm.tokenizer.convert_tokens_to_ids("<|eot_id|>"),)


@pytest.mark.slow
def test_distill_train_eval_on_gsm8k(model_dir, tmp_path, capsys):
    dlm = load_model(model_dir)
    tok = dlm.tokenizer
    common = ["--num_threads", "1"]

    # 1) distill four real test questions through the chat template
    traj = tmp_path / "traj.jsonl"
    argv = ["distill", "--model", model_dir, "--task", f"gsm8k:gen_length={GEN}"]
    argv += ["--prompts_file", str(TEST), "--n_prompts", "4", "--n_samples", "1", "--ks", "1"]
    argv += ["--decode.temperature", "0", "--keep", "all", "--output", str(traj)]
    argv += ["--progress", "false"]
    assert main([*argv, *common]) == 0
    recs = [json.loads(line) for line in traj.read_text().splitlines()]
    rows = [json.loads(line) for line in TEST.read_text(encoding="utf-8").splitlines()[:4]]
    assert [r["prompt"] for r in recs] == [row["question"] for row in rows]  # raw text kept
    seen = []
    for rec, row in zip(recs, rows, strict=True):
        rendered = tok.decode(rec["prompt_token_ids"])
        assert rendered == f"<|user|>{row['question']}<|eot_id|><|assistant|>"
        assert rec["prompt_token_ids"] == dlm.encode_prompt(row["question"])
        assert len(rec["response_token_ids"]) == GEN
        assert sorted(rec["decoding_order"]) == list(range(GEN))
        parsed = independent_answer(rec["response_text"])
        assert rec["verified"] == (parsed is not None and parsed == target_of(row["answer"]))
        seen.append(parsed)
    assert any(v is not None for v in seen)  # some random answers hold a number: not vacuous

    # 2) a few TABOM steps on those trajectories
    out = tmp_path / "train"
    argv = ["train", "--model", model_dir, "--data", str(traj), "--objective", "tabom"]
    argv += ["--max_steps", "2", "--batch_size", "2", "--grad_accum", "2", "--lr", "1e-3"]
    argv += ["--warmup_steps", "0", "--lora_rank", "0"]
    argv += ["--loss.td_window", "8", "--loss.rank_window", "8"]
    argv += ["--mixed_precision", "fp32", "--output_dir", str(out), "--progress", "false"]
    assert main([*argv, *common]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(math.isfinite(r["ce"]) and r["n_supervised"] > 0 for r in log)
    assert all(r["pairs_per_sample"] > 0 for r in log)

    # 3) evaluate the trained model on the test file; check every verdict independently
    spec = f"gsm8k:gen_length={GEN}@{TEST}"
    res_file = tmp_path / "eval.json"
    argv = ["eval", "--model", str(out / "model"), "--tasks", spec, "--n_examples", "5"]
    assert main([*argv, "--output", str(res_file), *common]) == 0
    assert "gsm8k" in capsys.readouterr().out
    res = json.loads(res_file.read_text())["results"][spec]
    _, examples = load_eval_set(spec, 5, 0)  # the same seeded subset eval used
    assert res["n_examples"] == 5 and res["nfe_per_answer"] == GEN
    verdicts = []
    for ex, (text,), (verdict,) in zip(examples, res["responses"], res["correct"], strict=True):
        parsed = independent_answer(text)
        assert verdict == (parsed is not None and parsed == target_of(ex.answer)), text
        verdicts.append(verdict)
    assert res["accuracy"] == sum(verdicts) / 5
    # the check can say yes: the reference solution itself is accepted, a wrong number is not
    task = make_task(spec.split("@")[0])
    assert task.verify(examples[0], examples[0].answer)
    assert not task.verify(examples[0], f"#### {target_of(examples[0].answer) + 1}")
