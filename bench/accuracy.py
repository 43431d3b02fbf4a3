"""Accuracy on architectures the test suite does not use: taylorc vs nested autograd (float64).

Prints and writes ``bench/results/accuracy.json``: the maximum relative error of the
Laplacian and the biharmonic (collapsed and standard Taylor) per architecture.

    python bench/accuracy.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

import taylorc


class Siren(nn.Module):
    """SIREN (Sitzmann et al. 2020): sin activations, first layer scaled by omega_0."""

    def __init__(self, D, w=32, omega=3.0):
        super().__init__()
        self.omega = omega
        self.layers = nn.ModuleList([nn.Linear(D, w), nn.Linear(w, w), nn.Linear(w, 1)])

    def forward(self, x):
        h = torch.sin(self.omega * self.layers[0](x))
        h = torch.sin(self.layers[1](h))
        return self.layers[2](h)


class PirateBlock(nn.Module):
    """A PirateNet-style adaptive residual block (Wang et al. 2024) with gates from two encoders."""

    def __init__(self, D, w=24):
        super().__init__()
        self.embed, self.U, self.V = nn.Linear(D, w), nn.Linear(D, w), nn.Linear(D, w)
        self.f, self.g, self.h = nn.Linear(w, w), nn.Linear(w, w), nn.Linear(w, w)
        self.alpha = nn.Parameter(torch.tensor(0.3))
        self.out = nn.Linear(w, 2)

    def forward(self, x):
        u, v = torch.tanh(self.U(x)), torch.tanh(self.V(x))
        h = torch.tanh(self.embed(x))
        f = torch.tanh(self.f(h))
        z1 = f * u + (1 - f) * v
        g = torch.tanh(self.g(z1))
        z2 = g * u + (1 - g) * v
        z3 = torch.tanh(self.h(z2))
        return self.out(self.alpha * z3 + (1 - self.alpha) * h)


class Rational(nn.Module):
    """Exp/log/rational pieces and slicing: u = log(1 + exp(a)) / (1 + b^2) with a, b from one layer."""

    def __init__(self, D, w=16):
        super().__init__()
        self.inp, self.out = nn.Linear(D, 2 * w), nn.Linear(w, 3)

    def forward(self, x):
        h = self.inp(x)
        a, b = h[:, ::2], h[:, 1::2]
        z = torch.log(1 + torch.exp(a)) / (1 + b**2)
        return self.out(torch.sigmoid(z) * torch.cos(z))


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def main():
    torch.manual_seed(1)
    results = {}
    for name, cls, D in [
        ("siren", Siren, 4),
        ("piratenet_block", PirateBlock, 3),
        ("rational", Rational, 5),
    ]:
        model = cls(D).double()
        x = torch.randn(8, D, dtype=torch.float64)
        for operator in ("laplacian", "biharmonic"):
            ref = taylorc.compile(model, operator, method="nested")(x)
            for method in ("collapsed", "taylor"):
                err = rel_err(taylorc.compile(model, operator, method=method)(x), ref)
                results[f"{name}/{operator}/{method}"] = err
                print(f"{name:16s} {operator:11s} {method:9s} relative error {err:.2e}")
    path = Path(__file__).parent / "results" / "accuracy.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    worst = max(results.values())
    print(
        f"worst relative error {worst:.2e} ({'<' if worst < 1e-8 else '>='} 1e-8); written to {path}"
    )


if __name__ == "__main__":
    main()
