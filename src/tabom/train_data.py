"""Training data of ``tabom train``: trajectories or ground truth, checked, in a resumable order.

Every objective trains on the same kind of item, ``[prompt | response]`` with a decode step per
response position (DESIGN §4-5): trajectory records as they are, ground-truth answers with
``decoding_order = -1`` everywhere (never decoded; random masking does not read it). Loading
checks what can be checked before any compute: an empty file, a tokenizer other than the
model's (:func:`tabom.trajectory.read_trajectories`), and windows M and W that do not fit the
trajectories' decode steps. :func:`batch_indices` gives the data order: a seeded permutation
per epoch, so the order at any optimizer step is a pure function of (seed, step) and resuming
needs only the step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tabom.errors import TabomError
from tabom.masking import cut_extra
from tabom.seeding import offset
from tabom.tasks import make_task
from tabom.tasks.base import read_jsonl, require_str
from tabom.trajectory import TrajectoryRecord, read_trajectories


class TrainDataError(TabomError):
    """Training data that cannot be used with this config; the message names the file and field."""


@dataclass
class TrajectoryItem:
    """One ``[prompt | response]`` training item, what :func:`collate_trajectories` batches.

    Attributes:
        id: the record's id (``prompt_id#sample``), or a ground-truth item's.
        prompt_ids: ``(P,)`` long, the ids that precede the response.
        response_ids: ``(T,)`` long.
        decoding_order: ``(T,)`` long, d per response position; -1 = never decoded (every
            position of a ground-truth item).
        decode_entropy: ``(T,)`` float, the entropy at commit time (NaN where unknown), or
            ``None`` if not recorded.
    """

    id: str
    prompt_ids: torch.Tensor
    response_ids: torch.Tensor
    decoding_order: torch.Tensor
    decode_entropy: torch.Tensor | None = None


class TrajectoryDataset(torch.utils.data.Dataset):
    """Trajectory records as tensors for training: one :class:`TrajectoryItem` per record."""

    def __init__(self, records: Sequence[TrajectoryRecord]) -> None:
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> TrajectoryItem:
        r = self.records[i]
        entropy = None
        if r.decode_entropy is not None:
            vals = [math.nan if v is None else float(v) for v in r.decode_entropy]
            entropy = torch.tensor(vals, dtype=torch.float)
        return TrajectoryItem(
            id=r.id,
            prompt_ids=torch.tensor(r.prompt_token_ids, dtype=torch.long),
            response_ids=torch.tensor(r.response_token_ids, dtype=torch.long),
            decoding_order=torch.tensor(r.decoding_order, dtype=torch.long),
            decode_entropy=entropy,
        )


@dataclass
class TrajectoryBatch:
    """A left-padded batch of ``[prompt | response]`` sequences, all ``(B, L)``.

    Attributes:
        input_ids: clean ids, pad on the left.
        attention_mask: 1 on prompt and response tokens.
        response_mask: True on response positions.
        decoding_order: d at response positions, -1 at prompt, pad and never-decoded ones
            (what :func:`tabom.masking.time_delay_mask` reads).
        decode_entropy: entropy at commit time on response positions, NaN elsewhere; ``None``
            unless every record has it.
        ids: record ids, in batch order.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    decoding_order: torch.Tensor
    decode_entropy: torch.Tensor | None
    ids: list[str]

    def to(self, device: torch.device | str) -> TrajectoryBatch:
        """The same batch with every tensor on ``device``."""
        return TrajectoryBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            response_mask=self.response_mask.to(device),
            decoding_order=self.decoding_order.to(device),
            decode_entropy=None if self.decode_entropy is None else self.decode_entropy.to(device),
            ids=self.ids,
        )


def collate_trajectories(items: Sequence[TrajectoryItem], pad_token_id: int) -> TrajectoryBatch:
    """Left-pad items into one batch; ``decoding_order`` pads with -1.

    Raises:
        ValueError: an empty batch.
    """
    if not items:
        raise ValueError("collate_trajectories needs at least one item")
    lengths = [len(it.prompt_ids) + len(it.response_ids) for it in items]
    B, L = len(items), max(lengths)
    ids = torch.full((B, L), pad_token_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    resp = torch.zeros((B, L), dtype=torch.bool)
    order = torch.full((B, L), -1, dtype=torch.long)
    with_entropy = all(it.decode_entropy is not None for it in items)
    entropy = torch.full((B, L), math.nan) if with_entropy else None
    for b, (it, n) in enumerate(zip(items, lengths, strict=True)):
        T = len(it.response_ids)
        ids[b, L - n :] = torch.cat([it.prompt_ids, it.response_ids])
        attn[b, L - n :] = 1
        resp[b, L - T :] = True
        order[b, L - T :] = it.decoding_order
        if entropy is not None:
            entropy[b, L - T :] = it.decode_entropy
    return TrajectoryBatch(
        input_ids=ids,
        attention_mask=attn,
        response_mask=resp,
        decoding_order=order,
        decode_entropy=entropy,
        ids=[it.id for it in items],
    )


def model_positions(model: Any) -> int | None:
    """The longest prompt + response ``model`` was built for (its config's position count)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "max_sequence_length", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_trajectories(
    path: str | Path,
    *,
    tokenizer: Any,
    vocab_size: int,
    verified_only: bool = False,
    max_length: int | None = None,
    mask_token_id: int | None = None,
) -> list[TrajectoryRecord]:
    """Read and validate a trajectory file against the model.

    Args:
        path: the trajectory JSONL written by ``tabom distill``.
        tokenizer: the model's tokenizer; every record's ``gen.tokenizer`` must match it.
        vocab_size: the model's vocabulary size (every id must be below it).
        verified_only: keep only records the verifier accepted (``verified: true``).
        max_length: the model's positions (:func:`model_positions`): prompt + response fit.
        mask_token_id: the model's [MASK] id, never a training target.

    Returns:
        The records, in file order.

    Raises:
        FileNotFoundError: no such file.
        DataFileError: a malformed record or another tokenizer (names file, line, field).
        TrainDataError: no record (an empty file, or none verified with ``verified_only``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data: no such trajectory file {path}")
    records = read_trajectories(
        path,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        max_length=max_length,
        mask_token_id=mask_token_id,
    )
    if not records:
        raise TrainDataError(f"{path}: data: the trajectory file holds no records (empty file)")
    if verified_only:
        records = [r for r in records if r.verified is True]
        if not records:
            raise TrainDataError(f"{path}: verified_only: none of the file's records is verified")
    return records


def check_windows(
    records: Sequence[TrajectoryRecord],
    path: str | Path,
    *,
    td_window: int,
    rank_window: int | None,
    window_unit: str = "steps",
    cut_range: str = "design",
) -> int:
    """Refuse windows M and W that no trajectory of the file can fill.

    With ``window_unit="steps"`` a trajectory whose last decode step is s_max can be cut only
    when M ≤ s_max (the cut range {0, …, s_max − M} is then non-empty; DESIGN §5), and a
    ranking window wider than the s_max + 1 steps it has is a setting meant for other data.
    With ``tokens`` the same holds for the number n of decoded tokens: M ≤ n − 1, W ≤ n.
    ``cut_range="inclusive"`` allows one more cut, so M ≤ s_max + 1 (steps) or M ≤ n (tokens).
    Records too short for M while others are long enough are allowed (they are counted as
    uncut in the logs) and reported in a warning.

    Args:
        records: the file's records.
        path: the file, for messages.
        td_window: M.
        rank_window: W (``None`` for objectives without ranking).
        window_unit: ``steps`` or ``tokens``.
        cut_range: ``design`` or ``inclusive`` (:func:`tabom.masking.time_delay_mask`).

    Returns:
        The number of records that cannot be cut.

    Raises:
        TrainDataError: M or W larger than every trajectory allows; names the field and file.
    """
    if window_unit == "steps":
        room = [max(r.decoding_order) for r in records]  # s_max per record
        what = "decode step s_max"
    else:
        room = [sum(d >= 0 for d in r.decoding_order) - 1 for r in records]
        what = "decoded tokens minus one"
    top = max(room)
    extra = cut_extra(cut_range)  # type: ignore[arg-type]
    if td_window > top + extra:
        rng = "{0, …, s_max − M + 1}" if extra else "{0, …, s_max − M}"
        # advise only what the flags accept: loss.td_window >= 1
        if top + extra >= 1:
            advice = f"use loss.td_window <= {top + extra}"
        elif not extra and top + 1 >= 1:
            advice = "use loss.td_cut_range inclusive (then loss.td_window 1 fits)"
        else:
            advice = (
                "these trajectories are too short for time-delay masking (decode with more "
                "steps, or train them with objective traj-sft)"
            )
        raise TrainDataError(
            f"{path}: loss.td_window: M = {td_window} {window_unit} but the largest {what} in the "
            f"file is {top}, so no trajectory can be cut (the cut s ranges over "
            f"{rng}); {advice}"
        )
    if rank_window is not None and rank_window > top + 1:
        raise TrainDataError(
            f"{path}: loss.rank_window: W = {rank_window} {window_unit} but the trajectories have "
            f"at most {top + 1} {window_unit}; use loss.rank_window <= {top + 1}"
        )
    short = sum(r + extra < td_window for r in room)
    if short:
        warnings.warn(
            f"{path}: {short} of {len(records)} trajectories are too short for loss.td_window "
            f"M = {td_window} and will supervise nothing (logged as n_uncut)",
            RuntimeWarning,
            stacklevel=2,
        )
    return short


def ground_truth_items(
    *,
    tokenizer: Any,
    eos_token_id: int,
    stop_token_id: int | None = None,
    encode_prompt: Callable[[str], list[int]] | None = None,
    gt_task: str | None = None,
    n_examples: int = 0,
    seed: int = 0,
    path: str | Path | None = None,
) -> list[TrajectoryItem]:
    """Ground-truth ``[prompt | answer + stop + EOS tail]`` items for ``sft``.

    Either ``gt_task``: ``n_examples`` instances generated from ``seed``, responses padded with
    EOS to the task's ``gen_length`` (as in pretraining); or ``path``: a JSONL file of
    ``{"prompt": str, "answer": str}`` lines, responses padded with EOS to the longest answer
    plus the stop token (if any) plus one EOS. A chat model ends its turn with a stop token
    before the EOS tail (LLaDA ``<|eot_id|>``, Dream ``<|im_end|>``; the first of
    ``BackendSpec.stop_token_ids``); the ground truth ends the same way, so that ``sft`` teaches
    the answers the model is decoded and evaluated on. Without one (the tiny backends) the
    answer is followed by EOS directly.

    Args:
        tokenizer: the model's tokenizer (answers are tokenised without special tokens).
        eos_token_id: the EOS id that pads each response.
        stop_token_id: the id that ends the answer before the EOS tail (``None``: none).
        encode_prompt: prompt text -> ids, as decoding conditions on them
            (:meth:`tabom.models.base.DiffusionLM.encode_prompt`: the chat template, if any);
            default the bare text without special tokens.
        gt_task: task spec to generate instances from.
        n_examples: instances to generate.
        seed: seed of the generated instances.
        path: the ``{prompt, answer}`` JSONL (when ``gt_task`` is None).

    Returns:
        :class:`TrajectoryItem` s with ``decoding_order = -1`` (nothing was decoded) and no
        ``decode_entropy``.

    Raises:
        DataFileError: a line without a string ``prompt`` or ``answer``.
        TrainDataError: an empty file, or an answer too long for the task's response length
            (it needs room for the stop token and one EOS).
    """

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    encode_prompt = encode_prompt or ids
    end = [] if stop_token_id is None else [stop_token_id]  # the turn's end, before EOS

    if gt_task is not None:
        task = make_task(gt_task)
        gen = torch.Generator().manual_seed(seed)
        rows = [(ex.id, None, ex.prompt, ex.answer) for ex in task.generate(n_examples, gen)]
        length = task.gen_length
        source = f"gt_task {gt_task!r}"
    else:
        lines = read_jsonl(path)  # type: ignore[arg-type]
        if not lines:
            raise TrainDataError(f"{path}: data: the ground-truth file holds no lines (empty file)")
        stem = Path(path).stem  # type: ignore[arg-type]
        rows = [  # (id, 1-based line, prompt, answer)
            (
                f"{stem}-{i}",
                i,
                require_str(path, i, r, "prompt"),
                require_str(path, i, r, "answer"),
            )
            for i, r in lines
        ]
        length = max(len(ids(a)) for _, _, _, a in rows) + len(end) + 1
        source = str(path)
    items = []
    for rid, line, prompt, answer in rows:
        answer_ids = ids(answer) + end
        if len(answer_ids) >= length:
            what = "the stop token and EOS" if end else "EOS"
            where = (
                f"{source}: answer of {rid}"
                if line is None
                else f"{path}:{line}: field 'answer': the answer"
            )
            raise TrainDataError(
                f"{where} has {len(answer_ids) - len(end)} tokens; the "
                f"response length {length} leaves no room for {what}"
            )
        response = answer_ids + [eos_token_id] * (length - len(answer_ids))
        items.append(ground_truth_item(rid, encode_prompt(prompt), response))
    return items


def ground_truth_item(item_id: str, prompt_ids: list[int], response_ids: list[int]) -> TrajectoryItem:
    """One ground-truth training item: never decoded (``decoding_order`` -1 everywhere), so
    :func:`collate_trajectories` batches it like a trajectory (``tabom pretrain`` and
    ``tabom train --objective sft`` use it)."""
    return TrajectoryItem(
        id=item_id,
        prompt_ids=torch.tensor(prompt_ids, dtype=torch.long),
        response_ids=torch.tensor(response_ids, dtype=torch.long),
        decoding_order=torch.full((len(response_ids),), -1, dtype=torch.long),
    )


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Optimizer steps in one pass over ``n`` items, ``global_batch`` items a step (last padded)."""
    return math.ceil(n / global_batch)


def batch_indices(
    n: int,
    *,
    step: int,
    micro: int,
    process: int,
    seed: int,
    batch_size: int,
    grad_accum: int,
    num_processes: int,
) -> tuple[int, list[int]]:
    """Which items one process reads at one micro-batch of one optimizer step.

    Epoch e visits the items in ``randperm(n)`` drawn from ``seed + e``, wrapped around to a
    multiple of the global batch G = ``batch_size × grad_accum × num_processes`` (the last
    step of an epoch repeats its first items, like ``DistributedSampler``'s padding), so every
    micro-batch of every process has exactly ``batch_size`` items. Optimizer step t covers
    positions [t·G, (t+1)·G) of the epoch's order; micro-batch a of process r reads the
    slice starting at (a·num_processes + r)·batch_size.

    Args:
        n: items in the data.
        step: global optimizer step (0-based, counting every epoch).
        micro: micro-batch within the step, in [0, grad_accum).
        process: process index.
        seed: data-order seed.
        batch_size: items per micro-batch per process.
        grad_accum: micro-batches per optimizer step.
        num_processes: data-parallel processes.

    Returns:
        ``(epoch, indices)``.
    """
    G = batch_size * grad_accum * num_processes
    spe = steps_per_epoch(n, G)
    epoch, t = divmod(step, spe)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(offset(seed, epoch)))
    order = order.repeat(math.ceil(spe * G / n))[: spe * G]  # wrap around to spe·G items
    start = t * G + (micro * num_processes + process) * batch_size
    return epoch, order[start : start + batch_size].tolist()


__all__ = [
    "ground_truth_item",
    "collate_trajectories",
    "TrajectoryDataset",
    "TrajectoryBatch",
    "TrajectoryItem",
    "TrainDataError",
    "batch_indices",
    "model_positions",
    "check_windows",
    "ground_truth_items",
    "load_trajectories",
    "steps_per_epoch",
]
