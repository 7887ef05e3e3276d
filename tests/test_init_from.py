"""gpucnn train --init-from: weights from PyTorch or safetensors files, checked strictly."""
import fractions
import sys

import numpy
import pytest

from gpucnn import cli, init, models
from gpucnn.checkpoint import load_checkpoint
from gpucnn.init_from import InitFromError, init_from, read_weights

pytest.importorskip("sklearn")  # the built-in digits dataset

RUN = ["train", "--epochs", "1", "--no-progress", "--batch-size", "128", "--optimizer", "sgd", "--lr", "0.05"]


def _net(seed):
    init.seed(seed)
    return models.build("small", (1, 8, 8), 10)


def _train(tmp_path, name, *extra):
    path = tmp_path / name
    assert cli.main([*RUN, "--save", str(path), *extra]) == 0
    return load_checkpoint(path)["model_state"]


def _same(a, b):
    return a.keys() == b.keys() and all(numpy.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """One epoch from gpucnn's own seed-0 initial weights."""
    return _train(tmp_path_factory.mktemp("plain"), "plain.ckpt")


def test_one_epoch_from_pytorch_weights(plain_run, tmp_path):
    torch = pytest.importorskip("torch")
    from gpucnn.torch_twin import to_torch

    # The seed-0 weights written by PyTorch: training from them is the plain run, bit for bit...
    torch.save(to_torch(_net(0)).state_dict(), tmp_path / "seed0.pt")
    assert _same(_train(tmp_path, "a.ckpt", "--init-from", str(tmp_path / "seed0.pt")), plain_run)
    # ...and from a PyTorch-initialised net's own weights it is another run.
    torch.manual_seed(7)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(32 * 2 * 2, 10))
    torch.save(net.state_dict(), tmp_path / "torch.pth")
    start = {k: v.numpy() for k, v in net.state_dict().items()}
    trained = _train(tmp_path, "b.ckpt", "--init-from", str(tmp_path / "torch.pth"))
    assert trained.keys() == start.keys() and not _same(trained, plain_run)
    # One epoch of SGD moved the weights, but from PyTorch's start, not from gpucnn's.
    drift_from_start = max(numpy.abs(trained[k] - start[k]).max() for k in start)
    assert 0 < drift_from_start < max(numpy.abs(trained[k] - plain_run[k]).max() for k in start)


def test_from_a_gpucnn_safetensors_export(plain_run, tmp_path):
    pytest.importorskip("safetensors")
    from gpucnn.export import safetensors_bytes

    (tmp_path / "seed0.safetensors").write_bytes(safetensors_bytes(_net(0), {"model": "small"}))
    assert _same(_train(tmp_path, "c.ckpt", "--init-from", str(tmp_path / "seed0.safetensors")), plain_run)


def test_missing_unexpected_and_misshapen_keys_are_listed(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from safetensors.numpy import save_file

    state = _net(0).state_dict()
    state["9.weight"] = state.pop("0.bias")
    state["7.weight"] = numpy.zeros((3, 3), numpy.float32)
    save_file(state, str(tmp_path / "w.safetensors"))
    assert cli.main([*RUN, "--no-save", "--init-from", str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "missing keys [0.bias]" in err and "unexpected keys [9.weight]" in err
    assert "7.weight is (3, 3) in the checkpoint, (10, 128) in the model" in err
    model = _net(1)
    before = model.state_dict()
    with pytest.raises(InitFromError, match="does not fit this model"):
        init_from(model, tmp_path / "w.safetensors")
    assert _same(model.state_dict(), before)  # nothing half-loaded


def test_files_that_are_not_state_dicts(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(InitFromError, match="holds a list, not a state_dict"):
        read_weights(tmp_path / "list.pt")
    torch.save({"epoch": 3, "state_dict": {"0.weight": torch.zeros(1)}}, tmp_path / "lightning.pt")
    with pytest.raises(InitFromError, match="may be under 'state_dict'"):
        read_weights(tmp_path / "lightning.pt")
    torch.save({"module.0.weight": torch.zeros(1)}, tmp_path / "dp.pt")
    with pytest.raises(InitFromError, match="DataParallel"):
        init_from(_net(0), tmp_path / "dp.pt")
    # weights_only=True refuses to unpickle objects other than tensors and plain containers
    torch.save({"0.weight": fractions.Fraction(1, 3)}, tmp_path / "sneaky.pt")
    with pytest.raises(InitFromError, match="not a loadable PyTorch state_dict"):
        read_weights(tmp_path / "sneaky.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InitFromError, match="not a readable .safetensors"):
        read_weights(tmp_path / "junk.safetensors")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(InitFromError, match="unknown weights format"):
        read_weights(tmp_path / "w.npz")
    with pytest.raises(InitFromError, match="no such file"):
        read_weights(tmp_path / "absent.pt")
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(InitFromError, match="not a regular file"):
        read_weights(tmp_path / "folder.pt")


def test_without_torch_a_pt_file_is_a_message(tmp_path, monkeypatch):
    (tmp_path / "w.pt").write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(InitFromError, match="read with torch, which is not installed"):
        read_weights(tmp_path / "w.pt")


def test_init_from_and_resume_exclude_each_other(tmp_path, capsys):
    assert cli.main([*RUN, "--init-from", "a.pt", "--resume", "b.ckpt"]) == 2
    assert "give one of them" in capsys.readouterr().err


@pytest.mark.parametrize("ml_dtypes", [True, False], ids=["ml_dtypes", "no_ml_dtypes"])
def test_bfloat16_safetensors_from_pytorch(tmp_path, monkeypatch, ml_dtypes):
    """bfloat16 .safetensors files (common from PyTorch) load, widened exactly: safetensors'
    NumPy API hands them back as ml_dtypes.bfloat16 where that is installed, and refuses
    them (TypeError) where it is not."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    if ml_dtypes:
        pytest.importorskip("ml_dtypes")
    else:
        import safetensors.numpy

        def refuse(path):
            raise TypeError("data type 'bfloat16' not understood")
        monkeypatch.setattr(safetensors.numpy, "load_file", refuse)
    from safetensors.torch import save_file

    from gpucnn.torch_twin import to_torch

    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in to_torch(_net(2)).state_dict().items()}
    save_file(state, str(tmp_path / "bf16.safetensors"))
    model = _net(0)
    init_from(model, tmp_path / "bf16.safetensors")
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(v, state[k].float().numpy(), err_msg=k)
