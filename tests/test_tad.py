"""``tad`` (arXiv 2605.09536) against a naive loop, value and gradient, and through
``tabom train``.

The loop walks each sample's positions one by one: it draws the state index with the same
uniform as the vectorised mask, sorts every masked position into near (decoded within
``delta`` steps of the state) or distant (later, or never decoded), and adds up the hard CE
and τ²·KL(teacher ‖ student) from scalars of the full logits (fp64, so agreement is tight).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tabom.commands.train import load_train_items, tad_teacher, train
from tabom.losses import teacher_kl
from tabom.masking import tad_mask
from tabom.models import load_model
from tabom.models.prepared import HeadForward, PreparedLM
from tabom.objectives import LossConfig, compute_objective
from tabom.train_data import collate_trajectories
from test_losses import MASK, VOCAB, as_batch, trajectories
from test_trainer import config, traj, weights  # noqa: F401  (traj: the module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


class Linear64(torch.nn.Module):
    """fp64 logits from a token table plus a position bias (a student or a teacher)."""

    def __init__(self, length: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(VOCAB, VOCAB, generator=g, dtype=torch.float64))
        self.pos = torch.nn.Parameter(torch.randn(length, VOCAB, generator=g, dtype=torch.float64))

    def forward(self, input_ids, attention_mask):
        return self.table[input_ids] + self.pos[None, : input_ids.shape[1]]


def naive_tad(student, teacher, ids, resp, ds, *, delta, tau, w_ce, w_kl, seed):
    """Per-sample, per-position loop; returns (total, ce, kl, n_near, n_distant)."""
    b, length = ids.shape
    u = torch.rand(b, generator=torch.Generator().manual_seed(seed))
    x = ids.clone()
    near, distant = [], []
    for row in range(b):
        s_max = max(int(d) for d in ds[row])
        if s_max < 0:
            for p in range(length):
                if resp[row, p]:
                    x[row, p] = MASK
            continue
        s = min(int(float(u[row]) * (s_max + 1)), s_max)
        for p in range(length):
            if not resp[row, p]:
                continue
            d = int(ds[row, p])
            if 0 <= d < s:
                continue  # revealed
            x[row, p] = MASK
            (near if s <= d < s + delta else distant).append((row, p))
    zs = student(x, None)
    with torch.no_grad():
        zt = teacher(x, None)
    ce_terms = [-torch.log_softmax(zs[r, p], -1)[ids[r, p]] for r, p in near]
    kl_terms = []
    for r, p in distant:
        log_q = torch.log_softmax(zs[r, p] / tau, -1)
        log_p = torch.log_softmax(zt[r, p] / tau, -1)
        kl_terms.append(sum(log_p[v].exp() * (log_p[v] - log_q[v]) for v in range(VOCAB)))
    ce = sum(ce_terms) / max(len(ce_terms), 1)
    kl = tau**2 * sum(kl_terms) / max(len(kl_terms), 1)
    return w_ce * ce + w_kl * kl, ce, kl, len(near), len(distant)


def test_tad_mask_splits_the_masked_positions_like_the_released_code():
    ids, resp, ds = trajectories(per_step=1)
    ds[0] = -1  # nothing decoded: no state (the last row, one step, is a state: s = 0)
    plan = tad_mask(ids, ds, response_mask=resp, delta=3, mask_token_id=MASK,
                    generator=torch.Generator().manual_seed(3))
    for row in range(ids.shape[0]):
        s = int(plan.cut[row])
        for p in range(ids.shape[1]):
            d = int(ds[row, p])
            shown = bool(resp[row, p]) and 0 <= d < s
            assert (int(plan.input_ids[row, p]) == MASK) == (bool(resp[row, p]) and not shown)
            assert bool(plan.supervise[row, p]) == (bool(resp[row, p]) and s >= 0 and s <= d < s + 3)
            far = bool(resp[row, p]) and s >= 0 and not shown and not (s <= d < s + 3)
            assert bool(plan.distant[row, p]) == far
    assert plan.n_uncut == 1 and int(plan.cut[0]) == -1 and int(plan.cut[-1]) == 0
    assert plan.supervise.any() and plan.distant.any()
    with pytest.raises(ValueError, match="tad_delta: 0 is out of range"):  # the config's rule
        LossConfig(tad_delta=0)


@pytest.mark.parametrize(("delta", "tau", "w_ce", "w_kl"), [(1, 1.0, 1.0, 1.0), (3, 2.0, 0.5, 1.5)])
def test_tad_matches_a_naive_loop_value_and_gradient(delta, tau, w_ce, w_kl):
    ids, resp, ds = trajectories(per_step=1)
    ds[-1] = -1  # one row with nothing decoded: no state, nothing supervised
    attn = torch.ones_like(ids)
    student, teacher = Linear64(ids.shape[1], 0), Linear64(ids.shape[1], 1)
    teacher.requires_grad_(False)
    loss = LossConfig(tad_delta=delta, tad_tau=tau, tad_ce_weight=w_ce, tad_kl_weight=w_kl)
    out = compute_objective(
        student, as_batch(ids, attn, resp, ds), objective="tad", loss=loss,
        mask_token_id=MASK, generator=torch.Generator().manual_seed(5), teacher=teacher,
    )
    out.total.backward()
    got = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    total, ce, kl, n_near, n_distant = naive_tad(
        student, teacher, ids, resp, ds, delta=delta, tau=tau, w_ce=w_ce, w_kl=w_kl, seed=5
    )
    total.backward()
    # the CE rows come from the fp32 head path (as every objective's), the KL keeps fp64
    close = {"check_dtype": False, "rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(out.total, total, **close)
    torch.testing.assert_close(out.ce, ce, **close)
    torch.testing.assert_close(out.kl, kl)
    assert out.n_supervised == n_near > 0 and out.n_distant == n_distant > 0 and out.n_uncut == 1
    for g, p in zip(got, student.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, **close)
    assert kl.item() > 0 and teacher.table.grad is None  # the teacher never gets a gradient


def test_teacher_kl_is_zero_for_the_teacher_itself_and_needs_a_teacher():
    z = torch.randn(5, VOCAB, dtype=torch.float64)
    assert teacher_kl(z, z, tau=2.0).abs().max() < 1e-12
    assert (teacher_kl(z + torch.randn_like(z), z) > 0).all()
    ids, resp, ds = trajectories()
    with pytest.raises(ValueError, match="needs teacher="):
        compute_objective(Linear64(ids.shape[1], 0), as_batch(ids, torch.ones_like(ids), resp, ds),
                          objective="tad", loss=LossConfig(), mask_token_id=MASK)
    with pytest.raises(ValueError, match="tad_tau"):
        LossConfig(tad_tau=0.0)


def test_tad_trains_through_tabom_train(model_dir, traj, tmp_path):  # noqa: F811
    """A few steps lower the near-token CE on fixed draws and change every parameter; the KL
    starts at 0 (the student is the teacher) and is logged."""
    cfg = config(model_dir, traj, tmp_path / "run", objective="tad", tad_delta=2)
    teacher = tad_teacher(cfg)

    def fixed(dlm):
        items, _ = load_train_items(cfg, dlm)
        b = collate_trajectories([items[i] for i in range(8)], dlm.spec.pad_token_id)
        with torch.no_grad():
            return compute_objective(dlm, b, objective="tad", loss=cfg.loss,
                                     mask_token_id=dlm.mask_token_id,
                                     generator=torch.Generator().manual_seed(7), teacher=teacher)

    before = fixed(load_model(model_dir))
    assert before.kl.item() == pytest.approx(0.0, abs=1e-6) and before.n_distant > 0
    out = train(cfg)
    after = fixed(load_model(str(out / "model")))
    assert after.ce < before.ce - 0.05 and after.total < before.total, (before, after)
    assert after.kl > 0
    init, final = weights(Path(model_dir)), weights(out / "model")
    assert not [k for k in init if torch.equal(init[k], final[k])]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert all(math.isfinite(r["kl"]) for r in log) and log[-1]["kl"] > 0


class CountingHead:
    """A :class:`~tabom.head.HeadModel` over fp64 logits that records the rows of each head call."""

    def __init__(self, model):
        self.model, self.rows = model, []

    def hidden_states(self, input_ids, attention_mask=None):
        return self.model(input_ids, attention_mask)

    def gather_hidden(self, hidden, rows, positions):
        return hidden[rows, positions]

    def apply_head(self, hidden_rows):
        self.rows.append(hidden_rows.shape[0])
        return hidden_rows

    def linear_head(self):
        return None


def test_the_head_runs_at_the_near_and_distant_rows_only():
    ids, resp, ds = trajectories(per_step=1)
    student = CountingHead(Linear64(ids.shape[1], 0))
    teacher = CountingHead(Linear64(ids.shape[1], 1))
    out = compute_objective(
        student, as_batch(ids, torch.ones_like(ids), resp, ds), objective="tad",
        loss=LossConfig(tad_delta=2), mask_token_id=MASK,
        generator=torch.Generator().manual_seed(0), teacher=teacher,
    )
    assert student.rows == [out.n_supervised + out.n_distant]  # one head call, both sets
    assert teacher.rows == [out.n_distant]
    assert out.n_supervised + out.n_distant < int(resp.sum())  # revealed rows get no head


class Recording(HeadForward):
    """A :class:`HeadForward` that records, per forward, the pairs it was asked for."""

    def __init__(self, model, spec):
        super().__init__(model, spec)
        self.calls = []

    def forward(self, input_ids, attention_mask=None, rows=None, positions=None, **kw):
        self.calls.append(None if rows is None else rows.numel())
        return super().forward(input_ids, attention_mask, rows, positions, **kw)


def test_a_prepared_student_runs_one_forward_with_its_head_at_the_pairs_only(
    model_dir, traj, tmp_path  # noqa: F811
):
    """Under ``tabom train`` the student is a :class:`PreparedLM`: ``tad`` calls its prepared
    module once (one forward per backward, as DDP / FSDP / ZeRO-3 need), with the near and
    distant pairs, never for the whole ``(B, L, V)`` logits, and gets the plain model's loss."""
    cfg = config(model_dir, traj, tmp_path / "run", objective="tad", tad_delta=2)
    dlm, teacher = load_model(model_dir), tad_teacher(cfg)
    items, _ = load_train_items(cfg, dlm)
    batch = collate_trajectories([items[i] for i in range(8)], dlm.spec.pad_token_id)

    def run(student):
        return compute_objective(
            student, batch, objective="tad", loss=cfg.loss, mask_token_id=dlm.mask_token_id,
            generator=torch.Generator().manual_seed(1), teacher=teacher,
        )

    plain = run(dlm)
    module = Recording(dlm.model, dlm.spec)
    prepared = run(PreparedLM(model=module, tokenizer=dlm.tokenizer, spec=dlm.spec))
    assert module.calls == [prepared.n_supervised + prepared.n_distant]
    assert prepared.n_supervised > 0 and prepared.n_distant > 0
    torch.testing.assert_close(prepared.total, plain.total)
    torch.testing.assert_close(prepared.ce, plain.ce)
