"""gpucnn reads back everything it writes: for every model, `gpucnn export -o FILE.safetensors`
and a PyTorch state_dict (.pt) of the twin load with --init-from, and the export loads into the
PyTorch twin; every array comes back with its value, dtype and shape (0-d ones included)."""
import numpy
import pytest

from gpucnn import backend, cli, init, models
from gpucnn.init_from import init_from, read_weights
from gpucnn.layers import BatchNorm2d
from gpucnn.sequential import walk

safetensors = pytest.importorskip("safetensors")
torch = pytest.importorskip("torch")

from gpucnn.export import safetensors_bytes  # noqa: E402
from gpucnn.torch_twin import to_torch  # noqa: E402

SHAPE = (3, 16, 16)


def cli_models():
    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    return next(a.choices for a in train._actions if "--model" in a.option_strings)


def _distinct_net(name, seed):
    """A net whose every array, BatchNorm's counters and statistics included, differs from a
    fresh net's, so a round trip that dropped or mangled one could not pass."""
    init.seed(seed)
    model = models.build(name, SHAPE, 5)
    rng = numpy.random.default_rng(seed)
    for _, layer in walk(model):
        if isinstance(layer, BatchNorm2d):
            c = layer.num_features
            layer.buffers["running_mean"][...] = backend.to_device(rng.standard_normal(c))
            layer.buffers["running_var"][...] = backend.to_device(rng.uniform(0.3, 3.0, c))
            layer.buffers["num_batches_tracked"][...] = int(rng.integers(1, 10**6))
            if layer.affine:
                layer.params["weight"][...] = backend.to_device(rng.uniform(0.5, 1.5, c))
                layer.params["bias"][...] = backend.to_device(rng.standard_normal(c))
    return model


def _assert_same_state(got, expected):
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        g = numpy.asarray(got[k])
        assert g.shape == v.shape and g.dtype == v.dtype, (k, g.shape, v.shape, g.dtype, v.dtype)
        numpy.testing.assert_array_equal(g, v, err_msg=k)


@pytest.mark.parametrize("name", cli_models())
def test_safetensors_export_is_read_back_by_init_from(name, tmp_path):
    source = _distinct_net(name, 1)
    path = tmp_path / "net.safetensors"
    path.write_bytes(safetensors_bytes(source, {"model": name}))
    state = read_weights(path)
    assert all(state[k].shape == () for k in state if k.endswith("num_batches_tracked"))
    target = _distinct_net(name, 2)
    assert init_from(target, path) == len(source.state_dict())
    _assert_same_state(target.state_dict(), source.state_dict())


@pytest.mark.parametrize("name", cli_models())
def test_pytorch_state_dict_of_the_twin_is_read_back_by_init_from(name, tmp_path):
    source = _distinct_net(name, 3)
    torch.save(to_torch(source).state_dict(), tmp_path / "net.pt")
    target = _distinct_net(name, 4)
    init_from(target, tmp_path / "net.pt")
    _assert_same_state(target.state_dict(), source.state_dict())


@pytest.mark.parametrize("name", cli_models())
def test_safetensors_export_loads_into_the_pytorch_twin_and_back(name, tmp_path):
    """export -> safetensors.torch.load_file -> the twin (strict) -> torch.save -> init_from."""
    from safetensors.torch import load_file, save_file

    source = _distinct_net(name, 5)
    (tmp_path / "net.safetensors").write_bytes(safetensors_bytes(source, {"model": name}))
    twin = to_torch(_distinct_net(name, 6))
    twin.load_state_dict(load_file(str(tmp_path / "net.safetensors")), strict=True)
    for k, v in source.state_dict().items():
        numpy.testing.assert_array_equal(twin.state_dict()[k].numpy(), v, err_msg=k)
        assert tuple(twin.state_dict()[k].shape) == v.shape, k
    torch.save(twin.state_dict(), tmp_path / "twin.pt")
    save_file(twin.state_dict(), str(tmp_path / "twin.safetensors"))  # as PyTorch users write them
    for written_by_torch in ("twin.pt", "twin.safetensors"):
        target = _distinct_net(name, 7)
        init_from(target, tmp_path / written_by_torch)
        _assert_same_state(target.state_dict(), source.state_dict())


def test_export_then_train_init_from_on_the_command_line(tmp_path, capsys):
    """The reported failure, as a user meets it: a BatchNorm net trained, exported, and used to
    start a new run (on a tiny dataset: the round trip is the point, not the training)."""
    from reliability_helpers import tiny_npz

    data = tiny_npz(tmp_path / "tiny.npz", n_train=16)
    run = ["train", "--dataset", data, "--model", "vgg_bn", "--epochs", "1", "--batch-size", "8", "--no-progress"]
    ckpt, out = tmp_path / "a.ckpt", tmp_path / "net.safetensors"
    assert cli.main([*run, "--save", str(ckpt)]) == 0
    assert cli.main(["export", "--checkpoint", str(ckpt), "-o", str(out)]) == 0
    capsys.readouterr()
    assert cli.main([*run, "--save", str(tmp_path / "b.ckpt"), "--init-from", str(out)]) == 0, capsys.readouterr().err
    assert "initialised from" in capsys.readouterr().out
