"""The contention policy (issue 33, item 3): fewer threads for an operator's CPU calls while
other processes keep the cores busy, the caller's count restored (taylorc/runtime/threads.py)."""

import copy
import os
import sys
import time

import pytest
import torch
from helpers import assert_close, mlp

import taylorc
from taylorc.runtime import threads
from taylorc.runtime.config import Config


class Counters:
    """A fake machine: busy CPU seconds of all processes, this process's own, wall time."""

    def __init__(self, cpus=2):
        self.busy, self.own, self.now, self.cpus, self.reads = 100.0, 5.0, 1000.0, cpus, 0

    def read(self):
        self.reads += 1
        return self.busy, self.cpus

    def run(self, seconds, others=0.0, own=0.0):
        """``seconds`` of wall time with ``others`` cores used by other processes, ``own`` by us."""
        self.now += seconds
        self.busy += (others + own) * seconds
        self.own += own * seconds

    def detector(self):
        return threads.Detector(self.read, own=lambda: self.own, clock=lambda: self.now)


@pytest.fixture
def two_threads():
    """Two intra-op threads for the test (the suite may run on one), restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_busy_neighbour_lowers_and_quiet_restores():
    c = Counters()
    d = c.detector()
    assert d.threads(2) == 2  # one sample: nothing known yet
    c.run(0.3, others=1.8, own=0.2)
    assert d.threads(2) == 1 and d.others == pytest.approx(1.8)
    c.run(0.3, others=0.1, own=2.0)  # the neighbour left
    assert d.threads(2) == 2


def test_own_work_is_not_busy():
    c = Counters()
    d = c.detector()
    d.threads(2)
    c.run(0.5, others=0.0, own=2.0)  # our two threads (and their spinning) fill both cores
    assert d.threads(2) == 2 and d.others == pytest.approx(0.0)
    c.run(0.5, others=0.4, own=1.6)  # a light neighbour: below MARGIN
    assert d.threads(2) == 2


def test_sampled_at_most_every_interval():
    """Calls between two samples reuse the decision: no read of /proc per call."""
    c = Counters()
    d = c.detector()
    d.threads(2)
    c.run(0.3, others=2.0)
    assert d.threads(2) == 1
    reads = c.reads
    for _ in range(100):
        c.run(0.001, others=0.0, own=2.0)  # the neighbour left: unseen until the next sample
        assert d.threads(2) == 1
    assert c.reads == reads
    c.run(0.2, others=0.0, own=2.0)
    assert d.threads(2) == 2 and c.reads == reads + 1


def test_fitting_halves_into_the_free_cores():
    assert threads.fitting(2, 0.2) == 1
    assert threads.fitting(2, 1.6) == 2
    assert threads.fitting(8, 7.0) == 4  # one busy core of eight
    assert threads.fitting(16, 3.0) == 2
    assert threads.fitting(3, 0.0) == 1
    c = Counters(cpus=8)
    d = c.detector()
    d.threads(8)
    c.run(0.3, others=1.0)
    assert d.threads(8) == 4
    c = Counters(cpus=2)
    d = c.detector()
    d.threads(4)
    c.run(0.3, others=0.3, own=1.7)
    assert d.threads(4) == 4  # a quiet machine keeps the user's count, even above the cores


def test_off_linux_or_unreadable_proc_does_nothing(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert threads._default_reader() is None
    assert threads.Detector(None).threads(2) == 2

    def unreadable():
        raise OSError("no /proc")

    d = threads.Detector(unreadable)
    assert d.threads(2) == 2 and d.threads(2) == 2
    assert d.reader is None


def test_read_proc_stat(tmp_path):
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not allowed:
        pytest.skip("no sched_getaffinity (not Linux)")
    tick = threads._TICK
    lines = ["cpu  1 1 1 1 1 1 1 1 0 0"]
    lines += [f"cpu{i} 10 1 4 500 7 2 3 5 9 0" for i in allowed]
    lines += [f"cpu{max(allowed) + 1} 1000 0 0 0 0 0 0 0 0 0", "intr 5 0 0", "ctxt 7"]
    path = tmp_path / "stat"
    path.write_text("\n".join(lines) + "\n")
    busy, cpus = threads.read_proc_stat(str(path))  # user+nice+system+irq+softirq+steal
    assert cpus == len(allowed) and busy == pytest.approx(len(allowed) * 25 / tick)
    if os.access("/proc/stat", os.R_OK):
        busy, cpus = threads.read_proc_stat()
        assert busy > 0 and cpus == len(allowed)


class Spy:
    """A method whose run records the thread count it ran at (and may raise)."""

    def __init__(self, fail=False):
        self.seen, self.fail = [], fail

    def resolve(self, op, args, i):
        return self

    def run(self, op, args, i):
        self.seen.append(torch.get_num_threads())
        if self.fail:
            raise RuntimeError("inside the call")
        return [args[i].sum(1, keepdim=True)]


def _spied(mode, fail=False):
    op = taylorc.compile(mlp(3, [4]), "laplacian", backend="eager")
    op.config.contention = mode
    op.method_obj = spy = Spy(fail)
    return op, spy


def test_call_lowers_and_restores(two_threads, monkeypatch):
    x = torch.rand(5, 3, dtype=torch.float64)
    op, spy = _spied("busy")
    op(x)
    assert spy.seen == [1] and torch.get_num_threads() == 2
    op, spy = _spied("busy", fail=True)
    with pytest.raises(RuntimeError, match="inside the call"):
        op(x)
    assert spy.seen == [1] and torch.get_num_threads() == 2
    op, spy = _spied("off")
    op(x)
    assert spy.seen == [2]
    c = Counters()
    monkeypatch.setattr(threads, "DETECTOR", c.detector())
    op, spy = _spied("auto")
    op(x)  # the first sample
    c.run(0.3, others=2.0)
    op(x)
    c.run(0.3, others=0.0, own=2.0)
    op(x)
    assert spy.seen == [2, 1, 2] and torch.get_num_threads() == 2
    assert threads.DETECTOR.lowered == 1


def test_one_thread_callers_and_bad_modes(two_threads):
    x = torch.rand(5, 3, dtype=torch.float64)
    torch.set_num_threads(1)
    op, spy = _spied("busy")
    op(x)
    assert spy.seen == [1] and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    op, spy = _spied("sometimes")
    with pytest.raises(ValueError, match="contention"):
        op(x)
    assert torch.get_num_threads() == 2


def test_config_setting(monkeypatch):
    assert Config().contention in ("auto", "off", "busy")
    monkeypatch.setenv("TAYLORC_CONTENTION", " OFF ")
    assert Config().contention == "off"
    monkeypatch.setenv("TAYLORC_CONTENTION", "never")
    with pytest.raises(ValueError, match="TAYLORC_CONTENTION"):
        Config()


@pytest.mark.parametrize("dtype, rel", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_laplacian_unchanged_on_one_thread(two_threads, dtype, rel):
    """The compiled Laplacian with the policy forced on equals nested autograd."""
    torch.manual_seed(0)
    model = mlp(5, [16, 16]).to(dtype)
    x = torch.rand(33, 5, dtype=dtype)
    op = taylorc.compile(model, "laplacian")
    op.config.contention = "busy"
    lowered = threads.DETECTOR.lowered
    out = op(x)
    assert threads.DETECTOR.lowered == lowered + 1 and torch.get_num_threads() == 2
    nested = taylorc.compile(copy.deepcopy(model).double(), "laplacian", method="nested")
    reference = nested(x.double())
    assert_close(out.double(), reference, rel)
    op.config.contention = "off"
    assert_close(op(x).double(), out.double(), rel)


def test_auto_graph_runs_eagerly_while_a_thread_count_variant_compiles():
    """A compiled ``backend="auto"`` graph called at a thread count it has no variant for
    (Dynamo would recompile inside the call) runs eagerly while the variant is made in the
    background, then compiled; inline when ``background_compile`` is off."""
    import threading

    from taylorc.runtime.backend import AutoGraph
    from taylorc.runtime.config import Config

    calls, gate = [], threading.Event()

    def compiled(x):
        gate.wait(10)  # the background variant waits until the eager call is checked
        time.sleep(0.05)  # and then takes a while: wait() must join it
        calls.append(torch.get_num_threads())
        return x * 2.0

    gm = torch.fx.symbolic_trace(lambda x: x * 2.0)
    old = torch.get_num_threads()
    try:
        for background in (True, False):
            config = Config()
            config.background_compile = background
            graph = AutoGraph(gm, None, {}, config, rewrite_tanh=False)
            graph.compiled, graph.counts = compiled, {2}
            calls.clear()
            gate.clear() if background else gate.set()
            torch.set_num_threads(1)
            x = torch.ones(3)
            assert torch.equal(graph(x), x * 2.0)
            if background:
                assert calls == []  # this call ran eagerly
                graph.wait(timeout=0.05)
                assert graph._variant.is_alive() and graph.counts == {2}  # still gated
                gate.set()
                graph.wait()  # waits for the variant's compile too
                assert not graph._variant.is_alive()
            assert graph.counts == {1, 2} and calls[:2] == [1, 1]  # both grad modes, at 1
            calls.clear()
            graph(x)
            assert calls == [1]  # the variant serves now
    finally:
        torch.set_num_threads(old)
