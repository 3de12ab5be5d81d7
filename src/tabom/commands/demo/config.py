"""Config of ``tabom demo`` (and the base of ``tabom sweep``): :class:`DemoConfig`.

The decode settings of self-distillation and the loss settings of every training run are the
components' own groups (``--decode.*``, ``--loss.*``) and enter the stage keys whole. A
testbed (``--testbed addition | sudoku | longadd``), a protocol (``--protocol single | full``)
and ``--quick`` choose presets, YAML files of fields (:data:`PRESETS`, ``configs/demo``) under
what the user sets in a ``--config`` file or by flags (:meth:`DemoConfig.presets`).
An *arm* is an objective name, or ``tabom-VARIANT`` for ``tabom`` with ``loss.rank_loss``
VARIANT (:func:`parse_arm`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, get_args, get_type_hints

from tabom.config import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    ConfigError,
    check_ranges,
    merge_trees,
    read_yaml,
)
from tabom.decoding import DecodeConfig
from tabom.likelihood import LikelihoodConfig
from tabom.losses import RANK_LOSSES
from tabom.models import DEFAULT_MODEL
from tabom.objectives import GROUND_TRUTH_OBJECTIVES, OBJECTIVES, LossConfig
from tabom.tasks import NEW_DOMAIN, OLD_DOMAIN

MODELS = ("base", "sft", "traj-sft", "td", "tabom")
"""The default arms, base first (the report orders rows as ``["base", *objectives]``)."""
ALL_ARMS = [
    "sft",
    "traj-sft",
    "td",
    "tabom",
    *(f"tabom-{v}" for v in RANK_LOSSES if v != "hinge"),
    "puma",
    "papl",
    "tad",
    "sft-covered",
    "puma-covered",
    "papl-covered",
]
"""Every objective and every ranking variant (``tabom`` is the hinge, Eq. 8), ``tad``
(arXiv 2605.09536), and the ground-truth controls on the covered prompts only
(``OBJECTIVE-covered``, :data:`COVERED`)."""
COVERED = "-covered"
"""Suffix of a ground-truth arm (``sft``, ``puma``, ``papl``) trained on the ground truth of
only the prompts that the verified trajectories cover (the trajectory arms' prompts): the
same-data control that separates the objective from the coverage (issue 19)."""
PRESETS = resources.files(__package__).joinpath("presets")
"""The demo's presets, shipped in the package (``configs/demo`` in a clone points here): one
YAML file of :class:`DemoConfig` fields per testbed (``testbeds/NAME.yaml``), per protocol
(``protocols/NAME.yaml``), per testbed under a protocol (``TESTBED-PROTOCOL.yaml``, when the
pair needs its own values) and ``quick.yaml``. Each file names its own choice, so as a
``--config`` file it is that preset (``--config configs/demo/testbeds/sudoku.yaml`` is
``--testbed sudoku``)."""


def read_preset(name: str) -> dict[str, Any]:
    """The values of one preset file (``testbeds/sudoku``, ``quick``); ``{}`` when there is none.

    Raises:
        ConfigError: the file is not a mapping of fields (names the file).
    """
    preset = PRESETS.joinpath(*f"{name}.yaml".split("/"))
    if not preset.is_file():
        return {}
    with resources.as_file(preset) as path:
        values = read_yaml(path) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of DemoConfig fields")
    return values


def _chosen(given: dict[str, Any], name: str) -> Any:
    """The preset a choosing field names, as the user gave it (YAML or flag), or its default;
    a value that is not one of its choices gives the default here (the field's own check
    refuses it, naming the flag)."""
    default = getattr(DemoConfig, name)
    value = given.get(name, default)
    if isinstance(default, bool):
        return value in (True, "true", "True", "1", "yes", 1)
    choices = get_args(get_type_hints(DemoConfig)[name])
    return value if value in choices else default


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

    ``testbed``, ``protocol`` and ``quick`` choose presets (:meth:`presets`), applied where the
    config is built from YAML and flags; in Python, ``build_config(DemoConfig, {"testbed":
    "sudoku", ...})`` (:func:`tabom.config.build_config`) does the same, while ``DemoConfig(...)``
    takes its fields as given.

    Attributes:
        output_dir: stage folders, ``report.md`` and the plots.
        quick: a smoke run (small sets, 2 seeds, under 2 minutes): the preset
            ``configs/demo/quick.yaml`` for every field not set (``output_dir`` runs/demo-quick).
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
        objectives: the arms compared (each trained from the base): objective names
            (``sft``, ``traj-sft``, ``td``, ``tabom``, ``puma``, ``papl``, ``tad``),
            ``tabom-VARIANT`` (``tabom`` with ``loss.rank_loss`` VARIANT, e.g.
            ``tabom-logistic-sg``) or ``sft-covered`` / ``puma-covered`` / ``papl-covered``
            (the ground-truth objective on the prompts the verified trajectories cover).
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
        testbed: ``addition`` (the embedded default), ``sudoku`` or ``longadd`` (49-token
            answers, issue 19): the preset ``configs/demo/testbeds/TESTBED.yaml`` for every
            field not set.
        protocol: ``single`` (one setting, the seeds above) or ``full``
            (``configs/demo/protocols/full.yaml``: every arm, 5 seeds, the tuning grids, chosen
            on the validation split).
        heldout: where the new-domain validation and test problems come from: ``None`` =
            generated by ``new_task``; ``sudoku-real`` = the shipped real Sudoku files.
        stratum: the ``difficulty`` key the new-domain test accuracy is split by (addition:
            the longest carry chain; ``None``: no split).
        hard_min: the hard stratum is ``stratum >= hard_min``.
        oracle_min_rank: τ to the task's oracle order counts positions of oracle rank >= this
            (Sudoku: 1, leaving out the copied givens).
        tune_lr: the tuning points of arms without a ranking term (learning rates); empty =
            ``lr`` alone.
        tune_rank_weight: the tuning points of ranking arms (λ, at ``lr``); empty =
            ``loss.rank_weight`` alone. Both grids must be the same size (the same budget).
        likelihood: the Monte-Carlo NELBO of the capability test (``--likelihood.n_samples``
            ...; :class:`tabom.likelihood.LikelihoodConfig`): the reference responses of the
            new- and old-domain test sets, beside accuracy under three decoding orders.
        eval_order: ``reverse`` takes the training runs (with their validation) and then the
            evaluations last first: a second ``tabom demo`` with the same settings and
            ``output_dir`` started beside the first shares the work. Each stage is locked while
            it runs (a process that reaches one the other is running waits for it, then reads
            its result); results and report are the same as one process's.
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
    testbed: Literal["addition", "sudoku", "longadd"] = "addition"
    protocol: Literal["single", "full"] = "single"
    heldout: Literal["sudoku-real"] | None = None
    stratum: str | None = "carry_chain"
    hard_min: int = 3
    oracle_min_rank: int = 0
    tune_lr: list[float] = field(default_factory=list, metadata=POSITIVE)
    tune_rank_weight: list[float] = field(default_factory=list, metadata=POSITIVE)
    eval_order: Literal["forward", "reverse"] = "forward"
    likelihood: LikelihoodConfig = field(default_factory=lambda: LikelihoodConfig(n_samples=16))

    def __post_init__(self) -> None:
        check_ranges(self)  # a config built in Python; flags and YAML are checked before
        for arm in self.objectives:
            parse_arm(arm)
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives: {self.objectives} names an arm twice")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        if any(k > self.n_samples for k in self.ks):
            raise ValueError(f"ks {self.ks}: every k must be <= n_samples ({self.n_samples})")
        if self.pass_examples > self.test_examples:
            raise ValueError("pass_examples must be <= test_examples (a prefix of the test set)")
        if (
            self.tune_lr
            and self.tune_rank_weight
            and len(self.tune_lr) != len(self.tune_rank_weight)
        ):
            raise ValueError(
                f"tune_lr {self.tune_lr} / tune_rank_weight {self.tune_rank_weight}: every arm "
                "gets the same tuning budget, give both grids the same number of points"
            )

    @classmethod
    def presets(cls, given: dict[str, Any]) -> dict[str, Any]:
        """The preset values under what the user set (``given``, as in the YAML / flags):
        ``quick.yaml`` (with ``quick``) < the protocol's < the testbed's < the pair's files;
        ``output_dir`` runs/demo[-TESTBED][-PROTOCOL][-quick] unless given.

        The config layer calls it (:func:`tabom.config.build_config`): a value the user set
        wins even when it equals the default; a ``DemoConfig(...)`` built directly takes its
        fields as given (no preset).
        """
        testbed, protocol = _chosen(given, "testbed"), _chosen(given, "protocol")
        quick = _chosen(given, "quick")
        tree: dict[str, Any] = read_preset("quick") if quick else {}
        for name in (f"protocols/{protocol}", f"testbeds/{testbed}", f"{testbed}-{protocol}"):
            tree = merge_trees(tree, read_preset(name))
        suffix = "" if testbed == "addition" else f"-{testbed}"
        suffix += "" if protocol == "single" else f"-{protocol}"
        tree["output_dir"] = f"runs/demo{suffix}{'-quick' if quick else ''}"
        return tree

    def arm_points(self, arm: str) -> list[dict[str, Any]]:
        """The tuning points of one arm: ``[{"rank_weight": λ} ...]`` for ranking arms,
        ``[{"lr": lr} ...]`` for the others; ``[{}]`` when its grid is empty."""
        objective, _ = parse_arm(arm)
        if objective == "tabom":
            return [{"rank_weight": v} for v in self.tune_rank_weight] or [{}]
        return [{"lr": v} for v in self.tune_lr] or [{}]


def is_covered(arm: str) -> bool:
    """Whether ``arm`` is a ground-truth arm on the covered prompts only (``sft-covered``)."""
    return arm.endswith(COVERED) and arm.removesuffix(COVERED) in GROUND_TRUTH_OBJECTIVES


def parse_arm(arm: str) -> tuple[str, dict[str, Any]]:
    """``(objective, loss overrides)`` of an arm: an objective name, ``tabom-VARIANT``, or
    ``OBJECTIVE-covered`` for a ground-truth objective (:func:`is_covered`; the data differ,
    not the loss).

    Raises:
        ValueError: neither an objective nor ``tabom-`` + a name of ``RANK_LOSSES`` nor a
            ground-truth objective + ``-covered``.
    """
    if arm in OBJECTIVES:
        return arm, {}
    if is_covered(arm):
        return arm.removesuffix(COVERED), {}
    variant = arm.removeprefix("tabom-")
    if arm.startswith("tabom-") and variant in RANK_LOSSES:
        return "tabom", {"rank_loss": variant}
    raise ValueError(
        f"objectives: {arm!r} is neither an objective ({', '.join(OBJECTIVES)}) nor "
        f"tabom-VARIANT with VARIANT in {', '.join(RANK_LOSSES)}, nor "
        f"{'/'.join(GROUND_TRUTH_OBJECTIVES)} + '{COVERED}'"
    )


__all__ = [
    "MIN_LR_RATIO",
    "ALL_ARMS",
    "COVERED",
    "MODELS",
    "PRESETS",
    "TRAIN_SETTINGS",
    "WARMUP_STEPS",
    "WEIGHT_DECAY",
    "DemoConfig",
    "is_covered",
    "parse_arm",
    "read_preset",
]
