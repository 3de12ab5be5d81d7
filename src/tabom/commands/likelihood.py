"""``tabom likelihood``: the NELBO per token and the perplexity bound of reference answers or a
text file, with their Monte-Carlo standard errors (DESIGN §7, "Likelihood").

Per eval set (``SPEC`` or ``SPEC@FILE``, as ``tabom eval``): the NELBO of each problem's
reference response given its prompt (the answer, the backend's stop token and the EOS tail to
the task's response length: what the model is trained on and decodes; ``--response answer``
scores the answer and one EOS only). Per text file (``--texts FILE``): the NELBO of the whole
text over disjoint windows of ``max_length`` (lm-eval's rolling windows). The estimator is
:func:`tabom.likelihood.estimate_nelbo` (``--likelihood.n_samples``, ``--likelihood.draws``).
Run: ``tabom likelihood --model runs/demo/train/tabom/default/seed0/model --texts notes.txt``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tabom.config import AT_LEAST_1, NON_NEGATIVE, in_range
from tabom.errors import TabomError
from tabom.likelihood import (
    LikelihoodConfig,
    NelboEstimate,
    estimate_nelbo,
    per_token,
    response_ids,
    rolling_windows,
)
from tabom.models import DEFAULT_MODEL, load_model
from tabom.models.base import DiffusionLM
from tabom.models.lora import merge_adapter
from tabom.tasks import NEW_DOMAIN, OLD_DOMAIN, load_examples, make_task
from tabom.tasks.base import Example, Task


@dataclass
class LikelihoodRunConfig:
    """Config of ``tabom likelihood``.

    Attributes:
        model: shipped model name or a local model folder.
        adapter: a peft LoRA adapter folder merged into ``model`` (``None``: none).
        tasks: eval sets whose reference answers are scored, ``SPEC`` or ``SPEC@FILE``
            (``--tasks none``: text files only).
        texts: plain-text files scored whole (rolling windows of ``max_length``).
        n_examples: problems per set (generated sets: this many; files: a seeded subset).
        response: ``canvas`` = answer + stop token + EOS tail to the task's response length
            (what the model decodes); ``answer`` = the answer, stop token and one EOS.
        likelihood: the estimator's settings (``--likelihood.n_samples 128`` ...;
            :class:`tabom.likelihood.LikelihoodConfig`).
        max_length: longest window (default: the model's positions, at most 4096).
        seed: seed of example selection (the mask draws: ``likelihood.seed``).
        output: write the results as JSON here.
        num_threads: torch CPU threads (0 = torch's default).
    """

    model: str = DEFAULT_MODEL
    adapter: str | None = None
    tasks: list[str] | None = field(default_factory=lambda: [OLD_DOMAIN, NEW_DOMAIN])
    texts: list[str] = field(default_factory=list)
    n_examples: int = field(default=200, metadata=AT_LEAST_1)
    response: Literal["canvas", "answer"] = "canvas"
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)
    max_length: int | None = field(default=None, metadata=in_range(2))
    seed: int = field(default=0, metadata=NON_NEGATIVE)
    output: str | None = None
    num_threads: int = field(default=1, metadata=NON_NEGATIVE)

    def __post_init__(self) -> None:
        if not (self.tasks or self.texts):
            raise ValueError("tasks / texts: give at least one eval set or text file")


@dataclass
class SetLikelihood:
    """The likelihood summary of one set (reference answers) or text file.

    Attributes:
        name: the spec or file.
        n_sequences: continuations scored (problems, or windows of a text).
        n_tokens: tokens scored.
        nelbo_per_token: Σ NELBO / Σ tokens (nats), a bound on the per-token NLL.
        se: its Monte-Carlo standard error.
        ppl_bound: exp(nelbo_per_token), the perplexity bound.
        nelbo_per_sequence: mean NELBO per continuation (nats).
        per_item: each continuation's NELBO (problems in set order; windows in text order).
    """

    name: str
    n_sequences: int
    n_tokens: int
    nelbo_per_token: float
    se: float
    ppl_bound: float
    nelbo_per_sequence: float
    per_item: list[float] = field(repr=False, default_factory=list)


def summarise(name: str, est: NelboEstimate) -> SetLikelihood:
    """One :class:`SetLikelihood` from the estimates of its continuations."""
    value, se, ppl = per_token(est)
    return SetLikelihood(
        name=name,
        n_sequences=int(est.nelbo.numel()),
        n_tokens=int(est.n_tokens.sum()),
        nelbo_per_token=value,
        se=se,
        ppl_bound=ppl,
        nelbo_per_sequence=float(est.nelbo.mean()) if est.nelbo.numel() else math.nan,
        per_item=est.nelbo.tolist(),
    )


def answer_pairs(
    dlm: DiffusionLM, task: Task, examples: list[Example], response: str = "canvas"
) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, reference response ids)`` of each example (names the task on error)."""
    length = task.gen_length if response == "canvas" else None
    out = []
    for ex in examples:
        try:
            out.append((dlm.encode_prompt(ex.prompt), response_ids(dlm, ex.answer, length)))
        except ValueError as e:
            raise TabomError(f"task {task.name!r}, example {ex.id}: {e}") from None
    return out


def answer_likelihood(
    dlm: DiffusionLM,
    task: Task,
    examples: list[Example],
    cfg: LikelihoodConfig,
    *,
    response: str = "canvas",
    name: str | None = None,
) -> SetLikelihood:
    """The NELBO of the reference responses of ``examples`` (mask draws seeded ``cfg.seed``)."""
    est = estimate_nelbo(
        dlm,
        answer_pairs(dlm, task, examples, response),
        cfg,
        mask_token_id=dlm.mask_token_id,
        pad_token_id=dlm.spec.pad_token_id,
    )
    return summarise(name or task.name, est)


def text_likelihood(
    dlm: DiffusionLM, path: str, cfg: LikelihoodConfig, max_length: int
) -> SetLikelihood:
    """The NELBO of a whole text file over rolling windows.

    Raises:
        TabomError: the file is missing, empty or not UTF-8 (names it).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TabomError(f"texts: cannot read {path}: {e}") from None
    tokens = dlm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not tokens:
        raise TabomError(f"texts: {path} holds no tokens (empty file)")
    bos = getattr(dlm.tokenizer, "bos_token_id", None)
    prefix = int(bos) if bos is not None else dlm.spec.eos_token_id
    est = estimate_nelbo(
        dlm,
        rolling_windows(tokens, prefix, max_length),
        cfg,
        mask_token_id=dlm.mask_token_id,
        pad_token_id=dlm.spec.pad_token_id,
        max_length=max_length,
    )
    return summarise(path, est)


def format_likelihood(rows: list[SetLikelihood]) -> str:
    """A markdown table: NELBO per token ± SE and the perplexity bound with a 95% interval."""
    lines = [
        "| set | sequences | tokens | NELBO/token (nats) ± MC s.e. | perplexity bound [95% MC] "
        "| NELBO/sequence |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = math.exp(r.nelbo_per_token - 2 * r.se), math.exp(r.nelbo_per_token + 2 * r.se)
        lines.append(
            f"| {r.name} | {r.n_sequences} | {r.n_tokens} | {r.nelbo_per_token:.4f} ± "
            f"{r.se:.4f} | {r.ppl_bound:.3f} [{lo:.3f}, {hi:.3f}] | {r.nelbo_per_sequence:.3f} |"
        )
    return "\n".join(lines)


def run_likelihood(cfg: LikelihoodRunConfig) -> int:
    """Score every set and text; print the table, write JSON if asked."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    for path in cfg.texts:  # before loading the model
        if not Path(path).is_file():
            raise TabomError(f"texts: no such file {path}")
    dlm = load_model(cfg.model)
    if cfg.adapter is not None:
        dlm = merge_adapter(dlm, cfg.adapter)
    positions = getattr(dlm.model.config, "max_position_embeddings", None) or 4096
    max_length = cfg.max_length or min(int(positions), 4096)
    rows: list[SetLikelihood] = []
    for spec in cfg.tasks or []:
        task_spec, _, path = spec.partition("@")
        task = make_task(task_spec)
        gen = torch.Generator().manual_seed(cfg.seed)
        if path:
            if not Path(path).is_file():
                raise TabomError(f"tasks: {spec!r}: no such file {path}")
            examples = load_examples(task_spec, path)
            if cfg.n_examples < len(examples):
                keep = torch.randperm(len(examples), generator=gen)[: cfg.n_examples]
                examples = [examples[i] for i in keep.sort().values.tolist()]
        else:
            examples = task.generate(cfg.n_examples, gen)
        rows.append(
            answer_likelihood(dlm, task, examples, cfg.likelihood, response=cfg.response, name=spec)
        )
    for path in cfg.texts:
        rows.append(text_likelihood(dlm, path, cfg.likelihood, max_length))
    lk = cfg.likelihood
    print(
        f"NELBO of {cfg.model}: {lk.n_samples} Monte-Carlo samples per sequence ({lk.form} form, "
        f"{lk.draws} draws); responses: {cfg.response}; a bound on the NLL under a uniformly "
        "random decode order"
    )
    print(format_likelihood(rows))
    if cfg.output:
        payload = {"config": asdict(cfg), "results": [asdict(r) for r in rows]}
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"\nsaved: {cfg.output}")
    return 0


__all__ = [
    "LikelihoodRunConfig",
    "SetLikelihood",
    "answer_likelihood",
    "answer_pairs",
    "format_likelihood",
    "run_likelihood",
    "summarise",
    "text_likelihood",
]
