"""``tabom demo``: the whole pipeline on the shipped base model, ending in report.md (DESIGN §1, §7).

Stages, each in its own folder under ``output_dir`` with a ``stage.json`` marker (its settings
and result): a rerun with the same settings skips every finished stage.

1. ``splits``: the new-domain test and validation sets and the old-domain test set, drawn with
   fixed seeds and filtered so that no id appears in the distillation prompts (checked).
2. ``distill``: the base model decodes the distillation prompts (temperature 1, one token per
   step) and keeps the verified trajectories; the ground-truth answers of the same prompts are
   the ``sft`` data. ``align``: the same on the validation prompts, for the alignment metric.
3. ``train/OBJECTIVE/seedS``: every objective from the same base, the same number of optimizer
   steps and batch size, for each seed (seeds vary LoRA-free training randomness: data order
   and masking; the trajectory file is shared).
4. ``eval/MODEL``: new-domain greedy accuracy at 1, 2, 3 tokens per step, sampled pass@k,
   old-domain accuracy (per item, for forgetting and flips), validation accuracy, Kendall τ
   alignment and TDS on the held-out trajectories.
5. ``report.md`` + PNG plots (always rewritten): the table (mean ± std over seeds), timings, a
   verdict on each of the paper's three claims.

Run: ``tabom demo`` (about 10 minutes on 2 CPU cores), ``tabom demo --quick`` (under 2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from tabom.config import to_dict
from tabom.eval_cli import budget_config
from tabom.evaluate import evaluate_task
from tabom.metrics import forgetting, trajectory_alignment
from tabom.models import DEFAULT_MODEL, load_model
from tabom.tasks import NEW_DOMAIN, OLD_DOMAIN, make_task
from tabom.tasks.base import Example, Task

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
TRAIN_SETTINGS = (
    "epochs",
    "batch_size",
    "lr",
    "td_window",
    "rank_window",
    "td_cut_range",
    "rank_margin",
    "rank_weight",
)
"""The :class:`DemoConfig` fields a training run depends on (besides objective, seed, steps and
data): part of the key of every ``train`` stage, in the demo and in ``tabom sweep``."""


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
        distill_samples: answers decoded per prompt (temperature ``distill_temperature``);
            the verified ones are the trajectories.
        distill_temperature: proposal temperature of self-distillation.
        distill_seed: seed of the distillation prompts and samples.
        objectives: post-training objectives compared (each trained from the base).
        seeds: training seeds per objective (data order, masking); the table shows mean ± std.
        epochs: passes over the trajectories; every objective runs the same number of optimizer
            steps, ``epochs × ceil(trajectories / batch_size)``.
        batch_size: sequences per optimizer step.
        lr: peak learning rate (full fine-tuning, :data:`WARMUP_STEPS` warmup steps, cosine
            to :data:`MIN_LR_RATIO` × lr, weight decay :data:`WEIGHT_DECAY`).
        td_window: M (decode steps).
        rank_window: W (decode steps).
        td_cut_range: the cut range of time-delay masking, ``design`` (DESIGN §5) or
            ``inclusive`` (the window can reach the last decode step; docs/results.md).
        rank_margin: m.
        rank_weight: λ.
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
    distill_prompts: int = 1500
    distill_samples: int = 8
    distill_temperature: float = 1.0
    distill_seed: int = 0
    objectives: list[str] = field(default_factory=lambda: ["sft", "traj-sft", "td", "tabom"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 5
    batch_size: int = 32
    lr: float = 5e-4
    td_window: int = 3
    rank_window: int = 3
    td_cut_range: Literal["design", "inclusive"] = "design"
    rank_margin: float = 0.1
    rank_weight: float = 1.0
    test_examples: int = 500
    val_examples: int = 300
    old_examples: int = 500
    pass_examples: int = 200
    n_samples: int = 16
    ks: list[int] = field(default_factory=lambda: [1, 4, 16])
    tokens_per_step: list[int] = field(default_factory=lambda: [1, 2, 3])
    align_samples: int = 8
    split_seed: int = 1234
    num_threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        from tabom.objectives import OBJECTIVES

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


# --------------------------------------------------------------------------- stages


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_stage(folder: Path, settings: dict[str, Any], fn: Callable[[Path], Any]) -> dict[str, Any]:
    """Run ``fn(folder)`` unless ``folder/stage.json`` holds a finished run of ``settings``.

    Returns:
        The marker: ``{"key", "settings", "result", "seconds", "cached"}``; a stale or
        unfinished folder is cleared and run again.
    """
    marker = folder / "stage.json"
    key = _key(settings)
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("key") == key:
            return {**done, "cached": True}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    result = fn(folder)
    done = {"key": key, "settings": settings, "result": result}
    done["seconds"] = round(time.perf_counter() - t0, 2)
    tmp = marker.with_name("stage.json.tmp")
    tmp.write_text(json.dumps(done, indent=1) + "\n")
    tmp.replace(marker)
    return {**done, "cached": False}


def draw(task: Task, n: int, seed: int, exclude: set[str]) -> list[Example]:
    """``n`` seeded problems of ``task`` whose ids are not in ``exclude`` (generation order).

    Raises:
        ValueError: fewer than ``n`` are left after the exclusion.
    """
    pool = task.generate(n + 200, torch.Generator().manual_seed(seed))
    kept = [ex for ex in pool if ex.id not in exclude][:n]
    if len(kept) < n:
        raise ValueError(f"{task.name}: only {len(kept)} held-out problems, asked for {n}")
    return kept


def make_splits(cfg: DemoConfig) -> dict[str, list[Example]]:
    """Distillation prompts and held-out sets; no held-out id is a distillation prompt.

    Returns:
        ``{"distill", "test", "val", "old_test"}`` example lists.

    Raises:
        ValueError: too few held-out problems, or two of distill / test / val sharing ids
            (never expected: the filter removes them).
    """
    from tabom.distill import load_prompts

    new, old = make_task(cfg.new_task), make_task(cfg.old_task)
    distill = load_prompts(_distill_config(cfg, "unused"), new)
    taken = {ex.id for ex in distill}
    test = draw(new, cfg.test_examples, cfg.split_seed, taken)
    val = draw(new, cfg.val_examples, cfg.split_seed + 1, taken | {ex.id for ex in test})
    old_test = draw(old, cfg.old_examples, cfg.split_seed, set())
    ids = {
        name: {ex.id for ex in exs}
        for name, exs in [("distill", distill), ("test", test), ("val", val)]
    }
    for a, b in (("distill", "test"), ("distill", "val"), ("test", "val")):
        shared = ids[a] & ids[b]
        if shared:
            raise ValueError(
                f"splits {a!r} and {b!r} share {len(shared)} ids, e.g. {sorted(shared)[:3]}"
            )
    return {"distill": distill, "test": test, "val": val, "old_test": old_test}


def distill_settings(cfg: DemoConfig, splits: dict[str, list[Example]]) -> dict[str, Any]:
    """The key of the ``distill`` stage (the demo's and ``tabom sweep``'s): what it depends on.

    The distillation run's settings and a key of the distillation and validation ids (the
    ground-truth file and the alignment prompts), however the splits were drawn.
    """
    fields = (
        "model",
        "new_task",
        "distill_prompts",
        "distill_samples",
        "distill_temperature",
        "distill_seed",
        "align_samples",
        "num_threads",
    )
    ids = {k: [ex.id for ex in splits[k]] for k in ("distill", "val")}
    return {**{k: getattr(cfg, k) for k in fields}, "split_ids": _key(ids)}


def train_settings(
    cfg: DemoConfig, objective: str, seed: int, steps: int, distill_key: str, **extra: Any
) -> dict[str, Any]:
    """The key of a ``train`` stage: the distill stage's key, the run and :data:`TRAIN_SETTINGS`.

    ``extra``: anything else the run depends on (``tabom sweep``'s data fraction).
    """
    tset = {"distill": distill_key, "objective": objective, "seed": seed, "steps": steps}
    return {**tset, **{k: getattr(cfg, k) for k in TRAIN_SETTINGS}, **extra}


def _distill_config(cfg: DemoConfig, output: str, **over: Any):
    from tabom.distill import DistillConfig

    kwargs = {
        "model": cfg.model,
        "task": cfg.new_task,
        "n_prompts": cfg.distill_prompts,
        "n_samples": cfg.distill_samples,
        "keep": "verified",
        "temperature": cfg.distill_temperature,
        "seed": cfg.distill_seed,
        "prompts_per_batch": 32,
        "output": output,
        "ks": [1, cfg.distill_samples],
        "num_threads": cfg.num_threads,
        "progress": cfg.progress,
    }
    kwargs.update(over)
    return DistillConfig(**kwargs)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _distill_stage(cfg: DemoConfig, splits: dict[str, list[Example]]) -> Callable[[Path], Any]:
    def fn(folder: Path) -> dict[str, Any]:
        from tabom.distill import distill

        # the sft data: ground-truth answers of every distillation prompt (the paper's SFT)
        gt = [{"prompt": ex.prompt, "answer": ex.answer} for ex in splits["distill"]]
        _write_jsonl(folder / "ground_truth.jsonl", gt)
        summary = distill(_distill_config(cfg, str(folder / "trajectories.jsonl")))
        # held-out trajectories of the base model on the validation prompts (alignment)
        val = [{"id": ex.id, "prompt": ex.prompt, **ex.data} for ex in splits["val"]]
        _write_jsonl(folder / "val_prompts.jsonl", val)
        align = distill(
            _distill_config(
                cfg,
                str(folder / "align.jsonl"),
                prompts_file=str(folder / "val_prompts.jsonl"),
                prompt_field="prompt",
                id_field="id",
                n_prompts=None,
                n_samples=cfg.align_samples,
                ks=[1],
                seed=cfg.distill_seed + 1,
            )
        )
        return {
            "trajectories": summary.records,
            "verified_share": summary.verified_share,
            "pass_at": summary.pass_at,
            "align_records": align.records,
        }

    return fn


def _train_stage(cfg: DemoConfig, objective: str, seed: int, steps: int, data: Path):
    def fn(folder: Path) -> dict[str, Any]:
        from tabom.trainer import TrainConfig, train

        sft = objective == "sft"
        tcfg = TrainConfig(
            model=cfg.model,
            data=str(data / ("ground_truth.jsonl" if sft else "trajectories.jsonl")),
            objective=objective,  # type: ignore[arg-type]
            verified_only=not sft,
            output_dir=str(folder),
            max_steps=steps,
            batch_size=cfg.batch_size,
            grad_accum=1,
            lr=cfg.lr,
            weight_decay=WEIGHT_DECAY,
            warmup_steps=WARMUP_STEPS,
            min_lr_ratio=MIN_LR_RATIO,
            lora_rank=0,
            td_window=cfg.td_window,
            rank_window=cfg.rank_window,
            td_cut_range=cfg.td_cut_range,
            rank_margin=cfg.rank_margin,
            rank_weight=cfg.rank_weight,
            mixed_precision="fp32",
            log_every=max(1, steps // 10),
            seed=seed,
            num_threads=cfg.num_threads,
            progress=cfg.progress,
        )
        train(tcfg)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # optimizer state: not needed
        log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        return {"steps": steps, "final_ce": log[-1]["ce"], "final_rank": log[-1]["rank"]}

    return fn


def evaluate_model(
    cfg: DemoConfig, model: str, splits: dict[str, list[Example]], align_file: Path
) -> dict[str, Any]:
    """Every metric of one model (the ``eval/MODEL`` stage's result).

    Returns:
        A JSON-ready dict: ``new`` (greedy accuracy per tokens-per-step), ``nfe``, ``new_correct``,
        ``pass_at`` and ``sampled_accuracy``, ``old`` and ``old_correct``, ``val``, ``alignment``.
    """
    from tabom.trajectory import read_trajectories

    dlm = load_model(model)
    new, old = make_task(cfg.new_task), make_task(cfg.old_task)
    kw: dict[str, Any] = {"batch_size": 256, "seed": cfg.split_seed}
    out: dict[str, Any] = {"new": {}, "nfe": {}}
    for tps in cfg.tokens_per_step:
        r = evaluate_task(dlm, new, splits["test"], budget_config("confidence", tps), **kw)
        out["new"][str(tps)] = r.accuracy
        out["nfe"][str(tps)] = r.nfe_per_answer
        if tps == cfg.tokens_per_step[0]:
            out["new_correct"] = [c[0] for c in r.correct]
    sampled = evaluate_task(
        dlm,
        new,
        splits["test"][: cfg.pass_examples],
        budget_config("confidence", 1, temperature=1.0),
        n_samples=cfg.n_samples,
        ks=tuple(cfg.ks),
        **kw,
    )
    out["pass_at"] = {str(k): v for k, v in sampled.pass_at.items()}
    out["sampled_accuracy"] = sampled.accuracy
    r = evaluate_task(dlm, old, splits["old_test"], budget_config("confidence", 1), **kw)
    out["old"], out["old_correct"] = r.accuracy, [c[0] for c in r.correct]
    out["val"] = evaluate_task(
        dlm, new, splits["val"], budget_config("confidence", 1), **kw
    ).accuracy
    records = read_trajectories(align_file, tokenizer=dlm.tokenizer, vocab_size=dlm.vocab_size)
    out["alignment"] = asdict(trajectory_alignment(dlm, records, batch_size=cfg.batch_size))
    return out


# --------------------------------------------------------------------------- the command


def run_demo(cfg: DemoConfig) -> int:
    """Run (or resume) every stage and write ``report.md``; returns the exit code."""
    from tabom.demo_report import write_report

    cfg = cfg.resolved()
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.num_threads)
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    settings = to_dict(cfg)
    timings: dict[str, tuple[float, bool]] = {}

    # 1) held-out splits, disjoint from the distillation prompts
    splits = make_splits(cfg)
    split_ids = {k: [ex.id for ex in v] for k, v in splits.items()}
    (root / "splits.json").write_text(json.dumps(split_ids) + "\n")

    # 2) self-distillation (+ the sft ground truth and the held-out alignment trajectories)
    print(f"demo: [1/4] self-distillation on {cfg.new_task} ({cfg.distill_prompts} prompts)")
    dist = run_stage(root / "distill", distill_settings(cfg, splits), _distill_stage(cfg, splits))
    timings["distill"] = (dist["seconds"], dist["cached"])
    n_traj = dist["result"]["trajectories"]
    steps = cfg.epochs * math.ceil(n_traj / cfg.batch_size)

    # 3) post-training: every objective, every seed, the same steps and batch
    runs = [(o, s) for o in cfg.objectives for s in cfg.seeds]
    print(f"demo: [2/4] post-training {len(runs)} runs x {steps} steps on {n_traj} trajectories")
    train_s, train_cached = 0.0, True
    models: dict[str, list[str]] = {"base": [cfg.model]}
    for objective, seed in tqdm(runs, desc="train runs", disable=not cfg.progress):
        tset = train_settings(cfg, objective, seed, steps, dist["key"])
        folder = root / "train" / objective / f"seed{seed}"
        done = run_stage(folder, tset, _train_stage(cfg, objective, seed, steps, root / "distill"))
        train_s += done["seconds"]
        train_cached = train_cached and done["cached"]
        models.setdefault(objective, []).append(str(folder / "model"))
    timings["train"] = (train_s, train_cached)

    # 4) evaluation of every model (base included) on the held-out sets
    ekeys = ["test_examples", "old_examples", "pass_examples", "n_samples", "ks", "tokens_per_step"]
    eset = {"splits": _key(split_ids), "distill": dist["key"], **{k: settings[k] for k in ekeys}}
    results: dict[str, list[dict[str, Any]]] = {}
    eval_s, eval_cached = 0.0, True
    jobs = [(name, i, path) for name, paths in models.items() for i, path in enumerate(paths)]
    print(f"demo: [3/4] evaluating {len(jobs)} models")
    for name, i, path in tqdm(jobs, desc="eval models", disable=not cfg.progress):
        folder = root / "eval" / (name if name == "base" else f"{name}-seed{cfg.seeds[i]}")
        stage_set = {**eset, "model": path, "trained": _trained_key(path)}
        done = run_stage(
            folder,
            stage_set,
            lambda _f, p=path: evaluate_model(cfg, p, splits, root / "distill" / "align.jsonl"),
        )
        eval_s += done["seconds"]
        eval_cached = eval_cached and done["cached"]
        results.setdefault(name, []).append(done["result"])
    timings["eval"] = (eval_s, eval_cached)

    # 5) report
    print("demo: [4/4] report")
    t_rep = time.perf_counter()
    report = write_report(cfg, root, results, dist["result"], steps, timings, t_start, t_rep)
    print(f"demo: wrote {report} ({time.perf_counter() - t_start:.0f} s)")
    return 0


def _trained_key(path: str) -> str | None:
    """The training stage's key of a trained model folder (so a retrained model is re-evaluated)."""
    marker = Path(path).parent / "stage.json"
    return json.loads(marker.read_text())["key"] if marker.is_file() else None


def flips_against_base(results: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict]]:
    """Forgetting of every run against the base model on the old-domain items (greedy).

    Returns:
        ``{model: [asdict(Forgetting) per seed]}``.
    """
    base = results["base"][0]["old_correct"]
    return {
        name: [asdict(forgetting(base, r["old_correct"])) for r in runs]
        for name, runs in results.items()
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [v for v in values if v == v]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


__all__ = [
    "MODELS",
    "QUICK",
    "DemoConfig",
    "MIN_LR_RATIO",
    "TRAIN_SETTINGS",
    "WARMUP_STEPS",
    "WEIGHT_DECAY",
    "distill_settings",
    "draw",
    "evaluate_model",
    "flips_against_base",
    "make_splits",
    "mean_std",
    "run_demo",
    "run_stage",
    "train_settings",
]
