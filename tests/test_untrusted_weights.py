"""Weights entering from files: NaN or infinite numbers (from --init-from, or in an edited
checkpoint given to predict, eval, export or resume) and PyTorch tensors without plain values
(meta, sparse, quantized, nested) are refused with one line naming the array, before any work."""
import warnings
import zipfile

import numpy
import pytest

from gpucnn import cli, init, models
from gpucnn.checkpoint import CheckpointError, load_checkpoint
from gpucnn.init_from import InitFromError, read_weights

pytest.importorskip("sklearn")  # the built-in digits dataset

RUN = ["train", "--epochs", "1", "--no-progress", "--batch-size", "256", "--optimizer", "adam", "--lr", "0.01"]


def _net_state():
    init.seed(0)
    return models.build("small", (1, 8, 8), 10).state_dict()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "good.ckpt"
    assert cli.main([*RUN, "--save", str(path)]) == 0
    return path


def _edited(ckpt, tmp_path, entry, value):
    """A copy of the checkpoint whose array `entry` has `value` in its first element."""
    with numpy.load(ckpt, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[entry] = arrays[entry].copy()
    arrays[entry].reshape(-1)[0] = value
    out = tmp_path / f"edited{abs(hash((entry, str(value))))}.ckpt"
    with open(out, "wb") as f:
        numpy.savez(f, **arrays)
    return out


def _no_data_load(monkeypatch):
    import gpucnn.data

    def refuse(*a, **k):
        raise AssertionError("the data was loaded before the bad weights were refused")
    monkeypatch.setattr(gpucnn.data, "load", refuse)


@pytest.mark.parametrize("value", [numpy.nan, numpy.inf, -numpy.inf])
@pytest.mark.parametrize("fmt", [".safetensors", ".pt"])
def test_init_from_non_finite_weights_is_refused_before_the_data_loads(fmt, value, tmp_path, capsys, monkeypatch):
    state = _net_state()
    state["3.weight"].reshape(-1)[5] = value
    path = tmp_path / f"w{fmt}"
    if fmt == ".pt":
        torch = pytest.importorskip("torch")
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    else:
        pytest.importorskip("safetensors.numpy").save_file(state, str(path))
    _no_data_load(monkeypatch)
    assert cli.main([*RUN, "--no-save", "--init-from", str(path)]) == 2
    err = capsys.readouterr().err
    kind = "NaN" if numpy.isnan(value) else "infinite"
    assert f"--init-from {path}: 3.weight holds 1 {kind} value of 4,608" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_every_bad_array_is_counted(tmp_path):
    state = _net_state()
    state["0.bias"][:] = numpy.nan
    state["0.bias"][0] = numpy.inf
    state["7.weight"][0, 0] = numpy.nan
    pytest.importorskip("safetensors.numpy").save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(InitFromError, match=r"0\.bias holds 15 NaN and 1 infinite values of 16 \(2 arrays hold"):
        read_weights(tmp_path / "w.safetensors")


@pytest.mark.parametrize("entry", ["model/0.weight", "model/7.bias", "optim/state/0.weight/exp_avg_sq"])
@pytest.mark.parametrize("command", ["predict", "eval", "export", "resume"])
def test_a_checkpoint_with_non_finite_numbers_is_refused_by_every_command(ckpt, entry, command, tmp_path, capsys):
    with zipfile.ZipFile(ckpt) as z:
        assert f"{entry}.npy" in z.namelist()
    bad = _edited(ckpt, tmp_path, entry, numpy.nan if "bias" not in entry else numpy.inf)
    argv = {"predict": ["predict", "--checkpoint", str(bad), str(tmp_path / "any.png")],
            "eval": ["eval", "--checkpoint", str(bad)],
            "export": ["export", "--checkpoint", str(bad), "-o", str(tmp_path / "out" / "m.safetensors")],
            "resume": [*RUN, "--epochs", "2", "--resume", str(bad)]}[command]
    if command == "predict":
        pytest.importorskip("PIL")
    if command == "export":
        pytest.importorskip("safetensors")
    before = bad.read_bytes()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{bad}: {entry} holds 1 " in err and "value of" in err, err
    assert bad.read_bytes() == before and not (tmp_path / "out").exists()


def test_the_untouched_checkpoint_still_loads(ckpt):
    assert load_checkpoint(ckpt)["model_state"]  # the check refuses only what is damaged


def test_load_checkpoint_names_the_entry(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match=r"model/3\.weight holds 1 NaN value of 4,608"):
        load_checkpoint(_edited(ckpt, tmp_path, "model/3.weight", numpy.nan))


def _odd_tensors(torch):
    yield "meta", torch.empty(3, device="meta"), "a meta tensor"
    yield "sparse", torch.eye(3).to_sparse(), "a sparse_coo tensor"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch calls these beta or deprecated; files holding them exist
        yield "csr", torch.eye(3).to_sparse_csr(), "a sparse_csr tensor"
        yield "quantized", torch.quantize_per_tensor(torch.zeros(3), 0.1, 0, torch.qint8), "a quantized tensor"
        yield "nested", torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)]), "a nested tensor"


def test_tensors_without_plain_values_are_named_without_warnings(tmp_path):
    torch = pytest.importorskip("torch")
    for label, tensor, why in _odd_tensors(torch):
        path = tmp_path / f"{label}.pt"
        torch.save({"0.bias": torch.zeros(16), "0.weight": tensor}, path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a raw Python warning printed with source lines is a defect
            with pytest.raises(InitFromError, match=rf"{path}: 0\.weight is {why}") as e:
                read_weights(path)
        assert "\n" not in str(e.value)


def test_a_pickle_refusal_does_not_advise_unsafe_loading(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"0.weight": numpy.zeros(3)}, tmp_path / "numpy.pt")
    with pytest.raises(InitFromError, match="holds Python objects other than tensors") as e:
        read_weights(tmp_path / "numpy.pt")
    assert "weights_only" not in str(e.value) and "\x1b" not in str(e.value)


def test_predict_never_prints_a_nan_probability(tmp_path, capsys):
    """Finite weights can still overflow float32: that image is reported as skipped, and no
    line holds NaN (which is no JSON)."""
    Image = pytest.importorskip("PIL.Image")
    from gpucnn.predict import predict_files
    from gpucnn.trained import Trained

    init.seed(0)
    model = models.build("small", (1, 8, 8), 10).eval()
    model.layers[-1].params["weight"][...] = 3e38  # finite, and overflows the logits of any non-blank image
    Image.fromarray(numpy.full((8, 8), 255, numpy.uint8)).save(tmp_path / "white.png")
    trained = Trained(model, "small", (1, 8, 8), [str(i) for i in range(10)], numpy.zeros(1, numpy.float32),
                      numpy.ones(1, numpy.float32), "")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's overflow warnings would be printed raw, with source lines
        got = list(predict_files(trained, [tmp_path / "white.png"], progress=False))
    assert got == [(tmp_path / "white.png", "the net's outputs for it are not finite numbers "
                                            "(its weights or this image overflow float32)")]
