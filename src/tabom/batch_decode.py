"""Prompts in, answers out: batches of prompts through :func:`tabom.decoding.decode` (DESIGN §3).

:func:`decode_batches` is the one batched decode loop of the package (``tabom eval``, ``tabom
distill``, the lm-eval adapter): left-padded batches, deterministic decodes grouped by prompt
length, outputs back in prompt order (:func:`concat_outputs`). :func:`decode_texts` adds the
backend's chat template and cuts each answer at its first stop id (:func:`response_text`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from tabom.decoding import DecodeConfig, DecodeOutput, decode, pad_prompts

if TYPE_CHECKING:
    from tabom.models.base import DiffusionLM


def concat_outputs(outputs: Sequence[DecodeOutput], pad_token_id: int) -> DecodeOutput:
    """Stack the outputs of several batches, left-padding prompts to the widest.

    Returns:
        One :class:`DecodeOutput` whose ``nfe`` is the forwards summed over the batches.
    """
    if not outputs:
        raise ValueError("concat_outputs needs at least one output")
    width = max(o.prompt_length for o in outputs)
    seqs, masks, entropies = [], [], []
    for o in outputs:
        pad = width - o.prompt_length
        seqs.append(torch.nn.functional.pad(o.sequences, (pad, 0), value=pad_token_id))
        masks.append(torch.nn.functional.pad(o.attention_mask, (pad, 0), value=0))
        entropies.append(o.decode_entropy)
    return DecodeOutput(
        sequences=torch.cat(seqs),
        decoding_order=torch.cat([o.decoding_order for o in outputs]),
        nfe=sum(o.nfe for o in outputs),
        prompt_length=width,
        attention_mask=torch.cat(masks),
        decode_entropy=None if any(e is None for e in entropies) else torch.cat(entropies),
        row_forwards=None
        if any(o.row_forwards is None for o in outputs)
        else sum(o.row_forwards for o in outputs),  # type: ignore[misc]
    )


def response_text(
    tokenizer: Any, response_ids: Sequence[int] | torch.Tensor, eos_token_id: int | Sequence[int]
) -> str:
    """Decode a response cut at its first EOS, special tokens (pad, mask) dropped.

    Args:
        tokenizer: a Hugging Face tokenizer.
        response_ids: the response tokens (EOS tail included).
        eos_token_id: the id (or ids) that end the answer.
    """
    ids = response_ids.tolist() if isinstance(response_ids, torch.Tensor) else list(response_ids)
    stops = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    return tokenizer.decode(ids[:cut], skip_special_tokens=True)


def decode_batches(
    dlm: DiffusionLM,
    encoded: Sequence[list[int]],
    cfg: DecodeConfig,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "decode",
) -> DecodeOutput:
    """Decode encoded prompts in batches of ``batch_size`` (left-padded), outputs in prompt order.

    The one batched decode loop of the package (``tabom eval``, ``tabom distill``, the lm-eval
    adapter). Batches run in order and share ``generator``. A deterministic decode (temperature
    0, a score other than ``random``) over more than one batch groups prompts of similar length
    together (less padding; each batch keeps its prompts in their original order) and writes
    the rows back in prompt order: the same tokens, as a row decodes the same in any padded
    batch. A sampled decode keeps the prompts' order, since which random draws a prompt gets
    depends on its place in the batches (distill decodes each group as one batch anyway).

    Args:
        dlm: the model, its tokenizer and backend ids.
        encoded: prompt token ids, already templated (:meth:`DiffusionLM.encode_prompt`).
        cfg: decode settings.
        generator: all randomness, on ``dlm.device``.
        batch_size: prompts per forward.
        progress: show a progress bar over batches, labelled ``desc``.

    Returns:
        The batches' outputs concatenated in prompt order (:func:`concat_outputs`: ``nfe``
        summed over batches, prompts left-padded to the widest batch).

    Raises:
        ValueError: no prompts, or ``batch_size`` < 1.
    """
    if not encoded:
        raise ValueError("decode_batches needs at least one prompt")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pad = dlm.spec.pad_token_id
    order = list(range(len(encoded)))
    deterministic = cfg.temperature == 0 and cfg.score != "random"
    if deterministic and len(encoded) > batch_size:
        order.sort(key=lambda i: len(encoded[i]))  # stable: equal lengths keep their order
    batches = [sorted(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    outputs = []
    for rows in tqdm(batches, desc=desc, disable=not progress, leave=False):
        ids, mask = pad_prompts([list(encoded[i]) for i in rows], pad)
        ids, mask = ids.to(dlm.device), mask.to(dlm.device)
        part = decode(dlm, ids, mask, cfg, mask_token_id=dlm.mask_token_id, generator=generator)
        outputs.append(part)
    if len(outputs) == 1:
        return outputs[0]
    out = concat_outputs(outputs, pad)
    done = [i for rows in batches for i in rows]  # prompt index of each output row
    if done == sorted(done):
        return out
    back = torch.empty(len(done), dtype=torch.long)
    back[torch.tensor(done)] = torch.arange(len(done))  # output row of each prompt
    back = back.to(out.sequences.device)
    entropy = out.decode_entropy
    return dataclasses.replace(
        out,
        sequences=out.sequences[back],
        decoding_order=out.decoding_order[back],
        attention_mask=out.attention_mask[back],
        decode_entropy=None if entropy is None else entropy[back],
    )


def decode_texts(
    dlm: DiffusionLM,
    prompts: list[str],
    cfg: DecodeConfig,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "decode",
) -> tuple[list[str], DecodeOutput]:
    """Encode the prompts as the backend does, decode in batches and return the answers.

    Args:
        dlm: the model, its tokenizer and backend ids.
        prompts: user prompts, before any template: :meth:`DiffusionLM.encode_prompt` applies
            the backend's chat template (the tiny backends: the bare text).
        cfg: decode settings.
        generator: all randomness, on ``dlm.device``.
        batch_size: prompts per forward.
        progress: show a progress bar over batches, labelled ``desc``.

    Returns:
        ``(texts, output)``: the responses cut at the first stop id (``dlm.spec.stop_ids``:
        EOS, LLaDA's ``<|eot_id|>``, Dream's ``<|im_end|>``), and :func:`decode_batches`'s
        output (prompt order; ``nfe`` summed over batches).
    """
    encoded = [dlm.encode_prompt(p) for p in prompts]  # the chat template, if the backend has one
    out = decode_batches(
        dlm, encoded, cfg, generator=generator, batch_size=batch_size, progress=progress, desc=desc
    )
    texts = [response_text(dlm.tokenizer, r, dlm.spec.stop_ids) for r in out.response_ids.tolist()]
    return texts, out
