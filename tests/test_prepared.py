"""Unwrapping a prepared model by accelerate's rule (``tabom.models.base.unwrap_model``): the
network under a data-parallel wrapper, and nothing unwrapped that is not a wrapper."""

from __future__ import annotations

import torch

from tabom.models import DEFAULT_MODEL, load_model
from tabom.models.base import DiffusionLM, unwrap_model
from tabom.models.prepared import HeadForward, PreparedLM


class HasModuleChild(torch.nn.Module):
    """Not a wrapper, though it has a child named ``module`` (a hand-written loop unwraps it)."""

    def __init__(self) -> None:
        super().__init__()
        self.module = torch.nn.Linear(2, 2)


def test_unwrap_takes_off_wrappers_only():
    net = HasModuleChild()
    assert unwrap_model(net) is net
    assert unwrap_model(torch.nn.DataParallel(net)) is net
    plain = torch.nn.Linear(2, 2)
    assert unwrap_model(plain) is plain


def test_the_prepared_view_reaches_the_network_under_a_wrapper():
    dlm = load_model(DEFAULT_MODEL)
    wrapped = torch.nn.DataParallel(HeadForward(dlm.model, dlm.spec))
    prepared = PreparedLM(model=wrapped, tokenizer=dlm.tokenizer, spec=dlm.spec)
    assert prepared._network() is dlm._network()
    # the plain view of a wrapped network too (its attention-mask dtype, its head)
    view = DiffusionLM(model=torch.nn.DataParallel(dlm.model), tokenizer=None, spec=dlm.spec)
    assert view._network() is dlm._network()
