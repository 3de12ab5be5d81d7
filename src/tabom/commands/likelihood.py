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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tabom.config import AT_LEAST_1, NON_NEGATIVE, in_range
from tabom.errors import TabomError
from tabom.likelihood import LikelihoodConfig
from tabom.likelihood_sets import (
    SetLikelihood,
    answer_likelihood,
    format_likelihood,
    text_likelihood,
)
from tabom.models import DEFAULT_MODEL, load_model
from tabom.models.lora import merge_adapter
from tabom.tasks import NEW_DOMAIN, OLD_DOMAIN, load_examples, make_task


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


__all__ = ["LikelihoodRunConfig", "run_likelihood"]
