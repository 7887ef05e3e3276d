"""Help texts say what the code does (the behaviour itself is tested beside each feature)."""
from gpucnn import cli


def _help(flag):
    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    return " ".join(next(a.help for a in train._actions if flag in a.option_strings).split())


def test_metrics_out_help_says_a_new_run_starts_afresh_and_a_resume_appends():
    # tests/test_reliability_outputs.py::test_a_new_run_replaces_an_empty_or_gpucnn_metrics_file
    text = _help("--metrics-out")
    assert "a new run starts FILE afresh" in text and "--resume appends" in text
    assert not text.startswith("append")


def test_dtype_help_names_the_default():
    assert "(default: float32)" in _help("--dtype")
