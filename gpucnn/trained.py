"""A trained net as predict and export need it: rebuilt from a checkpoint, weights loaded,
in eval mode, with what its inputs looked like (shape, mean/std) and its class names.

Checkpoints record the input shape and class names in their meta. Older ones do not;
for those the dataset named in the run's configuration is loaded (as `gpucnn eval`
does) to read them, and a clear error says so when it cannot be.
"""
from dataclasses import dataclass

import numpy

from gpucnn import models
from gpucnn.checkpoint import CheckpointError, check_model_state, load_checkpoint


@dataclass(eq=False)
class Trained:
    model: object          # gpucnn Sequential, eval mode, on the live backend
    name: str              # the --model it was built as
    input_shape: tuple     # (C, H, W) of one training image
    classes: list          # class names, index = output unit
    mean: numpy.ndarray    # float32 (C,), of the scaled (0..1) training pixels
    std: numpy.ndarray     # float32 (C,)
    path: str              # the checkpoint it came from
    fit: str = "stretch"   # how its training images were brought to size (a folder run's --fit)
    tta: bool = False      # whether the run evaluates with flip TTA (train --tta), as eval does by default


def load_trained(path):
    """The net saved in checkpoint `path`, ready to run; CheckpointError naming the file
    and the problem if it is not a gpucnn checkpoint, is corrupt, or does not fit."""
    from gpucnn import validate

    ckpt = load_checkpoint(path)
    validate.check_saved_run(ckpt, path, for_resume=False)  # the same rule as gpucnn eval's
    meta = ckpt["meta"]
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise CheckpointError(f"{path}: its meta has no run configuration naming the model (not written by gpucnn train?)")
    name = config["model"]
    if name not in models.MODELS:
        raise CheckpointError(f"{path}: holds a {name!r} net, which this gpucnn does not know "
                              f"(it knows {', '.join(models.MODELS)}); upgrade gpucnn")
    info = _described(meta, config, path)
    units = validate.saved_model_io(ckpt)[2]
    if units is not None and units != len(info["classes"]):
        raise CheckpointError(f"{path}: its meta names {len(info['classes'])} classes for a net with {units} outputs "
                              f"(its meta is damaged)")
    try:
        model = models.build(name, info["input_shape"], len(info["classes"]), dtype=config.get("dtype"))
    except ValueError as e:
        raise CheckpointError(f"{path}: cannot rebuild its {name} net: {e}") from None
    except MemoryError:  # an edited input_shape: the weights for it would not fit in memory
        raise CheckpointError(f"{path}: cannot rebuild its {name} net for input_shape {info['input_shape']}: "
                              f"too large for memory (its meta is damaged?)") from None
    check_model_state(ckpt["model_state"], model.state_dict(), path)
    model.load_state_dict(ckpt["model_state"])
    fit = config.get("fit") if config.get("fit") in ("stretch", "crop", "pad") else "stretch"
    return Trained(model.eval(), name, info["input_shape"], info["classes"], info["mean"], info["std"], path, fit,
                   bool(config.get("tta", False)))


def _described(meta, config, path):
    """input_shape, classes, mean, std from the meta, or from the dataset for old checkpoints."""
    info = {k: meta.get(k) for k in ("input_shape", "classes", "mean", "std")}
    if any(v is None for v in info.values()):
        data = _dataset(config, path)
        defaults = {"input_shape": data.x_train.shape[1:], "classes": data.classes, "mean": data.mean, "std": data.std}
        info = {k: defaults[k] if v is None else v for k, v in info.items()}
    try:
        shape = tuple(int(v) for v in info["input_shape"])
        classes = [str(c) for c in info["classes"]]
        mean = numpy.asarray(info["mean"], dtype=numpy.float32).reshape(-1)
        std = numpy.asarray(info["std"], dtype=numpy.float32).reshape(-1)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its meta describing the inputs is malformed ({e})") from None
    if len(shape) != 3 or min(shape) < 1 or not classes or len(mean) not in (1, shape[0]) \
            or len(std) not in (1, shape[0]) or not numpy.all(std > 0):
        raise CheckpointError(f"{path}: its meta describing the inputs is inconsistent "
                              f"(input_shape {shape}, {len(classes)} classes, mean {mean.tolist()}, std {std.tolist()})")
    return {"input_shape": shape, "classes": classes, "mean": mean, "std": std}


def _dataset(config, path):
    from gpucnn.data import DatasetError, load

    try:
        return load(config.get("dataset"), data_dir=config.get("data_dir"))
    except DatasetError as e:
        raise CheckpointError(f"{path}: was written by an older gpucnn that did not record the input shape, "
                              f"class names and mean/std, and its dataset cannot be loaded to read them ({e}); "
                              f"retrain, or put the dataset back where it was") from None
