"""The recipe pieces end to end: --ema (on the device, in the step, saved, resumed, evaluated),
--tta, --label-smoothing, --schedule onecycle: saved in the checkpoint, kept on resume."""
import numpy
import pytest

from gpucnn import cli, init, models
from gpucnn.checkpoint import load_checkpoint
from gpucnn.ema import EMA
from gpucnn.optim import SGD
from gpucnn.train import TrainStep, evaluate

from helpers import close

F32 = numpy.float32
TINY = ["--no-progress", "--batch-size", "128", "--model", "small"]


def test_ema_averages_weights_and_copies_buffers_like_torch(rng):
    torch = pytest.importorskip("torch")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from gpucnn.torch_twin import to_torch

    init.seed(0)  # float64: three steps, whose rounding in float32 each CPU grows its own way
    model = models.build("resnet20", (1, 8, 8), 10, dtype=numpy.float64)
    ref = to_torch(model)
    ema, ref_ema = EMA(model, 0.8), AveragedModel(ref, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=False)
    ref_ema.update_parameters(ref)  # torch's first update copies, as our EMA does when made
    step = TrainStep(model, SGD(model.parameters(), lr=0.1, momentum=0.9), ema=ema)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        x, y = rng.standard_normal((8, 1, 8, 8)), rng.integers(0, 10, 8)
        step(x, y)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
        ref_ema.update_parameters(ref)
    averaged = ema.state_dict()
    for k, v in ref_ema.module.named_parameters():
        close(averaged[k], v.detach().numpy(), 1e-10)
    live = model.state_dict()
    for k, _ in ref.named_buffers():  # copied from the live net, not averaged
        numpy.testing.assert_array_equal(averaged[k], live[k])
    assert not numpy.allclose(averaged["0.weight"], live["0.weight"])


def test_ema_swap_restores_the_live_weights_and_state_round_trips(rng):
    model = models.build("small", (1, 8, 8), 10)
    ema = EMA(model, 0.5)
    live = model.state_dict()
    ema.averaged[0][2][...] = 7.0  # a distinct shadow for the first parameter
    with ema.swapped():
        assert float(model.parameters()[0].value.max()) == 7.0
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(v, live[k])
    other = EMA(model, 0.5)
    other.load_state_dict(ema.state_dict())
    numpy.testing.assert_array_equal(other.averaged[0][2], 7.0)
    with pytest.raises(ValueError, match="keys do not match"):
        other.load_state_dict({"0.weight": live["0.weight"]})
    for bad in (0, 1, 1.5, True):
        with pytest.raises(ValueError, match="--ema: the decay must be in"):
            EMA(model, bad)


def test_tta_averages_the_logits_of_image_and_mirror(rng):
    init.seed(0)
    model = models.build("small", (1, 8, 8), 10).eval()
    x = rng.uniform(0, 255, (20, 1, 8, 8)).astype(numpy.uint8)
    y = rng.integers(0, 10, 20)
    mean, std = numpy.array([0.4], F32), numpy.array([0.2], F32)  # in 0..1 pixel units
    loss, acc, _ = evaluate(model, x, y, mean, std, classes=10, tta=True)
    xn = ((x / 255.0 - 0.4) / 0.2).astype(F32)
    logits = (model.forward(xn) + model.forward(numpy.ascontiguousarray(xn[..., ::-1]))) / 2
    log_p = logits - numpy.log(numpy.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    assert acc == pytest.approx((logits.argmax(1) == y).mean())
    assert loss == pytest.approx(-log_p[numpy.arange(20), y].mean(), rel=1e-4)
    plain = evaluate(model, x, y, mean, std, classes=10)[0]
    assert plain != pytest.approx(loss)


def _digits():
    pytest.importorskip("sklearn")  # the built-in digits


RECIPE = ["--optimizer", "sgd", "--lr", "0.1", "--nesterov", "--weight-decay", "5e-4", "--schedule", "onecycle",
          "--peak-fraction", "0.3", "--label-smoothing", "0.1", "--tta", "--ema", "0.9"]


def test_recipe_flags_are_saved_kept_on_resume_and_bit_exact(tmp_path, capsys):
    _digits()
    straight, split = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    assert cli.main(["train", *TINY, "--epochs", "2", "--save", str(straight), *RECIPE]) == 0
    assert "ema_test_acc" in capsys.readouterr().out
    assert cli.main(["train", *TINY, "--epochs", "2", "--stop-after", "1", "--save", str(split), *RECIPE]) == 0
    saved = load_checkpoint(split)["meta"]
    assert {k: saved["config"][k] for k in ("schedule", "peak_fraction", "label_smoothing", "tta", "ema")} == \
        {"schedule": "onecycle", "peak_fraction": 0.3, "label_smoothing": 0.1, "tta": True, "ema": 0.9}
    assert set(saved["ema"]) == set(load_checkpoint(split)["model_state"])
    assert cli.main(["train", "--no-progress", "--resume", str(split), "--save", str(split)]) == 0
    a, b = load_checkpoint(straight), load_checkpoint(split)
    for k in a["model_state"]:  # the resumed run ends bit for bit where the straight one does
        numpy.testing.assert_array_equal(a["model_state"][k], b["model_state"][k])
        numpy.testing.assert_array_equal(a["meta"]["ema"][k], b["meta"]["ema"][k])
    capsys.readouterr()
    assert cli.main(["train", "--no-progress", "--resume", str(split), "--label-smoothing", "0.2"]) == 2
    assert "trained with --label-smoothing 0.1, not 0.2" in capsys.readouterr().err


def test_eval_uses_tta_from_the_run_and_evaluates_the_ema(tmp_path, capsys):
    _digits()
    ckpt, plain = tmp_path / "c.ckpt", tmp_path / "p.ckpt"
    assert cli.main(["train", *TINY, "--epochs", "2", "--save", str(ckpt), *RECIPE]) == 0
    last = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch 2/2")][0]
    test_acc, ema_acc = float(last.split("test_acc ")[1].split()[0]), float(last.split("ema_test_acc ")[1].split()[0])

    def accuracy(*flags):
        assert cli.main(["eval", "--checkpoint", str(ckpt), *flags]) == 0
        return float(capsys.readouterr().out.split("accuracy ")[1].split()[0])

    assert accuracy() == pytest.approx(test_acc, abs=1e-4)  # with tta, as trained
    assert accuracy("--ema") == pytest.approx(ema_acc, abs=1e-4)
    accuracy("--no-tta")
    assert cli.main(["train", *TINY, "--epochs", "1", "--save", str(plain)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(plain), "--ema"]) == 2
    assert "holds no moving average" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1], got 1.5"),
    (["--label-smoothing", "nan"], "--label-smoothing must be a finite number"),
    (["--ema", "1.0"], "--ema must be in (0, 1), got 1.0"),
    (["--schedule", "onecycle", "--peak-fraction", "0"], "--peak-fraction must be in (0, 1), got 0.0"),
])
def test_bad_recipe_flags_fail_before_the_data_loads(flags, message, tmp_path, capsys):
    missing = tmp_path / "no-such-dir"  # loading would fail on it: the flag must be refused first
    assert cli.main(["train", *TINY, "--dataset", "mnist", "--data-dir", str(missing), "--no-save", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "no-such-dir" not in err, err


def test_ema_starts_from_the_init_from_weights(tmp_path):
    _digits()
    from safetensors.numpy import save_file

    init.seed(1)  # weights unlike those the run's seed 0 draws
    start = models.build("small", (1, 8, 8), 10).state_dict()
    save_file(start, str(tmp_path / "w.safetensors"))
    ckpt = tmp_path / "r.ckpt"
    # lr 0: the weights stay where they start, so must their average
    assert cli.main(["train", *TINY, "--epochs", "1", "--lr", "0", "--ema", "0.5", "--init-from",
                     str(tmp_path / "w.safetensors"), "--save", str(ckpt)]) == 0
    saved = load_checkpoint(ckpt)["meta"]["ema"]
    for k, v in start.items():
        numpy.testing.assert_array_equal(saved[k], v, err_msg=k)


def test_a_missing_init_from_file_is_told_before_the_data_loads(tmp_path, capsys):
    assert cli.main(["train", *TINY, "--dataset", "mnist", "--data-dir", str(tmp_path / "no-such-dir"), "--no-save",
                     "--ema", "0.9", "--init-from", str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "--init-from" in err and "no such file" in err and "no-such-dir" not in err, err
