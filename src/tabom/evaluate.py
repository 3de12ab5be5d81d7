"""Evaluation under full diffusion decoding: accuracy, pass@k, decode statistics (DESIGN §7).

Answers are decoded with :func:`tabom.decoding.decode` (one token per step by default, the
paper's setting) and checked by the task's verifier. pass@k uses the unbiased estimator of
Chen et al. (2021) from n samples per problem: 1 - C(n - c, k) / C(n, k).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from tabom.batch_decode import decode_texts
from tabom.decoding import DecodeConfig
from tabom.errors import TabomError
from tabom.metrics import kendall_tau_b, pass_at_k
from tabom.models.base import DiffusionLM
from tabom.seeding import offset
from tabom.tasks.base import Example, Task, verify_all


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
        responses: ``[problem][sample]`` response texts.
        decoding_orders: ``[answer]`` the decode step of each response position (-1 = never),
            answers in problem-major order (the order of :func:`tau_to_order`).
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
    decoding_orders: list[list[int]] = field(default_factory=list, repr=False)
    seconds: float = 0.0


def budget_for(task: Task, cfg: DecodeConfig) -> DecodeConfig:
    """The decode settings ``cfg`` at the task's response length (:meth:`DecodeConfig.resolve`).

    Raises:
        TabomError: ``cfg`` fixes another ``gen_length``, or its block length does not divide
            the task's response length (names the task).
    """
    T = task.gen_length
    if cfg.gen_length is not None and cfg.gen_length != T:
        raise TabomError(
            f"task {task.name!r}: decode config of gen_length {cfg.gen_length}, but the "
            f"task's response length is {T}; leave decode.gen_length unset to take the task's"
        )
    try:
        return cfg.resolve(T)
    except ValueError as e:
        raise TabomError(f"task {task.name!r}: {e}") from None


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
    desc: str | None = None,
) -> TaskResult:
    """Accuracy and pass@k of ``dlm`` on ``examples`` under the decode budget ``cfg``.

    ``desc`` labels the progress bar (default: the task's name).

    ``cfg`` gives the score, temperature and tokens per step; the response length comes from
    the task (:func:`budget_for`). With ``n_samples > 1`` use a temperature above 0. Forwards
    per answer count each row's own (:attr:`~tabom.decoding.DecodeOutput.forwards_per_row`).
    """
    decode_cfg = budget_for(task, cfg)
    gen = torch.Generator(device=dlm.device).manual_seed(seed)
    prompts = [ex.prompt for ex in examples for _ in range(n_samples)]
    t0 = time.perf_counter()
    texts, out = decode_texts(
        dlm,
        prompts,
        decode_cfg,
        generator=gen,
        batch_size=batch_size,
        progress=progress,
        desc=desc or task.name,
    )
    seconds = time.perf_counter() - t0
    verdicts = verify_all(  # a code / math task checks them in parallel
        task,
        [(ex, texts[i * n_samples + j]) for i, ex in enumerate(examples) for j in range(n_samples)],
    )
    correct = [verdicts[i * n_samples : (i + 1) * n_samples] for i in range(len(examples))]
    responses = [texts[i * n_samples : (i + 1) * n_samples] for i in range(len(examples))]
    forwards = out.forwards_per_row  # (N,)
    committed = int((out.decoding_order >= 0).sum())
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
        nfe_per_answer=float(forwards.float().mean()),
        tokens_per_forward=committed / max(1, int(forwards.sum())),
        correct=correct,
        responses=responses,
        decoding_orders=out.decoding_order.tolist(),
        seconds=seconds,
    )


def make_eval_sets(specs: list[str], n: int, seed: int) -> dict[str, tuple[Task, list[Example]]]:
    """The periodic-eval sets of ``tabom pretrain`` / ``tabom train``: ``n`` instances of each
    task spec, drawn in order from one generator seeded ``seed + 10_000`` (apart from the
    training data of ``seed``)."""
    from tabom.tasks import make_task

    gen = torch.Generator().manual_seed(offset(seed, 10_000))  # tabom.seeding: pinned
    out: dict[str, tuple[Task, list[Example]]] = {}
    for spec in specs:
        task = make_task(spec)
        out[spec] = (task, task.generate(n, gen))
    return out


def greedy_accuracy(
    dlm: DiffusionLM, eval_sets: dict[str, tuple[Task, list[Example]]]
) -> dict[str, float]:
    """Greedy accuracy at one token per step (confidence order) on each eval set.

    Puts the model in eval mode (the caller switches it back to train).
    """
    cfg = DecodeConfig(score="confidence", tokens_per_step=1)
    dlm.model.eval()
    return {spec: evaluate_task(dlm, t, exs, cfg).accuracy for spec, (t, exs) in eval_sets.items()}


def tau_to_order(
    decoding_orders: list[list[int]], reference: list[list[int]], *, min_rank: int = 0
) -> list[float]:
    """Kendall τ-b of each answer's decode order against a reference order (DESIGN §7).

    Per answer, over the response positions whose reference rank is ``>= min_rank`` and that
    were decoded: τ-b between the decode steps and the reference ranks (ties in either count
    as ties). The reference is the task's oracle order (``task.oracle_rank``) or another
    model's decode steps on the same prompts.

    Args:
        decoding_orders: ``[answer][position]`` decode steps (-1 = never decoded).
        reference: ``[answer][position]`` reference ranks, the same shape; ranks below
            ``min_rank`` (e.g. -1: not ranked) are left out.
        min_rank: the lowest reference rank that counts.

    Returns:
        One τ per answer; NaN where fewer than two positions count or all are tied.

    Raises:
        ValueError: the two lists differ in length or in an answer's length.
    """
    if len(decoding_orders) != len(reference):
        raise ValueError(f"{len(decoding_orders)} decode orders but {len(reference)} references")
    out = []
    for i, (d, r) in enumerate(zip(decoding_orders, reference, strict=True)):
        if len(d) != len(r):
            raise ValueError(f"answer {i}: {len(d)} decode steps but {len(r)} reference ranks")
        keep = [j for j in range(len(d)) if r[j] >= min_rank and d[j] >= 0]
        out.append(kendall_tau_b([d[j] for j in keep], [r[j] for j in keep]))
    return out
