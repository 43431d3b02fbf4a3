"""The IR schema: one tag type, one graph description for every method, validate, tag-keeping rewrites."""

import re
from pathlib import Path

import pytest
import torch
from helpers import mlp
from test_architectures import ARCHITECTURES

import taylorc
from taylorc import ir
from taylorc.passes import checking
from taylorc_contrib.models import DeepONet

X = torch.randn(5, 3, dtype=torch.float64)
X5 = torch.randn(4, 5, dtype=torch.float64)


def built(op, *args):
    out = op(*args)
    gm = next(iter(op._graphs.values()))[0]
    return out, gm


def test_issue_example_every_node_tagged_every_reference_alive():
    # issue 14: tanh MLP 3-8-8-1, Laplacian, eager, CPU (the pipeline ends with unstack)
    op = taylorc.compile(mlp(3, [8, 8]), "laplacian")
    _, gm = built(op, X)
    assert [r["pass"] for r in op._last.records][-1] == "unstack"
    info = ir.info(gm)
    assert info.method == "collapsed" and info.source is op._last.source
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert calls and all(isinstance(ir.tag_of(n), ir.Tag) for n in calls)
    alive = set(gm.graph.nodes)
    assert all(n in alive for _, n in info.references())
    ir.validate(gm)
    # the output's top coefficient is found through the description, not a name
    out_src = next(n for n in info.source.graph.nodes if n.op == "output").args[0]
    out_src = out_src[0] if isinstance(out_src, (tuple, list)) else out_src
    top = info.jet(out_src)[2]
    assert ir.tag_of(top).collapsed and ir.tag_of(top).source is out_src


@pytest.mark.parametrize(
    "method,kwargs",
    [
        ("collapsed", {}),
        ("taylor", {}),
        ("stochastic", {"samples": 3}),
        ("stein", {"samples": 4, "sigma": 0.1}),
    ],
)
def test_every_method_fills_one_description(method, kwargs):
    op = taylorc.compile(mlp(3, [4]), "laplacian", method=method, **kwargs)
    _, gm = built(op, X)
    info = ir.info(gm)
    assert isinstance(info, ir.GraphInfo)
    assert info.method == {"stochastic": "collapsed"}.get(method, method)
    assert info.source is op._last.source
    ir.validate(gm)


def test_zcs_and_mlp_descriptions():
    net = DeepONet(3, 2, width=5, depth=2, basis=3).double()
    op = taylorc.compile(net, "laplacian", method="zcs", wrt=1)
    _, gm = built(op, torch.randn(2, 3, dtype=torch.float64), X[:, :2])
    info = ir.info(gm)
    assert info.method == "zcs" and len(info.inputs["zcs_shift"]) == 2
    assert all(ir.tag_of(n).role == "zcs_shift" for n in info.inputs["zcs_shift"])
    op = taylorc.compile(mlp(3, [4]), "laplacian")
    op.lower_everywhere = True  # the whole-MLP kernel, on the CPU
    _, gm = built(op, X)
    assert ir.info(gm).method == "mlp" and ir.info(gm).options["mlp"].activation == "tanh"
    op = taylorc.compile(mlp(3, [4]), "laplacian")
    op.lower_everywhere, op.whole_mlp = True, False  # the layered lowering
    out, gm = built(op, X)
    assert any(getattr(ir.tag_of(n), "role", None) == "lowered" for n in gm.graph.nodes)
    ir.validate(gm)


def test_validate_catches_broken_graphs():
    op = taylorc.compile(mlp(3, [4]), "laplacian", method="taylor")
    _, gm = built(op, X)
    x = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.name == "x")
    with gm.graph.inserting_after(x):
        neg = gm.graph.call_function(torch.ops.aten.neg.default, (x,))
    with pytest.raises(ir.IRError, match="no tag"):
        ir.validate(gm)
    neg.meta["taylorc"] = {"order": 1}
    with pytest.raises(ir.IRError, match="not a Tag"):
        ir.validate(gm)
    ir.set_tag(neg, ir.Tag(None, 0))
    ir.validate(gm)
    src = next(iter(ir.info(gm).jets))
    ir.info(gm).jets[src].append(neg)
    gm.graph.erase_node(neg)
    with pytest.raises(ir.IRError, match="not in the graph"):
        ir.validate(gm)
    ir.forget_dead(gm)
    ir.validate(gm)


def test_replace_and_cse_keep_tags_and_references():
    op = taylorc.compile(mlp(5, [4]), "laplacian", method="taylor")
    _, gm = built(op, X5)  # 5 directions: no unstack
    info = ir.info(gm)
    src, jet = next((s, j) for s, j in info.jets.items() if len(j) > 1 and j[1] is not None)
    old = jet[1]
    with gm.graph.inserting_after(old):
        twin = gm.graph.call_function(old.target, old.args, old.kwargs)  # untagged copy
    ir.replace(gm, old, twin)
    assert info.jet(src)[1] is twin and ir.tag_of(twin) == ir.tag_of(old)
    gm.graph.erase_node(old)
    with gm.graph.inserting_after(twin):
        again = gm.graph.call_function(twin.target, twin.args, twin.kwargs)
    ir.set_tag(again, ir.tag_of(twin))
    for user in list(twin.users):
        if user is not again:
            user.replace_input_with(twin, again)
    info.jets[src][1] = again
    assert ir.cse(gm) >= 1 and info.jet(src)[1] is twin  # merged into the first
    ir.dce(gm)
    ir.validate(gm)
    gm.recompile()
    ref = taylorc.compile(op.model, "laplacian", method="nested")
    assert torch.allclose(
        gm(*op._graphs[next(iter(op._graphs))][1].inputs(op.model, X5))[0], ref(X5)
    )


def test_no_node_lookup_by_generated_name():
    # nodes are found through tags and the description, not by name (the source code has
    # no name -> node tables; placeholders keep the names capture gives them)
    root = Path(taylorc.__file__).parent
    pattern = re.compile(r"\{\s*(\w+)\.name\s*:\s*\1\s+for|jets\[\w+\.name\]|\[\w+\.name\]\s*=")
    offenders = [
        f"{p.relative_to(root)}:{i + 1}"
        for p in sorted(root.rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines())
        if pattern.search(line)
    ]
    assert offenders == [], offenders


VARIANTS = {
    "collapsed": {},
    "taylor": {"method": "taylor"},
    "stochastic": {"method": "stochastic", "samples": 2},
    "stein": {"method": "stein", "samples": 2, "sigma": 0.1},
    "lowered": {},  # lower_everywhere below
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_validate_after_every_pass_of_every_method(name):
    assert checking()  # tests/conftest.py: every PassManager validates after each pass
    cls, D = ARCHITECTURES[name]
    model = cls(D).double()
    x = 0.5 * torch.randn(3, D, dtype=torch.float64)
    for variant, kwargs in VARIANTS.items():
        op = taylorc.compile(model, "laplacian", **kwargs)
        op.lower_everywhere = variant == "lowered"
        _, gm = built(op, x)
        ir.validate(gm)
    ir.validate(taylorc.compile(model, "laplacian").taylor_graph(x).gm)


def test_float32_cpu_tanh_keeps_the_description():
    model = mlp(3, [8]).float()
    op = taylorc.compile(model, {"u": "u", "lap": "laplacian"}, backend="taylorc")
    gm = op.graph_for(X.float())[0]
    assert [r["pass"] for r in op._last.records][-1] == "cpu_tanh"
    ir.validate(gm._orig_mod if hasattr(gm, "_orig_mod") else gm)
