"""The training progress bar counts images, so its rate is img/s, the unit of the epoch line."""
import re

from reliability_helpers import tiny_npz

from gpucnn import cli, train


def test_the_bar_counts_images_and_shows_no_second_rate(tmp_path, capsys, monkeypatch):
    import functools

    from tqdm import tqdm

    monkeypatch.setattr(train, "tqdm", functools.partial(tqdm, mininterval=0, miniters=1))  # every update printed
    data = tiny_npz(tmp_path / "d.npz", n_train=10)
    assert cli.main(["train", "--dataset", data, "--model", "small", "--epochs", "1", "--batch-size", "4",
                     "--no-save"]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert "img/s" in bar and "batch/s" not in bar and "it/s" not in bar and "img_s" not in bar, bar
    assert re.search(r"\b10(\.0)?/10(\.0)? \[", bar), bar  # all 10 images, in the last batch of 2 too
    assert re.search(r"\b8(\.00)?/10(\.0)? \[", bar), bar
