"""pixelseg's AdamW: fused where torch has the kernel, the same update as the default one,
and a saved state that loads into either kernel without changing it."""

from __future__ import annotations

import copy

import pytest
import torch

from pixelseg.engine.optimizer import adamw, load_optimizer_state


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 2, 1))


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(seed))
    optimizer.zero_grad(set_to_none=True)
    (model(x) - 1).square().mean().backward()  # no gradient of ~0, which Adam magnifies
    optimizer.step()


def test_adamw_is_fused_on_the_cpu() -> None:
    optimizer = adamw(_model().parameters(), lr=1e-3, weight_decay=0.05)
    assert optimizer.defaults["fused"] is True
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["weight_decay"] == 0.05


def test_adamw_falls_back_where_there_is_no_fused_kernel(monkeypatch) -> None:
    real = torch.optim.AdamW

    def no_fused(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    optimizer = adamw(iter(_model().parameters()))  # a generator is read once, not twice
    assert not optimizer.defaults["fused"]
    assert len(optimizer.param_groups[0]["params"]) == 4


def test_fused_and_default_kernels_make_the_same_update() -> None:
    fused, plain = _model(), _model()
    opt_fused = adamw(fused.parameters(), lr=1e-2)
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    for seed in range(5):
        _step(fused, opt_fused, seed)
        _step(plain, opt_plain, seed)
    # no batch norm here: BN makes some gradients ~0, and Adam, dividing by their root mean
    # square, turns the kernels' last-bit differences there into whole steps
    for a, b, start in zip(
        fused.parameters(), plain.parameters(), _model().parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert (a - start).abs().max() > 1e-2  # the steps moved the weights


@pytest.mark.parametrize("saved_fused", [False, True])
def test_a_saved_state_loads_and_keeps_this_optimizers_kernel(saved_fused: bool) -> None:
    """torch's load_state_dict would restore the saved ``fused`` flag: a run saved before
    pixelseg fused its optimizer would lose the kernel, and a fused run resumed where there
    is none would fail at its first step."""
    source = _model()
    if saved_fused:
        saved = adamw(source.parameters(), lr=1e-2)
    else:
        saved = torch.optim.AdamW(source.parameters(), lr=1e-2)
    _step(source, saved, 0)
    model = _model()
    model.load_state_dict(source.state_dict())
    if saved_fused:  # resumed where torch has no fused kernel
        target = torch.optim.AdamW(model.parameters(), lr=1e-2)
    else:
        target = adamw(model.parameters(), lr=1e-2)
    load_optimizer_state(target, copy.deepcopy(saved.state_dict()))  # as if from a file
    assert bool(target.param_groups[0]["fused"]) is not saved_fused
    first = next(iter(saved.state.values()))
    loaded = next(iter(target.state.values()))
    assert torch.equal(first["exp_avg"], loaded["exp_avg"]) and loaded["step"] == 1
    _step(model, target, 1)  # and it steps with its own kernel
    _step(source, saved, 1)
    for a, b in zip(model.parameters(), source.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
