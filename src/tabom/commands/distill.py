"""``tabom distill``: self-distillation, prompts -> decode -> verify -> trajectories (DESIGN §3-4).

The model decodes ``n_samples`` answers per prompt with the chosen score and budget, every
answer is checked by the task's verifier, and ``keep`` decides which records are written
(DESIGN §4 format, :mod:`tabom.trajectory`). Run: ``tabom distill --n_prompts 256``, or
``accelerate launch --num_processes 4 -m tabom.cli distill ...`` to shard the prompts over GPUs
(on CPU: ``accelerate launch --multi_gpu --num_processes 2 ...`` or ``torchrun
--nproc_per_node 2 -m tabom.cli distill ...``; plain ``accelerate launch`` starts one CPU
process). ``tabom inspect FILE`` summarises the result.

Determinism: prompts are cut into fixed *groups* of ``prompts_per_batch`` consecutive prompts;
a group is always decoded as one batch (its prompts x ``n_samples`` rows) with its own
generator seeded from ``(seed, group index)`` (:func:`tabom.seeding.derive`). What a sample decodes therefore depends only on
the settings, never on the process or the resume segment that decodes its group: same seed,
same file, and a sharded or resumed run writes the same bytes as one uninterrupted process
(given the same floating-point hardware).

Resume and shards: the store (:mod:`tabom.trajectory_store`) appends records and one sidecar
line per finished group (``OUTPUT.progress``), fsynced; a rerun checks the settings, cuts a torn
last line, skips the finished groups and appends only records not in the file yet. Under
``accelerate launch`` process r decodes every P-th unfinished group into ``OUTPUT.shard-r``;
the main process merges the shards into OUTPUT in prompt order.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from tabom.batch_decode import decode_batches, response_text
from tabom.config import AT_LEAST_1, NON_NEGATIVE, check_ranges, save_config, to_dict
from tabom.decoding import DecodeConfig
from tabom.errors import TabomError
from tabom.fingerprint import model_fingerprint, prompt_hashes, save_fingerprints
from tabom.kv_cache import cache_support
from tabom.models import DEFAULT_MODEL, load_model
from tabom.models.base import DiffusionLM
from tabom.prompts import read_prompts
from tabom.seeding import generator
from tabom.tasks import (
    NEW_DOMAIN,  # the shipped base model's new domain: default prompts
    make_task,
)
from tabom.tasks.base import Example, Task, verify_all
from tabom.train_data import model_positions
from tabom.trajectory import TrajectoryRecord, tokenizer_fingerprint
from tabom.trajectory_store import (
    CONFIG,
    FINGERPRINT,
    PROGRESS,
    SUMMARY,
    GroupStats,
    TrajectoryStore,
    check_resume,
    sidecar,
    summarise,
)


@dataclass
class DistillConfig:
    """Config of ``tabom distill``.

    Attributes:
        model: shipped model name (``tiny-base``) or a local model folder.
        task: task spec; its verifier checks every answer and it draws the prompts unless
            ``prompts_file`` is set. ``none``: no verifier (``verified`` is null).
        prompts_file: prompts from a file instead: a ``.jsonl`` file, or (with the optional
            ``datasets`` package) a ``save_to_disk`` folder, ``.parquet``/``.csv``/``.json``
            file or hub dataset id.
        prompt_field: field holding the prompt; ``None``: the task's own file format
            (``task.load``) when it has one, else ``prompt``.
        id_field: field holding a stable prompt id (default: ``{file stem}-{line}``).
        split: split of a ``datasets`` folder or hub dataset.
        n_prompts: prompts to decode (generated; or the first n of the file, ``None`` = all).
        n_samples: answers decoded per prompt.
        keep: which answers are written: ``verified`` (the verifier accepts them) or ``all``.
        decode: the decode settings (``--decode.score``, ``--decode.temperature``,
            ``--decode.tokens_per_step``, ``--decode.threshold`` ...; :class:`DecodeConfig`):
            ``score`` is the record's ``method``, ``gen_length`` defaults to the task's,
            ``steps`` to ``ceil(T / tokens_per_step)``; temperature 0 needs ``n_samples == 1``.
        seed: seed of the generated prompts and of every sample (see the module docstring).
        prompts_per_batch: prompts decoded together (a batch has this many x n_samples rows);
            part of the random stream, so changing it changes the samples like a new seed.
        output: the trajectory file; ``.progress``, ``.summary.json``, ``.config.yaml`` and
            ``.fingerprint.json`` (prompt texts and model weights, checked on resume)
            sidecars go next to it.
        ks: the k of pass@k over the prompts (each <= n_samples).
        num_threads: torch CPU threads per process; 1 is fastest for the tiny model
            (docs/benchmarks.md); 0 = torch's default.
        progress: show a progress bar.
        trust_remote_code: run the checkpoint's own modeling code (``llada-remote`` /
            ``dream-remote``); never implied by a file in the model folder.
    """

    model: str = DEFAULT_MODEL
    task: str | None = NEW_DOMAIN
    prompts_file: str | None = None
    prompt_field: str | None = None
    id_field: str | None = None
    split: str = "train"
    n_prompts: int | None = field(default=256, metadata=AT_LEAST_1)
    n_samples: int = field(default=4, metadata=AT_LEAST_1)
    keep: Literal["verified", "all"] = "verified"
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig(temperature=1.0))
    seed: int = field(default=0, metadata=NON_NEGATIVE)
    prompts_per_batch: int = field(default=8, metadata=AT_LEAST_1)
    output: str = "runs/distill/trajectories.jsonl"
    ks: list[int] = field(default_factory=lambda: [1, 4], metadata=AT_LEAST_1)
    num_threads: int = field(default=1, metadata=NON_NEGATIVE)
    progress: bool = True
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.output.strip() or self.output.endswith(("/", "\\")):
            raise ValueError(f"output: {self.output!r} is not a file path (a .jsonl file)")
        if self.n_prompts is None and self.prompts_file is None:
            raise ValueError("n_prompts: generated prompts need a count (None only with a file)")
        if self.task is None and self.prompts_file is None:
            raise ValueError("task: None needs prompts_file (there is nothing to draw from)")
        if self.task is None and self.keep == "verified":
            raise ValueError("keep: 'verified' needs a task with a verifier (or use keep: all)")
        if self.task is None and self.decode.gen_length is None:
            raise ValueError("decode.gen_length: set it when there is no task to take it from")
        if not self.ks:
            raise ValueError("ks: give at least one k of pass@k (e.g. 1)")
        if any(k > self.n_samples for k in self.ks):  # k >= 1: the field's range
            raise ValueError(f"ks {self.ks}: every k must be in [1, n_samples={self.n_samples}]")
        if self.n_samples > 1 and self.decode.temperature == 0:
            raise ValueError(
                "n_samples > 1 with decode.temperature 0 decodes the same answer n times"
            )
        try:  # the task's T against the decode budget, before any work starts
            self.decode_config()
        except ValueError as e:
            raise ValueError(f"decode.{e}") from None

    def decode_config(self) -> DecodeConfig:
        """The decode settings: T from the task unless set, steps from the budget."""
        T = None if self.task is None else make_task(self.task).gen_length
        return dataclasses.replace(self.decode.resolve(T), record_entropy=True)


# --------------------------------------------------------------------------- prompts


def load_prompts(cfg: DistillConfig, task: Task | None) -> list[Example]:
    """The run's prompts (:func:`tabom.prompts.read_prompts` with ``cfg``'s settings)."""
    return read_prompts(
        task,
        cfg.n_prompts,
        generator(cfg.seed, "distill", "prompts") if cfg.prompts_file is None else None,
        path=cfg.prompts_file,
        prompt_field=cfg.prompt_field,
        id_field=cfg.id_field,
        split=cfg.split,
    )


# --------------------------------------------------------------------------- one group


def decode_group(
    dlm: DiffusionLM,
    task: Task | None,
    examples: list[Example],
    cfg: DistillConfig,
    decode_cfg: DecodeConfig,
    gen: dict[str, Any],
    group: int,
    data_source: str,
) -> tuple[list[TrajectoryRecord], GroupStats]:
    """Decode one group (its prompts x ``n_samples`` rows, one batch) and verify every answer.

    Returns:
        Every sample's record (prompt order, then sample index) and the group's stats.
    """
    tok, n = dlm.tokenizer, cfg.n_samples
    encoded = [dlm.encode_prompt(ex.prompt) for ex in examples]  # chat template if any
    rows = [p for p in encoded for _ in range(n)]
    group_gen = generator(cfg.seed, "distill", "group", group, device=dlm.device)
    t0 = time.perf_counter()
    # the whole group is one batch with its own generator (a group decodes the same alone)
    out = decode_batches(dlm, rows, decode_cfg, generator=group_gen, batch_size=len(rows))
    seconds = time.perf_counter() - t0
    responses = out.response_ids.tolist()  # (B, T)
    orders = out.decoding_order.tolist()  # (B, T)
    entropies = out.decode_entropy.tolist()  # type: ignore[union-attr]
    texts = [response_text(tok, ids, dlm.spec.stop_ids) for ids in responses]
    pairs = [(ex, texts[i * n + j]) for i, ex in enumerate(examples) for j in range(n)]
    verdicts = [None] * len(pairs) if task is None else _verify_group(task, pairs)
    records = [
        TrajectoryRecord(
            id=f"{ex.id}#{j}",
            prompt_id=ex.id,
            sample=j,
            prompt=ex.prompt,
            prompt_token_ids=encoded[i],
            response_token_ids=responses[i * n + j],
            decoding_order=orders[i * n + j],
            response_text=texts[i * n + j],
            method=cfg.decode.score,
            data_source=data_source,
            verified=verdicts[i * n + j],
            gen=gen,
            decode_entropy=entropies[i * n + j],
        )
        for i, ex in enumerate(examples)
        for j in range(n)
    ]
    stats = GroupStats(
        group=group,
        prompt_ids=[ex.id for ex in examples],
        correct=[verdicts[i * n : (i + 1) * n] for i in range(len(examples))],
        rows=len(responses),
        nfe=out.nfe,
        committed=int((out.decoding_order >= 0).sum()),
        seconds=round(seconds, 4),
    )
    return records, stats


def _verify_group(task: Task, pairs: list[tuple[Example, str]]) -> list[bool | None]:
    """The verdicts of a group's answers: all at once for a task with ``verify_many`` (the
    code tasks run their sandboxes in parallel), else one by one."""
    if not hasattr(task, "verify_many"):
        return [_verify(task, ex, text) for ex, text in pairs]
    try:
        return list(verify_all(task, pairs))
    except TabomError:
        raise
    except (KeyError, TypeError, ValueError):
        for ex, text in pairs:  # name the prompt whose data the verifier cannot read
            _verify(task, ex, text)
        raise


def _verify(task: Task, ex: Example, text: str) -> bool:
    try:
        return bool(task.verify(ex, text))
    except (KeyError, TypeError, ValueError) as e:
        raise TabomError(
            f"prompt {ex.id!r}: task {task.name!r} cannot verify it ({e!r}); the prompt's data "
            "lacks what the verifier reads (use the task's own file format, or task: none)"
        ) from e


# --------------------------------------------------------------------------- the command


@dataclass
class DistillSummary:
    """What a finished run reports (also ``OUTPUT.summary.json``).

    Attributes:
        prompts: prompts in the run.
        samples: answers decoded over the whole run (prompts x n_samples).
        records: records in the output file.
        verified: answers the verifier accepted (``None`` without a task).
        verified_share: ``verified / samples``.
        pass_at: ``{k: pass@k}`` averaged over prompts (unbiased estimator).
        nfe_per_answer: forwards per answer (a batched forward counts once per row).
        tokens_per_forward: response tokens committed per forward per answer.
        decoded_now: answers decoded by this invocation (0 if the file was complete).
        kept_now: trajectories this invocation added to the file (``keep`` decides which
            answers become records: all, or the verified ones).
        decode_seconds: decode time summed over groups and processes (all invocations).
        wall_seconds: this invocation, start to end.
        answers_per_minute: ``decoded_now`` per minute of this invocation's decode loop.
        kept_per_minute: ``kept_now`` per minute of the same loop.
        processes: processes of this invocation.
        output: the trajectory file.
    """

    prompts: int
    samples: int
    records: int
    verified: int | None
    verified_share: float | None
    pass_at: dict[int, float]
    nfe_per_answer: float
    tokens_per_forward: float
    decoded_now: int
    kept_now: int
    decode_seconds: float
    wall_seconds: float
    answers_per_minute: float
    kept_per_minute: float
    processes: int
    output: str

    def format(self) -> str:
        """A few human-readable lines."""
        share = "n/a" if self.verified_share is None else f"{self.verified_share:.1%}"
        passes = " ".join(f"pass@{k} {v:.3f}" for k, v in self.pass_at.items())
        return (
            f"distill: {self.prompts} prompts, {self.samples} samples, {self.records} records "
            f"-> {self.output}\n"
            f"verified {share}  {passes}\n"
            f"{self.nfe_per_answer:.2f} forwards/answer, {self.tokens_per_forward:.2f} "
            f"tokens/forward on {self.processes} process(es); wall {self.wall_seconds:.1f} s\n"
            f"now: decoded {self.decoded_now} answers ({self.answers_per_minute:.0f}/min), "
            f"kept {self.kept_now} as trajectories ({self.kept_per_minute:.0f}/min)"
        )


RESUME_SETTINGS = ("model", "task", "prompts_file", "prompt_field", "id_field", "split",
                   "n_samples", "keep", "decode", "seed", "prompts_per_batch")  # fmt: skip
"""Every setting that shapes the output file (the whole decode group: score, budget,
sampling): a rerun onto an existing file must match them (``n_prompts`` may grow; the ``gen``
of each record and the sidecar's groups check the rest)."""


def distill(cfg: DistillConfig) -> DistillSummary | None:
    """Decode, verify and write trajectories; resumable, sharded under ``accelerate launch``.

    Returns:
        The summary on the main process (printed and written to ``OUTPUT.summary.json``),
        ``None`` on the others.

    Raises:
        DataFileError: the output holds records of other settings or other prompts.
    """
    from accelerate import PartialState

    # 1) setup: processes, model, prompts and their groups, the generation settings
    t_start = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    state = PartialState(cpu=not torch.cuda.is_available())
    rank, world = state.process_index, state.num_processes
    output = Path(cfg.output)
    # bf16 weights on a CUDA device; remote code only when asked for
    dlm = load_model(cfg.model, device=state.device, trust_remote_code=cfg.trust_remote_code)
    task = make_task(cfg.task) if cfg.task is not None else None
    examples = load_prompts(cfg, task)
    G = cfg.prompts_per_batch
    groups = [examples[i : i + G] for i in range(0, len(examples), G)]
    group_ids = [[ex.id for ex in grp] for grp in groups]
    plan_order = {
        f"{ex.id}#{j}": i * cfg.n_samples + j
        for i, ex in enumerate(examples)
        for j in range(cfg.n_samples)
    }
    decode_cfg = cfg.decode_config()
    if decode_cfg.cache != "none" and (why := cache_support(dlm)) is not None:
        raise TabomError(f"--decode.cache {decode_cfg.cache}: {why}")  # before any file is touched
    positions = model_positions(dlm.model)
    if positions is not None:  # prompt + response must fit the model, before any decoding
        for i, ex in enumerate(examples):
            n = len(dlm.encode_prompt(ex.prompt))
            if n + decode_cfg.gen_length > positions:
                raise TabomError(
                    f"{cfg.prompts_file or 'prompts'}: prompt {ex.id!r} (#{i + 1}) has {n} tokens; "
                    f"with gen_length {decode_cfg.gen_length} that is more than the model's "
                    f"{positions} positions"
                )
    gen = {  # the whole decode group (DecodeConfig.record), then what decoded it
        **decode_cfg.record(),
        "seed": cfg.seed,
        "n_samples": cfg.n_samples,
        "prompts_per_batch": G,
        "model": cfg.model,
        "backend": dlm.spec.name,
        "shift_logits": dlm.spec.shift_logits,
        "vocab_size": dlm.vocab_size,
        "tokenizer": tokenizer_fingerprint(dlm.tokenizer),
    }
    data_source = cfg.task
    if cfg.prompts_file is not None:
        data_source = f"{cfg.task or 'none'}@{Path(cfg.prompts_file).name}"

    # 2) resume: the main process merges leftovers (torn lines, shards of a killed run)
    store = TrajectoryStore(output, plan_order, group_ids, gen)
    if state.is_main_process:
        # what a setting's value does not show: the weights (None for a hub id), prompt texts
        fingerprint = {
            "model_weights": model_fingerprint(cfg.model),
            "prompts": prompt_hashes((ex.id, ex.prompt) for ex in examples),
        }
        from_record = {"decode.score": ("method", cfg.decode.score)}  # a file without sidecar
        if cfg.prompts_file is None:
            from_record["task"] = ("data_source", cfg.task)
        check_resume(  # reads only: a refused rerun changes nothing
            output,
            {k: v for k, v in to_dict(cfg).items() if k in RESUME_SETTINGS},
            from_record,
            fingerprint,
            model=cfg.model,
            prompts_source=f"prompts_file {cfg.prompts_file}" if cfg.prompts_file else "prompts",
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        lines, done = store.consolidate()  # checks, then repairs
        records_before = len(lines)
        save_config(cfg, sidecar(output, CONFIG))  # only after the check
        save_fingerprints(sidecar(output, FINGERPRINT), fingerprint)
    state.wait_for_everyone()
    if not state.is_main_process:
        lines, done = store.read()
    todo = [g for g in range(len(groups)) if g not in done]
    mine = todo[rank::world]

    # 3) decode my groups: records first (fsync), then the group's sidecar line (fsync)
    t_loop = time.perf_counter()
    bar = tqdm(
        total=sum(len(groups[g]) for g in mine),
        desc="distill",
        unit="prompt",
        disable=not (cfg.progress and state.is_main_process),
    )
    n_ok = n_seen = 0
    keep_all = cfg.keep == "all"
    with store.writer(None if world == 1 else rank, lines) as writer:
        for g in mine:
            records, stats = decode_group(
                dlm, task, groups[g], cfg, decode_cfg, gen, g, data_source
            )
            writer.add([r for r in records if keep_all or r.verified is True], stats)
            n_seen += stats.rows
            n_ok += sum(bool(v) for row in stats.correct for v in row)
            bar.update(len(groups[g]))
            bar.set_postfix(verified=f"{n_ok / max(1, n_seen):.0%}")
    bar.close()
    state.wait_for_everyone()
    loop_seconds = time.perf_counter() - t_loop

    # 4) the main process merges the shards and reports
    if not state.is_main_process:
        return None
    lines, done = store.consolidate()
    missing = [g for g in range(len(groups)) if g not in done]
    if missing:
        raise RuntimeError(f"{output}: groups {missing[:5]} were not decoded (a process failed?)")
    decoded_now = sum(len(groups[g]) * cfg.n_samples for g in todo)
    kept_now = len(lines) - records_before
    minutes = max(loop_seconds, 1e-9) / 60
    summary = DistillSummary(
        **summarise(done, cfg.n_samples, cfg.ks, len(lines)),
        decoded_now=decoded_now,
        kept_now=kept_now,
        wall_seconds=round(time.perf_counter() - t_start, 3),
        answers_per_minute=round(decoded_now / minutes, 1),
        kept_per_minute=round(kept_now / minutes, 1),
        processes=world,
        output=str(output),
    )
    payload = {"summary": dataclasses.asdict(summary), "config": to_dict(cfg), "gen": gen}
    summary_path = sidecar(output, SUMMARY)
    summary_path.write_text(json.dumps(payload, indent=1) + "\n")
    print(summary.format())
    sidecars = ", ".join(str(sidecar(output, s)) for s in (CONFIG, PROGRESS, FINGERPRINT))
    print(f"saved: {output} (trajectories); {summary_path}, {sidecars}")
    return summary


def run_distill(cfg: DistillConfig) -> int:
    """CLI runner of ``tabom distill``."""
    distill(cfg)
    return 0


__all__ = [
    "DistillConfig",
    "DistillSummary",
    "decode_group",
    "distill",
    "load_prompts",
    "run_distill",
]
