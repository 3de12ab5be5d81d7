"""``tabom eval``: a model's accuracy and pass@k on tasks under diffusion decoding (DESIGN §7).

An eval set is ``SPEC`` (seeded generated instances) or ``SPEC@FILE`` (a data file read by the
task's loader, e.g. ``countdown:n_operands=4@data/cd4_test.jsonl``). The model is a shipped
name or a folder, optionally with a peft LoRA ``adapter`` on top. Per set: the main run
(``n_samples`` answers at the first score and budget: accuracy, pass@k, forwards per answer),
one-sample accuracy at every score x tokens-per-step budget (``--decode.*`` settings), and, with a ``baseline`` model,
forgetting and per-item flips on the same items (:mod:`tabom.metrics`); with ``trajectories``,
Kendall τ alignment and TDS over that file. Results go to tables on stdout and, when
``output`` is set, to JSON. Run: ``tabom eval --budget_tokens_per_step 1,2,3 --baseline
tiny-base`` or ``tabom eval --decode.threshold 0.9`` (parallel decoding; tokens per forward).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tabom.config import AT_LEAST_1, NON_NEGATIVE, check_ranges
from tabom.decoding import DecodeConfig, ScoreName
from tabom.errors import TabomError
from tabom.evaluate import TaskResult, budget_for, evaluate_task
from tabom.metrics import Alignment, Forgetting, forgetting, trajectory_alignment
from tabom.models import DEFAULT_MODEL, load_model
from tabom.models.lora import merge_adapter
from tabom.tasks import NEW_DOMAIN, OLD_DOMAIN, make_task
from tabom.tasks.base import Example, Task


@dataclass
class EvalConfig:
    """Config of ``tabom eval``.

    Attributes:
        model: shipped model name (``tiny-base``) or a local model folder.
        adapter: a peft LoRA adapter folder (``tabom train`` writes ``OUTPUT/adapter``) merged
            into ``model`` before evaluation; ``None`` = the model as it is.
        tasks: eval sets, ``SPEC`` or ``SPEC@FILE``.
        n_examples: problems per set (a seeded subset of a file; generated sets default to 200).
            The default sets are the shipped model's old and new domain.
        n_samples: answers per problem (pass@k needs n_samples >= k; use temperature > 0).
        ks: the k of pass@k.
        decode: the decode settings of every run (``--decode.tokens_per_step 2``,
            ``--decode.threshold 0.9``, ``--decode.top_k 5`` ...; :class:`DecodeConfig`;
            the response length is each task's unless ``--decode.gen_length`` fixes it). The
            main run (``n_samples`` answers: accuracy, pass@k, tokens per forward) uses it as
            it is, with ``sample_temperature`` if set.
        budget_tokens_per_step: one-sample accuracy at each of these tokens per step
            (``--budget_tokens_per_step 1,2,3``); ``None`` = ``decode.tokens_per_step`` only.
        budget_scores: one-sample accuracy with each of these unmasking orders at every budget;
            ``None`` = ``decode.score`` only.
        sample_temperature: temperature of the main run's ``n_samples`` answers (pass@k), so
            that one command gives greedy accuracies and sampled pass@k; ``None`` =
            ``decode.temperature``.
        seed: seed of example selection and sampling.
        batch_size: prompts per forward.
        baseline: a model (name or folder) evaluated on the same items with the first score
            and budget, one sample: forgetting = its accuracy minus the model's, and per-item
            correct→wrong / wrong→correct flips (use temperature 0 so items compare).
        trajectories: a trajectory JSONL (``tabom distill``): Kendall τ alignment between the
            model's entropy order and the file's decode orders, and TDS (docs/method.md).
        output: write results as JSON here.
        num_threads: torch CPU threads; 1 is fastest for the tiny model
            (docs/benchmarks.md); 0 = torch's default.
        trust_remote_code: run the checkpoint's own modeling code (``llada-remote`` /
            ``dream-remote``) for ``model`` and ``baseline``; never implied by a file.
    """

    model: str = DEFAULT_MODEL
    adapter: str | None = None
    tasks: list[str] = field(default_factory=lambda: [OLD_DOMAIN, NEW_DOMAIN])
    n_examples: int | None = field(default=None, metadata=AT_LEAST_1)
    n_samples: int = field(default=1, metadata=AT_LEAST_1)
    ks: list[int] = field(default_factory=lambda: [1], metadata=AT_LEAST_1)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    budget_tokens_per_step: list[int] | None = field(default=None, metadata=AT_LEAST_1)
    budget_scores: list[ScoreName] | None = None
    sample_temperature: float | None = field(default=None, metadata=NON_NEGATIVE)
    seed: int = field(default=0, metadata=NON_NEGATIVE)
    batch_size: int = field(default=64, metadata=AT_LEAST_1)
    baseline: str | None = None
    trajectories: str | None = None
    output: str | None = None
    num_threads: int = field(default=1, metadata=NON_NEGATIVE)
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_ranges(self)  # a config built in Python; flags and YAML are checked before
        if not self.tasks:
            raise ValueError("tasks: give at least one eval set (SPEC or SPEC@FILE)")
        if not self.ks:
            raise ValueError("ks: give at least one k (e.g. 1)")
        if any(k > self.n_samples for k in self.ks):
            raise ValueError(f"ks {self.ks}: every k must be <= n_samples ({self.n_samples})")
        if self.n_samples > 1 and self.main_decode.temperature == 0:
            raise ValueError(
                "n_samples > 1 with temperature 0 (sample_temperature, else decode.temperature) "
                "decodes the same answer n times"
            )
        if self.budget_tokens_per_step == []:  # each >= 1: its field's range
            raise ValueError("budget_tokens_per_step: give at least one budget (or none)")
        if self.budget_scores is not None and not self.budget_scores:
            raise ValueError("budget_scores: give at least one unmasking order (or none)")

    @property
    def main_decode(self) -> DecodeConfig:
        """The decode settings of the main (``n_samples``) run."""
        if self.sample_temperature is None:
            return self.decode
        return dataclasses.replace(self.decode, temperature=self.sample_temperature)

    def budgets(self) -> dict[str, DecodeConfig]:
        """``label -> settings`` of the one-sample accuracy runs (the first: the main's); the
        label is :meth:`DecodeConfig.label` (``confidence@1``: score @ tokens per step)."""
        scores = self.budget_scores or [self.decode.score]
        tps = self.budget_tokens_per_step or [self.decode.tokens_per_step]
        out = {}
        for score in scores:
            for t in tps:
                cfg = dataclasses.replace(self.decode, score=score, tokens_per_step=t)
                out[cfg.label(self.decode)] = cfg
        return out


def load_eval_set(spec: str, n: int | None, seed: int) -> tuple[Task, list[Example]]:
    """``SPEC`` -> n generated examples; ``SPEC@FILE`` -> the file (a seeded subset of n).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a bad spec, or a file given for a task without data files (names ``spec``).
        DataFileError: a malformed file.
    """
    from tabom.tasks import DataFileError, load_examples

    task_spec, _, path = spec.partition("@")
    task = make_task(task_spec)
    gen = torch.Generator().manual_seed(seed)
    if not path:
        return task, task.generate(n or 200, gen)
    if not Path(path).is_file():
        raise FileNotFoundError(f"eval set {spec!r}: no such file {path}")
    try:
        examples = load_examples(task_spec, path)
    except DataFileError:
        raise  # names the file, line and field
    except ValueError as e:  # a task without data files (``addition@x.jsonl``)
        raise TabomError(f"eval set {spec!r}: {e}") from e
    if n is not None and n < len(examples):
        keep = torch.randperm(len(examples), generator=gen)[:n].sort().values.tolist()
        examples = [examples[i] for i in keep]
    return task, examples


def bar_label(spec: str) -> str:
    """A short progress-bar label: ``old domain: addition``, ``countdown@test.jsonl`` (the
    tables name the full spec)."""
    task_spec, _, path = spec.partition("@")
    name = task_spec.partition(":")[0] + (f"@{Path(path).name}" if path else "")
    domain = {OLD_DOMAIN: "old domain", NEW_DOMAIN: "new domain"}.get(task_spec)
    return f"{domain}: {name}" if domain else name


def sampling(temperature: float) -> str:
    """How answers were drawn: ``greedy (T = 0)`` or ``sampled at T = 1``."""
    return "greedy (T = 0)" if temperature == 0 else f"sampled at T = {temperature:g}"


def format_table(results: dict[str, TaskResult]) -> str:
    """A markdown table of accuracy, pass@k and decode statistics."""
    ks = sorted({k for r in results.values() for k in r.pass_at})
    head = ["set", "n", "samples", "accuracy", *[f"pass@{k}" for k in ks], "NFE/answer", "tok/fwd"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [name, str(r.n_examples), str(r.n_samples), f"{r.accuracy:.3f}"]
        cells += [f"{r.pass_at[k]:.3f}" if k in r.pass_at else "-" for k in ks]
        cells += [f"{r.nfe_per_answer:.1f}", f"{r.tokens_per_forward:.2f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def format_budgets(budgets: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per set, one column per ``score@tokens_per_step`` accuracy."""
    keys = list(next(iter(budgets.values()))) if budgets else []
    rows = [
        "| set | " + " | ".join(f"acc {k}" for k in keys) + " |",
        "|" + "---|" * (1 + len(keys)),
    ]
    for name, accs in budgets.items():
        rows.append(f"| {name} | " + " | ".join(f"{accs[k]:.3f}" for k in keys) + " |")
    return "\n".join(rows)


def format_forgetting(forgot: dict[str, Forgetting]) -> str:
    """A markdown table of accuracy before/after, forgetting and flips per set."""
    head = "| set | n | baseline acc | model acc | forgetting | correct→wrong | wrong→correct |"
    rows = [head, "|---|---|---|---|---|---|---|"]
    for name, f in forgot.items():
        rows.append(
            f"| {name} | {f.n_items} | {f.before:.3f} | {f.after:.3f} | {f.forgetting:+.3f} | "
            f"{f.correct_to_wrong} | {f.wrong_to_correct} |"
        )
    return "\n".join(rows)


def run_eval(cfg: EvalConfig) -> int:
    """Evaluate ``cfg.model`` on every set; print the tables, write JSON if asked."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # 1) the sets and their decode settings, checked before any model loads
    sets = {spec: load_eval_set(spec, cfg.n_examples, cfg.seed) for spec in cfg.tasks}
    budgets_cfg = cfg.budgets()
    for task, _ in sets.values():
        for bcfg in (cfg.main_decode, *budgets_cfg.values()):
            budget_for(task, bcfg)  # a gen_length or block length that does not fit the task
    trust = cfg.trust_remote_code
    dlm = load_model(cfg.model, trust_remote_code=trust)
    if cfg.adapter is not None:
        dlm = merge_adapter(dlm, cfg.adapter)
    base = load_model(cfg.baseline, trust_remote_code=trust) if cfg.baseline else None
    records = None
    if cfg.trajectories:  # read and checked before any decoding
        from tabom.trajectory import read_trajectories

        records = read_trajectories(
            cfg.trajectories, tokenizer=dlm.tokenizer, vocab_size=dlm.vocab_size
        )
    key0 = next(iter(budgets_cfg))
    t_main = cfg.main_decode.temperature
    results: dict[str, TaskResult] = {}
    budgets: dict[str, dict[str, float]] = {}
    forgot: dict[str, Forgetting] = {}
    for spec, (task, examples) in sets.items():
        kwargs = {"seed": cfg.seed, "batch_size": cfg.batch_size, "progress": True}
        label = bar_label(spec)
        results[spec] = evaluate_task(
            dlm,
            task,
            examples,
            cfg.main_decode,
            n_samples=cfg.n_samples,
            ks=tuple(cfg.ks),
            desc=f"{label} [{cfg.n_samples} x {'greedy' if t_main == 0 else f'T={t_main:g}'}]",
            **kwargs,
        )
        one: dict[str, TaskResult] = {}
        same_as_main = cfg.n_samples == 1 and cfg.main_decode == cfg.decode
        for key, bcfg in budgets_cfg.items():
            if bcfg == cfg.decode and same_as_main:
                one[key] = results[spec]
            else:
                desc = f"{label} [{key}]"
                one[key] = evaluate_task(dlm, task, examples, bcfg, desc=desc, **kwargs)
        budgets[spec] = {k: r.accuracy for k, r in one.items()}
        if base is not None:
            desc = f"{label} [baseline, {key0}]"
            before = evaluate_task(base, task, examples, budgets_cfg[key0], desc=desc, **kwargs)
            after = one[key0]
            forgot[spec] = forgetting([c[0] for c in before.correct], [c[0] for c in after.correct])
    alignment: Alignment | None = None
    if records is not None:
        alignment = trajectory_alignment(dlm, records, batch_size=cfg.batch_size)
    print(f"main run: {cfg.n_samples} answer(s) per problem, {sampling(t_main)}")
    print(format_table(results))
    print()
    print(
        f"one answer per problem at each budget (score@tokens per step), {sampling(cfg.decode.temperature)}"
    )
    print(format_budgets(budgets))
    if forgot:
        print()
        print(format_forgetting(forgot))
    if alignment is not None:
        print(
            f"\nalignment over {alignment.n_records} trajectories ({cfg.trajectories}): "
            f"Kendall tau-b {alignment.tau:.3f} (all states), {alignment.tau_initial:.3f} "
            f"(all-masked state); TDS {alignment.tds:.4f}"
        )
    if cfg.output:
        payload = {
            "config": asdict(cfg),
            "results": {k: asdict(r) for k, r in results.items()},
            "budgets": budgets,
            "forgetting": {k: asdict(f) for k, f in forgot.items()},
            "alignment": None if alignment is None else asdict(alignment),
        }
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"\nsaved: {cfg.output} (results as JSON)")
    else:
        print("\nnot saved (--output FILE.json writes the results as JSON)")
    return 0
