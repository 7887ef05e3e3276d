"""A CUDA-graphed step beside an NCCL communicator, on the stand-ins (tests/fake_cupy.py,
tests/fake_nccl.py): a failing rank reaches MPI_Abort while a graph holds the communicator,
the loop destroys its graphs before the communicator can go, and what the loop writes for
the step lands on the step's stream."""

import numpy
import pytest

import fake_cupy
from fake_nccl import FakeMpi, FakeMpiComm, FakeNccl, WouldHang
from gpucnn import init, train
from gpucnn.data.datasets import Dataset
from gpucnn.distributed import NCCLCommunicator
from gpucnn.layers import Dropout, Flatten, Linear, ReLU
from gpucnn.optim import SGD
from gpucnn.sequential import Sequential


def _graphed_allreduce(fake):
    """A GraphedStep whose step all-reduces a device buffer through NCCL, run eagerly and
    then captured: one live graph holds the communicator."""
    from gpucnn.graph import GraphedStep

    cupy = __import__("cupy")
    nccl = FakeNccl()
    comm = NCCLCommunicator(FakeMpiComm(rank=1, size=2), FakeMpi, nccl=nccl,
                            stream_ptr=lambda: cupy.cuda.get_current_stream().ptr)
    buf = numpy.zeros(4, numpy.float32).view(fake_cupy.DeviceArray)
    graphed = GraphedStep(lambda x, y: comm.allreduce(buf))
    x, y = numpy.zeros((2, 3), numpy.float32), numpy.zeros(2, numpy.int64)
    graphed(x, y)
    graphed(x, y)
    assert nccl.held_by_graphs == 1
    return comm, nccl, graphed, (x, y)


def test_a_failing_rank_reaches_mpi_abort_while_a_graph_holds_the_communicator(fake, capsys):
    comm, nccl, graphed, (x, y) = _graphed_allreduce(fake)

    def step_then_fail():
        graphed(x, y)
        raise RuntimeError("out of memory")  # the frame's traceback keeps `graphed` alive

    with pytest.raises(SystemExit) as ended:  # WouldHang here: ncclCommAbort before MPI_Abort
        with comm.guard():
            step_then_fail()
    assert ended.value.code == 1 and comm.comm.aborted == [1]
    assert nccl.held_by_graphs == 1  # nothing was waited for
    assert "RuntimeError on rank 1 of 2" in capsys.readouterr().err


def test_closing_the_step_lets_the_communicator_go(fake):
    comm, nccl, graphed, _ = _graphed_allreduce(fake)
    with pytest.raises(WouldHang):
        comm.nccl_comm.destroy()  # what CuPy's NcclCommunicator does when it is dropped
    graphed.close()
    assert nccl.held_by_graphs == 0 and "graph destroyed" in fake
    comm.nccl_comm.destroy()


# --- fit() with a graphed step on the stand-in (the layers compute on NumPy) -----------------
def _tiny_data():
    rng = numpy.random.default_rng(0)
    return Dataset("tiny", rng.random((12, 1, 4, 4), numpy.float32), rng.integers(0, 3, 12),
                   rng.random((4, 1, 4, 4), numpy.float32), rng.integers(0, 3, 4), ["a", "b", "c"])


def _dropout_net():
    return Sequential(Flatten(), Linear(16, 8), ReLU(), Dropout(0.5), Linear(8, 3))


def _fit_graphed(monkeypatch, fake, **kw):
    """fit() with make_step's GraphedStep (the fake's), returning the step it made."""
    from gpucnn.graph import GraphedStep

    made = []

    def make_step(model, optimizer, use_graph, **options):
        made.append(GraphedStep(train.TrainStep(model, optimizer, **options)))
        return made[0]

    monkeypatch.setattr(train, "make_step", make_step)
    init.seed(0)
    model = _dropout_net()
    config = {"epochs": 1, "batch_size": 4, "seed": 0, "graph": True}
    train.fit(model, SGD(model.parameters(), lr=0.1), lambda step: 0.1, _tiny_data(), config, log=lambda *_: None,
              progress=False, **kw)
    return made[0]


def test_dropout_draws_are_written_on_the_graphs_stream(monkeypatch, fake):
    """The graph's non-blocking stream waited for the null stream once, when it was made:
    a draw number written on the null stream after that races the replays that read it."""
    cupy = __import__("cupy")
    streams = []
    real = train.set_draws

    def spy(layers, draws):
        streams.append(cupy.cuda.get_current_stream())
        return real(layers, draws)

    monkeypatch.setattr(train, "set_draws", spy)
    step = _fit_graphed(monkeypatch, fake, start={"epoch": 0, "step": 1, "loss_sum": 0.0, "correct": 0,
                                                   "seen": 4, "seconds": 0.0})
    assert streams == [step.stream]


def test_fit_destroys_its_graphs_when_it_ends(monkeypatch, fake):
    step = _fit_graphed(monkeypatch, fake)
    assert "begin_capture" in fake and "graph destroyed" in fake
    assert step._graphs == {} and step.pools == []


def test_a_rank_local_error_leaves_the_graphs_to_mpi_abort(fake):
    from gpucnn.graph import closed_after

    class Step:
        closed = 0

        def close(self):
            Step.closed += 1

    two_ranks = type("Comm", (), {"size": 2})()
    with pytest.raises(RuntimeError):
        with closed_after(Step(), two_ranks):
            raise RuntimeError("this rank alone")
    assert Step.closed == 0
    with pytest.raises(train.TrainingStopped):  # every rank raises it after the same step
        with closed_after(Step(), two_ranks):
            raise train.TrainingStopped("loss became nan")
    assert Step.closed == 1
