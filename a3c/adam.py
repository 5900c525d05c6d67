"""Adam on one flat parameter vector: the parameter server's optimiser.

The server's parameters are views of one master vector ``theta`` [P], so the whole update is a
handful of element-wise operations on [P] tensors (``adam_step``), with no per-parameter loop.
The operations and their order are those of ``torch.optim.Adam`` with its defaults (no weight
decay, no AMSGrad), so the two give the same numbers (a test compares them step by step).

Why not ``torch.optim.Adam`` itself: constructing any ``torch.optim`` optimiser imports
``torch._dynamo``, about 2 s of CPU in every server start (measured on the 2-core CI machine),
which short runs and the test suite pay many times over. ``FlatAdam.state_dict`` keeps
``torch.optim.Adam``'s layout (one state entry per parameter, in ``model.parameters()`` order), so
checkpoints written before this module existed still resume, and the other way round.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AdamHyper:
    """Adam's hyper-parameters for one step, named and defaulted as ``torch.optim.Adam``'s."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


def adam_step(theta: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int,
              hyper: AdamHyper) -> None:
    """One Adam step in place. ``theta``, ``grad``, ``exp_avg``, ``exp_avg_sq``: [P]; ``step``: 1 for the first.

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    theta <- theta - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """
    lr, (beta1, beta2), eps = hyper.lr, hyper.betas, hyper.eps
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
    theta.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1 ** step))


class FlatAdam:
    """Adam state for ``theta`` [P]: ``exp_avg`` and ``exp_avg_sq`` [P] and the step count.

    ``shapes`` are the parameters' shapes in order (their sizes add up to P); they are needed
    only to write and read ``torch.optim.Adam``'s per-parameter state-dict layout.
    """

    def __init__(self, theta: torch.Tensor, shapes: list[torch.Size], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        if sum(math.prod(s) for s in shapes) != theta.numel():
            raise ValueError(f"parameter shapes add up to {sum(math.prod(s) for s in shapes)}, "
                             f"theta has {theta.numel()}")
        self.theta, self.shapes = theta, [torch.Size(s) for s in shapes]
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        self.exp_avg = torch.zeros_like(theta)
        self.exp_avg_sq = torch.zeros_like(theta)
        self.steps = 0

    def step(self, grad: torch.Tensor, lr: float | None = None) -> None:
        """Apply ``grad`` [P] to ``theta`` in place, at ``lr`` (default: the constructor's)."""
        self.steps += 1
        hyper = AdamHyper(self.lr if lr is None else lr, self.betas, self.eps)
        adam_step(self.theta, grad, self.exp_avg, self.exp_avg_sq, self.steps, hyper)

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        out, offset = [], 0
        for s in self.shapes:
            n = math.prod(s)
            out.append(flat[offset:offset + n].detach().cpu().clone().view(s))
            offset += n
        return out

    def state_dict(self) -> dict:
        """``torch.optim.Adam``'s layout: ``state`` {i: step, exp_avg, exp_avg_sq} and ``param_groups``."""
        state = {}
        if self.steps:
            for i, (m, v) in enumerate(zip(self._split(self.exp_avg), self._split(self.exp_avg_sq))):
                state[i] = {"step": torch.tensor(float(self.steps)), "exp_avg": m, "exp_avg_sq": v}
        group = {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": 0.0, "amsgrad": False,
                 "params": list(range(len(self.shapes)))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, sd: dict) -> None:
        """Restore from either this class's or ``torch.optim.Adam``'s state dict for the same parameters."""
        groups = sd.get("param_groups", [])
        n = sum(len(g["params"]) for g in groups)
        if n != len(self.shapes):
            raise ValueError(f"optimizer state is for {n} parameters, the model has {len(self.shapes)}")
        state = sd.get("state", {})
        if not state:  # saved before the first step
            self.exp_avg.zero_()
            self.exp_avg_sq.zero_()
            self.steps = 0
            return
        entries = [state[i] for i in range(n)]
        for key, dest in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            parts = [e[key] for e in entries]
            for p, s in zip(parts, self.shapes):
                if p.shape != s:
                    raise ValueError(f"optimizer state {key} has shape {tuple(p.shape)} "
                                     f"where the parameter has {tuple(s)}")
            dest.copy_(torch.cat([p.reshape(-1) for p in parts]).to(dest.device, dest.dtype))
        self.steps = int(float(entries[0]["step"]))
