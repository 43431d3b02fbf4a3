"""The names before issue 31, item 5 (sites, taps, pins; ``Layer.live``/``shared``) still
resolve to the renamed objects, each with a DeprecationWarning."""

import importlib
import sys
import warnings

import pytest
import torch
from torch import nn

import taylorc
from taylorc.methods import layer_graph
from taylorc.optim.layer import Layer
from taylorc.passes import layers


@pytest.mark.parametrize(
    "module, old, new",
    [
        ("taylorc.passes.layers", "LinearSite", "LinearLayer"),
        ("taylorc.passes.layers", "find_sites", "find_layers"),
        ("taylorc.passes.layers", "SitesPass", "LayerPass"),
        ("taylorc.passes.layers", "PinPass", "KeepInputsPass"),
        ("taylorc.methods.layer_graph", "SiteRun", "LayerRun"),
        ("taylorc.methods.layer_graph", "site_gradients", "layer_output_gradients"),
    ],
)
def test_old_module_names_resolve_and_warn(module, old, new):
    m = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=new):
        got = getattr(m, old)
    assert got is getattr(m, new)
    with pytest.raises(AttributeError):
        m.no_such_name  # noqa: B018


def test_old_module_path_resolves_and_warns():
    for old in ("taylorc.passes.sites", "taylorc.sites"):
        sys.modules.pop(old, None)  # imported before in this process: import it anew
        with pytest.warns(DeprecationWarning, match="taylorc.passes.layers"):
            assert importlib.import_module(old) is layers
    assert layers.LayerPass.name == "layers" and layers.KeepInputsPass.name == "keep_layer_inputs"


def test_old_attributes_and_keywords_resolve_and_warn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    op = taylorc.compile(model, "laplacian")
    x = torch.rand(5, 2, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the new names do not warn
        tg = op.taylor_graph(x, perturbations=True)
        run = tg.run(x)
        assert tg.layer("0") is tg.layers[0]
    assert [n.name for n in tg.gm.graph.nodes if n.op == "placeholder"][-2:] == [
        "perturbation_0",
        "perturbation_1",
    ]
    with pytest.warns(DeprecationWarning, match="layers"):
        assert tg.sites is tg.layers
    with pytest.warns(DeprecationWarning, match="layers"):
        assert tg.info.sites is tg.layers
    with pytest.warns(DeprecationWarning, match="layer"):
        assert tg.site("2") is tg.layers[1]
    with pytest.warns(DeprecationWarning, match="perturbations"):
        assert run.taps is run.perturbations
    with pytest.warns(DeprecationWarning, match="perturbation"):
        assert tg.layers[0].tap is tg.layers[0].perturbation
    with pytest.warns(DeprecationWarning, match="perturbations="):
        fast = op.taylor_graph(x, taps=False)
    assert not fast.perturbations and not fast.run(x).perturbations
    with pytest.warns(DeprecationWarning, match="perturbations="):
        graph = layer_graph.build_taylor_graph(op, (x,), taps=False)
    assert not graph.perturbations


def test_layer_live_and_shared_are_the_active_and_constant_columns():
    X, g = torch.zeros(3, 4, 2), torch.zeros(1, 3, 4, 5)
    layer = Layer("w", None, X, g, None, (), (0, 1, 3), (1,))
    assert layer.split_columns() == ([0, 3], [1])
    with pytest.warns(DeprecationWarning, match="active_columns"):
        assert layer.live == layer.active_columns == (0, 1, 3)
    with pytest.warns(DeprecationWarning, match="constant_columns"):
        assert layer.shared == layer.constant_columns == (1,)
    with pytest.warns(DeprecationWarning, match="constant_columns"):
        layer.shared = ()
    assert layer.split_columns() == ([0, 1, 3], [])
