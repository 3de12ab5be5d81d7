"""Diffusion decoding with recorded trajectories (DESIGN §3).

The state is ``x = [prompt | T x [MASK]]``. Each step runs one forward over the whole sequence
to the hidden states, applies the LM head only at the still-masked positions of the current
block (``tabom.head``), proposes a token and a score there and commits the best ones; a committed token is never remasked. The trajectory is one integer tensor
``decoding_order (B, T)``. The ``entropy`` score is the paper's Eq. 2 (entropy decoding: commit the
lowest-entropy masked positions first); ``confidence`` is LLaDA's low-confidence remasking.

Two rules are fixed here: equal scores go to the lower position first, and threshold mode
commits every masked position of the block whose confidence q(token) reaches the threshold or,
when none does, the single best position under the selected score.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from tabom.config import AT_LEAST_1, NON_NEGATIVE, PROBABILITY, ConfigError, check_ranges, convert
from tabom.head import HeadModel, as_head_model

ScoreName = Literal["confidence", "margin", "entropy", "random"]
SCORES: tuple[str, ...] = get_args(ScoreName)
CacheMode = Literal["none", "prefix", "dual"]


def steps_for(gen_length: int, tokens_per_step: int, block_length: int | None = None) -> int:
    """The fixed-budget ``steps`` that commit about ``tokens_per_step`` tokens a forward.

    ``ceil(gen_length / tokens_per_step)``, at least one step per block and rounded up to a
    multiple of the number of blocks (each block gets the same steps), so no step commits more
    than ``tokens_per_step`` tokens. The one rule of every caller that derives a budget from
    tokens per step (``tabom eval``, ``tabom distill``, the lm-eval adapter).

    Raises:
        ValueError: ``tokens_per_step`` < 1, or a ``block_length`` that does not divide
            ``gen_length`` (or exceeds it).
    """
    if tokens_per_step < 1:
        raise ValueError(f"tokens_per_step must be >= 1, got {tokens_per_step}")
    n_blocks = 1
    if block_length is not None:
        if not 0 < block_length <= gen_length or gen_length % block_length:
            raise ValueError(
                f"block_length ({block_length}) must divide the response length ({gen_length})"
            )
        n_blocks = gen_length // block_length
    steps = max(n_blocks, math.ceil(gen_length / tokens_per_step))
    return math.ceil(steps / n_blocks) * n_blocks


NOT_RECORDED: tuple[str, ...] = ("tokens_per_step", "record_entropy")
"""The :class:`DecodeConfig` fields a trajectory's ``gen`` leaves out: ``tokens_per_step`` only
derives ``steps`` (:meth:`DecodeConfig.resolve`, which records the steps); ``record_entropy``
shows as the record's ``decode_entropy``."""


@dataclass
class DecodeConfig:
    """How to decode: response length, budget, score and proposal (DESIGN §3), one group.

    Every command that decodes nests it as ``--decode.*``. ``gen_length`` and ``steps`` may be
    left unset: a task gives T (:meth:`resolve`) and the budget gives the steps.

    Attributes:
        gen_length: T, the response positions appended to the prompt as [MASK] (``None``: the
            task's response length).
        steps: forwards in fixed-budget mode, each block gets ``steps / n_blocks`` of them
            (``None``: from ``tokens_per_step``, :func:`steps_for`).
        tokens_per_step: tokens committed per forward when ``steps`` is unset (1 = the
            paper's setting, full diffusion decoding).
        block_length: semi-autoregressive block size; ``None`` is one block of ``gen_length``.
        score: how masked positions are ranked: ``confidence`` = q(token), ``margin`` = q1 - q2,
            ``entropy`` = sum q log q (negative entropy, the paper's Eq. 2), ``random``.
        temperature: τ of the proposal; 0 proposes the argmax.
        top_p: nucleus filter of the proposal (used only when ``temperature > 0``).
        top_k: keep the k most likely tokens (0 = off; only when ``temperature > 0``).
        threshold: parallel decoding: at each step commit every masked position of the
            current block with confidence >= threshold, at least one; ``steps`` is ignored.
        record_entropy: also return the proposal's entropy at each position when committed.
        cache: ``none`` decodes exactly (a full forward every step). ``prefix`` and ``dual``
            are Fast-dLLM's approximate KV caches (Wu et al. 2025, arXiv 2505.22618): when a
            row enters a block, one full forward caches every position's keys and values;
            until the block is done its steps run only the block and what follows it
            (``prefix``: the prompt and earlier blocks come from the cache) or only the
            block (``dual``: the masked suffix comes from the cache too). Native LLaDA /
            Dream and the tiny backends only (:mod:`tabom.kv_cache`).
    """

    gen_length: int | None = field(default=None, metadata=AT_LEAST_1)
    steps: int | None = field(default=None, metadata=AT_LEAST_1)
    tokens_per_step: int = field(default=1, metadata=AT_LEAST_1)
    block_length: int | None = field(default=None, metadata=AT_LEAST_1)
    score: ScoreName = "confidence"
    temperature: float = field(default=0.0, metadata=NON_NEGATIVE)
    top_p: float = field(default=1.0, metadata=PROBABILITY)
    top_k: int = field(default=0, metadata=NON_NEGATIVE)
    threshold: float | None = field(default=None, metadata=PROBABILITY)
    record_entropy: bool = False
    cache: CacheMode = "none"

    def __post_init__(self) -> None:
        check_ranges(self)  # ranges and choices of a config built in Python (config.py)
        if self.gen_length is None:
            return
        if self.block_length is not None and self.gen_length % self.block_length:
            raise ValueError(
                f"gen_length ({self.gen_length}) must be divisible by "
                f"block_length ({self.block_length})"
            )
        if self.threshold is None and self.steps is not None and self.steps % self.n_blocks:
            raise ValueError(
                f"steps ({self.steps}) must be divisible by the number of blocks ({self.n_blocks})"
            )

    def resolve(self, gen_length: int | None = None) -> DecodeConfig:
        """The settings with T and the steps filled in.

        Args:
            gen_length: T when this config leaves it unset (a task's response length).

        Returns:
            A config with ``gen_length`` and ``steps`` set: ``steps`` as given, else T in
            threshold mode (where it is unused), else :func:`steps_for` of ``tokens_per_step``.

        Raises:
            ValueError: no response length at all, or a block length that does not divide it.
        """
        T = self.gen_length if self.gen_length is not None else gen_length
        if T is None:
            raise ValueError("gen_length: not set and no task to take it from")
        if self.threshold is not None:
            steps = self.steps or T  # ignored: the threshold decides
        elif self.steps is not None:
            steps = self.steps
        else:
            steps = steps_for(T, self.tokens_per_step, self.block_length)
        if (T, steps) == (self.gen_length, self.steps):
            return self
        return dataclasses.replace(self, gen_length=T, steps=steps)

    def record(self) -> dict[str, Any]:
        """These settings as a trajectory's ``gen`` records them (DESIGN §4): every field of
        the resolved config, by name, except :data:`NOT_RECORDED`; ``steps`` is null in
        threshold mode (the threshold decides). :meth:`from_record` reads it back.

        Raises:
            ValueError: no response length (``gen_length`` unset).
        """
        out = {k: v for k, v in dataclasses.asdict(self.resolve()).items() if k not in NOT_RECORDED}
        if self.threshold is not None:
            out["steps"] = None
        return out

    @classmethod
    def from_record(cls, values: Mapping[str, Any], where: str = "") -> DecodeConfig:
        """The settings of ``{field: value}`` (a trajectory's ``gen``, lm-eval model args).

        Each value is read as a flag is (:func:`tabom.config.convert`: ``"0.9"`` is a float,
        ``"none"`` unset); a missing field keeps its default, so older files read a field added
        later as its default (what the sampler did before it existed).

        Args:
            values: field names to values; every key must be a field.
            where: what ``values`` is, for messages (``gen``, ``model_args``).

        Raises:
            ConfigError: an unknown key or a bad value (naming ``where.field``), or settings
                that do not fit together.
        """
        kwargs = convert(cls, dict(values), where)
        try:
            return cls(**kwargs)
        except ConfigError:
            raise
        except ValueError as e:  # a rule across fields (__post_init__)
            raise ConfigError(f"{where}: {e}" if where else str(e)) from None

    def label(self, base: DecodeConfig | None = None) -> str:
        """A short name of these settings: the score and the budget, ``confidence@1``
        (tokens per step), ``confidence@s64`` (steps) or ``confidence@t0.9`` (threshold),
        then ``,field=value`` for every other recorded field that differs from ``base``
        (``gen_length`` aside: a task sets it). Distinct settings get distinct labels.
        """
        if self.threshold is not None:
            budget = f"t{self.threshold:g}"
        elif self.steps is not None:
            budget = f"s{self.steps}"
        else:
            budget = str(self.tokens_per_step)
        label = f"{self.score}@{budget}"
        if base is None:
            return label
        skip = {"score", "threshold", "steps", "gen_length", *NOT_RECORDED}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in skip and value != getattr(base, f.name):
                label += f",{f.name}={value:g}" if isinstance(value, float) else f",{f.name}={value}"
        return label

    @property
    def block_size(self) -> int:
        """Positions per block (``gen_length`` when there are no blocks)."""
        return self.block_length or self.resolve().gen_length  # type: ignore[return-value]

    @property
    def n_blocks(self) -> int:
        return self.resolve().gen_length // self.block_size  # type: ignore[operator]


@dataclass
class DecodeOutput:
    """What :func:`decode` returns for a batch.

    Attributes:
        sequences: ``(B, P + T)`` the left-padded prompt followed by the committed response.
        decoding_order: ``(B, T)`` long, the step at which each response position was committed
            (-1 if never).
        nfe: forwards the batch ran (one forward serves the whole batch; summed over batches
            by :func:`concat_outputs`). Per answer: :attr:`forwards_per_row`.
        prompt_length: P, the padded prompt width.
        attention_mask: ``(B, P + T)``, 0 on left padding.
        decode_entropy: ``(B, T)`` float, entropy of the proposal distribution at each
            position when it was committed (NaN if never), or ``None`` unless recorded.
        row_forwards: rows the forwards actually ran over, summed over steps (a row with
            nothing left to commit in its block leaves the forward), ``None`` if not counted.
    """

    sequences: torch.Tensor
    decoding_order: torch.Tensor
    nfe: int
    prompt_length: int
    attention_mask: torch.Tensor
    decode_entropy: torch.Tensor | None = None
    row_forwards: int | None = None

    @property
    def response_ids(self) -> torch.Tensor:
        """``(B, T)`` the committed response tokens."""
        return self.sequences[:, self.prompt_length :]

    @property
    def prompt_ids(self) -> torch.Tensor:
        """``(B, P)`` the left-padded prompts."""
        return self.sequences[:, : self.prompt_length]

    @property
    def forwards_per_row(self) -> torch.Tensor:
        """``(B,)`` long, the forwards each answer needed: the step of its last commit + 1.

        ``steps`` in fixed-budget mode when every step commits a token (at most one block of
        tokens per step); in threshold mode a row's own count, whatever else is in its batch.
        0 for a row that committed nothing.
        """
        return self.decoding_order.max(dim=-1).values + 1


def pad_prompts(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into one batch.

    Args:
        prompts: token ids per prompt (lengths may differ).
        pad_token_id: id written on the left of shorter prompts.

    Returns:
        ``(ids, mask)``, both ``(B, P)`` long with P the longest prompt; mask is 0 on padding.

    Raises:
        ValueError: no prompts.
    """
    if not prompts:
        raise ValueError("pad_prompts needs at least one prompt")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        if p:
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p) :] = 1
    return ids, mask


def transfer_schedule(num_masks: int, steps: int) -> list[int]:
    """Tokens committed at each of ``steps`` steps for a block of ``num_masks`` masks.

    ``num_masks // steps`` per step, one more for the first ``num_masks % steps`` steps
    (LLaDA's ``get_num_transfer_tokens``). With more steps than masks the last steps commit 0.
    """
    base, extra = divmod(num_masks, steps)
    return [base + (i < extra) for i in range(steps)]


def step_schedule(cfg: DecodeConfig) -> list[int]:
    """Tokens committed at each step of a fixed-budget decode, over all blocks (length ``steps``).

    Raises:
        ValueError: ``cfg`` is in threshold mode, whose schedule depends on the logits.
    """
    if cfg.threshold is not None:
        raise ValueError("step_schedule: threshold is set, the schedule is not fixed")
    cfg = cfg.resolve()
    return transfer_schedule(cfg.block_size, cfg.steps // cfg.n_blocks) * cfg.n_blocks


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering: removed tokens get ``-inf``.

    Args:
        logits: ``(..., V)``.
        top_k: keep the ``top_k`` largest logits (ties with the k-th kept too); 0 = off.
        top_p: keep the smallest prefix of the sorted distribution whose mass reaches
            ``top_p`` (the most likely token always stays); 1 = off.

    Returns:
        ``(..., V)`` filtered logits (a new tensor).
    """
    neg_inf = float("-inf")
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, neg_inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass strictly above each token
        drop_sorted = mass_before >= top_p  # the first token has 0 before it: always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, neg_inf)
    return logits


def propose(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    noise_rows: tuple[torch.Tensor, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Propose one token per position and return the proposal distribution q.

    A sample is the exponential race ``argmax(q / E)``, ``E ~ Exp(1)`` per token (the Gumbel
    trick in exponential form; exactly what ``torch.multinomial(q, 1)`` computes, draws included).

    Args:
        logits: ``(..., V)`` float logits, [MASK] already at ``-inf``.
        temperature: 0 proposes the argmax (lowest id on ties) with q = softmax(logits);
            otherwise a sample from q = softmax(filtered logits / temperature).
        top_p: nucleus filter (only with ``temperature > 0``).
        top_k: top-k filter (only with ``temperature > 0``).
        generator: randomness of the sample.
        noise_rows: ``(index, n)``: ``logits`` is ``(N, V)``, rows ``index`` of an ``(n, V)``
            set; the noise is drawn for all n rows and row i uses noise row ``index[i]``, so the
            draws do not depend on which rows are computed (the sampler computes logits only at
            still-masked positions and samples what a whole-block proposal would).

    Returns:
        ``(tokens, q)``: ``(...)`` long and ``(..., V)`` float.
    """
    if temperature == 0:
        return logits.argmax(dim=-1), logits.softmax(dim=-1)
    q = filter_logits(logits / temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
    flat = q.reshape(-1, q.shape[-1])  # (N, V)
    index, n = noise_rows if noise_rows is not None else (None, flat.shape[0])
    noise = torch.empty((n, q.shape[-1]), dtype=q.dtype, device=q.device)
    noise.exponential_(1, generator=generator)  # (n, V)
    if index is not None:
        noise = noise[index]  # (N, V)
    tokens = (flat / noise).argmax(dim=-1).view(q.shape[:-1])
    return tokens, q


def score_proposals(
    q: torch.Tensor,
    tokens: torch.Tensor,
    score: ScoreName,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Score each proposal; higher is committed first.

    Args:
        q: ``(..., V)`` the proposal distribution.
        tokens: ``(...)`` the proposed tokens.
        score: ``confidence`` q(token); ``margin`` q1 - q2 (two largest probabilities);
            ``entropy`` sum q log q (negative entropy, Eq. 2); ``random`` uniform in [0, 1).
        generator: randomness of the ``random`` score.

    Returns:
        ``(...)`` float scores.
    """
    if score == "confidence":
        return q.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if score == "margin":
        top2 = q.topk(2, dim=-1).values  # (..., 2)
        return top2[..., 0] - top2[..., 1]
    if score == "entropy":
        return torch.special.xlogy(q, q).sum(dim=-1)  # 0 log 0 = 0 on filtered tokens
    if score == "random":
        return torch.rand(tokens.shape, generator=generator, device=q.device)
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def select_top_k(scores: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The ``k[b]`` best candidates of each row; equal scores go to the lower position.

    Args:
        scores: ``(B, N)`` finite scores.
        candidates: ``(B, N)`` bool, the positions that may be chosen.
        k: ``(B,)`` long, how many to choose per row (fewer if the row has fewer candidates).

    Returns:
        ``(B, N)`` bool, the chosen positions.
    """
    keyed = scores.masked_fill(~candidates, float("-inf"))
    order = keyed.argsort(dim=-1, descending=True, stable=True)  # stable: lower position first
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)  # (B, N) rank of each position
    return (rank < k.unsqueeze(-1)) & candidates


def _to_block(
    values: torch.Tensor,
    where: tuple[torch.Tensor, torch.Tensor],
    shape: tuple[int, int],
    fill: float | int,
) -> torch.Tensor:
    """``(N,)`` values at the candidates ``where`` -> ``(B, Lb)``, ``fill`` elsewhere."""
    out = torch.full(shape, fill, dtype=values.dtype, device=values.device)
    return out.index_put_(where, values)


@torch.no_grad()
def decode(
    model: HeadModel | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    cfg: DecodeConfig,
    *,
    mask_token_id: int,
    generator: torch.Generator | None = None,
    cache_check: bool = False,
) -> DecodeOutput:
    """Decode a batch of left-padded prompts and record when each response token is committed.

    Each row is independent: it commits its own k positions (its own block in threshold
    mode), so a row decodes the same alone or in a padded batch when the model is row-wise.
    Only the rows with a still-masked position in their current block run the forward (a
    row that is full, or whose block schedule has committed everything, leaves the batch);
    the random draws are made for the whole batch as before, so the tokens, steps and
    entropies do not depend on which rows ran.

    Args:
        model: a :class:`~tabom.head.HeadModel` (a :class:`~tabom.models.base.DiffusionLM`:
            the head runs only at the still-masked positions of the current block) or any
            ``(input_ids, attention_mask) -> logits (B, L, V)`` aligned so that
            ``logits[:, j]`` predicts token j. Both give the same tokens and steps.
        prompt_ids: ``(B, P)`` left-padded prompts.
        prompt_mask: ``(B, P)`` 1 on prompt tokens, 0 on padding.
        cfg: budget, score, proposal and cache settings (``cfg.cache`` other than ``none``
            needs a :class:`~tabom.models.base.DiffusionLM` of a native backend).
        mask_token_id: id of [MASK]; its logit is set to ``-inf`` so it is never proposed.
        generator: all randomness (sampling, ``random`` score); on the model's device.
        cache_check: with a cache, rebuild it from the current state at every step and still
            read the block through the cached forward (a test of the cache's plumbing: it
            then decodes like the exact sampler, up to float rounding).

    Returns:
        A :class:`DecodeOutput`; ``nfe`` is ``cfg.steps`` in fixed-budget mode, the forwards
        until every row is full in threshold mode.

    Raises:
        ValueError: mismatched prompt shapes, logits of the wrong shape or with NaN, or a
            cache the model does not support.
    """
    if prompt_ids.dim() != 2 or prompt_ids.shape != prompt_mask.shape:
        raise ValueError(
            f"prompt_ids {tuple(prompt_ids.shape)} and prompt_mask {tuple(prompt_mask.shape)} "
            "must be the same (B, P) shape"
        )
    B, P = prompt_ids.shape
    cfg = cfg.resolve()  # raises when T is unset
    T, Lb = cfg.gen_length, cfg.block_size
    device = prompt_ids.device

    # 1) the state: prompt followed by T masks; the trajectory starts at -1
    x = torch.cat([prompt_ids, prompt_ids.new_full((B, T), mask_token_id)], dim=1)  # (B, P+T)
    attn = torch.cat([prompt_mask, prompt_mask.new_ones((B, T))], dim=1)  # (B, P+T)
    response = x[:, P:]  # (B, T) view: writing it writes x
    decoding_order = torch.full((B, T), -1, dtype=torch.long, device=device)
    entropy = torch.full((B, T), float("nan"), device=device) if cfg.record_entropy else None
    offsets = torch.arange(Lb)  # (Lb,) on the host
    head_model = as_head_model(model)
    cache = None
    if cfg.cache != "none":
        from tabom.kv_cache import BlockCache  # the native backends' cached forward

        cache = BlockCache(head_model, cfg.cache, B, every_step=cache_check)

    fixed = cfg.threshold is None
    schedule = step_schedule(cfg) if fixed else []
    steps_per_block = cfg.steps // cfg.n_blocks
    nan_step = torch.full((), -1, dtype=torch.long, device=device)  # first step with NaN scores
    vocab = 0  # V, known after the first forward
    row_forwards = 0
    step = 0
    while True:
        # 2) the step's one device -> host copy: which positions are still masked. The block
        #    of each row (by step count in fixed-budget mode, else the block of the row's
        #    first masked position: rows advance on their own), its candidates and the rows
        #    that run the forward are then worked out on the host.
        if fixed and step == cfg.steps:
            break
        masked = (decoding_order < 0).cpu()  # (B, T)
        if fixed:
            start = torch.full((B,), (step // steps_per_block) * Lb)
        else:
            if not masked.any():
                break
            start = masked.long().argmax(dim=-1) // Lb * Lb  # full rows: block 0, no candidates
        pos_h = start.unsqueeze(-1) + offsets  # (B, Lb) response positions of the current block
        cand_h = masked.gather(1, pos_h)  # (B, Lb) still masked
        b_h, j_h = cand_h.nonzero(as_tuple=True)  # (N,) each, row-major
        active = cand_h.any(dim=-1).nonzero().squeeze(-1)  # (B',) rows that run the forward
        # (host -> device copies of pageable memory with non_blocking: staged at once, no
        # stream sync; a blocking copy would wait for the queued kernels)
        pos, candidates = pos_h.to(device, non_blocking=True), cand_h.to(device, non_blocking=True)
        b_idx, j_idx = b_h.to(device, non_blocking=True), j_h.to(device, non_blocking=True)

        # 3) one forward of the active rows to the hidden states; the head, proposals and
        #    scores only at the still-masked positions of the block (N of B x Lb), [MASK]
        #    never proposed. No active row (a block schedule's steps that commit nothing):
        #    no forward, but the same random draws.
        n_active = active.numel()
        if n_active:
            row_forwards += n_active
            if cache is not None:
                rows = cache.hidden_rows(x, attn, P, start, Lb, active, b_h, j_h)  # (N, H)
            else:
                sub = n_active < B
                act = active.to(device, non_blocking=True)
                xs, attn_s = (x[act], attn[act]) if sub else (x, attn)
                hidden = head_model.hidden_states(xs, attn_s)  # (B', P+T, H)
                if hidden.dim() != 3 or hidden.shape[:2] != xs.shape:
                    raise ValueError(
                        f"model returned logits {tuple(hidden.shape)} for input {tuple(xs.shape)}"
                    )
                local = b_idx
                if sub:  # row b of the batch is row local[b] of the forward
                    where_row = torch.full((B,), -1, dtype=torch.long)
                    where_row[active] = torch.arange(n_active)
                    local = where_row[b_h].to(device, non_blocking=True)
                rows = head_model.gather_hidden(hidden, local, P + pos[b_idx, j_idx])
            cand_logits = head_model.apply_head(rows).float()  # (N, V)
            vocab = cand_logits.shape[-1]
        else:
            cand_logits = torch.empty((0, vocab), device=device)
        with torch.autocast(device.type, enabled=False):  # fp32 sampling under any autocast
            cand_logits[:, mask_token_id] = float("-inf")  # (N, V)
            tokens_c, q = propose(
                cand_logits,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=cfg.top_k,
                generator=generator,
                noise_rows=(b_idx * Lb + j_idx, B * Lb),  # the same draws as a whole-block proposal
            )  # (N,), (N, V)
            # q(token) and sum q log q once per step, shared by the score, threshold and record
            confidence = q.gather(-1, tokens_c.unsqueeze(-1)).squeeze(-1)  # (N,)
            neg_entropy = None
            if cfg.score == "entropy" or entropy is not None:
                neg_entropy = torch.special.xlogy(q, q).sum(dim=-1)  # (N,), 0 log 0 = 0
            if cfg.score == "random":  # drawn for the whole block: the stream does not depend on N
                scores_c = torch.rand((B, Lb), generator=generator, device=device)[b_idx, j_idx]
            elif cfg.score == "margin":
                scores_c = score_proposals(q, tokens_c, "margin")  # (N,)
            else:
                scores_c = confidence if cfg.score == "confidence" else neg_entropy
        # NaN is checked once at the end (no host sync per step); the first step is kept
        bad = torch.isnan(scores_c).any() & (nan_step < 0)
        nan_step = torch.where(bad, step, nan_step)

        where = (b_idx, j_idx)
        scores = _to_block(scores_c, where, (B, Lb), 0.0)  # (B, Lb)
        tokens = _to_block(tokens_c, where, (B, Lb), mask_token_id)  # (B, Lb)

        # 4) choose: the schedule's k best, or every confident one (at least the best)
        if fixed:
            k = torch.full((B,), schedule[step], dtype=torch.long, device=device)
            commit = select_top_k(scores, candidates, k)  # (B, Lb)
        else:
            passed = candidates & (_to_block(confidence, where, (B, Lb), 0.0) >= cfg.threshold)
            best = select_top_k(scores, candidates, torch.ones(B, dtype=torch.long, device=device))
            commit = passed | (best & ~passed.any(dim=-1, keepdim=True))

        # 5) write the committed tokens and their step; never touch committed positions
        response.scatter_(1, pos, torch.where(commit, tokens, response.gather(1, pos)))
        decoding_order.scatter_(1, pos, torch.where(commit, step, decoding_order.gather(1, pos)))
        if entropy is not None:
            h = -_to_block(neg_entropy, where, (B, Lb), 0.0)  # (B, Lb)
            entropy.scatter_(1, pos, torch.where(commit, h, entropy.gather(1, pos)))
        step += 1

    if int(nan_step) >= 0:
        raise ValueError(f"decode step {int(nan_step)}: the model's logits give NaN scores")
    return DecodeOutput(
        sequences=x,
        decoding_order=decoding_order,
        nfe=step,
        prompt_length=P,
        attention_mask=attn,
        decode_entropy=entropy,
        row_forwards=row_forwards,
    )
