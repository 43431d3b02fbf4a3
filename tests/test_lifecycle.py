"""Long training loops, repeated compilation, and nothing that grows."""

import torch
from helpers import mlp

import taylorc
from taylorc import api


def _rss_mib() -> float:
    import resource

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def test_training_loop_memory_stays_flat():
    torch.manual_seed(0)
    model = mlp(3, [32, 32], "tanh").float()
    lap = taylorc.compile(model, {"u": "u", "lap": "laplacian"})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(256, 3)
    marks = {}
    for step in range(1, 2001):
        opt.zero_grad()
        d = lap(x)
        loss = (d["lap"] + d["u"]).pow(2).mean()
        loss.backward()
        opt.step()
        if step in (100, 2000):
            marks[step] = _rss_mib()
    assert marks[2000] - marks[100] < 8, marks
    assert len(lap._graphs) == 1


def test_compiling_the_same_model_again_reuses_the_graph():
    model = mlp(2, [8], "tanh")
    x = torch.randn(4, 2, dtype=torch.float64)
    first = taylorc.compile(model, "laplacian")
    first(x)
    built = api.BUILD_COUNT[0]
    second = taylorc.compile(model, "laplacian")
    torch.testing.assert_close(second(x), first(x))
    assert api.BUILD_COUNT[0] == built
    taylorc.compile(model, "biharmonic")(x)  # another operator: a new graph
    assert api.BUILD_COUNT[0] == built + 1
    other = mlp(2, [8], "tanh")
    taylorc.compile(other, "laplacian")(x)  # another model: a new graph
    assert api.BUILD_COUNT[0] == built + 2
