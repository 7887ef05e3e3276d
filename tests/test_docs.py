"""The docs are tests: every fenced shell and Python block in README.md and docs/*.md runs.

The rule that lets a block written for a user run here in seconds, visible and small:
- Each page runs in a fresh folder of its own, its blocks in order (so `train` then `eval`
  finds `runs/last.ckpt`). The folder holds what the docs name by these paths:
  `mnist/` (the four IDX files of a 1,200-image MNIST look-alike), `my-images/` (a folder
  dataset: `train/<class>/` and `test/<class>/` PNGs), `digit.png`, `my_data.npz`.
- `--epochs N` becomes `--epochs 1`; nothing else in a command is changed.
- `gpucnn` is this checkout's (`python -m gpucnn`), `python`/`python3` the test's interpreter.
- A block that cannot run here (a GPU, a cluster, a download, an install) carries the line
  `<!-- docs: parse-only (why) -->` just above it: its `gpucnn ...` commands are still parsed
  by gpucnn's own argument parser, so a renamed flag fails this test all the same.
Links between pages, to headings and to repository files are checked too.
"""
import gzip
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:^<!-- docs: (?P<mark>[^>]*?) -->\n)?^```(?P<lang>bash|python)\n(?P<body>.*?)^```", re.M | re.S)
TIME_LIMIT = 240  # seconds a block may take: a 1-epoch run on tiny data takes a few here


def blocks(page):
    """(language, body, parse_only_reason or None, line number) of each fenced block on a page."""
    text = page.read_text()
    for m in FENCE.finditer(text):
        mark = m.group("mark")
        if mark is not None and not mark.startswith("parse-only"):
            raise AssertionError(f"{page.name}: unknown docs marker {mark!r}")
        yield m.group("lang"), m.group("body"), mark, text.count("\n", 0, m.start()) + 1


def _ids():
    return [f"{p.relative_to(ROOT)}" for p in PAGES]


def gpucnn_commands(body):
    """The argument lists of each `gpucnn ...` command in a shell block (continuations joined,
    comments and redirections dropped, launchers such as `mpirun -n 4` skipped)."""
    for line in body.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError as e:
            raise AssertionError(f"cannot split {line!r}: {e}") from None
        yield from _commands_of(words)


def _commands_of(words):
    """Split at ; && || | and drop redirections (> FILE, 2> FILE, < FILE)."""
    commands, current, skip = [], [], False
    for i, w in enumerate(words):
        if skip:
            skip = False
        elif w in (";", "&&", "||", "|", "&", ":"):  # ':' parts an MPI launcher's programs
            commands.append(current)
            current = []
        elif w and set(w) <= set("<>&"):
            skip = True
            if current and current[-1].isdigit() and w.startswith(">"):
                current.pop()  # the 2 of 2>
        else:
            current.append(w)
    commands.append(current)
    for command in commands:
        for i, w in enumerate(command):
            if w == "gpucnn" or w.endswith("/gpucnn"):  # a launcher's words before it are skipped
                yield command[i + 1:]
                break


def check_parses(args, where):
    from gpucnn.cli import build_parser

    try:
        build_parser().parse_args(args)
    except SystemExit as e:
        if e.code:
            raise AssertionError(f"{where}: `gpucnn {' '.join(args)}` does not parse") from None


# --- what the pages' folder holds ---------------------------------------------------------------
def _idx_images(x):
    return b"\x00\x00\x08\x03" + numpy.array(x.shape, ">u4").tobytes() + x.tobytes()


def _idx_labels(y):
    return b"\x00\x00\x08\x01" + numpy.array(y.shape, ">u4").tobytes() + y.tobytes()


def _digits(n, rng):
    """n 28x28 images of ten learnable classes (a bright bar at a class-dependent place), labels."""
    y = numpy.arange(n, dtype=numpy.uint8) % 10
    x = rng.integers(0, 40, (n, 28, 28)).astype(numpy.uint8)
    for i, c in enumerate(y):
        x[i, 2 + 2 * c:5 + 2 * c, 4:24] = 230
    return x, y


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The files the docs name, made once; each page gets a copy-free view of them by symlink."""
    base = tmp_path_factory.mktemp("docs-data")
    rng = numpy.random.default_rng(0)
    (base / "mnist").mkdir()
    for prefix, n in (("train", 1000), ("t10k", 200)):
        x, y = _digits(n, rng)
        (base / "mnist" / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_images(x)))
        (base / "mnist" / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_labels(y)))
    x, y = _digits(300, rng)
    numpy.savez(base / "my_data.npz", x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])
    try:
        from PIL import Image
    except ImportError:
        return base
    names = ["circle", "square", "triangle"]
    for split, n in (("train", 40), ("test", 10)):
        for c, name in enumerate(names):
            folder = base / "my-images" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = numpy.full((24, 24, 3), 20 + 8 * (i % 5), numpy.uint8)
                img[4 + 6 * c:10 + 6 * c, 3:21] = (220, 60 + 60 * c, 40)
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    Image.fromarray(_digits(1, rng)[0][0]).save(base / "digit.png")
    return base


def _page_dir(tmp_path, base):
    for item in base.iterdir():
        (tmp_path / item.name).symlink_to(item)
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    for name, target in (("gpucnn", f'"{sys.executable}" -m gpucnn'), ("python", f'"{sys.executable}"'),
                         ("python3", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (bin_dir / name).chmod(0o755)
    import gpucnn  # the blocks run the very gpucnn this test imports (the tree, or the installed copy)

    home = str(pathlib.Path(gpucnn.__file__).resolve().parent.parent)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", GPUCNN_BACKEND="numpy",
               OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [home, os.environ.get("PYTHONPATH")])))
    return env


def shorten(body):
    return re.sub(r"--epochs[ =](\d+)", lambda m: f"--epochs {min(int(m.group(1)), 2)}", body)


@pytest.mark.parametrize("page", PAGES, ids=_ids())
def test_every_block_on_the_page_runs(page, workdir, tmp_path):
    env = _page_dir(tmp_path, workdir)
    ran = 0
    for lang, body, parse_only, line in blocks(page):
        where = f"{page.relative_to(ROOT)}:{line}"
        if lang == "bash":
            for args in gpucnn_commands(body):
                check_parses(args, where)
        if parse_only is not None:
            if lang == "python":
                compile(body, where, "exec")
            continue
        cmd = ["bash", "-eu", "-c", shorten(body)] if lang == "bash" else [sys.executable, "-c", body]
        try:
            r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIME_LIMIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{where}: the block ran past {TIME_LIMIT} s")
        assert r.returncode == 0, f"{where}: exit {r.returncode}\n{shorten(body)}\n--- stdout\n{r.stdout[-3000:]}" \
                                  f"\n--- stderr\n{r.stderr[-3000:]}"
        ran += 1


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page):
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S),
                                         flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=_ids())
def test_links_lead_somewhere(page):
    for target in (a or b for a, b in LINK.findall(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # a web address: no network here
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target} leads nowhere"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


def test_every_docs_page_is_linked_from_the_readme_or_another_page():
    text = "".join(p.read_text() for p in PAGES)
    for page in PAGES[1:]:
        assert f"{page.name}" in text.replace(page.read_text(), ""), f"docs/{page.name} is linked from nowhere"


def test_ci_runs_the_readme_test_command():
    commands = [line for lang, body, _, _ in blocks(ROOT / "README.md") if lang == "bash"
                for line in body.splitlines()]
    test_command = next(c for c in commands if "pytest" in c and "pip install" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_parse_check_catches_a_renamed_flag():
    with pytest.raises(AssertionError, match="does not parse"):
        for args in gpucnn_commands("mpirun -n 2 gpucnn train --no-such-flag 3 > log 2> err  # a comment\n"):
            check_parses(args, "here")


def test_commands_are_cut_at_operators_and_redirections():
    body = ("gpucnn eval --checkpoint a.ckpt --json > r.json && python -m gpucnn check 2>/dev/null | head -1\n"
            "mpirun -n 1 gpucnn train --epochs 2 : -n 1 .venv/bin/gpucnn train --stop-after 1\n")
    assert list(gpucnn_commands(body)) == [["eval", "--checkpoint", "a.ckpt", "--json"], ["check"],
                                           ["train", "--epochs", "2"], ["train", "--stop-after", "1"]]
