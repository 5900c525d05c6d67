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


def bind_to_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Make every parameter a view of ``flat`` [P], after copying the current values into it."""
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            view = flat[offset:offset + n].view_as(p)
            view.copy_(p)
            p.data = view
            offset += n
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} elements, model has {offset}")


def bind_grads(model: nn.Module, flat_grad: torch.Tensor) -> None:
    """Make every parameter's ``.grad`` a view of ``flat_grad`` [P]: backward accumulates straight into it."""
    offset = 0
    for p in model.parameters():
        n = p.numel()
        p.grad = flat_grad[offset:offset + n].view_as(p)
        offset += n
