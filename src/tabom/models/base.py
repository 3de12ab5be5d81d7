"""The one interface every backend provides to decoding, training and evaluation (DESIGN §2).

Backends differ by data, not by code paths: a :class:`BackendSpec` holds the mask id, whether
logits are shifted by one position (Dream), the special ids and the default LoRA targets, and
:class:`DiffusionLM` turns any Hugging Face model into ``(input_ids, attention_mask) -> logits``
already aligned so that ``logits[:, j]`` predicts token ``j``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class BackendSpec:
    """What a sampler or trainer needs to know about a model family.

    Attributes:
        name: backend name (``tiny``, ``tiny-dream``, ``llada``, ``dream``, ``hf-mlm``).
        mask_token_id: id of the [MASK] token.
        shift_logits: Dream-style models predict token j from position j-1; the wrapper
            realigns them (aligned[:, 0] = raw[:, 0], aligned[:, j] = raw[:, j-1]).
        eos_token_id: end-of-sequence id (the model fills the unused tail with it).
        pad_token_id: padding id (left padding for batched prompts).
        lora_targets: default LoRA target module names.
    """

    name: str
    mask_token_id: int
    shift_logits: bool
    eos_token_id: int
    pad_token_id: int
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")


def align_logits(raw: torch.Tensor, shift: bool) -> torch.Tensor:
    """Realign shifted logits so position j predicts token j.

    Args:
        raw: ``(B, L, V)`` logits as the network returns them.
        shift: whether the network predicts token j at position j-1 (Dream).

    Returns:
        ``(B, L, V)`` logits with ``out[:, 0] = raw[:, 0]`` and ``out[:, j] = raw[:, j-1]``
        when ``shift`` is set, else ``raw`` itself.
    """
    if not shift:
        return raw
    return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on the first real token of each left-padded row."""
    pos = attention_mask.long().cumsum(-1) - 1  # (B, L)
    return pos.clamp(min=0)


@dataclass
class DiffusionLM:
    """A bidirectional Hugging Face model, its tokenizer and its backend data.

    Call it like a function: ``dlm(input_ids, attention_mask)`` returns aligned logits
    ``(B, L, V)``. Left-padded batches get position ids counted from the first real token, so
    a row decodes the same alone or in a padded batch.
    """

    model: Any
    tokenizer: Any
    spec: BackendSpec
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mask_token_id(self) -> int:
        return self.spec.mask_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Aligned logits ``(B, L, V)`` for ``input_ids`` ``(B, L)``."""
        kwargs: dict[str, Any] = {}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        raw = self.model(input_ids=input_ids, **kwargs).logits  # (B, L, V)
        return align_logits(raw, self.spec.shift_logits)
