"""Clear errors for bad input, the debug dump, and the command line."""

import json
import os

import pytest
import torch
from helpers import mlp
from torch import nn

import taylorc
from taylorc.cli import main as cli_main
from taylorc.errors import BatchCouplingError, TraceError, UnsupportedOperatorError


class Bessel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        return torch.special.bessel_j0(self.lin(x))  # no rule for this op


def test_unsupported_op_names_op_node_and_source_line():
    op = taylorc.compile(Bessel().double(), "laplacian")
    with pytest.raises(UnsupportedOperatorError) as info:
        op(torch.randn(2, 3, dtype=torch.float64))
    msg = str(info.value)
    assert "aten.special_bessel_j0.default" in msg
    assert "special_bessel_j0" in msg.split("graph node")[1]
    assert "test_errors_and_dump.py" in msg and "bessel_j0(self.lin(x))" in msg
    assert "register_rule" in msg


@torch.library.custom_op("taylorc_test::cube", mutates_args=())
def cube(x: torch.Tensor) -> torch.Tensor:
    return x * x * x


@cube.register_fake
def _(x):
    return torch.empty_like(x)


cube.register_autograd(
    lambda ctx, g: g * 3 * ctx.x**2,
    setup_context=lambda ctx, inputs, output: setattr(ctx, "x", inputs[0]),
)


class Cubic(nn.Module):
    def __init__(self, custom=True):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.custom = custom

    def forward(self, x):
        h = self.lin(x)
        return torch.tanh(cube(h) if self.custom else h**3)


def test_register_rule_is_used_for_a_user_op():
    from taylorc.rules.jet import compose

    op_overload = torch.ops.taylorc_test.cube.default
    calls = []

    def rule(ctx, k, x):
        calls.append(k)
        x0 = x[0]
        return compose(
            ctx,
            k,
            x,
            [
                ctx.value,
                torch.ops.aten.mul.Tensor(torch.ops.aten.mul.Tensor(x0, x0), 3.0),
                torch.ops.aten.mul.Tensor(x0, 6.0),
                6.0,
            ],
        )

    model = Cubic().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(UnsupportedOperatorError, match="taylorc_test.cube"):
        taylorc.compile(model, "laplacian")(x)
    taylorc.register_rule(op_overload, rule)
    out = taylorc.compile(model, {"g": "gradient", "lap": "laplacian"})(x)
    assert calls, "the registered rule was not used"
    plain = Cubic(custom=False).double()
    plain.load_state_dict(
        model.state_dict()
    )  # custom ops do not run under torch.func: compare with x**3
    ref = taylorc.compile(plain, {"g": "gradient", "lap": "laplacian"}, method="nested")(x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_wrong_input_shapes_raise_value_error():
    model = mlp(3, [4])
    op = taylorc.compile(model, "laplacian")
    with pytest.raises(ValueError, match=r"expected input shape \(B, 3\), got \(5, 4\)"):
        op(torch.randn(5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(B, D\).*got shape \(5,\)"):
        op(torch.randn(5, dtype=torch.float64))
    op(torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected input shape \(B, 3\), got \(2, 3, 1\)"):
        op(torch.randn(2, 3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        op(torch.ones(5, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="dtype torch.float64, got torch.float32"):
        op(torch.ones(5, 3))
    with pytest.raises(ValueError, match="model's device cpu, got meta"):
        op(torch.ones(5, 3, dtype=torch.float64, device="meta"))


def test_bad_arguments():
    model = mlp(3, [4])
    with pytest.raises(ValueError, match="method"):
        taylorc.compile(model, "laplacian", method="magic")
    with pytest.raises(ValueError, match="unknown operator 'lapalcian'"):
        taylorc.compile(model, "lapalcian")
    with pytest.raises(TypeError):
        taylorc.compile(model, 3)


def test_data_dependent_control_flow_is_a_trace_error():
    def f(x):
        return x.sin() if x.sum() > 0 else x.cos()

    with pytest.raises(TraceError, match="data-dependent|branches on"):
        taylorc.compile(f, "laplacian")(torch.randn(3, 2, dtype=torch.float64))


def test_nan_and_inf_propagate():
    model = mlp(2, [4])
    x = torch.tensor([[float("nan"), 0.0], [0.1, 0.2], [float("inf"), 0.0]], dtype=torch.float64)
    out = taylorc.compile(model, "laplacian")(x)
    assert out[0].isnan().all() and out[1].isfinite().all()
    # tanh saturates at x = inf: its derivatives tend to 0 and so does the Laplacian
    assert out[2].item() == 0.0
    # sin(inf) is nan: the Laplacian is nan too, never a finite stand-in
    out = taylorc.compile(mlp(2, [4], "sin"), "laplacian")(x)
    assert out[0].isnan().all() and out[1].isfinite().all() and out[2].isnan().all()


def test_debug_dump_writes_every_stage(tmp_path):
    op = taylorc.compile(mlp(3, [5, 5]), "laplacian", debug_dir=tmp_path)
    op(torch.randn(4, 3, dtype=torch.float64))
    names = sorted(p.name for p in tmp_path.iterdir())
    stages = ["capture", "taylor", "collapse", "cleanup", "unstack"]  # unstack: CPU, R = 3
    for i, stage in enumerate(stages):
        assert f"{i:02d}_{stage}.py" in names and f"{i:02d}_{stage}.txt" in names
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [p["pass"] for p in summary["passes"]] == stages
    for p in summary["passes"]:
        assert {"seconds", "nodes", "ops", "flops", "coefficient_bytes"} <= set(p)
    # the collapse pass shrinks the coefficient memory of the top order
    taylor, cleanup = summary["passes"][1], summary["passes"][3]
    assert cleanup["coefficient_bytes"] < taylor["coefficient_bytes"]
    table = (tmp_path / "01_taylor.txt").read_text()
    assert '"order": 2' in table and '"collapsed": false' in table
    assert '"collapsed": true' in (tmp_path / "02_collapse.txt").read_text()
    assert "def forward" in (tmp_path / "03_cleanup.py").read_text()
    assert (
        "directions" in (tmp_path / "plan.txt").read_text()
        or "v0" in (tmp_path / "plan.txt").read_text()
    )


def test_debug_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TAYLORC_DEBUG_DIR", str(tmp_path / "env"))
    taylorc.compile(mlp(2, [3]), "laplacian")(torch.randn(2, 2, dtype=torch.float64))
    assert (tmp_path / "env" / "summary.json").exists()


def test_explain_and_repr():
    op = taylorc.compile(mlp(3, [5]), {"u": "u", "lap": "laplacian"})
    assert "not compiled yet" in op.explain()
    op(torch.randn(4, 3, dtype=torch.float64))
    text = op.explain()
    for word in ("taylor", "collapse", "cleanup", "MFLOP", "coeff MB", "R=3"):
        assert word in text
    assert "cleanup" in repr(op)


def test_cli_dump(tmp_path, capsys):
    factory = tmp_path / "mymodel.py"
    factory.write_text(
        "import torch\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))\n"
    )
    out = tmp_path / "dump"
    code = cli_main(
        [f"{factory}:make", "--operator", "laplacian", "--input-shape", "8,5", "--out", str(out)][
            :0
        ]
        + [
            "dump",
            f"{factory}:make",
            "--operator",
            "laplacian",
            "--input-shape",
            "8,5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert (out / "summary.json").exists() and (out / "03_cleanup.py").exists()
    assert "output shape: (8, 1)" in capsys.readouterr().out
    assert os.path.exists(out / "plan.txt")


def test_dump_draws_svg_when_graphviz_is_installed(tmp_path):
    import shutil

    pytest.importorskip("pydot")
    if shutil.which("dot") is None:
        pytest.skip("graphviz's dot is not installed")
    taylorc.compile(mlp(2, [3]), "laplacian", debug_dir=tmp_path)(
        torch.randn(2, 2, dtype=torch.float64)
    )
    svg = (tmp_path / "02_collapse.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "collapsed" in svg


class AttentionAcrossPoints(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(2, 4), nn.Linear(2, 4)

    def forward(self, x):
        scores = self.q(x) @ self.k(x).T  # (B, B): every point attends to every other point
        return torch.softmax(scores, -1).sum(-1, keepdim=True)


@pytest.mark.parametrize(
    "model, why",
    [
        (
            nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)),
            "batch norm in training mode",
        ),
        (AttentionAcrossPoints(), "contracts the batch dimension"),
        (
            lambda x: torch.tanh(x - x.mean(0, keepdim=True)).sum(-1, keepdim=True),
            "reduces over the batch dimension",
        ),
        (lambda x: torch.cat([x, x[:1]], 0)[1:].sum(-1, keepdim=True), "along the batch dimension"),
    ],
)
def test_batch_coupling_is_detected(model, why):
    if isinstance(model, nn.Module):
        model = model.double()
    with pytest.raises(BatchCouplingError, match=why) as info:
        taylorc.compile(model, "laplacian")(torch.randn(5, 2, dtype=torch.float64))
    assert "node" in str(info.value) and "path from the coordinates" in str(info.value)


def test_batch_norm_in_eval_mode_is_per_sample():
    model = (
        nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))
        .double()
        .eval()
    )
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(
        taylorc.compile(model, "laplacian")(x),
        taylorc.compile(model, "laplacian", method="nested")(x),
    )
