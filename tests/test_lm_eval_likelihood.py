"""lm-eval's ``loglikelihood`` and ``loglikelihood_rolling`` through the Monte-Carlo NELBO (DESIGN §7).

A multiple-choice task YAML and its JSONL data are written here (the harness's include path,
local data, offline): old-domain addition problems of the shipped base model, each with the
correct answer and three one-digit corruptions. ``lm_eval.simple_evaluate`` runs it with the
``tabom`` model. Checked: every logged log-likelihood lies within 4 Monte-Carlo standard
errors of minus the exact NELBO (every mask set enumerated); ``acc`` is the mean of the logged
argmax choices; the base model, which solves these problems, ranks the correct answer first on
most of them; at most one choice per problem is greedy, and the correct one is whenever the
model decodes it. The rolling windows partition a text and sum to its log-likelihood bound.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from tabom.likelihood import LikelihoodConfig, estimate_nelbo  # noqa: E402
from tabom.models import load_model  # noqa: E402
from tabom.tasks import OLD_DOMAIN, make_task  # noqa: E402

TASK = "tabom_mc_local"
N_DOCS = 8
K = 64


def corruptions(answer: str, gen: torch.Generator) -> list[str]:
    """Three distinct answers that differ from ``answer`` in one digit each."""
    out: list[str] = []
    while len(out) < 3:
        j = int(torch.randint(len(answer), (1,), generator=gen))
        d = str((int(answer[j]) + int(torch.randint(1, 10, (1,), generator=gen))) % 10)
        cand = answer[:j] + d + answer[j + 1 :]
        if cand not in out:
            out.append(cand)
    return out


def write_task(folder) -> None:
    gen = torch.Generator().manual_seed(7)
    task = make_task(OLD_DOMAIN)
    lines = []
    for i, ex in enumerate(task.generate(N_DOCS, gen)):
        choices = corruptions(ex.answer, gen)
        label = i % 4
        choices.insert(label, ex.answer)
        lines.append({"prompt": ex.prompt, "choices": choices, "label": label})
    data = folder / "mc.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / f"{TASK}.yaml").write_text(
        f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: prompt
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
    )


def exact_nelbo(dlm, ctx: list[int], cont: list[int]) -> float:
    """Σ_l (1/l) mean_{|M|=l} Σ_{i∈M} -log p(x_i | x_¬M), every mask set, full logits."""
    import itertools

    m, total = dlm.mask_token_id, 0.0
    for size in range(1, len(cont) + 1):
        subsets = list(itertools.combinations(range(len(cont)), size))
        rows = [ctx + [m if j in s else t for j, t in enumerate(cont)] for s in subsets]
        ids = torch.tensor(rows)
        with torch.no_grad():
            logits = dlm(ids, torch.ones_like(ids)).float()
        logits[..., m] = float("-inf")
        logp = torch.log_softmax(logits, -1)
        nll = sum(
            -float(logp[r, len(ctx) + j, cont[j]]) for r, s in enumerate(subsets) for j in s
        )
        total += nll / len(subsets) / size
    return total


@pytest.mark.slow
def test_simple_evaluate_scores_a_local_multiple_choice_task(tmp_path):
    from lm_eval.tasks import TaskManager

    from tabom.lm_eval_adapter import TabomLM

    write_task(tmp_path)
    out = lm_eval.simple_evaluate(
        model="tabom",
        model_args=f"pretrained=tiny-base,mc_samples={K},batch_size=8",
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(tmp_path)),
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = out["samples"][TASK]
    assert len(samples) == N_DOCS
    dlm = load_model("tiny-base")
    lm = TabomLM(pretrained="tiny-base", mc_samples=K)
    kw = {"mask_token_id": dlm.mask_token_id, "pad_token_id": dlm.spec.pad_token_id}
    right = 0
    for s in samples:
        lls = [r[0][0] for r in s["resps"]]
        greedy = [r[0][1] for r in s["resps"]]
        for (ctx_text, cont_text), ll in zip(s["arguments"], lls, strict=True):
            ctx, cont = lm.encode_pair(ctx_text, cont_text)
            assert cont == dlm.tokenizer(cont_text, add_special_tokens=False)["input_ids"]
            se = float(estimate_nelbo(dlm, [(ctx, cont)], LikelihoodConfig(n_samples=K), **kw).se[0])
            assert abs(-ll - exact_nelbo(dlm, ctx, cont)) < 4 * se, (ctx_text, cont_text)
        pick = max(range(4), key=lambda i: lls[i])
        assert s["acc"] == float(pick == s["target"])
        right += pick == s["target"]
        assert sum(greedy) <= 1
        ctx, cont = lm.encode_pair(*s["arguments"][s["target"]])
        from tabom.likelihood_sets import greedy_matches

        assert greedy[s["target"]] == greedy_matches(dlm, [(ctx, cont)])[0]
    assert out["results"][TASK]["acc,none"] == pytest.approx(right / N_DOCS)
    assert right >= N_DOCS - 2  # the base model knows its old domain; chance is 1/4


def test_rolling_windows_partition_the_text_and_sum():
    from lm_eval.api.instance import Instance

    from tabom.lm_eval_adapter import TabomLM

    lm = TabomLM(pretrained="tiny-base", mc_samples=8, max_length=12)
    text = "123+456=0579 and 98+7=0105 then 1+1=0002"
    req = Instance("loglikelihood_rolling", {}, (text,), 0)
    tokens = lm.dlm.tokenizer(text, add_special_tokens=False)["input_ids"]
    seen: list[tuple[list[int], list[int]]] = []
    original = lm._nelbo

    def spy(pairs):
        seen.extend(pairs)
        return original(pairs)

    lm._nelbo = spy  # type: ignore[method-assign]
    (value,) = lm.loglikelihood_rolling([req])
    assert len(seen) == math.ceil(len(tokens) / 11) > 1
    assert sum((c for _, c in seen), []) == tokens  # the continuations partition the text
    assert all(len(a) + len(b) <= 12 for a, b in seen) and seen[0][0] == [lm.prefix_token_id]
    est = original(seen)
    assert value == pytest.approx(-float(est.nelbo.sum()))
    assert value < 0


def test_rolling_windows_are_the_harness_windows():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from tabom.likelihood_sets import rolling_windows

    for n in (0, 1, 5, 11, 12, 23, 30):
        for m in (2, 3, 12):
            tokens = list(range(100, 100 + n))
            theirs = get_rolling_token_windows(
                token_list=tokens, prefix_token=7, max_seq_len=m - 1, context_len=1
            )
            want = [tuple(map(list, make_disjoint_window(w))) for w in theirs]
            assert rolling_windows(tokens, 7, m) == want, (n, m)
