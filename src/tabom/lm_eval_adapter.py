"""An lm-evaluation-harness model ``tabom``: harness generation tasks under diffusion decoding (DESIGN §7).

Importing this module registers the model ``tabom`` with ``lm_eval`` (optional extra ``eval``:
``pip install 'tabom[eval]'``). ``generate_until`` requests are decoded with
:func:`tabom.decoding.decode` (any backend ``load_model`` reads: tiny, llada, dream, hf-mlm),
cut at EOS and at the request's ``until`` strings. ``loglikelihood`` (multiple choice) and
``loglikelihood_rolling`` (perplexity) requests get the Monte-Carlo NELBO bound of
:mod:`tabom.likelihood` (``mc_samples`` per continuation or window): the returned
log-likelihood is -NELBO, a lower bound in expectation on the order-marginal log-likelihood,
and ``is_greedy`` comes from a greedy decode of the continuation's length. The harness has no plugin discovery, so run
it through this module, which registers the model and then hands over to ``lm_eval``'s CLI::

    python -m tabom.lm_eval_adapter --model tabom \\
        --model_args pretrained=GSAI-ML/LLaDA-8B-Instruct,backend=llada,gen_length=256,steps=256,block_length=8 \\
        --tasks gsm8k --apply_chat_template --batch_size 8

or from Python: ``import tabom.lm_eval_adapter`` then ``lm_eval.simple_evaluate(model="tabom",
...)``. Data-parallel over GPUs with ``accelerate launch -m tabom.lm_eval_adapter ...``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

try:
    import lm_eval.models  # noqa: F401  (registers the harness's own models first)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(
        "tabom.lm_eval_adapter needs lm-evaluation-harness: pip install 'tabom[eval]' "
        f"(or pip install lm-eval) ({e})"
    ) from None

from tabom.batch_decode import decode_batches, response_text
from tabom.decoding import DecodeConfig
from tabom.likelihood import LikelihoodConfig, NelboEstimate, estimate_nelbo
from tabom.likelihood_sets import greedy_matches, rolling_windows
from tabom.models import load_model
from tabom.seeding import generator


def cut_at_stops(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any of ``until`` (empty strings ignored)."""
    cuts = [text.index(s) for s in until if s and s in text]
    return text[: min(cuts)] if cuts else text


@register_model("tabom")
class TabomLM(LM):
    """``lm_eval`` model: a tabom diffusion LM decoded with :func:`tabom.decoding.decode`.

    Model args (``--model_args key=value,...``):
        pretrained: shipped name, local folder or hub id (``load_model``).
        backend: ``auto`` or a backend name (``llada``, ``dream``, ``hf-mlm``, ``tiny``).
        dtype: ``auto`` (bf16 on CUDA), ``bf16``, ``fp16``, ``fp32``.
        decode settings: every field of :class:`tabom.decoding.DecodeConfig` by its name
            (``gen_length``, ``steps``, ``tokens_per_step``, ``block_length``, ``score``,
            ``temperature``, ``top_p``, ``top_k``, ``threshold``, ``cache``, ...), read with
            its type and range as ``--decode.*`` flags are (:meth:`DecodeConfig.from_record`);
            defaults as there: one token per step, the paper's setting. ``gen_length`` unset:
            each request's ``max_gen_toks``. The request's sampling arguments are not used,
            its ``until`` and ``max_gen_toks`` are.
        seed: seed of sampling.
        batch_size: prompts per forward (the harness's ``--batch_size``; ``auto`` = 8).
        mc_samples: Monte-Carlo samples of the NELBO per loglikelihood continuation or
            rolling window (``tabom.likelihood``; standard error about 1/√mc_samples).
        mc_draws: how the masks are drawn (``tabom.likelihood.LikelihoodConfig.draws``).
        mc_batch_size: sequences per forward of the likelihood path.
        greedy_check: compute ``is_greedy`` by a greedy decode of each continuation's length
            (false: always False, one decode less per request).
        max_length: longest context + continuation (default: the model's positions, at most
            4096); longer contexts keep their last tokens, rolling windows are this long.
    """

    def __init__(
        self,
        pretrained: str = "tiny-base",
        backend: str = "auto",
        dtype: str = "auto",
        device: str | None = None,
        seed: int = 0,
        batch_size: int | str | None = 8,
        max_batch_size: int | None = None,
        mc_samples: int = 32,
        mc_draws: str = "antithetic",
        mc_batch_size: int = 64,
        greedy_check: bool = True,
        max_length: int | None = None,
        **decode: Any,
    ) -> None:
        from accelerate import PartialState

        super().__init__()
        # the one decode group, checked before the model loads (T: fixed, or each request's
        # max_gen_toks; one token per step unless ``steps`` says otherwise)
        self.decode = DecodeConfig.from_record(decode, "model_args")
        self._state = PartialState(cpu=not torch.cuda.is_available())
        self._rank, self._world_size = self._state.process_index, self._state.num_processes
        # one process: the harness's --device; data parallel: each process its own device
        self._device = torch.device(device) if device and self._world_size == 1 else None
        if self._device is None:
            self._device = self._state.device
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device here (pass --device cpu)")
        self.dlm = load_model(str(pretrained), backend=backend, dtype=dtype, device=self._device)
        self.seed = int(seed)
        auto = batch_size is None or str(batch_size).startswith("auto")
        self.batch_size = 8 if auto else int(batch_size)  # type: ignore[arg-type]
        self._templated = False  # set when the harness renders prompts with our template
        self.likelihood = LikelihoodConfig(
            n_samples=int(mc_samples),
            draws=mc_draws,  # type: ignore[arg-type]
            batch_size=int(mc_batch_size),
            seed=self.seed,
        )
        self.greedy_check = str(greedy_check).lower() not in ("false", "0", "no")
        positions = getattr(self.dlm.model.config, "max_position_embeddings", None) or 4096
        self.max_length = int(max_length) if max_length else min(int(positions), 4096)

    # ----------------------------------------------------------------- decoding

    def decode_config(self, max_gen_toks: int) -> DecodeConfig:
        """The decode settings of a request allowing ``max_gen_toks`` new tokens.

        Raises:
            ValueError: ``block_length`` does not divide T, or another bad setting.
        """
        return self.decode.resolve(int(max_gen_toks))

    def encode(self, context: str) -> list[int]:
        """Prompt ids: special tokens (a BOS) unless the harness applied our chat template."""
        tok = self.dlm.tokenizer
        return list(tok(context, add_special_tokens=not self._templated)["input_ids"])

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Decode each request's context; cut at EOS and at its ``until`` strings.

        Args:
            requests: instances whose ``args`` are ``(context, gen_kwargs)``.
            disable_tqdm: no progress bar.

        Returns:
            One continuation per request, in request order.
        """
        dlm = self.dlm
        gen = generator(self.seed, "lm-eval", self._rank, device=dlm.device)
        groups: dict[int, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(int(req.args[1].get("max_gen_toks", 256)), []).append(i)
        out: list[str] = [""] * len(requests)
        for max_toks, idx in groups.items():
            res = decode_batches(
                dlm,
                [self.encode(requests[i].args[0]) for i in idx],
                self.decode_config(max_toks),
                generator=gen,
                batch_size=self.batch_size,
                progress=not (disable_tqdm or self._rank),
                desc=f"tabom decode (max_gen_toks {max_toks})",
            )
            for i, row in zip(idx, res.response_ids.tolist(), strict=True):
                text = response_text(dlm.tokenizer, row, dlm.spec.stop_ids)
                until = requests[i].args[1].get("until") or []
                out[i] = cut_at_stops(text, [until] if isinstance(until, str) else until)
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    # ----------------------------------------------------------------- likelihood

    def _nelbo(self, pairs: list[tuple[list[int], list[int]]]) -> NelboEstimate:
        """The NELBO of each ``(context ids, continuation ids)`` pair (seeded per rank)."""
        gen = generator(self.seed, "lm-eval", self._rank)
        return estimate_nelbo(
            self.dlm,
            pairs,
            self.likelihood,
            mask_token_id=self.dlm.mask_token_id,
            pad_token_id=self.dlm.spec.pad_token_id,
            generator=gen,
            max_length=self.max_length,
            device=self._device,
        )

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids as the harness's HF model splits them: trailing
        spaces of the context move to the continuation, the continuation's ids are those of
        the whole text after the context's (so a token spanning the boundary is not split);
        an empty context is the prefix token (BOS, else EOS)."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        if not context:
            ids = self.dlm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            return [self.prefix_token_id], list(ids)
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return ctx, whole[len(ctx) :]

    @property
    def prefix_token_id(self) -> int:
        tok = self.dlm.tokenizer
        bos = getattr(tok, "bos_token_id", None)
        return int(bos) if bos is not None else int(self.dlm.spec.eos_token_id)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        """``(-NELBO, is_greedy)`` of each request's continuation given its context.

        -NELBO is a Monte-Carlo estimate, with ``mc_samples`` samples, of a lower bound on the
        log-likelihood of the continuation under a uniformly random decode order
        (:mod:`tabom.likelihood`); ``is_greedy``: the greedy decode of the continuation's
        length reproduces it (False everywhere with ``greedy_check`` false).
        """
        pairs = [self.encode_pair(*req.args) for req in requests]
        est = self._nelbo(pairs)
        greedy = [False] * len(pairs)
        if self.greedy_check:
            greedy = greedy_matches(
                self.dlm, pairs, score=self.decode.score, batch_size=self.batch_size
            )
        out = []
        for req, value, g in zip(requests, est.nelbo.tolist(), greedy, strict=True):
            out.append((-float(value), bool(g)))
            self.cache_hook.add_partial("loglikelihood", req.args, out[-1])
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        """-NELBO of each whole text: the sum over disjoint windows of at most ``max_length``
        positions (the harness's rolling windows; the first conditioned on the prefix token),
        each window's continuation scored given its context. The harness turns the sums into
        word / byte perplexities: upper bounds (in expectation) on the order-marginal ones.
        """
        windows: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for i, req in enumerate(requests):
            tokens = self.dlm.tokenizer(req.args[0], add_special_tokens=False)["input_ids"]
            for w in rolling_windows(tokens, self.prefix_token_id, self.max_length):
                windows.append(w)
                owner.append(i)
        est = self._nelbo(windows) if windows else None
        sums = [0.0] * len(requests)
        for i, value in zip(owner, [] if est is None else est.nelbo.tolist(), strict=True):
            sums[i] -= float(value)
        for req, value in zip(requests, sums, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, value)
        return sums

    # ----------------------------------------------------------------- chat templates

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Render the harness's chat history with the model's template (``--apply_chat_template``).

        LLaDA's template appends the assistant header even when ``add_generation_prompt`` is
        false. The rendered text holds the special tokens, so it is then tokenised without.
        """
        self._templated = True
        return self.dlm.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.dlm.tokenizer, "name_or_path", "tabom")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.dlm.tokenizer, "chat_template", None) or ""

    # ----------------------------------------------------------------- data parallel

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        from accelerate.utils import gather

        return gather(tensor.to(self._state.device)) if self._world_size > 1 else tensor

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self._world_size == 1:
            return [obj]
        from accelerate.utils import gather_object

        objs = gather_object([obj])
        return objs if self._rank == dst else None

    def barrier(self) -> None:
        self._state.wait_for_everyone()


def main(argv: list[str] | None = None) -> None:
    """``python -m tabom.lm_eval_adapter ARGS``: the ``lm_eval`` CLI with ``tabom`` registered."""
    from lm_eval.__main__ import cli_evaluate

    from tabom.lm_eval_tasks import FOLDER

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    if "--include_path" not in sys.argv:  # tabom_humaneval / tabom_mbpp: scored by the sandbox
        sys.argv += ["--include_path", str(FOLDER)]
    cli_evaluate()


__all__ = ["TabomLM", "cut_at_stops", "main"]


if __name__ == "__main__":
    main()
