"""The language-model head only where the loss or the sampler needs it (DESIGN §3, §5).

A model that can is run to its final hidden states ``(B, L, H)`` (``hidden_states``); the head
is then applied at chosen ``(row, position)`` pairs only (``gather_hidden`` honours Dream's
shift, ``apply_head`` the output projection and whatever the model does around it), so a
training step computes logits at the N supervised and ranked positions instead of all B x L,
and a decode step at the still-masked positions of the active block. A plain callable
``(input_ids, attention_mask) -> (B, L, V)`` logits still works (:func:`as_head_model`: its
"hidden states" are the logits and its head the identity).

:func:`ce_entropy_at` gives the per-row CE and entropy from one ``(N, V)`` logits tensor (one
gather, one gradient buffer for both); with ``chunk`` it applies the head ``chunk`` rows at a time and recomputes
each chunk's logits in backward (activation checkpointing per chunk, as torchtune's chunked CE
and Liger's fused linear CE do), so no more than ``chunk x V`` logits live at once. Torch only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tabom.losses import token_entropy


@runtime_checkable
class HeadModel(Protocol):
    """A model whose head can be applied at chosen positions (:class:`DiffusionLM` is one)."""

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, L, H)``: what the head takes, before any logit shift."""
        ...

    def gather_hidden(
        self, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """``(N, H)``: the hidden rows whose head output is the aligned logits at each pair."""
        ...

    def apply_head(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        """``(N, V)`` logits of ``(N, H)`` gathered hidden rows."""
        ...


class LogitsModel:
    """A callable that returns aligned ``(B, L, V)`` logits, seen as a :class:`HeadModel`.

    Its hidden states are the logits themselves and its head is the identity: nothing is saved,
    and the result is exactly the callable's logits at each position.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.fn(input_ids, attention_mask)

    def gather_hidden(
        self, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        return hidden[rows, positions]

    def apply_head(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        return hidden_rows


def as_head_model(model: HeadModel | Callable) -> HeadModel:
    """``model`` itself if it is a :class:`HeadModel`, else a :class:`LogitsModel` around it."""
    return model if isinstance(model, HeadModel) else LogitsModel(model)


def logits_at(
    model: HeadModel, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """``(N, V)`` aligned logits at ``(rows[i], positions[i])``: the head on those rows only."""
    return model.apply_head(model.gather_hidden(hidden, rows, positions))


def ce_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy and entropy of ``(N, V)`` logits (fp32), differentiable.

    The same operations as the full-logits path (``F.cross_entropy`` on the fp32 rows,
    :func:`tabom.losses.token_entropy`), so values and gradients are those of that path bit for
    bit; autograd adds the two terms' gradients into the one ``(N, V)`` gradient of the rows.

    Args:
        logits: ``(N, V)``; -inf entries allowed (not at the target).
        targets: ``(N,)`` long.
        entropy: compute H (else zeros, no gradient path).

    Returns:
        ``(ce, h)``, both ``(N,)``: CE in fp32 (as ``masked_ce``), H in at least fp32.
    """
    ce = F.cross_entropy(logits.float(), targets, reduction="none")  # (N,)
    h = token_entropy(logits) if entropy else ce.detach().new_zeros(ce.shape)
    return ce, h


def ce_entropy_at(
    model: HeadModel,
    hidden: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk: int = 0,
    entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CE against ``targets`` and entropy of the aligned logits at each ``(row, position)``.

    The head runs on the N gathered rows only. With ``chunk > 0`` and more than ``chunk`` rows it
    runs ``chunk`` rows at a time and each chunk's logits are recomputed in backward instead of
    kept (``torch.utils.checkpoint``), so at most about three ``chunk x V`` fp32 buffers live at
    once; the values and gradients are those of the unchunked computation (each row's logits
    are computed alone; only the order in which the head's weight gradient is summed differs).

    Args:
        model: the :class:`HeadModel` that produced ``hidden``.
        hidden: ``(B, L, H)`` from ``model.hidden_states``.
        rows, positions: ``(N,)`` long, the pairs.
        targets: ``(N,)`` long, the clean token at each pair.
        chunk: rows per head application (0 = all at once).
        entropy: also return H (the ranking term needs it; CE-only objectives do not).

    Returns:
        ``(ce, h)``: ``(N,)`` each, fp32.

    Raises:
        ValueError: a negative ``chunk``.
    """
    if chunk < 0:
        raise ValueError(f"loss.loss_chunk must be >= 0, got {chunk}")
    h_rows = model.gather_hidden(hidden, rows, positions)  # (N, H)
    n = h_rows.shape[0]
    if chunk == 0 or n <= chunk:
        return ce_entropy(model.apply_head(h_rows), targets, entropy=entropy)

    def piece(h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ce_entropy(model.apply_head(h), t, entropy=entropy)

    parts = [
        checkpoint(piece, h_rows[i : i + chunk], targets[i : i + chunk], use_reentrant=False)
        for i in range(0, n, chunk)
    ]
    return torch.cat([c for c, _ in parts]), torch.cat([h for _, h in parts])
