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

_LOG_ZERO = -1e4  # exp(-1e4) == 0 in fp32: below this, p log p is exactly 0 (as token_entropy)


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

    def linear_head(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """``(weight (V, H), bias (V,) | None)`` when ``apply_head`` is exactly that linear map
        and its weight can be read here (the fused chunked loss); ``None`` otherwise (the
        identity, or a head only its own call may apply: chunks then call ``apply_head``)."""
        ...


class LogitsModel:
    """A callable that returns aligned ``(B, L, V)`` logits, seen as a :class:`HeadModel`.

    Its hidden states are the logits themselves and its head is the identity: nothing is saved,
    and the result is exactly the callable's logits at each position (``loss_chunk`` has
    nothing to chunk: the logits exist already).
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

    def linear_head(self) -> None:
        return None


def as_head_model(model: HeadModel | Callable) -> HeadModel:
    """``model`` itself if it is a :class:`HeadModel`, else a :class:`LogitsModel` around it."""
    return model if isinstance(model, HeadModel) else LogitsModel(model)


def logits_at(
    model: HeadModel, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """``(N, V)`` aligned logits at ``(rows[i], positions[i])``: the head on those rows only."""
    return model.apply_head(model.gather_hidden(hidden, rows, positions))


class _CEEntropy(torch.autograd.Function):
    """Per-row CE and entropy of ``(N, V)`` logits, the full-logits path's numbers bit for bit.

    Forward: log p = log_softmax(fp32 z) (what ``F.cross_entropy`` and ``token_entropy`` each
    compute), ce = -log p[target], H = -Σ p log p (log p clamped where p underflows). Only
    log p is kept for backward (autograd of the two terms would keep z and log p); backward
    forms the CE gradient with the op autograd uses for log_softmax and the entropy gradient
    in ``token_entropy``'s order, and adds them into one ``(N, V)`` buffer, so the gradient is
    the one autograd would accumulate from the two terms, with less memory.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, want_entropy: bool):
        logp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
        ce = -logp.gather(-1, targets[:, None]).squeeze(-1)  # (N,)
        if want_entropy:
            p = logp.exp()
            h = -p.mul_(logp.clamp(min=_LOG_ZERO)).sum(-1)  # (N,)
            del p
        else:
            h = ce.new_zeros(ce.shape)
        ctx.want_entropy, ctx.dtype = want_entropy, logits.dtype
        ctx.save_for_backward(logp, targets, h)
        return ce, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ce: torch.Tensor, grad_h: torch.Tensor):
        logp, targets, h = ctx.saved_tensors
        grad = None
        if ctx.want_entropy:  # token_entropy's backward: ((clamp(log p) + H) p) (-g_H)
            grad = logp.clamp(min=_LOG_ZERO).add_(h[:, None])
            p = logp.exp()
            grad.mul_(p).mul_(-grad_h[:, None])
            del p
        g_logp = torch.zeros_like(logp).scatter_(-1, targets[:, None], -grad_ce[:, None])
        g_ce = torch._log_softmax_backward_data(g_logp, logp, -1, logp.dtype)  # as autograd
        del g_logp
        grad = g_ce if grad is None else g_ce.add_(grad)
        return grad.to(ctx.dtype), None, None


def ce_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy and entropy of ``(N, V)`` logits (fp32), differentiable.

    The same numbers as the full-logits path (``F.cross_entropy`` on the fp32 rows,
    :func:`tabom.losses.token_entropy`), values and gradient, bit for bit in fp32; one
    ``(N, V)`` gradient buffer for both terms and only log p kept for backward.

    Args:
        logits: ``(N, V)``; -inf entries allowed (not at the target).
        targets: ``(N,)`` long.
        entropy: compute H (else zeros, no gradient path).

    Returns:
        ``(ce, h)``, both ``(N,)`` fp32.
    """
    return _CEEntropy.apply(logits, targets, entropy)


class _ChunkedLinearCE(torch.autograd.Function):
    """Per-row CE and entropy of ``linear(h, W, b)`` computed ``chunk`` rows at a time.

    Nothing of size V is kept for backward: it recomputes each chunk's logits, forms their
    gradient g_ce (p - onehot) - g_H p (log p + H) in one buffer and accumulates the weight's
    gradient in place (one ``(V, H)`` buffer however many chunks), as Liger's fused linear CE.
    The matrix products run in the autocast dtype when autocast is on (as the head would),
    the softmax in fp32.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk: int, want_entropy: bool):
        device = h.device.type
        mm = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        n = h.shape[0]
        ce = torch.empty(n, dtype=torch.float32, device=h.device)
        ent = torch.zeros(n, dtype=torch.float32, device=h.device)
        with torch.autocast(device, enabled=False):
            w, b = weight.to(mm), None if bias is None else bias.to(mm)
            for i in range(0, n, chunk):
                logp = torch.log_softmax(F.linear(h[i : i + chunk].to(mm), w, b).float(), -1)
                ce[i : i + chunk] = -logp.gather(-1, targets[i : i + chunk, None]).squeeze(-1)
                if want_entropy:
                    p = logp.exp()
                    ent[i : i + chunk] = -p.mul_(logp.clamp_(min=_LOG_ZERO)).sum(-1)
        ctx.chunk, ctx.want_entropy, ctx.mm = chunk, want_entropy, mm
        ctx.save_for_backward(h, weight, bias, targets, ent)
        return ce, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ce, grad_h):
        h, weight, bias, targets, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        mm, chunk, device = ctx.mm, ctx.chunk, h.device.type
        gx = torch.empty_like(h) if need_h else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
        gb = (
            torch.zeros(bias.shape, dtype=torch.float32, device=h.device)
            if need_b and bias is not None
            else None
        )
        with torch.autocast(device, enabled=False):
            w, b = weight.to(mm), None if bias is None else bias.to(mm)
            for i in range(0, h.shape[0], chunk):
                hc, t = h[i : i + chunk], targets[i : i + chunk]
                g_ce = grad_ce[i : i + chunk, None].float()
                logp = torch.log_softmax(F.linear(hc.to(mm), w, b).float(), -1)  # (C, V)
                p = logp.exp()
                if ctx.want_entropy:  # -g_H p (log p + H) + g_ce p, then - g_ce at the target
                    gz = logp.clamp_(min=_LOG_ZERO).add_(ent[i : i + chunk, None])
                    gz.mul_(-grad_h[i : i + chunk, None].float()).add_(g_ce).mul_(p)
                else:
                    gz = p.mul_(g_ce)
                gz.scatter_add_(-1, t[:, None], -g_ce)
                if gx is not None:
                    gx[i : i + chunk] = (gz.to(mm) @ w).to(h.dtype)
                if gw is not None:
                    gw.addmm_(gz.t(), hc.float())  # (V, C) @ (C, H), in place
                if gb is not None:
                    gb.add_(gz.sum(0))
        return (
            gx,
            None if gw is None else gw.to(weight.dtype),
            None if gb is None else gb.to(bias.dtype),
            None,
            None,
            None,
        )


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

    The head runs on the N gathered rows only. Unchunked, CE and H are the full-logits path's
    own operations on those rows (the same numbers bit for bit). With ``chunk > 0``, more than
    ``chunk`` rows and a linear head, the head runs ``chunk`` rows at a time and each chunk's
    logits are recomputed in backward instead of kept (:class:`_ChunkedLinearCE`), so about
    three ``chunk x V`` fp32 buffers and one weight gradient live at once; values and
    gradients equal the unchunked ones up to float rounding (the gradient is formed in one
    expression, the weight gradient summed chunk by chunk).

    Args:
        model: the :class:`HeadModel` that produced ``hidden``.
        hidden: ``(B, L, H)`` from ``model.hidden_states``.
        rows, positions: ``(N,)`` long, the pairs.
        targets: ``(N,)`` long, the clean token at each pair.
        chunk: rows per head application (0 = all at once).
        entropy: also return H (the ranking term needs it; CE-only objectives do not).

    Returns:
        ``(ce, h)``: ``(N,)`` each, fp32.
    """
    h_rows = model.gather_hidden(hidden, rows, positions)  # (N, H)
    if not chunk or h_rows.shape[0] <= chunk:
        return ce_entropy(model.apply_head(h_rows), targets, entropy=entropy)
    linear = model.linear_head()
    if linear is not None:
        weight, bias = linear
        return _ChunkedLinearCE.apply(h_rows, weight, bias, targets, chunk, entropy)
    return _module_chunks(model.apply_head, h_rows, targets, chunk, entropy)


def _head_ce(
    head: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, t: torch.Tensor, entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    return ce_entropy(head(h), t, entropy=entropy)


def _module_chunks(
    head: Callable[[torch.Tensor], torch.Tensor],
    h_rows: torch.Tensor,
    targets: torch.Tensor,
    chunk: int,
    entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked loss through the head module's own call: each chunk under non-reentrant
    activation checkpointing, so its logits are recomputed in backward (by calling the head
    again: FSDP2 / ZeRO-3 gather its parameters then as in any recomputed layer). For heads
    the fused path cannot read (LoRA on the head, an FSDP2 unit, a ZeRO-3 partition); the
    same values as unchunked row by row, gradients up to float rounding."""
    from torch.utils.checkpoint import checkpoint

    ce, h = [], []
    for i in range(0, h_rows.shape[0], chunk):
        rows = slice(i, i + chunk)
        c, e = checkpoint(_head_ce, head, h_rows[rows], targets[rows], entropy, use_reentrant=False)
        ce.append(c)
        h.append(e)
    return torch.cat(ce), torch.cat(h)


def row_terms(
    model: HeadModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    rows: torch.Tensor,
    positions: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk: int = 0,
    entropy: bool = True,
    planner_mask_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One forward to the hidden states, then the head at the pairs only: the loss terms.

    What runs inside the prepared module's forward under every engine
    (:class:`tabom.models.prepared.HeadForward`).

    Args:
        model: a :class:`HeadModel`.
        input_ids, attention_mask: ``(B, L)`` the (masked) inputs.
        rows, positions: ``(N,)`` the supervised pairs.
        targets: ``(N,)`` the clean ids there.
        chunk: ``loss_chunk`` (:func:`ce_entropy_at`).
        entropy: also the entropies (the ranking term's).
        planner_mask_id: PAPL: also, without gradient, the log-probability of each target
            under the logits with this id (``[MASK]``) excluded; ``None``: not computed.

    Returns:
        ``(ce, h, log_c)``: ``(N,)`` fp32 each; ``log_c`` ``None`` without a planner id.
    """
    hidden = model.hidden_states(input_ids, attention_mask)  # (B, L, H)
    ce, h = ce_entropy_at(model, hidden, rows, positions, targets, chunk=chunk, entropy=entropy)
    log_c = None
    if planner_mask_id is not None:
        with torch.no_grad():  # the planner's confidence in the clean token, [MASK] left out
            z = model.apply_head(model.gather_hidden(hidden.detach(), rows, positions)).float()
            z[:, planner_mask_id] = float("-inf")
            log_c = z.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    return ce, h, log_c


def pair_logits(
    model: HeadModel | Callable,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    rows: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """``(N, V)`` aligned logits at ``(rows[i], positions[i])`` from one forward: through
    ``model.pair_logits`` when it has one (a prepared model applies its head inside its
    forward), else the head of :func:`as_head_model` at those rows only."""
    own = getattr(model, "pair_logits", None)
    if own is not None:
        return own(input_ids, attention_mask, rows, positions)
    m = as_head_model(model)
    return logits_at(m, m.hidden_states(input_ids, attention_mask), rows, positions)


def loss_terms(
    model: HeadModel | Callable,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    rows: torch.Tensor,
    positions: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk: int = 0,
    entropy: bool = True,
    planner_mask_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`row_terms` through ``model.loss_terms`` when it has one (a ``DiffusionLM``; a
    prepared model runs it inside its forward), else on :func:`as_head_model` of ``model``."""
    kw = {"chunk": chunk, "entropy": entropy, "planner_mask_id": planner_mask_id}
    own = getattr(model, "loss_terms", None)
    if own is not None:
        return own(input_ids, attention_mask, rows, positions, targets, **kw)
    return row_terms(as_head_model(model), input_ids, attention_mask, rows, positions, targets, **kw)
