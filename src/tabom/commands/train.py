"""``tabom train``: post-training with one objective (sft, traj-sft, td, tabom, puma, papl, tad)
in one explicit loop (DESIGN §5-6).

The loop runs on Hugging Face Accelerate: one CPU process here, DDP / FSDP1 / FSDP2 /
DeepSpeed ZeRO under ``accelerate launch`` with the same code, on GPUs or CPUs; the engine the
launch config asks for is built or refused, never replaced, and printed
(:mod:`tabom.engine`). The prepared module is :class:`tabom.models.prepared.HeadForward`,
the network and its LM head in one forward, so every engine gathers the head like any layer. LoRA via peft or full fine-tuning; gradient
accumulation; clipping; linear warmup then cosine decay counted in optimizer steps; bf16 where
the device has it. Every micro-batch runs backward, even one with nothing supervised (its loss
is 0 with a graph), so every process joins every gradient all-reduce.

Resume is exact: a checkpoint (``output_dir/checkpoints/step-N``, written to a temporary folder
and renamed when complete) holds Accelerate's state (weights or adapter, optimizer, scheduler,
RNG) and ``trainer_state.json``. The data order and the masking draws are pure functions of
(seed, optimizer step, micro-batch, process), so the step alone restores the data position.
The final ``model/`` and ``adapter/`` come from the full state dict gathered from the shards
(every process joins), so they are whole under FSDP / DeepSpeed ZeRO-3 too.
Run: ``tabom train --config configs/tiny_tabom.yaml --data runs/distill/trajectories.jsonl``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from tabom.checkpoint import (
    file_sha256,
    latest_checkpoint,
    resume_point,
    save_checkpoint,
    truncate_log,
)
from tabom.config import (
    AT_LEAST_1,
    LEARNING_RATE,
    NON_NEGATIVE,
    POSITIVE,
    UNIT,
    ConfigError,
    check_ranges,
    in_range,
    save_config,
    to_dict,
)
from tabom.engine import describe, full_state_dict, make_accelerator, without_zero3_init
from tabom.engine import is_sharded as _is_sharded  # tests replace it
from tabom.errors import TabomError
from tabom.evaluate import greedy_accuracy, make_eval_sets
from tabom.models import (
    BACKENDS,
    DEFAULT_MODEL,
    enable_gradient_checkpointing,
    load_model,
    save_model,
)
from tabom.models.base import DiffusionLM
from tabom.models.lora import with_lora
from tabom.models.prepared import HeadForward, PreparedLM
from tabom.objectives import GROUND_TRUTH_OBJECTIVES, LossConfig, Objective, compute_objective
from tabom.schedule import lr_factor
from tabom.seeding import derive
from tabom.train_data import (
    TrainDataError,
    TrajectoryDataset,
    batch_indices,
    check_windows,
    collate_trajectories,
    ground_truth_items,
    load_trajectories,
    model_positions,
    steps_per_epoch,
)

LOG_KEYS = ("ce", "rank", "kl", "total", "n_supervised", "n_pairs", "n_rank_samples", "n_uncut")
LOG_KEYS += ("samples",)
CADENCE = ("output_dir", "save_every", "log_every", "eval_every", "progress", "resume")
CADENCE += ("num_threads", "report_to")
"""Settings that do not shape the trained model: a resume may change them (every other one
must match the checkpoint's)."""


@dataclass
class TrainConfig:
    """Config of ``tabom train``. Defaults are the paper's reference setting (DESIGN §5).

    Attributes:
        model: shipped model name (``tiny-base``), a local model folder or a hub id
            (``GSAI-ML/LLaDA-8B-Instruct``).
        backend: ``auto`` (from the folder's ``tabom_backend.json`` or the checkpoint's
            ``config.json``) or a backend name: ``tiny``, ``tiny-dream``, ``llada``, ``dream``,
            ``hf-mlm`` (``tabom.models.load_model``).
        dtype: the dtype the weights are loaded in. Full fine-tuning (``lora_rank: 0``)
            keeps fp32 master weights: ``auto`` or ``float32`` only (bf16 compute comes from
            ``mixed_precision``). With LoRA it is the frozen base's dtype (peft keeps the
            adapters in fp32): ``bfloat16`` halves a 7-8B base's memory on a GPU; ``auto``
            is ``load_model``'s default for a model loaded on the CPU, fp32 (the model is
            loaded there, then moved to the device by Accelerate).
        data: for ``traj-sft`` / ``td`` / ``tabom`` / ``tad``: the trajectory JSONL (``tabom distill``);
            for ``sft`` / ``puma`` / ``papl`` without ``gt_task``: a JSONL of ``{"prompt", "answer"}`` lines
            (responses are the answer, the backend's end-of-turn token if it has one, LLaDA's
            ``<|eot_id|>`` or Dream's ``<|im_end|>``, then EOS up to the longest such + 1).
        objective: ``sft`` (ground truth, random masking), ``traj-sft`` (trajectories' tokens,
            random masking), ``td`` (time-delay masking), ``tabom`` (td + ranking), ``puma``
            (ground truth, time-delay masking on the model's own reveal order) or ``papl``
            (ground truth, random masking, planner-weighted CE) or ``tad`` (trajectories: hard
            CE near the state, soft KL to the frozen base far from it; arXiv 2605.09536).
        gt_task: ground-truth objectives only (``sft``, ``puma``, ``papl``): a task spec whose
            generated instances are the ground truth (answers, plus the end-of-turn token if
            any, padded with EOS to the task's gen_length); instead of ``data``.
        gt_examples: with ``gt_task``: instances generated from ``seed``.
        verified_only: train only on records the verifier accepted (``verified: true``).
        output_dir: final model (``model/``), LoRA adapter (``adapter/``), ``checkpoints/``,
            ``log.jsonl`` and the resolved ``config.yaml``.
        epochs: passes over the data (ignored when ``max_steps`` > 0).
        max_steps: optimizer steps to run (0 = ``epochs`` passes).
        batch_size: sequences per micro-batch per process.
        grad_accum: micro-batches per optimizer step; the global batch is
            ``batch_size × grad_accum × processes``.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norm weights).
        warmup_steps: linear warmup, in optimizer steps.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine decay).
        grad_clip: max global gradient norm (0 = off).
        lora_rank: LoRA rank r (0 = full fine-tuning).
        lora_alpha: LoRA scale α (the update is scaled by α / r).
        lora_dropout: dropout on the LoRA input.
        lora_targets: module names that get adapters (default: the backend's, q_proj, v_proj).
        gradient_checkpointing: recompute each layer's activations in backward instead of
            storing them (``tabom.models.enable_gradient_checkpointing``; on in the 7-8B recipes).
        merge_lora: with LoRA, also save the merged model to ``model/`` (loadable by
            ``load_model``); the adapter alone is always saved to ``adapter/``.
        loss: the loss settings M, W, m, λ, ties, unit, cut range, NELBO weight, ranking
            variant (``--loss.td_window 3``; :class:`tabom.objectives.LossConfig`).
        mixed_precision: ``fp32``, ``bf16`` (autocast; weights and optimizer stay fp32), or
            ``auto``: bf16 on a GPU that has it, else fp32. (Not ``no``: YAML reads it as false.)
        save_every: write a checkpoint every N optimizer steps (0 = only at the end).
        log_every: log every N optimizer steps (the values of that step, summed over processes).
        eval_every: evaluate on ``eval_tasks`` every N optimizer steps (0 = never).
        eval_tasks: task specs for the periodic eval (greedy, one token per step).
        eval_examples: instances per eval task (generated from ``seed + 10000``).
        seed: seed of LoRA init, data order and masking.
        report_to: also log to ``tensorboard`` or ``wandb`` (needs the package).
        resume: continue from the latest complete checkpoint in ``output_dir``.
        num_threads: torch CPU threads; 1 is fastest for the tiny model
            (docs/benchmarks.md); 0 = torch's default.
        progress: show a progress bar.
    """

    model: str = DEFAULT_MODEL
    backend: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    data: str | None = None
    objective: Objective = "tabom"
    gt_task: str | None = None
    gt_examples: int = field(default=256, metadata=AT_LEAST_1)
    verified_only: bool = False
    output_dir: str = "runs/train"
    epochs: int = field(default=5, metadata=NON_NEGATIVE)
    max_steps: int = field(default=0, metadata=NON_NEGATIVE)
    batch_size: int = field(default=4, metadata=AT_LEAST_1)
    grad_accum: int = field(default=8, metadata=AT_LEAST_1)
    lr: float = field(default=2e-5, metadata=LEARNING_RATE)
    weight_decay: float = field(default=0.01, metadata=NON_NEGATIVE)
    warmup_steps: int = field(default=50, metadata=NON_NEGATIVE)
    min_lr_ratio: float = field(default=0.0, metadata=UNIT)
    grad_clip: float = field(default=1.0, metadata=NON_NEGATIVE)
    lora_rank: int = field(default=16, metadata=NON_NEGATIVE)
    lora_alpha: float = field(default=16.0, metadata=POSITIVE)
    lora_dropout: float = field(default=0.05, metadata=in_range(0, 1, high_open=True))
    lora_targets: list[str] | None = None
    gradient_checkpointing: bool = False
    merge_lora: bool = True
    loss: LossConfig = field(default_factory=LossConfig)
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"
    save_every: int = field(default=0, metadata=NON_NEGATIVE)
    log_every: int = field(default=1, metadata=AT_LEAST_1)
    eval_every: int = field(default=0, metadata=NON_NEGATIVE)
    eval_tasks: list[str] = field(default_factory=list)
    eval_examples: int = field(default=64, metadata=AT_LEAST_1)
    seed: int = field(default=0, metadata=NON_NEGATIVE)
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    resume: bool = False
    num_threads: int = field(default=1, metadata=NON_NEGATIVE)
    progress: bool = True

    def __post_init__(self) -> None:
        check_ranges(self)  # a config built in Python; flags and YAML are checked before
        if self.backend != "auto" and self.backend not in BACKENDS:
            raise ValueError(
                f"backend must be auto or one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )
        if self.lora_rank == 0 and self.dtype not in ("auto", "float32"):
            raise ValueError(
                f"dtype: full fine-tuning (lora_rank 0) keeps fp32 master weights, not "
                f"{self.dtype!r}; use dtype auto or float32 (bf16 compute: mixed_precision bf16)"
            )
        if self.objective in GROUND_TRUTH_OBJECTIVES:
            if (self.gt_task is None) == (self.data is None):
                raise ValueError(
                    f"objective {self.objective}: give exactly one of gt_task (a task spec) "
                    "and data (a JSONL of prompt/answer lines)"
                )
        else:
            if self.data is None:
                raise ValueError(f"data: objective {self.objective!r} needs a trajectory file")
            if self.gt_task is not None:
                raise ValueError(
                    f"gt_task: only objectives {', '.join(GROUND_TRUTH_OBJECTIVES)} use it, "
                    f"not {self.objective!r}"
                )
        if self.loss.nelbo_weight and self.objective not in ("sft", "traj-sft"):
            raise ValueError(
                f"loss.nelbo_weight: applies to sft / traj-sft, not {self.objective!r}"
            )
        if self.epochs == 0 and self.max_steps == 0:
            raise ValueError(
                f"epochs / max_steps: one of them must be positive, got epochs {self.epochs}, "
                f"max_steps {self.max_steps}"
            )
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(
                f"gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}"
            )
        if self.eval_every and not self.eval_tasks:
            raise ValueError("eval_every: set eval_tasks (task specs) to evaluate on")


# --------------------------------------------------------------------------- setup helpers


def load_train_items(cfg: TrainConfig, dlm: DiffusionLM) -> tuple[Any, int]:
    """The training items of ``cfg.data`` / ``cfg.gt_task``, checked against the model and M, W.

    Returns:
        ``(items, n_short)``: indexable :class:`tabom.train_data.TrajectoryItem` s
        and the number of trajectories too short for M.

    Raises:
        FileNotFoundError, DataFileError, DataFileError, TrainDataError: bad data.
    """
    if cfg.objective in GROUND_TRUTH_OBJECTIVES:
        items = ground_truth_items(
            tokenizer=dlm.tokenizer,
            eos_token_id=dlm.spec.eos_token_id,
            stop_token_id=next(iter(dlm.spec.stop_token_ids), None),  # LLaDA, Dream: end of turn
            encode_prompt=dlm.encode_prompt,
            gt_task=cfg.gt_task,
            n_examples=cfg.gt_examples,
            seed=cfg.seed,
            path=cfg.data,
        )
        return items, 0
    records = load_trajectories(
        cfg.data,  # type: ignore[arg-type]
        tokenizer=dlm.tokenizer,
        vocab_size=dlm.vocab_size,
        verified_only=cfg.verified_only,
        max_length=model_positions(dlm.model),
        mask_token_id=dlm.mask_token_id,
    )
    n_short = 0
    if cfg.objective in ("td", "tabom"):
        n_short = check_windows(
            records,
            cfg.data,  # type: ignore[arg-type]
            td_window=cfg.loss.td_window,
            rank_window=cfg.loss.rank_window if cfg.objective == "tabom" else None,
            window_unit=cfg.loss.window_unit,
            cut_range=cfg.loss.td_cut_range,
        )
    if cfg.loss.rank_ties == "decode-entropy" and cfg.objective == "tabom":
        missing = next((r for r in records if r.decode_entropy is None), None)
        if missing is not None:
            raise TrainDataError(
                f"{cfg.data}:{missing.line}: loss.rank_ties: 'decode-entropy' needs decode_entropy "
                "in every record"
            )
    return TrajectoryDataset(records), n_short


def _check_tracker(report_to: str) -> str | None:
    """The Accelerate tracker name, after checking that its package is installed.

    Raises:
        ConfigError: the tracker's package is missing (names ``report_to`` and the pip command).
    """
    if report_to == "none":
        return None
    module = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}[report_to]
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(
            f"report_to: {report_to!r} needs the {report_to} package (pip install {report_to})"
        ) from None
    return report_to


def micro_seed(seed: int, step: int, slot: int) -> int:
    """The masking seed of one micro-batch slot of one optimizer step.

    A hash of (seed, step, slot), slot = micro-batch × processes + process: the draws never
    depend on resume history, and a global batch split as 2 processes × 1 micro-batch draws
    the same masks as 1 process × 2 micro-batches (:func:`tabom.train_data.batch_indices`
    gives both the same items).
    """
    return derive(seed, "train", step, slot)


def _load_dtype(cfg: TrainConfig) -> str | torch.dtype:
    """``load_model``'s dtype: fp32 master weights for full fine-tuning, else ``cfg.dtype``."""
    return cfg.dtype if cfg.lora_rank else torch.float32


def _with_lora(model: Any, cfg: TrainConfig, default_targets: tuple[str, ...]) -> Any:
    """``model`` with LoRA adapters of ``cfg`` (targets: ``lora_targets`` or the backend's).

    Raises:
        ConfigError: peft (a core dependency) is not importable; names ``lora_rank``.
    """
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"lora_rank: {cfg.lora_rank} (LoRA) needs the peft package, a dependency of tabom "
            "(pip install peft); lora_rank 0 is full fine-tuning"
        ) from None
    return with_lora(
        model,
        rank=cfg.lora_rank,
        alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout,
        targets=cfg.lora_targets or default_targets,
    )


def _rebuild(cfg: TrainConfig, state: dict[str, torch.Tensor]) -> Any:
    """A whole CPU copy of the trained model: ``cfg.model`` (with LoRA) loaded with ``state``.

    Under FSDP / DeepSpeed ZeRO-3 the prepared modules hold shards, which neither peft's merge
    nor ``save_pretrained`` can use; the state dict gathered from them
    (``accelerator.get_state_dict``) is the trained model under the same parameter names
    (ZeRO-3 gathers it in 16 bits). Costs a second copy of the model in the main process's CPU
    memory.

    Raises:
        RuntimeError: ``state`` does not name exactly the model's parameters.
    """
    dlm = load_model(cfg.model, backend=cfg.backend, dtype=_load_dtype(cfg))
    model = _with_lora(dlm.model, cfg, dlm.spec.lora_targets) if cfg.lora_rank else dlm.model
    # the model's dtypes (ZeRO-3 may hand back its training dtype); unknown names fail (strict)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own.get(k, v).dtype) for k, v in state.items()})
    return model


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters; matrices decay, biases and norm weights (1-D) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


# --------------------------------------------------------------------------- the loop


def tad_teacher(cfg: TrainConfig) -> DiffusionLM:
    """``tad``'s teacher: the base model ``cfg.model`` loaded once more, frozen, in eval mode.

    TAD's KL target is recomputed from this frozen copy at the student's masked state (exact
    for self-distillation: the trajectories were decoded by this very model, and recording
    per-state logits would cost T x V floats per state). With LoRA the copy doubles the frozen
    weights in memory; under FSDP every process holds a whole copy.
    """
    teacher = load_model(cfg.model, backend=cfg.backend, dtype=_load_dtype(cfg))
    teacher.model.eval()
    teacher.model.requires_grad_(False)
    if torch.cuda.is_available():
        from accelerate import PartialState

        teacher.model.to(PartialState().device)
    return teacher


def train(cfg: TrainConfig) -> Path:
    """Post-train a DLM with ``cfg.objective``; resumable, data-parallel under accelerate.

    Returns:
        ``output_dir``; the model loadable by ``load_model`` is in ``output_dir/model``
        (full fine-tuning, or the merged LoRA model), the adapter in ``output_dir/adapter``.

    Raises:
        ConfigError: checkpoints exist without ``resume``, a checkpoint of other data, or
            the package of ``report_to`` is missing.
        DataFileError, DataFileError, TrainDataError, FileNotFoundError: bad data,
            raised before any training step.
    """
    from accelerate.utils import set_seed

    # 1) model and data, checked before any compute; trackers; where to start
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.output_dir)
    if cfg.data and not Path(cfg.data).is_file():  # before the model loads (seconds to minutes)
        raise FileNotFoundError(f"data: no such file {cfg.data}")
    dlm = load_model(cfg.model, backend=cfg.backend, dtype=_load_dtype(cfg))
    items, _ = load_train_items(cfg, dlm)  # too-short trajectories: a warning
    teacher = tad_teacher(cfg) if cfg.objective == "tad" else None
    tracker = _check_tracker(cfg.report_to)
    eval_sets = make_eval_sets(cfg.eval_tasks, cfg.eval_examples, cfg.seed)

    # where to start: the newest whole checkpoint (damaged ones skipped with a warning), and
    # only if it was written with every setting that shapes the model, before any file changes
    from accelerate import PartialState

    world = PartialState(cpu=not torch.cuda.is_available()).num_processes
    spe = steps_per_epoch(len(items), cfg.batch_size * cfg.grad_accum * world)
    total = cfg.max_steps or cfg.epochs * spe
    settings = {k: v for k, v in to_dict(cfg).items() if k not in CADENCE}
    settings.update(world=world, total=total, n_items=len(items))
    settings["data_sha256"] = file_sha256(cfg.data) if cfg.data else None
    if cfg.lora_rank > 0:  # checkpoints hold the adapter: the base must be the same weights
        from tabom.fingerprint import model_fingerprint

        settings["model_weights"] = model_fingerprint(cfg.model)
    ckpt, ckpt_state = resume_point(out, cfg.resume, settings)

    # 2) accelerator, seeds, LoRA or full fine-tuning, optimizer, warmup + cosine schedule
    precision = {"fp32": "no", "bf16": "bf16"}.get(cfg.mixed_precision)
    if precision is None:  # auto
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16 else "no"
    accelerator = make_accelerator(  # the engine the launch config asks for, or a refusal
        batch_size=cfg.batch_size,
        grad_clip=cfg.grad_clip,
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=precision,
        step_scheduler_with_optimizer=False,  # stepped once per optimizer step, below
        log_with=tracker,
        project_dir=str(out),
    )
    rank = accelerator.process_index
    set_seed(cfg.seed)
    lora = cfg.lora_rank > 0
    model = _with_lora(dlm.model, cfg, dlm.spec.lora_targets) if lora else dlm.model
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    # the network and its LM head in one module: every engine gathers and reduces the head's
    # parameters around that module's forward (the loss terms are computed inside it)
    model = HeadForward(model, dlm.spec)
    # built before prepare: accelerate re-points it at the FSDP / DeepSpeed parameters (FSDP1
    # with use_orig_params, FSDP2, ZeRO); the decay groups need the original shapes
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, cfg.warmup_steps, cfg.min_lr_ratio)
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if accelerator.is_main_process:
        print(f"train: engine {describe(accelerator)}")
    if lora:  # checkpoints hold the adapter only: the frozen base comes from cfg.model
        trainable = {
            n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad
        }

        def keep_adapter(models, weights, _dir):
            for w in weights:
                for key in [k for k in w if k.removeprefix("module.") not in trainable]:
                    del w[key]

        accelerator.register_save_state_pre_hook(keep_adapter)
    start = 0
    if ckpt is not None:
        accelerator.load_state(str(ckpt), **({"strict": False} if lora else {}))
        start = ckpt_state["step"]
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")  # only now: the resume check has passed
        truncate_log(out / "log.jsonl", start)  # steps past the checkpoint run again
        if ckpt is not None:
            print(f"train: resuming {out} from {ckpt.name}")
        elif cfg.resume:
            print(f"train: no complete checkpoint in {out}; starting at step 0")
    if tracker:
        flat = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in to_dict(cfg).items()
        }
        accelerator.init_trackers("tabom", config=flat)
    train_dlm = PreparedLM(
        model=model, tokenizer=dlm.tokenizer, spec=dlm.spec, device_=accelerator.device
    )
    log = (out / "log.jsonl").open("a") if accelerator.is_main_process else None

    # 3) the loop: per optimizer step, grad_accum micro-batches of batch_size per process
    bar = tqdm(
        total=total,
        initial=start,
        desc=f"train {cfg.objective}",
        disable=not (cfg.progress and accelerator.is_main_process),
    )
    t0 = time.perf_counter()
    for step in range(start, total):
        model.train()
        lr = scheduler.get_last_lr()[0]
        sums = torch.zeros(len(LOG_KEYS), dtype=torch.float64)
        grad_norm = None
        for micro in range(cfg.grad_accum):
            # 3a) this process's items and masking draws: functions of (seed, step, slot)
            epoch, idx = batch_indices(
                len(items),
                step=step,
                micro=micro,
                process=rank,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                grad_accum=cfg.grad_accum,
                num_processes=world,
            )
            batch = collate_trajectories([items[i] for i in idx], dlm.spec.pad_token_id)
            dev = accelerator.device
            gen = torch.Generator(device=dev).manual_seed(
                micro_seed(cfg.seed, step, micro * world + rank)
            )
            with accelerator.accumulate(model):
                # 3b) mask, one forward, loss (0 with a graph when nothing is supervised);
                # the LM head runs at the supervised rows inside the prepared module's forward
                with accelerator.autocast():
                    res = compute_objective(
                        train_dlm,
                        batch.to(dev),
                        objective=cfg.objective,
                        loss=cfg.loss,
                        mask_token_id=dlm.mask_token_id,
                        generator=gen,
                        teacher=teacher,
                    )
                # 3c) backward on every micro-batch of every process: never skipped, so the
                # gradient all-reduce always has every rank
                accelerator.backward(res.total)
                if accelerator.sync_gradients:  # the norm of the reduced gradient: every rank's
                    clip = cfg.grad_clip or math.inf  # inf: measured, not clipped
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
                    if grad_norm is not None:  # None: the engine clips (DeepSpeed)
                        _stop_if_nonfinite(float(grad_norm), "gradient norm", step + 1, out)
                optimizer.step()  # a no-op until the last micro-batch of the step
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            values = {
                "ce": res.ce.item(),
                "rank": res.rank.item(),
                "kl": 0.0 if res.kl is None else res.kl.item(),
                "total": res.total.item(),
                "n_supervised": res.n_supervised,
                "n_pairs": res.n_pairs,
                "n_rank_samples": res.n_rank_samples,
                "n_uncut": res.n_uncut,
                "samples": len(idx),
            }
            sums += torch.tensor([values[k] for k in LOG_KEYS], dtype=torch.float64)
        done = step + 1
        bar.update(1)

        # 3d) log (a collective: every process reduces its sums), eval, checkpoint
        record: dict[str, Any] | None = None
        if done % cfg.log_every == 0 or done == total:
            tot = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
            s = dict(zip(LOG_KEYS, tot.tolist(), strict=True))
            n_micro = cfg.grad_accum * world
            record = {
                "step": done,
                "epoch": epoch,
                "ce": s["ce"] / n_micro,
                "rank": s["rank"] / n_micro,
                **({"kl": s["kl"] / n_micro} if cfg.objective == "tad" else {}),
                "total": s["total"] / n_micro,
                "lr": lr,
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "n_supervised": int(s["n_supervised"]),
                "pairs_per_sample": s["n_pairs"] / s["samples"],
                "n_rank_samples": int(s["n_rank_samples"]),
                "n_uncut": int(s["n_uncut"]),
            }
        if eval_sets and (done % cfg.eval_every == 0 or done == total):
            record = record or {"step": done}
            record["eval"] = greedy_accuracy(train_dlm, eval_sets)  # every process (FSDP-safe)
        if record is not None:
            record["elapsed_s"] = round(time.perf_counter() - t0, 2)
            if accelerator.device.type == "cuda":  # this process's peak, in GiB
                record["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if tracker:
                scalars = {k: v for k, v in record.items() if isinstance(v, (int, float))}
                scalars.update({f"eval/{k}": v for k, v in record.get("eval", {}).items()})
                accelerator.log(scalars, step=done)
            if "ce" in record:  # the rank term only for objectives that have one
                ranked = {"rank": f"{record['rank']:.3f}"} if cfg.objective == "tabom" else {}
                bar.set_postfix(ce=f"{record['ce']:.3f}", **ranked, lr=f"{lr:.2e}")
        if (cfg.save_every and done % cfg.save_every == 0) or done == total:
            _stop_if_nonfinite(_weights_finite(accelerator, model), "weight", done, out)
            save_checkpoint(accelerator, out, {"step": done, "epoch": epoch, "settings": settings})
    bar.close()
    if log is not None:
        log.close()

    # 4) final save: the adapter, and a full model that load_model reads. The full state dict
    # is gathered from the shards (a collective: every process calls it); under FSDP /
    # DeepSpeed the modules hold shards, so the main process rebuilds a whole copy from it
    # (outside ZeRO-3's partitioned init, which would wait for the other processes)
    accelerator.wait_for_everyone()
    state = full_state_dict(accelerator, model)
    state = {k.removeprefix("model."): v for k, v in state.items()}  # HeadForward's .model
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model).model
        if _is_sharded(accelerator):  # its modules hold shards: a whole copy from the state
            with without_zero3_init():
                final = _rebuild(cfg, state)
        if lora:
            final.save_pretrained(out / "adapter", state_dict=state)  # peft keeps the adapter
            final = final.merge_and_unload() if cfg.merge_lora else None
        if final is not None:
            save_model(DiffusionLM(final, dlm.tokenizer, dlm.spec, dlm.extra), out / "model")
        saved = [out / n for n in ("model", "adapter", "checkpoints", "log.jsonl", "config.yaml")]
        print("train: saved " + ", ".join(str(p) for p in saved if p.exists()))
    accelerator.wait_for_everyone()
    if tracker:
        accelerator.end_training()
    return out


class TrainingDiverged(TabomError):
    """A non-finite gradient or weight: the run stops before saving it (exit 2)."""


def _weights_finite(accelerator: Any, model: torch.nn.Module) -> float:
    """0.0 when every trainable weight of every process is finite, else nan (a collective)."""
    params = [p for p in model.parameters() if p.requires_grad]
    bad = sum(int((~torch.isfinite(p.detach())).sum()) for p in params)
    total = accelerator.reduce(torch.tensor([float(bad)], device=accelerator.device), "sum")
    return 0.0 if float(total.item()) == 0 else math.nan


def _stop_if_nonfinite(value: float, what: str, step: int, out: Path) -> None:
    """Refuse to step or save on a non-finite ``value``; names the last good checkpoint.

    Raises:
        TrainingDiverged: ``value`` is nan or inf.
    """
    if math.isfinite(value):
        return
    last = latest_checkpoint(out)  # written only after this check passed
    keep = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
    raise TrainingDiverged(
        f"step {step}: non-finite {what} ({value}); stopped "
        f"before stepping or saving it ({keep}); lower --lr or set --grad_clip"
    )


def run_train(cfg: TrainConfig) -> int:
    """CLI runner of ``tabom train`` (``tabom.cli`` turns a :class:`TabomError` into exit 2)."""
    train(cfg)
    return 0

