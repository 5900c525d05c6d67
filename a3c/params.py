"""A model's parameters as one flat float32 vector: the unit the parameter server shares.

The server binds its model's parameters to views of the shared master vector ``theta`` [P], so
the optimiser (``a3c.adam.FlatAdam``) updates the shared copy in place; workers copy ``theta`` into
a model bound to a local flat vector, and their parameters' ``.grad`` are views of a slot [P]
(``bind_grads``).
The order is ``model.parameters()`` order, identical in every process for the same config.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def numel(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``: the length P of its flat vector."""
    return sum(p.numel() for p in model.parameters())


def flatten(model: nn.Module) -> torch.Tensor:
    """Parameters -> new flat vector [P] (detached copy)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _views(model: nn.Module, flat: torch.Tensor):
    """Yield ``(name, parameter, view)`` for each parameter in order, ``view`` being its slice of ``flat``
    shaped like it."""
    offset = 0
    for name, p in model.named_parameters():
        yield name, p, flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()


def bind_to_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Make every parameter a view of ``flat`` [P], after copying the current values into it."""
    with torch.no_grad():
        for _, p, view in _views(model, flat):
            view.copy_(p)
            p.data = view
    if numel(model) != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} elements, model has {numel(model)}")


def bind_grads(model: nn.Module, flat_grad: torch.Tensor) -> None:
    """Make every parameter's ``.grad`` a view of ``flat_grad`` [P]: backward accumulates straight into it."""
    for _, p, view in _views(model, flat_grad):
        p.grad = view


def state_dict_from_flat(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every parameter taken from ``flat`` [P] instead (CPU copies;
    buffers copied from the model): the weights a flat vector stands for, loadable by ``load_state_dict``."""
    if flat.numel() != numel(model):
        raise ValueError(f"flat vector has {flat.numel()} elements, model has {numel(model)}")
    views = {name: view for name, _, view in _views(model, flat)}
    return {k: views.get(k, v).detach().cpu().clone() for k, v in model.state_dict().items()}


def flat_from_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The flat vector [P] of the parameters in ``state`` (a state dict of ``model``), in
    ``model.parameters()`` order; the inverse of ``state_dict_from_flat``."""
    missing = [name for name, _ in model.named_parameters() if name not in state]
    if missing:
        raise KeyError(f"state dict lacks {', '.join(missing[:3])}")
    return torch.cat([state[name].detach().reshape(-1).float() for name, _ in model.named_parameters()])
