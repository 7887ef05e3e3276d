"""Start-up checks: everything a command can know before its first step is checked here.

A run that would fail after an epoch of work (a missing metrics directory, an empty test
split, a checkpoint that does not fit the data) fails in its first second instead, with one
line naming the problem; the command line prints it and exits 2. The same table of settings
checks the flags of a new run and the configuration saved in a checkpoint, so an edited or
damaged checkpoint is refused like a bad flag, never with a traceback.
"""
import math

from gpucnn.data.labels import MAX_CLASSES
from gpucnn.errors import GpucnnError
from gpucnn.outputs import check_distinct, check_outside, check_output

INT_LIMIT = 2**63  # every count and seed must fit NumPy's int64
MAX_SIDE = 1 << 16  # of a saved input shape: larger is damage, not an image

# key: (kind, lowest value or None). kinds: int, float (finite; an int is fine), bool, str,
# and "?" after a kind for "or None (the default)".
SETTINGS = {
    "model": ("str", None), "dataset": ("str", None), "data_dir": ("str?", None),
    "epochs": ("int", 1), "batch_size": ("int", 1), "optimizer": ("str", None),
    "lr": ("float", 0), "momentum": ("float", 0), "nesterov": ("bool?", None), "weight_decay": ("float?", 0),
    "schedule": ("str", None), "warmup_steps": ("int", 0), "step_size": ("int", 1), "gamma": ("float", 0),
    "min_lr": ("float", 0), "seed": ("int", 0), "augment": ("bool?", None), "graph": ("bool?", None),
    "label_smoothing": ("float", 0), "peak_fraction": ("float", 0), "tta": ("bool?", None), "ema": ("float?", None),
    "sync_bn": ("bool?", None), "image_size": ("str?", None), "channels": ("int?", 1), "fit": ("str?", None),
    "val_split": ("float?", 0), "save_best": ("bool?", None), "early_stop": ("int?", 1), "augmentation": ("str", None),
    "prefetch": ("bool?", None), "dtype": ("str", None),
}
# Settings that take one of a few names (key -> the names), checked in flags and checkpoints alike.
CHOICES = {"dtype": ("float32", "float64"), "fit": ("stretch", "crop", "pad")}
# Upper ends of the recipe's settings, each (low, high, whether the ends are allowed), as the
# loss, the EMA and the schedule check them; peak_fraction matters only to onecycle.
RANGES = {"label_smoothing": (0.0, 1.0, True), "ema": (0.0, 1.0, False), "peak_fraction": (0.0, 1.0, False),
          "val_split": (0.0, 1.0, False)}
# What a checkpoint's configuration must hold; the rest take TRAIN_DEFAULTS when absent.
REQUIRED = ("model", "dataset", "epochs", "batch_size", "optimizer", "lr", "schedule", "seed")
# A checkpoint's position in its run: key -> kind, all >= 0.
POSITION = {"epoch": "int", "step": "int", "loss_sum": "float", "correct": "int", "seen": "int", "seconds": "float"}


def setting_problem(key, value):
    """Why `value` is not a valid setting `key` (a phrase: "must be ..., got ..."), or None."""
    kind, low = SETTINGS[key]
    if kind.endswith("?"):
        if value is None:
            return None
        kind = kind[:-1]
    if kind == "str":
        if not (isinstance(value, str) and value):
            return f"must be a non-empty string, got {value!r}"
        return None if value in CHOICES.get(key, (value,)) else f"must be one of {', '.join(CHOICES[key])}, got {value!r}"
    if kind == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind == "float" else int):
        return f"must be {'a number' if kind == 'float' else 'an integer'}, got {value!r}"
    if kind == "float" and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if low is not None and value < low:
        return f"must be at least {low}, got {value}" if kind == "int" else f"must be >= {low}, got {value}"
    if kind == "int" and abs(value) >= INT_LIMIT:
        return f"must be below 2**63, got {value}"
    return None


def _flag(key):
    return "--" + key.replace("_", "-")


def check_train_settings(config, stop_after=None):
    """GpucnnError naming the flag for the first setting out of range (run after merging)."""
    for key, value in config.items():
        if key in SETTINGS:
            problem = setting_problem(key, value)
            if problem:
                raise GpucnnError(f"{_flag(key)} {problem}")
    for key, (low, high, closed) in RANGES.items():
        value = config.get(key)
        if value is None or key == "peak_fraction" and config.get("schedule") != "onecycle":
            continue
        inside = low <= value <= high if closed else low < value < high
        if not inside:
            ends = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"
            raise GpucnnError(f"{_flag(key)} must be in {ends}, got {value}")
    from gpucnn.data.augment import KINDS

    if config.get("augmentation", "crop-flip") not in KINDS:
        raise GpucnnError(f"--augmentation must be one of {', '.join(KINDS)}, got {config['augmentation']!r}")
    if stop_after is not None and stop_after < 1:
        raise GpucnnError(f"--stop-after must be at least 1, got {stop_after}")


def check_eval_settings(args):
    if args.batch_size < 1:
        raise GpucnnError(f"--batch-size must be at least 1, got {args.batch_size}")


# --- outputs ------------------------------------------------------------------------------
def check_train_outputs(args, config):
    """Check --save and --metrics-out at start-up: they may only be new files, or a gpucnn
    checkpoint / metrics file, outside a --dataset FOLDER (with --tensorboard); their
    directories are created. Returns (save, metrics)."""
    from gpucnn.checkpoint import is_checkpoint
    from gpucnn.metrics import is_metrics_file

    save = None if args.no_save else args.save or args.resume or "runs/last.ckpt"
    dataset = config["dataset"] if str(config["dataset"]).lower().endswith(".npz") else None
    check_distinct(**{"--dataset": dataset, "--save": save, "--metrics-out": args.metrics_out})
    from gpucnn.data.datasets import image_folder

    check_outside(image_folder(config["dataset"]),
                  **{"--save": save, "--metrics-out": args.metrics_out, "--tensorboard": args.tensorboard})
    if args.resume and args.metrics_out:
        check_distinct(**{"--resume": args.resume, "--metrics-out": args.metrics_out})
    if save:
        check_output(save, what="checkpoint", is_ours=is_checkpoint)
    if args.metrics_out:
        check_output(args.metrics_out, what="metrics file", is_ours=is_metrics_file)
    return save, args.metrics_out


# --- a checkpoint's saved run ----------------------------------------------------------------
def check_saved_run(ckpt, path, *, for_resume):
    """CheckpointError unless the checkpoint's meta holds a usable configuration (and, to
    resume, a usable position): the types and ranges a fresh run's flags must have."""
    from gpucnn.checkpoint import CheckpointError

    def damaged(what):
        return CheckpointError(f"{path}: its saved run is damaged ({what}); the checkpoint cannot be used")

    meta = ckpt["meta"]
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise damaged("no configuration")
    config = meta["config"]
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise damaged(f"configuration lacks {', '.join(missing)}")
    for key, value in config.items():
        if key in SETTINGS and (problem := setting_problem(key, value)):
            raise damaged(f"{key} {problem}")
    for key in ("mean", "std"):
        if key in meta:
            v = meta[key]
            if not isinstance(v, list) or not v or not all(_number(x) and math.isfinite(x) for x in v) \
                    or (key == "std" and min(v) <= 0):
                raise damaged(f"{key} is {_clip(v)}, not a list of finite numbers" + (" > 0" if key == "std" else ""))
    if "input_shape" in meta and not (isinstance(meta["input_shape"], list) and len(meta["input_shape"]) == 3
                                      and all(type(d) is int and 0 < d <= MAX_SIDE for d in meta["input_shape"])):
        raise damaged(f"input_shape is {_clip(meta['input_shape'])}, not three integers 1..{MAX_SIDE}")
    if "num_classes" in meta and not (type(meta["num_classes"]) is int and 1 <= meta["num_classes"] <= MAX_CLASSES):
        raise damaged(f"num_classes is {_clip(meta['num_classes'])}, not an integer 1..{MAX_CLASSES:,}")
    if "classes" in meta and (problem := classes_problem(meta["classes"], meta.get("num_classes"))):
        raise damaged(f"classes {problem}")
    if not for_resume:
        return
    for key, kind in POSITION.items():
        v = meta.get(key)
        ok = (type(v) is int) if kind == "int" else (_number(v) and math.isfinite(v))
        if not ok or v < 0 or v >= INT_LIMIT:
            raise damaged(f"{key} is {_clip(v)}, not {'an integer' if kind == 'int' else 'a number'} >= 0")
    if meta["epoch"] > config["epochs"] or (meta["epoch"] == config["epochs"] and meta["step"] > 0):
        raise damaged(f"it is at epoch {meta['epoch']}, step {meta['step']} of a {config['epochs']}-epoch run")
    if meta["correct"] > meta["seen"]:
        raise damaged(f"{meta['correct']} correct of {meta['seen']} seen")


def classes_problem(classes, count=None):
    """Why `classes` is not a flat list of 1..MAX_CLASSES names (str, or int as some datasets
    give them), `count` of them when given; None when it is."""
    if not isinstance(classes, list) or not classes:
        return f"is {_clip(classes)}, not a non-empty list of class names"
    odd = [c for c in classes if isinstance(c, bool) or not isinstance(c, (str, int))]
    if odd:
        return f"holds {_clip(odd[0])}, not a class name (a string or an integer)"
    if len(classes) > MAX_CLASSES:
        return f"has {len(classes):,} names, more than {MAX_CLASSES:,}"
    if type(count) is int and len(classes) != count:
        return f"has {len(classes)} names for {count} classes"
    return None


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _clip(v, n=60):
    text = repr(v)
    return text if len(text) <= n else text[:n] + "..."


def finished(start, config, stop_after, path):
    """The line to print when a resumed run has nothing left to train, else None."""
    if start is None:
        return None
    done = start["epoch"]
    if done >= config["epochs"]:
        return (f"{path}: the run is already finished ({done} of {config['epochs']} epochs); nothing to train "
                f"(pass a larger --epochs to extend it)")
    if stop_after is not None and done >= stop_after:
        return f"{path}: {done} epoch(s) already trained, at or past --stop-after {stop_after}; nothing to train"
    return None


# --- data ----------------------------------------------------------------------------------
def check_splits(data, splits=("train", "test")):
    """DatasetError for an empty split: training needs both, evaluation the test split."""
    from gpucnn.data import DatasetError

    for split in splits:
        if len(getattr(data, f"y_{split}")) == 0:
            raise DatasetError(f"{data.name}: the {split} split is empty (0 images); "
                               f"{'training' if split == 'train' else 'evaluation'} needs at least one"
                               + ("" if split == "train" else " (a run trained with --val-split is evaluated on "
                                                              "its held-out part instead)"))


def saved_model_io(ckpt):
    """(input shape (C, H, W) or None, channels or None, classes or None) of a checkpoint's net:
    from its meta when recorded there, else read off the first conv's and last layer's weights."""
    meta, state = ckpt["meta"], ckpt["model_state"]
    shape = tuple(meta["input_shape"]) if "input_shape" in meta else None
    classes = meta.get("num_classes")
    weights = [state[k] for k in sorted(state, key=_layer_order) if k.endswith("weight")]
    channels = shape[0] if shape else next((int(w.shape[1]) for w in weights if w.ndim == 4), None)
    if classes is None:
        classes = next((int(w.shape[0]) for w in reversed(weights) if w.ndim == 2), None)
    return shape, channels, classes


def _layer_order(key):
    return [int(p) if p.isdigit() else -1 for p in key.split(".")[:-1]]


def check_data_fits(data, ckpt, path):
    """CheckpointError unless the dataset's images and classes fit the checkpoint's net;
    returns the net's class count (the dataset may use fewer of them)."""
    from gpucnn.checkpoint import CheckpointError

    shape, channels, classes = saved_model_io(ckpt)
    images = tuple(data.x_test.shape[1:])
    if shape is not None and shape != images:
        raise CheckpointError(f"{path}: its model takes {'x'.join(map(str, shape))} (CxHxW) images; "
                              f"{data.name}'s are {'x'.join(map(str, images))}")
    if channels is not None and channels != images[0]:
        raise CheckpointError(f"{path}: its model takes {channels}-channel images; {data.name}'s have {images[0]}")
    for key in ("mean", "std"):
        if key in ckpt["meta"] and len(ckpt["meta"][key]) != images[0]:
            raise CheckpointError(f"{path}: its saved {key} has {len(ckpt['meta'][key])} channels; "
                                  f"{data.name}'s images have {images[0]}")
    if classes is not None and len(data.classes) > classes:
        raise CheckpointError(f"{path}: its model predicts {classes} classes; {data.name} has {len(data.classes)}")
    saved = ckpt["meta"].get("classes")
    if saved is not None and [str(c) for c in saved[:len(data.classes)]] != [str(c) for c in data.classes]:
        # Class k of the data would be scored against the net's class k: another meaning, a wrong score.
        raise CheckpointError(f"{path}: its net was trained on the classes {_listed(saved)}; {data.name}'s are "
                              f"{_listed(data.classes)}, so its scores would compare different classes")
    return classes if classes is not None else len(data.classes)


def _listed(names, most=6):
    names = [str(n) for n in names]
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def check_same_data(data, ckpt, path):
    """CheckpointError when a resume would train on other data than its run did (a folder that
    gained or lost images redraws the validation split and the statistics). Checkpoints written
    before this was saved are not checked."""
    from gpucnn.checkpoint import CheckpointError

    saved = ckpt["meta"].get("data")
    if saved is not None and saved != data.fingerprint():
        now, then = data.fingerprint(), saved
        how = (f"{then[0][0]:,} training images then, {now[0][0]:,} now" if then[0] != now[0]
               else "the same number of images, with other labels, classes or sizes")
        raise CheckpointError(f"{path}: the data changed since this run was saved ({how}); resume with the data it "
                              f"was trained on, or start a new run (--init-from can start it from these weights)")


def check_resume_position(start, steps_per_epoch, path):
    """CheckpointError when the data no longer has the step the checkpoint stopped at."""
    from gpucnn.checkpoint import CheckpointError

    if start is not None and start["step"] >= steps_per_epoch:
        raise CheckpointError(f"{path}: it stopped at step {start['step']} of its epoch, but this data gives "
                              f"only {steps_per_epoch} steps per epoch; resume with the data it was trained on")


def model_mismatch(error, data, path):
    """Rephrase check_model_state's error when the net cannot say what it was built for."""
    from gpucnn.checkpoint import CheckpointError

    images = "x".join(map(str, data.x_test.shape[1:]))
    return CheckpointError(f"{path}: its model does not fit {data.name}'s {images} (CxHxW) images "
                           f"and {len(data.classes)} classes, or is another architecture "
                           f"{str(error).split('is from a different model ', 1)[-1]}")

