"""``tabom demo``: the whole pipeline on the shipped base model, ending in report.md (DESIGN §1, §7).

Stages, each in its own folder under ``output_dir`` with a ``stage.json`` marker (its settings
and result): a rerun with the same settings skips every finished stage, and a stage runs under a
lock, so two processes on one ``output_dir`` (``--eval_order forward`` and ``reverse``) share a
long run's work without redoing each other's stages.

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
   alignment and TDS on the held-out trajectories; the capability test (NELBO of the correct
   answers of both domains, accuracy under three decoding orders: ``demo/capability.py``).
5. ``report.md`` + PNG plots (always rewritten): the table (mean ± std over seeds), timings, a
   verdict on each of the paper's three claims.

Run: ``tabom demo`` (about 10 minutes on 2 CPU cores), ``tabom demo --quick`` (under 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tabom.commands.demo.capability import capability_metrics
from tabom.commands.demo.config import (
    MIN_LR_RATIO,
    TRAIN_SETTINGS,
    WARMUP_STEPS,
    WEIGHT_DECAY,
    DemoConfig,
    is_covered,
    parse_arm,
)
from tabom.commands.demo.report import collect, table, write_report
from tabom.commands.distill import DistillConfig, distill, load_prompts
from tabom.commands.train import TrainConfig, train
from tabom.config import to_dict
from tabom.decoding import DecodeConfig
from tabom.evaluate import evaluate_task, tau_to_order
from tabom.fingerprint import model_fingerprint
from tabom.jsonl import write_jsonl
from tabom.metrics import mean_std, trajectory_alignment
from tabom.models import load_model
from tabom.objectives import GROUND_TRUTH_OBJECTIVES
from tabom.progress import outer_bar
from tabom.seeding import derive
from tabom.tasks import make_task
from tabom.tasks.base import Example, Task
from tabom.tasks.sudoku import real_puzzles
from tabom.trajectory import read_trajectories

try:
    import fcntl
except ImportError:  # Windows: no stage lock (stage_lock)
    fcntl = None  # type: ignore[assignment]

# --------------------------------------------------------------------------- stages


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def stage_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock (the file ``.NAME.lock`` beside it) while the block runs.

    Two ``tabom demo`` processes on one ``output_dir`` (one with ``--eval_order reverse``) share
    the work: a process that reaches a stage the other is running waits for it, then finds it
    finished. The lock is ``fcntl.flock``, released by the kernel when its holder exits, so a
    killed run leaves no stale lock; it holds between processes of one machine on a local file
    system. Where ``fcntl`` does not exist (Windows) there is no lock: run one process there.
    """
    if fcntl is None:
        yield
        return
    path = folder.with_name(f".{folder.name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"demo: {folder} is being computed by another process; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _finished(marker: Path, key: str) -> dict[str, Any] | None:
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("key") == key:
            return {**done, "cached": True}
    return None


def run_stage(folder: Path, settings: dict[str, Any], fn: Callable[[Path], Any]) -> dict[str, Any]:
    """Run ``fn(folder)`` unless ``folder/stage.json`` holds a finished run of ``settings``.

    The run holds the stage's lock (:func:`stage_lock`): a second process on the same folder
    waits for it and then reads its marker instead of clearing and redoing the work.

    Returns:
        The marker: ``{"key", "settings", "result", "seconds", "cached"}``; a stale or
        unfinished folder is cleared and run again.
    """
    marker = folder / "stage.json"
    key = _key(settings)
    if done := _finished(marker, key):
        return done
    with stage_lock(folder):
        if done := _finished(marker, key):  # finished by another process while we waited
            return done
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
    """Distillation prompts and held-out sets; no held-out id or prompt is a distillation prompt.

    With ``cfg.heldout`` the validation set (first) and the test set come from that pool,
    shuffled with ``split_seed``, after removing every problem whose prompt is a distillation
    prompt; otherwise both are generated by ``new_task``.

    Returns:
        ``{"distill", "test", "val", "old_test"}`` example lists.

    Raises:
        ValueError: too few held-out problems, or two of distill / test / val sharing ids
            (never expected: the filter removes them).
    """
    new, old = make_task(cfg.new_task), make_task(cfg.old_task)
    distill = load_prompts(distill_config(cfg, "unused"), new)
    taken = {ex.id for ex in distill}
    if cfg.heldout is None:
        test = draw(new, cfg.test_examples, cfg.split_seed, taken)
        val_seed = derive(cfg.split_seed, "demo-val")
        val = draw(new, cfg.val_examples, val_seed, taken | {ex.id for ex in test})
    else:
        prompts = {ex.prompt for ex in distill}
        pool = [ex for ex in real_puzzles() if ex.prompt not in prompts]  # heldout sudoku-real
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(cfg.split_seed))
        pool = [pool[i] for i in order.tolist()]
        need = cfg.val_examples + cfg.test_examples
        if len(pool) < need:
            raise ValueError(
                f"heldout {cfg.heldout}: {len(pool)} problems left after removing distillation "
                f"prompts, val_examples + test_examples need {need}"
            )
        val, test = pool[: cfg.val_examples], pool[cfg.val_examples : need]
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

    The distillation run's settings, the base model's weights (:func:`tabom.fingerprint.model_fingerprint`)
    and a key of the distillation and validation ids (the ground-truth file and the alignment
    prompts), however the splits were drawn.
    """
    fields = (
        "model",
        "new_task",
        "distill_prompts",
        "distill_samples",
        "distill_seed",
        "align_samples",
        "num_threads",
    )
    ids = {k: [ex.id for ex in splits[k]] for k in ("distill", "val")}
    scalars = {k: getattr(cfg, k) for k in fields}
    # the weights too: a shipped name or a folder whose weights were replaced (a new
    # `tiny-longadd`) must not reuse the stages of the old ones
    weights = model_fingerprint(cfg.model)
    return {
        **scalars,
        "model_weights": weights,
        "decode": asdict(cfg.decode),
        "split_ids": _key(ids),
    }


def train_settings(
    cfg: DemoConfig, objective: str, seed: int, steps: int, distill_key: str, **extra: Any
) -> dict[str, Any]:
    """The key of a ``train`` stage: the distill stage's key, the run, :data:`TRAIN_SETTINGS` and
    the whole ``loss`` group (so a new loss field is part of the key without a hand list).

    ``extra``: anything else the run depends on (``tabom sweep``'s data fraction).
    """
    tset = {"distill": distill_key, "objective": objective, "seed": seed, "steps": steps}
    scalars = {k: getattr(cfg, k) for k in TRAIN_SETTINGS}
    return {**tset, **scalars, "loss": asdict(cfg.loss), **extra}


def distill_config(cfg: DemoConfig, output: str, **over: Any) -> DistillConfig:
    """The :class:`DistillConfig` of the demo's self-distillation (``over``: changed fields)."""
    kwargs = {
        "model": cfg.model,
        "task": cfg.new_task,
        "n_prompts": cfg.distill_prompts,
        "n_samples": cfg.distill_samples,
        "keep": "verified",
        "decode": cfg.decode,
        "seed": cfg.distill_seed,
        "prompts_per_batch": 32,
        "output": output,
        "ks": [1, cfg.distill_samples],
        "num_threads": cfg.num_threads,
        "progress": cfg.progress,
    }
    kwargs.update(over)
    return DistillConfig(**kwargs)


def distill_stage(cfg: DemoConfig, splits: dict[str, list[Example]]) -> Callable[[Path], Any]:
    """The ``distill`` stage: trajectories, the sft ground truth, the alignment trajectories."""

    def fn(folder: Path) -> dict[str, Any]:
        # the sft data: ground-truth answers of every distillation prompt (the paper's SFT)
        gt = [{"prompt": ex.prompt, "answer": ex.answer} for ex in splits["distill"]]
        write_jsonl(folder / "ground_truth.jsonl", gt)
        summary = distill(distill_config(cfg, str(folder / "trajectories.jsonl")))
        # held-out trajectories of the base model on the validation prompts (alignment)
        val = [{"id": ex.id, "prompt": ex.prompt, **ex.data} for ex in splits["val"]]
        write_jsonl(folder / "val_prompts.jsonl", val)
        align = distill(
            distill_config(
                cfg,
                str(folder / "align.jsonl"),
                prompts_file=str(folder / "val_prompts.jsonl"),
                prompt_field="prompt",
                id_field="id",
                n_prompts=None,
                n_samples=cfg.align_samples,
                ks=[1],
                seed=derive(cfg.distill_seed, "demo-align"),
            )
        )
        return {
            "trajectories": summary.records,
            "verified_share": summary.verified_share,
            "pass_at": summary.pass_at,
            "align_records": align.records,
        }

    return fn


COVERED_FILE = "ground_truth_covered.jsonl"
"""The ground truth of the covered prompts, beside the distill stage's files."""


def write_covered_ground_truth(distill_dir: Path, splits: dict[str, list[Example]]) -> int:
    """Write ``COVERED_FILE``: the ground-truth answers of the distillation prompts that have at
    least one verified trajectory (the prompts the trajectory arms train on), in prompt order.

    Returns:
        The number of covered prompts.

    Raises:
        ValueError: no verified trajectory (nothing to train a covered arm on).
    """
    covered = set()
    with (distill_dir / "trajectories.jsonl").open() as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if rec.get("verified"):
                    covered.add(rec["prompt_id"])
    rows = [
        {"prompt": ex.prompt, "answer": ex.answer} for ex in splits["distill"] if ex.id in covered
    ]
    if not rows:
        raise ValueError(f"{distill_dir / 'trajectories.jsonl'}: no verified trajectory to cover")
    write_jsonl(distill_dir / COVERED_FILE, rows)  # atomic, also against a second process
    return len(rows)


def train_stage(
    cfg: DemoConfig, objective: str, seed: int, steps: int, data: Path, covered: bool = False
) -> Callable[[Path], Any]:
    """A ``train/OBJECTIVE/seedS`` stage: one training run from the base on ``data``
    (``covered``: a ground-truth objective on :data:`COVERED_FILE`)."""

    def fn(folder: Path) -> dict[str, Any]:
        sft = objective in GROUND_TRUTH_OBJECTIVES
        gt_file = COVERED_FILE if covered else "ground_truth.jsonl"
        tcfg = TrainConfig(
            model=cfg.model,
            data=str(data / (gt_file if sft else "trajectories.jsonl")),
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
            loss=cfg.loss,
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


def strata(cfg: DemoConfig, task: Task, examples: list[Example]) -> list[int] | None:
    """The ``cfg.stratum`` difficulty of each example (``None``: no stratum or no
    ``difficulty`` method on the task)."""
    if cfg.stratum is None or not hasattr(task, "difficulty"):
        return None
    return [task.difficulty(ex)[cfg.stratum] for ex in examples]


def evaluate_model(
    cfg: DemoConfig, model: str, splits: dict[str, list[Example]], align_file: Path
) -> dict[str, Any]:
    """Every metric of one model (the ``eval/MODEL`` stage's result).

    Returns:
        A JSON-ready dict: ``new`` (greedy accuracy per tokens-per-step), ``nfe``, ``new_correct``,
        ``decode_steps`` (greedy, the first budget), ``by_stratum`` ({value: accuracy}),
        ``hard`` (accuracy on ``stratum >= hard_min``), ``tau_oracle`` (mean τ of the greedy
        decode order to the task's oracle order), ``pass_at`` and ``sampled_accuracy``, ``old``
        and ``old_correct``, ``val``, ``alignment``.
    """
    dlm = load_model(model)
    new, old = make_task(cfg.new_task), make_task(cfg.old_task)
    kw: dict[str, Any] = {"batch_size": 256, "seed": cfg.split_seed}
    out: dict[str, Any] = {"new": {}, "nfe": {}}
    for tps in cfg.tokens_per_step:
        r = evaluate_task(dlm, new, splits["test"], DecodeConfig(tokens_per_step=tps), **kw)
        out["new"][str(tps)] = r.accuracy
        out["nfe"][str(tps)] = r.nfe_per_answer
        if tps == cfg.tokens_per_step[0]:
            out["new_correct"] = [c[0] for c in r.correct]
            out["decode_steps"] = r.decoding_orders
    # accuracy by difficulty and the decode order against the task's oracle order
    levels = strata(cfg, new, splits["test"])
    if levels is not None:
        by: dict[int, list[bool]] = {}
        for lv, c in zip(levels, out["new_correct"], strict=True):
            by.setdefault(lv, []).append(c)
        out["by_stratum"] = {str(k): sum(v) / len(v) for k, v in sorted(by.items())}
        out["stratum_sizes"] = {str(k): len(v) for k, v in sorted(by.items())}
        hard = [c for lv, c in zip(levels, out["new_correct"], strict=True) if lv >= cfg.hard_min]
        out["hard"] = sum(hard) / len(hard) if hard else float("nan")
    if hasattr(new, "oracle_rank"):
        oracle = [new.oracle_rank(ex) for ex in splits["test"]]
        taus = tau_to_order(out["decode_steps"], oracle, min_rank=cfg.oracle_min_rank)
        out["tau_oracle"] = mean_std([t for t in taus if t == t])[0]
    sampled = evaluate_task(
        dlm,
        new,
        splits["test"][: cfg.pass_examples],
        DecodeConfig(temperature=1.0),
        n_samples=cfg.n_samples,
        ks=tuple(cfg.ks),
        **kw,
    )
    out["pass_at"] = {str(k): v for k, v in sampled.pass_at.items()}
    out["sampled_accuracy"] = sampled.accuracy
    r = evaluate_task(dlm, old, splits["old_test"], DecodeConfig(), **kw)
    out["old"], out["old_correct"] = r.accuracy, [c[0] for c in r.correct]
    out["val"] = evaluate_task(dlm, new, splits["val"], DecodeConfig(), **kw).accuracy
    records = read_trajectories(align_file, tokenizer=dlm.tokenizer, vocab_size=dlm.vocab_size)
    out["alignment"] = asdict(trajectory_alignment(dlm, records, batch_size=cfg.batch_size))
    # the capability test: NELBO of the correct answers, accuracy under three decoding orders
    known = {("old", "confidence"): out["old_correct"]}  # greedy, confidence order, as here
    if cfg.tokens_per_step[0] == 1:
        known[("new", "confidence")] = out["new_correct"]
    out["capability"] = capability_metrics(
        dlm, cfg.new_task, cfg.old_task, splits, cfg.likelihood, seed=cfg.split_seed, known=known
    )
    return out


def validate_model(cfg: DemoConfig, model: str, splits: dict[str, list[Example]]) -> float:
    """Greedy new-domain validation accuracy (the only number a tuning choice may use)."""
    new = make_task(cfg.new_task)
    kw: dict[str, Any] = {"batch_size": 256, "seed": cfg.split_seed}
    return evaluate_task(load_model(model), new, splits["val"], DecodeConfig(), **kw).accuracy


def point_config(demo: DemoConfig, point: dict[str, Any]) -> DemoConfig:
    """The demo settings of one tuning / sweep point: loss fields go into the ``loss`` group
    (``data_fraction`` is the sweep's and is left out)."""
    loss_names = {f.name for f in dataclasses.fields(demo.loss)}
    loss = {k: v for k, v in point.items() if k in loss_names}
    top = {k: v for k, v in point.items() if k not in loss_names and k != "data_fraction"}
    return dataclasses.replace(demo, loss=dataclasses.replace(demo.loss, **loss), **top)


def point_name(point: dict[str, Any]) -> str:
    """Folder name of a tuning point: ``default`` or e.g. ``lr0.001``, ``rank_weight0.3``."""
    return "-".join(f"{k}{v}" for k, v in point.items()) or "default"


def train_arms(
    cfg: DemoConfig, root: Path, splits: dict[str, list[Example]], dist: dict[str, Any], steps: int
) -> tuple[dict[str, list[str]], dict[str, Any], float, bool]:
    """Train every arm at every tuning point and seed; pick each arm's point on validation.

    Returns:
        ``(models, tuning, seconds, cached)``: the chosen point's model folders per arm,
        ``{arm: {"points": [...], "val": {point: [per-seed val acc]}, "chosen": point}}``, the
        summed train + validation seconds, and whether every stage was cached.
    """
    models: dict[str, list[str]] = {}
    tuning: dict[str, Any] = {}
    seconds, cached = 0.0, True
    jobs = [(a, p, s) for a in cfg.objectives for p in cfg.arm_points(a) for s in cfg.seeds]
    val_key = _key([ex.id for ex in splits["val"]])
    if any(is_covered(a) for a in cfg.objectives):
        write_covered_ground_truth(root / "distill", splits)  # derived; the same every run
    order = jobs[::-1] if cfg.eval_order == "reverse" else jobs
    done_runs: dict[tuple[str, str, int], tuple[str, float | None]] = {}
    for arm, point, seed in tqdm(order, desc="train runs", disable=not outer_bar(cfg.progress)):
        objective, over = parse_arm(arm)
        covered = is_covered(arm)
        pcfg = point_config(cfg, {**over, **point})
        extra = {"data": "covered"} if covered else {}
        tset = train_settings(pcfg, objective, seed, steps, dist["key"], **extra)
        folder = root / "train" / arm / point_name(point) / f"seed{seed}"
        kw = {"covered": True} if covered else {}
        stage = train_stage(pcfg, objective, seed, steps, root / "distill", **kw)
        done = run_stage(folder, tset, stage)
        seconds += done["seconds"]
        cached = cached and done["cached"]
        path, acc = str(folder / "model"), None
        if len(cfg.arm_points(arm)) > 1:  # validation accuracy, the only input of the choice
            vset = {"splits": val_key, "model": path, "trained": _trained_key(path)}
            done = run_stage(
                folder.parent / f"val-{folder.name}",
                vset,
                lambda _f, p=path: {"val": validate_model(cfg, p, splits)},
            )
            seconds += done["seconds"]
            cached = cached and done["cached"]
            acc = done["result"]["val"]
        done_runs[(arm, point_name(point), seed)] = (path, acc)
    for arm in cfg.objectives:
        names = [point_name(p) for p in cfg.arm_points(arm)]
        runs = {n: [done_runs[(arm, n, s)] for s in cfg.seeds] for n in names}  # in seed order
        entry: dict[str, Any] = {"points": names, "val": {}, "chosen": names[0]}
        if len(names) > 1:  # choose on the validation split (mean over seeds), never the test
            entry["val"] = {n: [acc for _, acc in runs[n]] for n in names}
            means = {n: sum(v) / len(v) for n, v in entry["val"].items()}
            entry["chosen"] = max(names, key=lambda n: (means[n], -names.index(n)))
        tuning[arm] = entry
        models[arm] = [path for path, _ in runs[entry["chosen"]]]
    return models, tuning, seconds, cached


# --------------------------------------------------------------------------- the command


def run_demo(cfg: DemoConfig) -> int:
    """Run (or resume) every stage and write ``report.md``; returns the exit code.

    ``cfg`` runs as given: the testbed's / protocol's presets are applied where it is built
    from YAML and flags (:func:`tabom.config.build_config`)."""
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
    dist = run_stage(root / "distill", distill_settings(cfg, splits), distill_stage(cfg, splits))
    timings["distill"] = (dist["seconds"], dist["cached"])
    n_traj = dist["result"]["trajectories"]
    steps = cfg.epochs * math.ceil(n_traj / cfg.batch_size)

    # 3) post-training: every arm, tuning point and seed, the same steps and batch; each
    #    arm's point chosen on the validation split
    n_points = sum(len(cfg.arm_points(a)) for a in cfg.objectives)
    print(
        f"demo: [2/4] post-training {n_points * len(cfg.seeds)} runs x {steps} steps on "
        f"{n_traj} trajectories"
    )
    trained, tuning, train_s, train_cached = train_arms(cfg, root, splits, dist, steps)
    models: dict[str, list[str]] = {"base": [cfg.model], **trained}
    timings["train"] = (train_s, train_cached)

    # 4) evaluation of every model (base included) on the held-out sets
    ekeys = ["test_examples", "old_examples", "pass_examples", "n_samples", "ks", "tokens_per_step"]
    ekeys += ["stratum", "hard_min", "oracle_min_rank", "likelihood"]
    eset = {"splits": _key(split_ids), "distill": dist["key"], **{k: settings[k] for k in ekeys}}
    results: dict[str, list[dict[str, Any]]] = {}
    eval_s, eval_cached = 0.0, True
    jobs = [(name, i, path) for name, paths in models.items() for i, path in enumerate(paths)]
    print(f"demo: [3/4] evaluating {len(jobs)} models")
    done_by: dict[tuple[str, int], dict[str, Any]] = {}
    order = jobs[::-1] if cfg.eval_order == "reverse" else jobs
    for name, i, path in tqdm(order, desc="eval models", disable=not outer_bar(cfg.progress)):
        folder = root / "eval" / (name if name == "base" else f"{name}-seed{cfg.seeds[i]}")
        stage_set = {**eset, "model": path, "trained": _trained_key(path)}
        done = run_stage(
            folder,
            stage_set,
            lambda _f, p=path: evaluate_model(cfg, p, splits, root / "distill" / "align.jsonl"),
        )
        eval_s += done["seconds"]
        eval_cached = eval_cached and done["cached"]
        done_by[(name, i)] = done["result"]
    for name, i, _ in jobs:  # results in seed order whatever the evaluation order
        results.setdefault(name, []).append(done_by[(name, i)])
    timings["eval"] = (eval_s, eval_cached)

    # 5) report
    print("demo: [4/4] report")
    t_rep = time.perf_counter()
    report = write_report(
        cfg, root, results, dist["result"], steps, timings, t_start, t_rep, tuning=tuning
    )
    print(f"\n{table(collect(results, cfg), cfg)}\n")  # the main table, mean ± std over seeds
    print(f"demo: wrote {report} ({time.perf_counter() - t_start:.0f} s)")
    return 0


def _trained_key(path: str) -> str | None:
    """The training stage's key of a trained model folder (so a retrained model is re-evaluated)."""
    marker = Path(path).parent / "stage.json"
    return json.loads(marker.read_text())["key"] if marker.is_file() else None


__all__ = [
    "COVERED_FILE",
    "distill_config",
    "distill_settings",
    "distill_stage",
    "draw",
    "evaluate_model",
    "make_splits",
    "point_config",
    "point_name",
    "run_demo",
    "run_stage",
    "train_arms",
    "train_settings",
    "train_stage",
    "validate_model",
    "write_covered_ground_truth",
]
