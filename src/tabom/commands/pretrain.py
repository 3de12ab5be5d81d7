"""``tabom pretrain``: masked-diffusion (MDLM) training of the tiny model from scratch (DESIGN §1).

Each batch mixes fresh instances of the configured tasks; the response (answer plus an EOS
tail up to the task's response length) is masked with a per-sample ratio t ~ U(0, 1) and the
model is trained with cross-entropy on the masked tokens weighted 1/t (the NELBO of the
paper's Eq. 1). The prompt is never masked. This produces the "old domain" base model that
self-distillation later adapts. Run: ``tabom pretrain --config configs/tiny_pretrain.yaml``.

Resume works like ``tabom train`` (:mod:`tabom.checkpoint`): ``save_every`` writes Accelerate
state (weights, optimizer, scheduler, RNG; the data and masking generators as tensors) to
``checkpoints/step-N``; ``--resume`` continues from the newest whole one, refused when a
setting other than the cadence differs, and gives the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tabom.checkpoint import (
    load_generators,
    resume_point,
    save_checkpoint,
    truncate_log,
)
from tabom.config import (
    AT_LEAST_1,
    LEARNING_RATE,
    NON_NEGATIVE,
    UNIT,
    check_ranges,
    save_config,
    to_dict,
)
from tabom.evaluate import greedy_accuracy, make_eval_sets
from tabom.models import TinyModelConfig, build_tiny, save_model
from tabom.objectives import LossConfig, compute_objective
from tabom.schedule import lr_factor
from tabom.seeding import offset
from tabom.tasks import make_task
from tabom.tasks.base import Example, Task
from tabom.train_data import collate_trajectories, ground_truth_item


@dataclass
class PretrainConfig:
    """Config of ``tabom pretrain``.

    Attributes:
        output_dir: where the final model, checkpoints, ``log.jsonl`` and the resolved config go.
        model: shape of the tiny model.
        tasks: the training mixture, as task specs (``addition:max_digits=4``).
        task_weights: sampling weight of each task (default: equal).
        steps: optimizer steps.
        batch_size: sequences per step.
        lr: peak AdamW learning rate.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine decay).
        warmup_steps: linear warmup, in optimizer steps.
        weight_decay: AdamW weight decay.
        grad_clip: max gradient norm (0 = off).
        nelbo_weight: weight each masked token's CE by 1/t (MDLM NELBO); else a token mean.
        eval_every: evaluate on ``eval_tasks`` every N steps (0 = only at the end).
        eval_tasks: task specs to evaluate on (default: ``tasks``).
        eval_examples: generated problems per eval task (seeded apart from training).
        stop_at: the stop rule: one minimum greedy accuracy per eval task (in the order of
            ``eval_tasks``, or ``tasks`` when that is unset; 0 = no condition on that task).
            Training stops after the first periodic eval at which every eval task reaches its
            minimum, so the recipe reaches the same regime on any machine (thread count and
            CPU change the float rounding, hence the trajectory); ``steps`` is then the cap
            and fixes the learning-rate schedule. ``None`` = train exactly ``steps`` steps.
        save_every: write a resumable checkpoint every N steps (0 = only the final model).
        seed: seed of weights, data and masking.
        resume: continue from the newest whole checkpoint in ``output_dir``.
        num_threads: torch CPU threads; 1 is fastest for the tiny model
            (docs/benchmarks.md); 0 = torch's default.
    """

    output_dir: str = "runs/pretrain"
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    tasks: list[str] = field(default_factory=lambda: ["addition:min_digits=1,max_digits=4"])
    task_weights: list[float] | None = field(default=None, metadata=NON_NEGATIVE)
    steps: int = field(default=2000, metadata=AT_LEAST_1)
    batch_size: int = field(default=128, metadata=AT_LEAST_1)
    lr: float = field(default=1e-3, metadata=LEARNING_RATE)
    min_lr_ratio: float = field(default=0.1, metadata=UNIT)
    warmup_steps: int = field(default=100, metadata=NON_NEGATIVE)
    weight_decay: float = field(default=0.01, metadata=NON_NEGATIVE)
    grad_clip: float = field(default=1.0, metadata=NON_NEGATIVE)
    nelbo_weight: bool = True
    eval_every: int = field(default=500, metadata=NON_NEGATIVE)
    eval_tasks: list[str] | None = None
    eval_examples: int = field(default=128, metadata=AT_LEAST_1)
    stop_at: list[float] | None = field(default=None, metadata=UNIT)
    save_every: int = field(default=0, metadata=NON_NEGATIVE)
    seed: int = field(default=0, metadata=NON_NEGATIVE)
    resume: bool = False
    num_threads: int = field(default=1, metadata=NON_NEGATIVE)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks: give at least one task spec")
        if self.task_weights is not None and len(self.task_weights) != len(self.tasks):
            raise ValueError(
                f"task_weights has {len(self.task_weights)} entries but tasks has {len(self.tasks)}"
            )
        if self.task_weights is not None and not sum(self.task_weights) > 0:
            raise ValueError(f"task_weights: {self.task_weights} gives no task a weight > 0")
        n_eval = len(self.eval_tasks or self.tasks)
        if self.stop_at is not None:
            if len(self.stop_at) != n_eval:
                raise ValueError(
                    f"stop_at has {len(self.stop_at)} entries but there are {n_eval} eval tasks "
                    "(eval_tasks, or tasks when eval_tasks is unset)"
                )
            if not self.eval_every:
                raise ValueError("stop_at needs eval_every > 0 (the rule is checked at each eval)")
        check_ranges(self)


def encode_example(tokenizer, task: Task, ex: Example, eos_id: int) -> tuple[list[int], list[int]]:
    """Prompt ids and response ids (answer + EOS tail up to ``task.gen_length``).

    Raises:
        ValueError: the answer does not fit the task's response length with one EOS.
    """
    prompt = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    answer = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
    if len(answer) >= task.gen_length:
        raise ValueError(
            f"task {task.name!r}: answer of {ex.id} has {len(answer)} tokens, "
            f"gen_length {task.gen_length} leaves no room for EOS"
        )
    return prompt, answer + [eos_id] * (task.gen_length - len(answer))


def sample_batch(
    tasks: list[Task], weights: torch.Tensor, batch_size: int, generator: torch.Generator
) -> list[tuple[Task, Example]]:
    """``batch_size`` fresh instances, each task drawn with probability ``weights``."""
    picks = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    out: list[tuple[Task, Example]] = []
    for ti, task in enumerate(tasks):
        n = int((picks == ti).sum())
        if n:
            out.extend((task, ex) for ex in task.generate(n, generator))
    return out


CADENCE = ("output_dir", "eval_every", "save_every", "resume", "num_threads")
"""Settings a resume may change; every other one must match the checkpoint's."""

RANK_SEED_STRIDE = 1_000_003  # process r draws data from seed + r·stride, masks from that + 1


def pretrain(cfg: PretrainConfig) -> Path:
    """Train a tiny DLM from scratch; returns the folder of the final model."""
    from accelerate import Accelerator

    # 1) setup: output folder, seeds, model, data sources
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.output_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    settings = {k: v for k, v in to_dict(cfg).items() if k not in CADENCE}
    settings["world"] = accelerator.num_processes
    ckpt, ckpt_state = resume_point(out, cfg.resume, settings)  # before any file is written
    dlm = build_tiny(cfg.model, seed=cfg.seed)  # the same initial weights on every process
    tok = dlm.tokenizer
    tasks = [make_task(s) for s in cfg.tasks]
    weights = torch.tensor(cfg.task_weights or [1.0] * len(tasks), dtype=torch.float)
    # each process its own data and masking draws (process 0: seed and seed + 1)
    rank_seed = offset(cfg.seed, accelerator.process_index * RANK_SEED_STRIDE)  # tabom.seeding
    data_gen = torch.Generator().manual_seed(rank_seed)
    mask_gen = torch.Generator(device=accelerator.device).manual_seed(offset(rank_seed, 1))
    eval_sets = make_eval_sets(cfg.eval_tasks or cfg.tasks, cfg.eval_examples, cfg.seed)

    optimizer = torch.optim.AdamW(
        dlm.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
    )
    dlm.model, optimizer, scheduler = accelerator.prepare(dlm.model, optimizer, scheduler)
    generators = {"data": data_gen, "mask": mask_gen}  # saved as tensors, never pickled
    start = 0
    if ckpt is not None:
        load_generators(ckpt, accelerator.process_index, generators)  # first: refuses pickles
        accelerator.load_state(str(ckpt))
        start = ckpt_state["step"]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")  # only now: the resume check has passed
        truncate_log(out / "log.jsonl", start)  # steps past the checkpoint run again
        if ckpt is not None:
            print(f"pretrain: resuming {out} from {ckpt.name}")

    log = (out / "log.jsonl").open("a") if main else None

    # 2) the loop: sample, mask, loss, step, log, eval, save
    bar = tqdm(range(start, cfg.steps), desc="pretrain", disable=not main)
    t0 = time.perf_counter()
    for step in bar:
        dlm.model.train()
        batch = sample_batch(tasks, weights, cfg.batch_size, data_gen)
        items = [
            ground_truth_item(ex.id, *encode_example(tok, task, ex, dlm.spec.eos_token_id))
            for task, ex in batch
        ]
        loss = compute_objective(  # random ratio t, CE on the masked tokens (1/t: the NELBO)
            dlm,
            collate_trajectories(items, dlm.spec.pad_token_id).to(accelerator.device),
            objective="sft",
            loss=LossConfig(nelbo_weight=cfg.nelbo_weight),
            mask_token_id=dlm.mask_token_id,
            generator=mask_gen,
        ).total
        accelerator.backward(loss)
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(dlm.model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step + 1, "loss": loss.item(), "lr": scheduler.get_last_lr()[0]}
        done = step + 1
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
            record["eval"] = greedy_accuracy(dlm, eval_sets)  # every process
            if main:
                accs = ", ".join(f"{k} {v:.3f}" for k, v in record["eval"].items())
                bar.write(f"step {done}: loss {record['loss']:.4f}; greedy accuracy {accs}")
            if cfg.stop_at is not None and all(  # every eval task at its minimum: stop here
                acc >= need for acc, need in zip(record["eval"].values(), cfg.stop_at, strict=True)
            ):
                record["stopped"] = "stop_at"
        record["elapsed_s"] = round(time.perf_counter() - t0, 2)
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        if "stopped" in record:
            if main:
                bar.write(f"step {done}: stop rule met (stop_at {cfg.stop_at})")
            break
        if cfg.save_every and done % cfg.save_every == 0 and done != cfg.steps:
            save_checkpoint(accelerator, out, {"step": done, "settings": settings}, generators)

    # 3) final save
    if log is not None:
        log.close()
    final = out / "model"
    accelerator.wait_for_everyone()
    if main:
        save_model(dataclasses.replace(dlm, model=accelerator.unwrap_model(dlm.model)), final)
        print(f"pretrain: model -> {final}")
    return final


def run_pretrain(cfg: PretrainConfig) -> int:
    """CLI runner of ``tabom pretrain``."""
    pretrain(cfg)
    return 0
