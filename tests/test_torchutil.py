"""spklip.torchutil: `eval_mode` restores the train flag (also on an error), `maybe_autocast`, `unwrap`."""

import pytest
import torch

from spklip.torchutil import eval_mode, maybe_autocast, unwrap


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_flag_it_found(training):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train(training)
    with eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert all(m.training == training for m in model.modules())
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("boom")
    assert all(m.training == training for m in model.modules())


def test_maybe_autocast_and_unwrap():
    with maybe_autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu")
    with maybe_autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    inner = torch.nn.Linear(2, 2)
    wrapper = torch.nn.Module()
    wrapper.module = inner  # what DDP / FSDP look like from outside
    assert unwrap(wrapper) is inner and unwrap(inner) is inner
