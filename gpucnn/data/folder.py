"""A folder of images as a dataset: list it, check it, and say what is in it.

Layouts (torchvision's ImageFolder rule: class names are the sorted sub-folder names):
  PATH/train/<class>/...  with PATH/test/<class>/... (or PATH/val/<class>/...) as the test split
  PATH/<class>/...        one split; the test split is empty (hold part out with --val-split)
A class folder's images may sit in sub-folders of it, at any depth. Hidden entries (a leading
dot) and files without an image suffix are ignored and counted, as are files lying outside a
class folder. Nothing under PATH is ever written.

Errors before any work: no class folders or fewer than two, an empty class folder, a test
split whose classes differ from train's (naming which), and with strict, any bad file.
"""
import os
from collections import Counter
from dataclasses import dataclass, field

from . import image
from .errors import DatasetError, missing

SPLIT_NAMES = ("test", "val")  # the test split's folder, in order of preference
SHOW = 5  # bad files, sizes and modes named in an error before "... and N more"


@dataclass
class Scan:
    """What a folder holds. files[split]: [(path, label, size, mtime_ns)] in sorted order."""
    root: str
    layout: str
    classes: list
    files: dict
    counts: dict                                        # split -> [images per class]
    bad: list = field(default_factory=list)             # (path, why)
    ignored: Counter = field(default_factory=Counter)   # why -> count
    headers: dict = field(default_factory=dict)         # path -> (h, w, mode), when read
    listed: dict = field(default_factory=dict)          # files as first listed (the cache key's)

    @property
    def has_test(self):
        return "test" in self.files


def scan(root):
    """Scan of the folder `root`; DatasetError for a layout that cannot be trained on."""
    if not os.path.isdir(root):
        raise missing(root, "image folder", hint="check the path")
    root = os.path.abspath(root)
    suffixes = image.extensions()
    ignored, bad = Counter(), []
    train_dir = os.path.join(root, "train")
    if os.path.isdir(train_dir):
        test_dir = next((os.path.join(root, s) for s in SPLIT_NAMES if os.path.isdir(os.path.join(root, s))), None)
        dirs = {"train": train_dir, **({"test": test_dir} if test_dir else {})}
        layout = f"train/ and {os.path.basename(test_dir)}/" if test_dir else "train/ only (no test/ or val/)"
        if all(os.path.isdir(os.path.join(root, s)) for s in SPLIT_NAMES):  # said, not dropped in silence
            layout += " (val/ is not read: test/ is the test split; --val-split holds out a validation part)"
    else:
        dirs, layout = {"train": root}, "flat (PATH/<class>/...; no test split)"
    found = {split: _classes(d, suffixes, ignored, bad) for split, d in dirs.items()}
    classes = sorted(found["train"])
    if len(classes) < 2:
        raise DatasetError(f"{dirs['train']}: {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
                           f"a dataset needs at least two, as PATH/<class>/<image> or PATH/train/<class>/<image>")
    if "test" in found and sorted(found["test"]) != classes:
        missing_ = sorted(set(classes) - set(found["test"]))
        extra = sorted(set(found["test"]) - set(classes))
        raise DatasetError(f"{dirs['test']}: its classes differ from {dirs['train']}'s: "
                           + "; ".join(p for p in (missing_ and f"missing from {os.path.basename(dirs['test'])}: "
                                                   f"{_names(missing_)}", extra and f"only in "
                                                   f"{os.path.basename(dirs['test'])}: {_names(extra)}") if p))
    for split, per_class in found.items():
        for name in classes:
            if not per_class[name]:
                raise DatasetError(f"{os.path.join(dirs[split], name)}: class folder holds no image files")
    files = {split: [(p, label, size, mtime) for label, name in enumerate(classes) for p, size, mtime in per_class[name]]
             for split, per_class in found.items()}
    counts = {split: [len(per_class[name]) for name in classes] for split, per_class in found.items()}
    return Scan(root, layout, classes, files, counts, bad, ignored, listed=dict(files))


def _classes(directory, suffixes, ignored, bad):
    """{class name: [(path, size, mtime_ns)]} for the class folders in `directory`."""
    out = {}
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name.startswith("."):
            ignored["hidden"] += 1
        elif entry.is_dir():
            out[entry.name] = _images(entry.path, suffixes, ignored, bad)
        else:
            ignored["outside a class folder"] += 1
    return out


def _images(directory, suffixes, ignored, bad):
    found = []
    for top, dirs, names in os.walk(directory):
        ignored["hidden"] += sum(d.startswith(".") for d in dirs) + sum(n.startswith(".") for n in names)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            path = os.path.join(top, name)
            if os.path.splitext(name)[1].lower() not in suffixes:
                ignored["not an image suffix"] += 1
                continue
            why = image.why_not_readable(path)
            if why:
                bad.append((path, why))
                continue
            st = os.stat(path)
            found.append((path, st.st_size, st.st_mtime_ns))
    return found


def read_headers(scan, pool_map, decode=False, progress=True):
    """Fill scan.headers; files whose header does not open (with decode: whose data does not
    decode) move to scan.bad."""
    import sys

    from tqdm import tqdm

    paths = [p for files in scan.files.values() for p, *_ in files]
    results = pool_map(_decoded if decode else _header, paths)
    for path, got in zip(paths, tqdm(results, total=len(paths), unit="image", desc="check" if decode else "headers",
                                     disable=not progress, leave=False, dynamic_ncols=True, file=sys.stderr)):
        if isinstance(got, str):
            scan.bad.append((path, got))
        else:
            scan.headers[path] = got
    drop({p for p, _ in scan.bad}, scan)


def _header(path, decode=False):
    try:
        return image.header(path, decode=decode)
    except image.UnreadableImage as e:
        return str(e)


def _decoded(path):
    return _header(path, decode=True)


def drop(bad_paths, scan):
    """Remove files found bad from every split; DatasetError if a class is left with none."""
    if not bad_paths:
        return
    for split, files in scan.files.items():
        scan.files[split] = kept = [f for f in files if f[0] not in bad_paths]
        scan.counts[split] = [0] * len(scan.classes)
        for f in kept:
            scan.counts[split][f[1]] += 1
        for name, n in zip(scan.classes, scan.counts[split]):
            if n == 0:
                raise DatasetError(f"{scan.root}: class {name!r} has no readable images in the {split} split "
                                   f"({len(bad_paths)} bad file(s) in all; `gpucnn data {scan.root}` lists them)")


def check_strict(scan):
    if scan.bad:
        raise DatasetError(f"{scan.root}: {len(scan.bad)} bad file(s) and --strict-images: "
                           + "; ".join(f"{image.printable(p)}: {why}" for p, why in scan.bad[:SHOW])
                           + (f"; ... and {len(scan.bad) - SHOW} more" if len(scan.bad) > SHOW else ""))


def resolve_shape(scan, image_size=None, channels=None):
    """(C, H, W) the images become: the flags', else the one size and colour every image has;
    DatasetError with the sizes (or modes) found when they differ and no flag chose."""
    heads = list(scan.headers.values())
    if image_size is None:
        sizes = Counter((h, w) for h, w, _ in heads)
        if len(sizes) > 1:
            raise DatasetError(f"{scan.root}: images differ in size ({_histogram(sizes, lambda s: f'{s[0]}x{s[1]}')}); "
                               f"choose one with --image-size HxW (and --fit stretch|crop|pad)")
        image_size = next(iter(sizes))
    if channels is None:
        kinds = Counter(image.channels_of(m) for _, _, m in heads)
        if len(kinds) > 1:
            modes = Counter(m for _, _, m in heads)
            raise DatasetError(f"{scan.root}: images are both grey and colour (modes {_histogram(modes, str)}); "
                               f"choose with --channels 1 or --channels 3")
        channels = next(iter(kinds))
    return (channels, *image_size)


def summary(scan):
    """The scan as lines of text: layout, classes with counts per split, sizes, modes, bad and ignored files."""
    splits = list(scan.files)
    width = max(12, *(len(c) for c in scan.classes))
    lines = [f"{scan.root}: {len(scan.classes)} classes, layout {scan.layout}",
             f"  {'class':<{width}} " + " ".join(f"{s:>8}" for s in splits)]
    for i, name in enumerate(scan.classes):
        lines.append(f"  {image.printable(name):<{width}} " + " ".join(f"{scan.counts[s][i]:>8,}" for s in splits))
    lines.append(f"  {'total':<{width}} " + " ".join(f"{sum(scan.counts[s]):>8,}" for s in splits))
    heads = list(scan.headers.values())
    if heads:
        lines.append(f"sizes (HxW): {_histogram(Counter((h, w) for h, w, _ in heads), lambda s: f'{s[0]}x{s[1]}')}")
        lines.append(f"modes: {_histogram(Counter(m for *_, m in heads), str)}")
    lines.append(f"bad files: {len(scan.bad)}")
    lines += [f"  {image.printable(p)}: {why}" for p, why in scan.bad]
    lines.append(f"ignored: {ignored_text(scan) or 'none'}")
    return lines


def ignored_text(scan):
    """"1 hidden, 2 not an image suffix" (or empty): the files left out, by why."""
    return ", ".join(f"{n:,} {why}" for why, n in sorted(scan.ignored.items()) if n)


def _histogram(counter, label):
    items = counter.most_common()
    text = ", ".join(f"{label(k)} ({n:,})" for k, n in items[:SHOW])
    return text + (f", ... {len(items) - SHOW} more" if len(items) > SHOW else "")


def _names(names):
    return ", ".join(image.printable(n) for n in names)


def parse_size(text):
    """(H, W) from "H" or "HxW"; DatasetError for anything else."""
    parts = str(text).lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or not all(1 <= s <= 1 << 16 for s in sizes):
        raise DatasetError(f"--image-size must be H or HxW with sides 1..65536, got {text!r}")
    return (sizes[0], sizes[-1])
