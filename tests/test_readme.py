"""CI runs exactly the README's test command, and the README's commands name real flags."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _commands():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command():
    test_command = next(c for c in _commands() if "pytest" in c and "pip install" in c)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_readme_train_flags_exist():
    from gpucnn.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    known = {opt for action in train._actions for opt in action.option_strings}
    for command in _commands():
        if command.startswith("gpucnn train"):
            for flag in re.findall(r"(--[a-z0-9-]+)", command.split("#")[0]):
                assert flag in known, f"README uses unknown flag {flag}: {command}"
