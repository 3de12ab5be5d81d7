"""Likelihood of eval sets and text files: the NELBO per token and the perplexity bound, with
Monte-Carlo standard errors (DESIGN §7, "Likelihood"; the estimator: :mod:`tabom.likelihood`).

:func:`answer_likelihood` scores each problem's reference response given its prompt (by
default the response canvas the model decodes: answer, stop token, EOS tail to the task's
response length); :func:`text_likelihood` a whole text over rolling windows (:func:`rolling_windows`, lm-eval's);
:func:`greedy_matches` is lm-eval's ``is_greedy``. ``tabom likelihood``, the demo's capability
test and the lm-eval adapter use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tabom.batch_decode import decode_batches
from tabom.decoding import DecodeConfig, ScoreName
from tabom.errors import TabomError
from tabom.likelihood import LikelihoodConfig, NelboEstimate, estimate_nelbo, per_token
from tabom.models.base import DiffusionLM
from tabom.tasks.base import Example, Task


@torch.no_grad()
def greedy_matches(
    dlm: DiffusionLM,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    score: ScoreName = "confidence",
    batch_size: int = 64,
) -> list[bool]:
    """Whether a greedy decode of ``len(continuation)`` positions after each context gives the
    continuation exactly (lm-eval's ``is_greedy``): temperature 0, one token per step, in
    ``score`` order, continuations of one length decoded together.
    """
    out = [False] * len(pairs)
    groups: dict[int, list[int]] = {}
    for i, (_, cont) in enumerate(pairs):
        if len(cont):
            groups.setdefault(len(cont), []).append(i)
    for T, idx in groups.items():
        cfg = DecodeConfig(gen_length=T, steps=T, score=score)
        gen = torch.Generator(device=dlm.device).manual_seed(0)  # only ``random`` draws
        res = decode_batches(
            dlm, [list(pairs[i][0]) for i in idx], cfg, generator=gen, batch_size=batch_size
        )
        for i, row in zip(idx, res.response_ids.tolist(), strict=True):
            out[i] = row == list(pairs[i][1])
    return out


def response_ids(dlm: DiffusionLM, answer: str, length: int | None) -> list[int]:
    """The response a model is trained on and decodes for a reference ``answer``: its ids, the
    backend's stop token (if any), then EOS up to ``length`` (``None``: one EOS), as
    :func:`tabom.train_data.ground_truth_items` builds the ``sft`` targets.

    Raises:
        ValueError: the answer leaves no room for the stop token and one EOS.
    """
    ids = list(dlm.tokenizer(answer, add_special_tokens=False)["input_ids"])
    stop = list(dlm.spec.stop_token_ids[:1])
    eos = dlm.spec.eos_token_id
    body = ids + stop
    if length is None:
        return [*body, eos]
    if len(body) >= length:
        raise ValueError(
            f"the answer has {len(ids)} tokens; the response length {length} leaves no room "
            "for the stop token and EOS"
        )
    return body + [eos] * (length - len(body))


def rolling_windows(
    tokens: Sequence[int], prefix_token: int, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """Disjoint ``(context, continuation)`` windows covering ``tokens``, each at most
    ``max_length`` long: continuations of ``max_length - 1`` tokens (the last may be shorter),
    each conditioned on the tokens before it that fill the window (the first on
    ``prefix_token`` alone): lm-eval's rolling windows with context length 1
    (``get_rolling_token_windows`` + ``make_disjoint_window``).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 for rolling windows, got {max_length}")
    step = max_length - 1
    tokens = list(tokens)
    out = []
    for start in range(0, len(tokens), step):
        cont = tokens[start : start + step]
        ctx = [prefix_token] if start == 0 else tokens[:start][-(max_length - len(cont)) :]
        out.append((ctx, cont))
    return out


@dataclass
class SetLikelihood:
    """The likelihood summary of one set (reference answers) or text file.

    Attributes:
        name: the spec or file.
        n_sequences: continuations scored (problems, or windows of a text).
        n_tokens: tokens scored.
        nelbo_per_token: Σ NELBO / Σ tokens (nats), a bound on the per-token NLL.
        se: its Monte-Carlo standard error.
        ppl_bound: exp(nelbo_per_token), the perplexity bound.
        nelbo_per_sequence: mean NELBO per continuation (nats).
        per_item: each continuation's NELBO (problems in set order; windows in text order).
    """

    name: str
    n_sequences: int
    n_tokens: int
    nelbo_per_token: float
    se: float
    ppl_bound: float
    nelbo_per_sequence: float
    per_item: list[float] = field(repr=False, default_factory=list)


def summarise(name: str, est: NelboEstimate) -> SetLikelihood:
    """One :class:`SetLikelihood` from the estimates of its continuations."""
    value, se, ppl = per_token(est)
    return SetLikelihood(
        name=name,
        n_sequences=int(est.nelbo.numel()),
        n_tokens=int(est.n_tokens.sum()),
        nelbo_per_token=value,
        se=se,
        ppl_bound=ppl,
        nelbo_per_sequence=float(est.nelbo.mean()) if est.nelbo.numel() else math.nan,
        per_item=est.nelbo.tolist(),
    )


def answer_pairs(
    dlm: DiffusionLM, task: Task, examples: list[Example], response: str = "canvas"
) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, reference response ids)`` of each example (names the task on error)."""
    length = task.gen_length if response == "canvas" else None
    out = []
    for ex in examples:
        try:
            out.append((dlm.encode_prompt(ex.prompt), response_ids(dlm, ex.answer, length)))
        except ValueError as e:
            raise TabomError(f"task {task.name!r}, example {ex.id}: {e}") from None
    return out


def answer_likelihood(
    dlm: DiffusionLM,
    task: Task,
    examples: list[Example],
    cfg: LikelihoodConfig,
    *,
    response: str = "canvas",
    name: str | None = None,
) -> SetLikelihood:
    """The NELBO of the reference responses of ``examples`` (mask draws seeded ``cfg.seed``)."""
    est = estimate_nelbo(
        dlm,
        answer_pairs(dlm, task, examples, response),
        cfg,
        mask_token_id=dlm.mask_token_id,
        pad_token_id=dlm.spec.pad_token_id,
    )
    return summarise(name or task.name, est)


def text_likelihood(
    dlm: DiffusionLM, path: str, cfg: LikelihoodConfig, max_length: int
) -> SetLikelihood:
    """The NELBO of a whole text file over rolling windows.

    Raises:
        TabomError: the file is missing, empty or not UTF-8 (names it).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TabomError(f"texts: cannot read {path}: {e}") from None
    tokens = dlm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not tokens:
        raise TabomError(f"texts: {path} holds no tokens (empty file)")
    bos = getattr(dlm.tokenizer, "bos_token_id", None)
    prefix = int(bos) if bos is not None else dlm.spec.eos_token_id
    est = estimate_nelbo(
        dlm,
        rolling_windows(tokens, prefix, max_length),
        cfg,
        mask_token_id=dlm.mask_token_id,
        pad_token_id=dlm.spec.pad_token_id,
        max_length=max_length,
    )
    return summarise(path, est)


def format_likelihood(rows: list[SetLikelihood]) -> str:
    """A markdown table: NELBO per token ± SE and the perplexity bound with a 95% interval."""
    lines = [
        "| set | sequences | tokens | NELBO/token (nats) ± MC s.e. | perplexity bound [95% MC] "
        "| NELBO/sequence |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = math.exp(r.nelbo_per_token - 2 * r.se), math.exp(r.nelbo_per_token + 2 * r.se)
        lines.append(
            f"| {r.name} | {r.n_sequences} | {r.n_tokens} | {r.nelbo_per_token:.4f} ± "
            f"{r.se:.4f} | {r.ppl_bound:.3f} [{lo:.3f}, {hi:.3f}] | {r.nelbo_per_sequence:.3f} |"
        )
    return "\n".join(lines)


__all__ = [
    "SetLikelihood",
    "answer_likelihood",
    "answer_pairs",
    "format_likelihood",
    "greedy_matches",
    "response_ids",
    "rolling_windows",
    "summarise",
    "text_likelihood",
]
