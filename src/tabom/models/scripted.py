"""A scripted stand-in model: answers known in advance, for end-to-end tests (DESIGN §2, §7).

The tiny model writes neither code nor LaTeX, so the verified paths of ``distill`` and ``eval``
(code run in a sandbox, math checked by math-verify) are exercised with a model whose answers
are chosen by the test. A scripted model maps each prompt to one or more responses; its logits
put (nearly) all mass on the scripted tokens at the response positions, so any decode order
writes the scripted text. With several responses for a prompt, they must begin with different
characters: while the first response position is masked, its logits are equal over those
characters and every other position is uniform (less confident), so confidence-ordered
decoding commits it first, drawing the response with the sampler's generator; the other
positions then follow that response. A prompt not in the script gets EOS only (an empty
answer). The tokenizer is the tiny model's character tokenizer (printable ASCII and newline).

Write one with :func:`save_scripted`; ``load_model(folder)`` loads it (backend ``scripted``).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from tabom.models.base import BACKEND_FILE, BackendSpec, DiffusionLM
from tabom.models.tiny import CHARS, build_char_tokenizer

SCRIPT_FILE = "script.json"
LOGIT = 50.0
"""The scripted token's logit (all others 0): probability ~1 - V e^-50."""


class ScriptedNet(torch.nn.Module):
    """``input_ids -> logits`` that spell the scripted response of the row's prompt.

    Args:
        table: encoded prompt -> encoded responses (first tokens distinct when several).
        vocab_size: logits width.
        mask_id: the [MASK] id.
        eos_id: written after a response and for unknown prompts.
    """

    def __init__(
        self,
        table: dict[tuple[int, ...], list[list[int]]],
        vocab_size: int,
        mask_id: int,
        eos_id: int,
    ) -> None:
        super().__init__()
        self.table, self.mask_id, self.eos_id = table, mask_id, eos_id
        self.lengths = sorted({len(k) for k in table}, reverse=True)
        self.head = torch.nn.Linear(1, vocab_size, bias=False)  # gives the vocab size and device
        self.config = SimpleNamespace(_attn_implementation="sdpa")

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head

    def _prompt(self, real: list[int]) -> tuple[int, list[list[int]] | None]:
        """(prompt length, responses) of a row's real tokens: the longest scripted prefix."""
        for n in self.lengths:
            if n < len(real) and tuple(real[:n]) in self.table:
                return n, self.table[tuple(real[:n])]
        return len(real), None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
    ) -> SimpleNamespace:
        B, L = input_ids.shape
        V = self.head.out_features
        logits = torch.zeros(B, L, V, device=input_ids.device)  # (B, L, V)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if mask.dim() != 2:  # a 4-D mask: the real tokens are the diagonal's keys
            raise ValueError("the scripted model takes a 2-D attention mask")
        for b in range(B):
            where = mask[b].nonzero().flatten().tolist()
            real = input_ids[b, where].tolist()
            n, alts = self._prompt(real)
            response_pos = where[n:]
            if alts is None:  # its prompt's end is unknown: EOS everywhere
                logits[b, where, self.eos_id] = LOGIT
                continue
            chosen = alts[0] if len(alts) == 1 else None
            if chosen is None and real[n] != self.mask_id:
                chosen = next((a for a in alts if a and a[0] == real[n]), alts[0])
            if chosen is None:  # the selector first: equal over the first tokens
                for a in alts:
                    logits[b, response_pos[0], a[0]] = LOGIT
                continue
            for j, p in enumerate(response_pos):
                logits[b, p, chosen[j] if j < len(chosen) else self.eos_id] = LOGIT
        return SimpleNamespace(logits=logits)


def save_scripted(path: str | Path, script: dict[str, list[str]]) -> Path:
    """Write a scripted model: ``script`` maps a prompt to its response(s).

    Raises:
        ValueError: a character outside the tokenizer's, or several responses of one prompt
            that do not begin with distinct characters.
    """
    allowed = set(CHARS)
    for prompt, responses in script.items():
        bad = {c for text in (prompt, *responses) for c in text if c not in allowed}
        if bad:
            raise ValueError(f"scripted model: characters {sorted(bad)} are not in the tokenizer")
        if not responses or (
            len(responses) > 1 and len({r[:1] for r in responses}) != len(responses)
        ):
            raise ValueError(
                f"scripted model: prompt {prompt[:40]!r}: give one response, or several that "
                "begin with distinct characters"
            )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    build_char_tokenizer().save_pretrained(path)
    (path / SCRIPT_FILE).write_text(json.dumps({"responses": script}, indent=1) + "\n")
    (path / BACKEND_FILE).write_text(json.dumps({"backend": "scripted"}) + "\n")
    return path


def load_scripted(path: str | Path) -> DiffusionLM:
    """Load a folder :func:`save_scripted` wrote."""
    from transformers import AutoTokenizer

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(path)
    script = json.loads((path / SCRIPT_FILE).read_text())["responses"]

    def ids(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    table = {tuple(ids(p)): [ids(r) for r in rs] for p, rs in script.items()}
    net = ScriptedNet(table, len(tok), tok.mask_token_id, tok.eos_token_id).eval()
    spec = BackendSpec(
        name="scripted",
        mask_token_id=tok.mask_token_id,
        shift_logits=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        position_ids=False,
        head_at_positions=False,
    )
    return DiffusionLM(net, tok, spec)


__all__ = ["ScriptedNet", "load_scripted", "save_scripted"]
