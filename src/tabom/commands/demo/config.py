"""Config of ``tabom demo`` (and the base of ``tabom sweep``): :class:`DemoConfig`.

The decode settings of self-distillation and the loss settings of every training run are the
components' own groups (``--decode.*``, ``--loss.*``) and enter the stage keys whole.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tabom.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE
from tabom.decoding import DecodeConfig
from tabom.models import DEFAULT_MODEL
from tabom.objectives import OBJECTIVES, LossConfig
from tabom.tasks import NEW_DOMAIN, OLD_DOMAIN

MODELS = ("base", "sft", "traj-sft", "td", "tabom")
QUICK: dict[str, Any] = {
    "output_dir": "runs/demo-quick",
    "distill_prompts": 200,
    "seeds": [0, 1],
    "test_examples": 100,
    "val_examples": 50,
    "old_examples": 100,
    "pass_examples": 40,
    "n_samples": 8,
    "ks": [1, 8],
    "align_samples": 4,
}
"""What ``--quick`` sets, for every field still at its default."""
WARMUP_STEPS = 5
"""Linear warmup steps of every training run."""
MIN_LR_RATIO = 0.1
"""The cosine schedule ends at this share of the peak lr."""
WEIGHT_DECAY = 0.01
"""AdamW weight decay of every training run."""
TRAIN_SETTINGS = ("epochs", "batch_size", "lr")
"""The scalar :class:`DemoConfig` fields a training run depends on besides the whole ``loss``
group (and objective, seed, steps, data): with ``asdict(cfg.loss)`` the key of every ``train``
stage, in the demo and in ``tabom sweep``."""


@dataclass
class DemoConfig:
    """Config of ``tabom demo``. Defaults: the embedded default run (≈ 10 min on 2 CPU cores).

    Attributes:
        output_dir: stage folders, ``report.md`` and the plots.
        quick: a smoke run (small sets, 2 seeds, under 2 minutes): every field below still at
            its default takes the value in :data:`QUICK` (``output_dir`` runs/demo-quick).
        model: the base model (shipped name or folder).
        new_task: the new domain (distillation prompts, test and validation sets).
        old_task: the old domain (forgetting).
        distill_prompts: distillation prompts (the training prompts of every objective).
        distill_samples: answers decoded per prompt (the ``decode`` settings); the verified
            ones are the trajectories.
        decode: the decode settings of self-distillation (``--decode.temperature``,
            ``--decode.score`` ...; :class:`tabom.decoding.DecodeConfig`; default temperature 1,
            one token per step, the task's response length).
        distill_seed: seed of the distillation prompts and samples.
        objectives: post-training objectives compared (each trained from the base).
        seeds: training seeds per objective (data order, masking); the table shows mean ± std.
        epochs: passes over the trajectories; every objective runs the same number of optimizer
            steps, ``epochs × ceil(trajectories / batch_size)``.
        batch_size: sequences per optimizer step.
        lr: peak learning rate (full fine-tuning, :data:`WARMUP_STEPS` warmup steps, cosine
            to :data:`MIN_LR_RATIO` × lr, weight decay :data:`WEIGHT_DECAY`).
        loss: the loss settings of every training run (``--loss.td_window``, ``--loss.rank_ties``
            ...; :class:`tabom.objectives.LossConfig`; default M = W = 3 decode steps).
        test_examples: new-domain test problems (greedy accuracy at every budget).
        val_examples: new-domain validation problems (model choices; never the test set).
        old_examples: old-domain test problems (forgetting and flips).
        pass_examples: the first test problems sampled ``n_samples`` times for pass@k.
        n_samples: samples per problem for pass@k (temperature 1).
        ks: the k of pass@k.
        tokens_per_step: step budgets of the greedy accuracy (1 = full diffusion decoding).
        align_samples: samples per validation prompt for the held-out alignment trajectories.
        split_seed: seed of the test and validation sets.
        num_threads: torch CPU threads (1 is fastest for the tiny model on a busy 2-core CPU).
        progress: progress bars.
    """

    output_dir: str = "runs/demo"
    quick: bool = False
    model: str = DEFAULT_MODEL
    new_task: str = NEW_DOMAIN
    old_task: str = OLD_DOMAIN
    distill_prompts: int = field(default=1500, metadata=AT_LEAST_1)
    distill_samples: int = field(default=8, metadata=AT_LEAST_1)
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig(temperature=1.0))
    distill_seed: int = field(default=0, metadata=NON_NEGATIVE)
    objectives: list[str] = field(default_factory=lambda: ["sft", "traj-sft", "td", "tabom"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata=NON_NEGATIVE)
    epochs: int = field(default=5, metadata=AT_LEAST_1)
    batch_size: int = field(default=32, metadata=AT_LEAST_1)
    lr: float = field(default=5e-4, metadata=POSITIVE)
    loss: LossConfig = field(default_factory=lambda: LossConfig(td_window=3, rank_window=3))
    test_examples: int = field(default=500, metadata=AT_LEAST_1)
    val_examples: int = field(default=300, metadata=AT_LEAST_1)
    old_examples: int = field(default=500, metadata=AT_LEAST_1)
    pass_examples: int = field(default=200, metadata=AT_LEAST_1)
    n_samples: int = field(default=16, metadata=AT_LEAST_1)
    ks: list[int] = field(default_factory=lambda: [1, 4, 16], metadata=AT_LEAST_1)
    tokens_per_step: list[int] = field(default_factory=lambda: [1, 2, 3], metadata=AT_LEAST_1)
    align_samples: int = field(default=8, metadata=AT_LEAST_1)
    split_seed: int = field(default=1234, metadata=NON_NEGATIVE)
    num_threads: int = field(default=1, metadata=NON_NEGATIVE)
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad:
            raise ValueError(f"objectives: {bad} are not among {OBJECTIVES}")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        if any(k > self.n_samples for k in self.ks):
            raise ValueError(f"ks {self.ks}: every k must be <= n_samples ({self.n_samples})")
        if self.pass_examples > self.test_examples:
            raise ValueError("pass_examples must be <= test_examples (a prefix of the test set)")

    def resolved(self) -> DemoConfig:
        """With ``quick``: the :data:`QUICK` values for every field still at its default."""
        if not self.quick:
            return self
        defaults = DemoConfig()
        changes = {k: v for k, v in QUICK.items() if getattr(self, k) == getattr(defaults, k)}
        return dataclasses.replace(self, **changes)


__all__ = [
    "MIN_LR_RATIO",
    "MODELS",
    "QUICK",
    "TRAIN_SETTINGS",
    "WARMUP_STEPS",
    "WEIGHT_DECAY",
    "DemoConfig",
]
