"""gpucnn summary and train's start line: counts against torchinfo, memory measured."""
import numpy
import pytest

from gpucnn import cli, models, summary
from gpucnn.layers import Linear, ReLU
from gpucnn.optim import make_optimizer
from gpucnn.sequential import Sequential, walk


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_totals_match_torchinfo_for_every_model(name):
    torchinfo = pytest.importorskip("torchinfo")
    from gpucnn.torch_twin import to_torch

    shape = summary.default_input_shape(name)
    model = models.build(name, shape, 10)
    rows = summary.rows(model, shape)
    ref = torchinfo.summary(to_torch(model), input_size=(1, *shape), verbose=0)
    assert sum(r.parameters for r in rows) == model.num_parameters() == ref.total_params
    macs = sum(r.multiply_adds for r in rows)
    assert macs == pytest.approx(ref.total_mult_adds, rel=0.01)


def test_rows_are_named_by_state_dict_prefix_with_real_output_shapes():
    model = models.resnet20((3, 16, 16), classes=7)
    rows = summary.rows(model, (3, 16, 16))
    names = [r.name for r in rows]
    assert names == [prefix[:-1] for prefix, _ in walk(model)]
    assert "3.body.0" in names and "9.shortcut.0" in names
    prefixes = {k.rsplit(".", 1)[0] for k in model.state_dict()}
    assert prefixes <= set(names)
    by_name = {r.name: r for r in rows}
    assert by_name["0"].output == (16, 16, 16) and by_name["9.body.0"].output == (32, 8, 8)
    assert rows[-1].output == (7,) and by_name["0"].multiply_adds == 16 * 3 * 9 * 16 * 16


def test_activation_memory_counts_each_kept_buffer_once():
    """Linear keeps (x, y), ReLU its y, the second Linear (x = ReLU's y, counted once, and its y),
    the loss its probabilities and int64 targets."""
    b, dt = 5, numpy.dtype(numpy.float64)
    model = Sequential(Linear(4, 6, dtype=dt), ReLU(dtype=dt), Linear(6, 3, dtype=dt))
    opt = make_optimizer("sgd", model.parameters(), lr=0.1)
    kept, grads = summary.step_memory(model, opt, (4,), 3, b)
    assert kept == 8 * b * (4 + 6 + 6 + 3 + 3) + 8 * b
    assert grads == 8 * (4 * 6 + 6 + 6 * 3 + 3)
    assert all(layer._saved is None for _, layer in walk(model))  # released afterwards


def test_activation_memory_grows_with_the_batch():
    """Affine in the batch: per-image arrays, plus what a conv keeps once a batch (on NumPy, the
    banded lowering's kernel matrix)."""
    model = models.lenet()
    opt = make_optimizer("adam", model.parameters(), lr=1e-3)
    kept = [summary.step_memory(model, opt, (1, 28, 28), 10, b)[0] for b in (4, 8, 12)]
    assert kept[2] - kept[1] == kept[1] - kept[0] > 4 * (784 + 6 * 24 * 24)
    assert summary.optimizer_bytes(opt) == 2 * summary.parameter_bytes(model) == 2 * 4 * model.num_parameters()


def test_summary_command_prints_the_table_and_totals(capsys):
    assert cli.main(["summary", "--model", "lenet", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "44,426" in out and "286,334" in out
    assert "3      Conv2d     16x8x8" in out and "at batch 8" in out
    assert cli.main(["summary", "--model", "resnet20", "--input-shape", "3,8,8", "--classes", "4",
                     "--batch-size", "2"]) == 0
    assert "3.body.0" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["--model", "lenet", "--input-shape", "1,28"], "--input-shape: expected C,H,W"),
    (["--model", "lenet", "--input-shape", "a,b,c"], "--input-shape: expected C,H,W"),
    (["--model", "lenet", "--input-shape", "1,8,8"], "too small"),
    (["--model", "small", "--classes", "0"], "--classes must be at least 1"),
    (["--model", "small", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--checkpoint", "missing.ckpt"], "missing.ckpt"),
])
def test_bad_arguments_are_one_line_errors(args, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["summary", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpucnn: error:") and words in err and "\n" not in err


def test_unknown_model_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["summary", "--model", "alexnet"])
    assert e.value.code == 2 and "invalid choice: 'alexnet'" in capsys.readouterr().err


def test_summary_of_a_checkpoint_and_train_start_line(tmp_path, capsys):
    pytest.importorskip("sklearn")  # the built-in digits
    ckpt = tmp_path / "run.ckpt"
    assert cli.main(["train", "--no-progress", "--epochs", "1", "--batch-size", "256", "--save", str(ckpt)]) == 0
    macs = sum(r.multiply_adds for r in summary.rows(models.small(), (1, 8, 8)))
    assert f"(6,090 parameters, {macs:,} multiply-adds an image)" in capsys.readouterr().out
    assert cli.main(["summary", "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "small, input 1x8x8" in out and f"{macs:,}" in out and "at batch 256" in out
    assert cli.main(["summary", "--checkpoint", str(ckpt), "--model", "lenet"]) == 2
    assert "--checkpoint brings its own net" in capsys.readouterr().err


@pytest.mark.gpu
def test_summary_on_the_gpu_matches_numpy_counts(on_cupy):
    model = models.resnet20()
    rows = summary.rows(model, (3, 32, 32))
    assert sum(r.multiply_adds for r in rows) == 40_813_194
    opt = make_optimizer("adam", model.parameters(), lr=1e-3)
    kept, grads = summary.step_memory(model, opt, (3, 32, 32), 10, 8)
    assert kept > 8 * 3 * 32 * 32 * 4 and grads == summary.parameter_bytes(model)


def test_a_net_larger_than_memory_is_one_line_not_a_traceback(capsys):
    """Sizes that cannot be allocated end as gpucnn's one-line error (issue 16: no traceback)."""
    from gpucnn import cli

    assert cli.main(["summary", "--model", "lenet", "--input-shape", "1,100000,100000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpucnn: error: not enough memory") and "Traceback" not in err and err.count("\n") == 1
