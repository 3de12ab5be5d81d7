"""Approximate KV caches for semi-autoregressive decoding (DESIGN §3; ``--decode.cache``).

Fast-dLLM (Wu et al. 2025, arXiv 2505.22618, §3.2) observes that in block-wise diffusion
decoding the keys and values of the positions outside the active block change little while the
block is being filled. When a row enters a block, one full forward over its whole sequence
runs (its hidden states serve that step exactly) and every position's keys and values are kept;
until the block is done, the row's steps run only

- ``prefix``: the block and everything after it (the prompt and the committed blocks come from
  the cache);
- ``dual``: the block alone (the masked suffix comes from the cache as well).

The cached keys are those of the state at the block's start, so the result is approximate
(tokens committed inside the block are seen by the fresh queries but not by the stale cached
positions); ``cache: none`` is the exact sampler. Each row keeps its own cache and refreshes it
when it enters a new block, so a row decodes the same alone or in a batch, in threshold mode
too (rows advance on their own). The cached forward goes through transformers' own
``DynamicCache`` and a 4-D attention mask over ``[cached keys | fresh keys]``: a row's query sees
every cached position except those it recomputes, and the fresh keys of its own columns only.

Supported: the native LLaDA / Dream classes and the tiny models (transformers Llama / Qwen2 with
bidirectional attention, 4-D masks and position ids: :func:`cache_support`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from tabom.errors import TabomError
from tabom.models.base import DiffusionLM, position_ids_from_mask, source_positions


def cache_support(model: Any) -> str | None:
    """``None`` when ``model`` can decode with a KV cache, else the reason it cannot."""
    if not isinstance(model, DiffusionLM):
        return "needs a tabom model of a native backend, not a plain logits callable"
    spec = model.spec
    network = model._network()
    kind = getattr(getattr(network, "config", None), "model_type", None)
    if (
        spec.attention != "4d"
        or not spec.position_ids
        or not spec.head_at_positions
        or kind not in ("llama", "qwen2")
    ):
        return (
            f"backend {spec.name} does not support it (the native llada / dream and the tiny "
            "backends do: transformers Llama / Qwen2 classes)"
        )
    return None


def _layer_kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(keys, values)]`` per layer of a ``DynamicCache``, each ``(B, heads, L, head_dim)``."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # older transformers


class BlockCache:
    """Each row's keys and values from the full forward at the start of its current block.

    Args:
        model: the model (:func:`cache_support` must accept it).
        mode: ``prefix`` or ``dual``.
        batch: rows of the decode.
        every_step: rebuild the cache from the current state at every step and still read the
            block through the cached forward (tests the plumbing: then equal to the exact
            sampler up to float rounding).

    Raises:
        TabomError: the model does not support a cache (names ``--decode.cache``).
    """

    def __init__(self, model: Any, mode: str, batch: int, *, every_step: bool = False) -> None:
        reason = cache_support(model)
        if reason is not None:
            raise TabomError(f"--decode.cache {mode}: {reason}")
        self.dlm: DiffusionLM = model
        self.mode = mode
        self.every_step = every_step
        self.block = torch.full((batch,), -1, dtype=torch.long)  # host: where each cache was made
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (B, h, L, d)
        # the forward's name for the cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``
        params = inspect.signature(model._network().forward).parameters
        self.keyword = "cache" if "cache" in params else "past_key_values"
        self.full_forwards = 0  # rows that ran the whole sequence (refreshes)
        self.cached_forwards = 0  # rows that ran through the cache

    def _full(self, x: torch.Tensor, attn: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Whole-sequence forward of ``rows`` (host index); keeps their keys and values."""
        from transformers import DynamicCache

        dev = rows.to(x.device, non_blocking=True)
        cache = DynamicCache()
        hidden = self.dlm.hidden_states(
            x[dev], attn[dev], model_kwargs={self.keyword: cache, "use_cache": True}
        )  # (R, L, H)
        kv = _layer_kv(cache)
        if self.kv is None:
            B = self.block.shape[0]
            self.kv = [
                (k.new_zeros((B, *k.shape[1:])), v.new_zeros((B, *v.shape[1:]))) for k, v in kv
            ]
        for (K, V), (k, v) in zip(self.kv, kv, strict=True):
            K[dev], V[dev] = k, v
        self.full_forwards += rows.numel()
        return hidden

    def _cached(
        self,
        x: torch.Tensor,
        attn: torch.Tensor,
        P: int,
        start: torch.Tensor,
        Lb: int,
        rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward of ``rows`` over their recomputed columns only, the rest from the cache.

        Returns:
            ``(hidden (n, W, H), lo (n,))``: row i's recomputed columns are ``lo[i] + w`` for
            ``w < W`` (the first ``hi - lo`` of them are its own; the rest pad the batch).
        """
        from transformers import DynamicCache

        assert self.kv is not None
        dev = rows.to(x.device, non_blocking=True)
        L = x.shape[1]
        shift = self.dlm.spec.shift_logits
        s = P + start[rows]  # (n,) first response column of each row's block
        lo = source_positions(s, shift)  # the block's first logit reads this hidden column
        if self.mode == "dual":  # the block's columns only
            hi = source_positions(s + Lb - 1, shift) + 1
        else:  # the block and everything after it
            hi = torch.full_like(s, L)
        width = int((hi - lo).max())
        w = torch.arange(width)
        cols = (lo[:, None] + w).clamp(max=L - 1)  # (n, W) host
        own = w[None] < (hi - lo)[:, None]  # (n, W)
        span = torch.arange(L)
        own_col = (span >= lo[:, None]) & (span < hi[:, None])  # (n, L) recomputed columns
        device = x.device
        cols_d, own_d, own_col_d = cols.to(device, non_blocking=True), own.to(device, non_blocking=True), own_col.to(device, non_blocking=True)
        attn_r = attn[dev]
        tokens = x[dev].gather(1, cols_d)  # (n, W)
        positions = position_ids_from_mask(attn_r).gather(1, cols_d)  # (n, W)
        keys = torch.cat([attn_r.bool() & ~own_col_d, own_d], dim=1)  # (n, L + W)
        mask = keys[:, None, None, :].expand(-1, 1, width, -1)  # (n, 1, W, L + W)
        dtype = self.dlm._mask_dtype()
        if dtype is not None:  # eager attention adds a float mask
            mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(
                ~mask, torch.finfo(dtype).min
            )
        cache = DynamicCache()
        for i, (K, V) in enumerate(self.kv):
            cache.update(K[dev], V[dev], i)
        kwargs = {"position_ids": positions, "attention_mask": mask, "use_cache": True}
        hidden = self.dlm.hidden_states(
            tokens, None, model_kwargs={**kwargs, self.keyword: cache}
        )  # (n, W, H)
        self.cached_forwards += rows.numel()
        return hidden, lo

    def hidden_rows(
        self,
        x: torch.Tensor,
        attn: torch.Tensor,
        P: int,
        start: torch.Tensor,
        block_length: int,
        active: torch.Tensor,
        b_idx: torch.Tensor,
        j_idx: torch.Tensor,
    ) -> torch.Tensor:
        """``(N, H)`` hidden rows whose head output is the logits at the N candidates.

        Args:
            x, attn: ``(B, L)`` the state and its padding mask.
            P: prompt width.
            start: ``(B,)`` host, each row's block start (response position).
            block_length: positions per block.
            active: ``(B',)`` host, the rows with a candidate.
            b_idx, j_idx: ``(N,)`` host, the candidates (row, offset in the block), row-major.
        """
        stale = self.block[active] != start[active]
        refresh = active if self.every_step else active[stale]
        cached = active if self.every_step else active[~stale]
        B = self.block.shape[0]
        out: torch.Tensor | None = None
        if refresh.numel():
            hidden = self._full(x, attn, refresh)
            self.block[refresh] = start[refresh]
            if not self.every_step:
                local = torch.full((B,), -1, dtype=torch.long)
                local[refresh] = torch.arange(refresh.numel())
                take = local[b_idx] >= 0  # (N,) candidates of refreshed rows
                rows = self.dlm.gather_hidden(
                    hidden,
                    local[b_idx[take]].to(x.device, non_blocking=True),
                    (P + start[b_idx[take]] + j_idx[take]).to(x.device, non_blocking=True),
                )
                out = hidden.new_empty((b_idx.numel(), hidden.shape[-1]))
                out[take.to(x.device, non_blocking=True)] = rows
        if cached.numel():
            hidden, lo = self._cached(x, attn, P, start, block_length, cached)
            local = torch.full((B,), -1, dtype=torch.long)
            local[cached] = torch.arange(cached.numel())
            take = local[b_idx] >= 0
            li = local[b_idx[take]]
            col = source_positions(P + start[b_idx[take]] + j_idx[take], self.dlm.spec.shift_logits)
            rows = hidden[li.to(x.device, non_blocking=True), (col - lo[li]).to(x.device, non_blocking=True)]
            if out is None:
                out = hidden.new_empty((b_idx.numel(), hidden.shape[-1]))
            out[take.to(x.device, non_blocking=True)] = rows
        assert out is not None
        return out
