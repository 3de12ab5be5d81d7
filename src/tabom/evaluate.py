"""Evaluation under full diffusion decoding: accuracy, pass@k, decode statistics (DESIGN §7).

Answers are decoded with :func:`tabom.decoding.decode` (one token per step by default, the
paper's setting) and checked by the task's verifier. pass@k uses the unbiased estimator of
Chen et al. (2021) from n samples per problem: 1 - C(n - c, k) / C(n, k).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from tabom.decoding import DecodeConfig, decode, pad_prompts, response_text
from tabom.models.base import DiffusionLM
from tabom.tasks.base import Example, Task


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct.

    Raises:
        ValueError: ``k`` outside [1, n] or ``c`` outside [0, n].
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class TaskResult:
    """Results of one model on one task.

    Attributes:
        task: task name (or spec).
        n_examples: problems evaluated.
        n_samples: answers decoded per problem.
        accuracy: mean correctness over all answers (= pass@1).
        pass_at: ``{k: pass@k}`` averaged over problems.
        nfe_per_answer: forwards per answer (a batched forward counts once per row).
        tokens_per_forward: response tokens committed per forward.
        correct: ``[problem][sample]`` verdicts (for per-item forgetting).
        seconds: wall time.
    """

    task: str
    n_examples: int
    n_samples: int
    accuracy: float
    pass_at: dict[int, float]
    nfe_per_answer: float
    tokens_per_forward: float
    correct: list[list[bool]] = field(repr=False)
    responses: list[list[str]] = field(repr=False)
    seconds: float = 0.0


def budget_for(task: Task, cfg: DecodeConfig) -> DecodeConfig:
    """``cfg`` with the task's response length; ``steps`` scaled to keep tokens per step."""
    tokens_per_step = cfg.gen_length / cfg.steps
    steps = max(1, round(task.gen_length / tokens_per_step))
    block = cfg.block_length
    if block is not None and task.gen_length % block:
        raise ValueError(
            f"decode.block_length ({block}) must divide the response length of task "
            f"{task.name!r} ({task.gen_length})"
        )
    if block is not None:
        n_blocks = task.gen_length // block
        steps = max(n_blocks, steps - steps % n_blocks)
    return dataclasses.replace(cfg, gen_length=task.gen_length, steps=steps)


@torch.no_grad()
def generate(
    dlm: DiffusionLM,
    prompts: list[str],
    cfg: DecodeConfig,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "decode",
) -> tuple[list[str], list[list[int]], list[list[int]], int]:
    """Decode ``prompts`` in batches.

    Returns:
        ``(texts, response_ids, decode_steps, nfe_rows)``: response texts cut at EOS, the raw
        response ids and decode steps per prompt, and the forwards summed over rows.
    """
    tok = dlm.tokenizer
    texts: list[str] = []
    ids_out: list[list[int]] = []
    steps_out: list[list[int]] = []
    nfe_rows = 0
    for start in tqdm(
        range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False
    ):
        chunk = prompts[start : start + batch_size]
        encoded = [dlm.encode_prompt(p) for p in chunk]  # the chat template, if the backend has one
        ids, mask = pad_prompts(encoded, dlm.spec.pad_token_id)
        out = decode(
            dlm,
            ids.to(dlm.device),
            mask.to(dlm.device),
            cfg,
            mask_token_id=dlm.mask_token_id,
            generator=generator,
        )
        resp = out.response_ids.tolist()
        for row in resp:
            texts.append(response_text(tok, row, dlm.spec.stop_ids))
        ids_out.extend(resp)
        steps_out.extend(out.decode_step.tolist())
        nfe_rows += out.nfe * len(chunk)
    return texts, ids_out, steps_out, nfe_rows


def evaluate_task(
    dlm: DiffusionLM,
    task: Task,
    examples: list[Example],
    cfg: DecodeConfig,
    *,
    n_samples: int = 1,
    ks: tuple[int, ...] = (1,),
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> TaskResult:
    """Accuracy and pass@k of ``dlm`` on ``examples`` under the decode budget ``cfg``.

    ``cfg`` gives the score, temperature and tokens per step; the response length comes from
    the task (:func:`budget_for`). With ``n_samples > 1`` use a temperature above 0.
    """
    cfg = budget_for(task, cfg)
    gen = torch.Generator(device=dlm.device).manual_seed(seed)
    prompts = [ex.prompt for ex in examples for _ in range(n_samples)]
    t0 = time.perf_counter()
    texts, _, steps, nfe_rows = generate(
        dlm, prompts, cfg, generator=gen, batch_size=batch_size, progress=progress, desc=task.name
    )
    seconds = time.perf_counter() - t0
    verdicts = [
        task.verify(ex, texts[i * n_samples + j])
        for i, ex in enumerate(examples)
        for j in range(n_samples)
    ]
    correct = [verdicts[i * n_samples : (i + 1) * n_samples] for i in range(len(examples))]
    responses = [texts[i * n_samples : (i + 1) * n_samples] for i in range(len(examples))]
    committed = sum(sum(1 for s in row if s >= 0) for row in steps)
    pass_at = {
        k: sum(pass_at_k(n_samples, sum(c), k) for c in correct) / max(1, len(correct))
        for k in ks
        if k <= n_samples
    }
    return TaskResult(
        task=task.name,
        n_examples=len(examples),
        n_samples=n_samples,
        accuracy=sum(verdicts) / max(1, len(verdicts)),
        pass_at=pass_at,
        nfe_per_answer=nfe_rows / max(1, len(prompts)),
        tokens_per_forward=committed / max(1, nfe_rows),
        correct=correct,
        responses=responses,
        seconds=seconds,
    )
