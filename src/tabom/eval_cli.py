"""``tabom eval``: a model's accuracy and pass@k on tasks under diffusion decoding (DESIGN §7).

An eval set is ``SPEC`` (seeded generated instances) or ``SPEC@FILE`` (a data file read by the
task's loader, e.g. ``countdown:n_operands=4@data/cd4_test.jsonl``). Results go to a table on
stdout and, when ``output`` is set, to JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tabom.decoding import DecodeConfig
from tabom.evaluate import TaskResult, evaluate_task
from tabom.models import DEFAULT_MODEL, load_model
from tabom.tasks import NEW_DOMAIN, OLD_DOMAIN, make_task
from tabom.tasks.base import Example, Task


@dataclass
class EvalConfig:
    """Config of ``tabom eval``.

    Attributes:
        model: shipped model name (``tiny-base``) or a local model folder.
        tasks: eval sets, ``SPEC`` or ``SPEC@FILE``.
        n_examples: problems per set (a seeded subset of a file; generated sets default to 200).
            The default sets are the shipped model's old and new domain.
        n_samples: answers per problem (pass@k needs n_samples >= k; use temperature > 0).
        ks: the k of pass@k.
        tokens_per_step: response tokens committed per forward (1 = the paper's setting).
        block_length: semi-autoregressive block length (None = one block).
        score: unmasking order: confidence, margin, entropy or random.
        temperature: proposal temperature (0 = argmax).
        top_p: nucleus filter of the proposal.
        seed: seed of example selection and sampling.
        batch_size: prompts per forward.
        output: write results as JSON here.
        num_threads: torch CPU threads (0 = default).
    """

    model: str = DEFAULT_MODEL
    tasks: list[str] = field(default_factory=lambda: [OLD_DOMAIN, NEW_DOMAIN])
    n_examples: int | None = None
    n_samples: int = 1
    ks: list[int] = field(default_factory=lambda: [1])
    tokens_per_step: int = 1
    block_length: int | None = None
    score: Literal["confidence", "margin", "entropy", "random"] = "confidence"
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 64
    output: str | None = None
    num_threads: int = 0

    def __post_init__(self) -> None:
        if any(k > self.n_samples for k in self.ks):
            raise ValueError(f"ks {self.ks}: every k must be <= n_samples ({self.n_samples})")
        if self.n_samples > 1 and self.temperature == 0:
            raise ValueError("n_samples > 1 with temperature 0 decodes the same answer n times")
        if self.tokens_per_step < 1:
            raise ValueError(f"tokens_per_step must be >= 1, got {self.tokens_per_step}")


def load_eval_set(spec: str, n: int | None, seed: int) -> tuple[Task, list[Example]]:
    """``SPEC`` -> n generated examples; ``SPEC@FILE`` -> the file (a seeded subset of n)."""
    task_spec, _, path = spec.partition("@")
    task = make_task(task_spec)
    gen = torch.Generator().manual_seed(seed)
    if not path:
        return task, task.generate(n or 200, gen)
    if not Path(path).is_file():
        raise FileNotFoundError(f"eval set {spec!r}: no such file {path}")
    examples = task.load(path)  # type: ignore[attr-defined]
    if n is not None and n < len(examples):
        keep = torch.randperm(len(examples), generator=gen)[:n].sort().values.tolist()
        examples = [examples[i] for i in keep]
    return task, examples


def format_table(results: dict[str, TaskResult]) -> str:
    """A markdown table of accuracy, pass@k and decode statistics."""
    ks = sorted({k for r in results.values() for k in r.pass_at})
    head = ["set", "n", "samples", "accuracy", *[f"pass@{k}" for k in ks], "NFE/answer", "tok/fwd"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [name, str(r.n_examples), str(r.n_samples), f"{r.accuracy:.3f}"]
        cells += [f"{r.pass_at[k]:.3f}" if k in r.pass_at else "-" for k in ks]
        cells += [f"{r.nfe_per_answer:.1f}", f"{r.tokens_per_forward:.2f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def run_eval_command(cfg: EvalConfig) -> int:
    """Evaluate ``cfg.model`` on every set; print the table, write JSON if asked."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    dlm = load_model(cfg.model)
    decode_cfg = DecodeConfig(
        gen_length=cfg.tokens_per_step * 8,
        steps=8,
        block_length=cfg.block_length,
        score=cfg.score,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
    )
    results: dict[str, TaskResult] = {}
    for spec in cfg.tasks:
        task, examples = load_eval_set(spec, cfg.n_examples, cfg.seed)
        results[spec] = evaluate_task(
            dlm,
            task,
            examples,
            decode_cfg,
            n_samples=cfg.n_samples,
            ks=tuple(cfg.ks),
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            progress=True,
        )
    print(format_table(results))
    if cfg.output:
        payload = {
            "config": asdict(cfg),
            "results": {k: {f: v for f, v in asdict(r).items()} for k, r in results.items()},
        }
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(json.dumps(payload, indent=1) + "\n")
    return 0
