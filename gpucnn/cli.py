"""The command line: gpucnn train | eval | predict | export | check | plot (also `python -m gpucnn ...`).

Arguments are parsed before gpucnn.backend is imported, so --backend and --tf32 take
effect at start-up, the one moment the backend is chosen.
"""
import argparse
import os
import sys

# One table of training defaults: the parser's help shows them, a resumed run starts from them.
TRAIN_DEFAULTS = {
    "model": "small", "dataset": "digits", "data_dir": None, "epochs": None, "batch_size": 64,
    "optimizer": "adam", "lr": 2e-3, "momentum": 0.9, "nesterov": False, "weight_decay": None,
    "schedule": "cosine", "warmup_steps": 0, "step_size": 10, "gamma": 0.1, "min_lr": 0.0,
    "seed": 0, "augment": None,
    "label_smoothing": 0.0, "peak_fraction": 0.25, "tta": False, "ema": None,  # the residual-net recipe (#12)
}
# Flags a resumed run may change; every other one is taken from the checkpoint.
RESUMABLE = {"epochs", "data_dir"}


def _train_parser(sub):
    d = TRAIN_DEFAULTS
    p = sub.add_parser("train", help="train a model", description="Train a CNN; Ctrl-C or SIGTERM saves a checkpoint and stops (exit 130 or 143).")
    p.add_argument("--model", choices=["small", "lenet", "vgg_bn", "resnet20", "resnet56", "resnet9"],
                   help=f"network (default: {d['model']})")
    p.add_argument("--dataset", help=f"digits | mnist | fashion-mnist | cifar10 | PATH.npz (default: {d['dataset']}, built in)")
    p.add_argument("--data-dir", help="directory holding the dataset's files (default: the download cache)")
    p.add_argument("--download", action="store_true",
                   help="fetch missing mnist/fashion-mnist/cifar10 files into --data-dir (or the cache) and verify their checksums")
    p.add_argument("--cache-dir", help="download cache (default: ~/.cache/gpucnn)")
    p.add_argument("--epochs", type=int, help="number of epochs (default: 30 for digits, 10 otherwise)")
    p.add_argument("--batch-size", type=int, help=f"batch size of the whole job: under mpirun each rank takes its share, "
                   f"so any number of ranks trains the same run (default: {d['batch_size']})")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help=f"optimiser (default: {d['optimizer']})")
    p.add_argument("--lr", type=float, help=f"base learning rate (default: {d['lr']})")
    p.add_argument("--momentum", type=float, help=f"SGD momentum (default: {d['momentum']})")
    p.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum for SGD (default: off)")
    p.add_argument("--weight-decay", type=float, help="L2 (sgd, adam) or decoupled (adamw) weight decay (default: 0 for sgd and adam, 0.01 for adamw)")
    p.add_argument("--schedule", choices=list(SCHEDULE_HELP), help="learning-rate schedule: " + "; ".join(
        f"{k}: {v}" for k, v in SCHEDULE_HELP.items()) + f" (default: {d['schedule']})")
    p.add_argument("--warmup-steps", type=int, help=f"linear warm-up steps before the schedule (default: {d['warmup_steps']})")
    p.add_argument("--step-size", type=int, help=f"epochs between decays for --schedule step (default: {d['step_size']})")
    p.add_argument("--gamma", type=float, help=f"decay factor for --schedule step (default: {d['gamma']})")
    p.add_argument("--min-lr", type=float, help=f"final learning rate for --schedule cosine and onecycle (default: {d['min_lr']})")
    p.add_argument("--peak-fraction", type=float, metavar="F",
                   help=f"fraction of the run over which --schedule onecycle rises to --lr (default: {d['peak_fraction']})")
    p.add_argument("--label-smoothing", type=float, metavar="EPS",
                   help="mix each one-hot target with the uniform distribution, PyTorch's label_smoothing (default: 0)")
    p.add_argument("--tta", action="store_true", default=None,
                   help="evaluate on each test image and its horizontal flip, logits averaged (default: off)")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="keep an exponential moving average of the weights (e.g. 0.999), updated every step, "
                        "evaluated each epoch and saved in the checkpoint (default: off)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (pad 4) and flip on the device (default: on for cifar10 only)")
    p.add_argument("--seed", type=int, help=f"seed of weights, shuffling and augmentation (default: {d['seed']})")
    _backend_flags(p)
    p.add_argument("--graph", action=argparse.BooleanOptionalAction, default=os.environ.get("GPUCNN_GRAPH", "1") != "0",
                   help="capture each training step in a CUDA graph on the cupy backend (default: on; env GPUCNN_GRAPH=0 turns it off)")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop after epoch N, checkpointed, though the schedule spans --epochs; continue with --resume (default: run to --epochs)")
    p.add_argument("--save",
                   help="checkpoint written after every epoch and on Ctrl-C or SIGTERM; may only replace a gpucnn checkpoint, "
                        "its directory is created if missing (default: runs/last.ckpt; with --resume, the checkpoint resumed)")
    p.add_argument("--no-save", action="store_true", help="write no checkpoint")
    p.add_argument("--resume", metavar="CKPT", help="continue the run saved in CKPT (its configuration is used; --epochs may extend it)")
    p.add_argument("--init-from", metavar="FILE",
                   help="start from the weights in FILE: .safetensors or a PyTorch state_dict (.pt/.pth); keys and shapes must match exactly")
    p.add_argument("--metrics-out", metavar="FILE.jsonl",
                   help="append one strict-JSON object per epoch; FILE must be new, empty, or have every line such an "
                        "object (with epoch, train_loss, train_acc, test_loss, test_acc); its directory is created "
                        "if missing (default: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (summary lines only)")
    _distributed_flags(p)
    p.set_defaults(func=cmd_train)


def _distributed_flags(p):
    g = p.add_argument_group("many processes (mpirun -n N gpucnn train ..., srun ...)")
    g.add_argument("--distributed", action="store_true",
                   help="require a data-parallel launch: an error unless started by an MPI launcher with more than one "
                        "rank (without it, such a launch is detected by itself)")
    g.add_argument("--sync-bn", action="store_true",
                   help="BatchNorm statistics over the global batch, summed over ranks in forward and backward "
                        "(default: per rank, as PyTorch DDP)")
    g.add_argument("--device", type=int, metavar="N",
                   help="CUDA device of this process (default: the node-local rank modulo the visible devices)")


# --schedule's choices and help, one line each (gpucnn.optim.schedules has the formulas).
SCHEDULE_HELP = {
    "constant": "the base lr throughout",
    "step": "lr times --gamma every --step-size epochs",
    "cosine": "half a cosine down to --min-lr",
    "onecycle": "linear up to --lr over --peak-fraction of the run, then linear down to --min-lr",
}


def _backend_flags(p):
    p.add_argument("--backend", choices=["auto", "numpy", "cupy"],
                   help="array backend (default: $GPUCNN_BACKEND, else auto: cupy when a CUDA device works)")
    p.add_argument("--tf32", action="store_true", default=os.environ.get("CUPY_TF32") == "1",
                   help="TF32 tensor-core GEMMs on the GPU (default: off; env CUPY_TF32=1 turns it on)")


def build_parser():
    parser = argparse.ArgumentParser(prog="gpucnn", description="Train and inspect CNNs on CuPy (CUDA) or NumPy.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,predict,export,check,plot}")
    _train_parser(sub)

    p = sub.add_parser("eval", help="test loss, accuracy and per-class accuracy of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint file written by gpucnn train")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the checkpoint's)")
    p.add_argument("--data-dir", help="directory holding the dataset's files (default: the checkpoint's)")
    p.add_argument("--cache-dir", help="download cache (default: ~/.cache/gpucnn)")
    p.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size (default: 1000)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average each image's logits with its horizontal flip's (default: as the run was trained)")
    p.add_argument("--ema", action="store_true", help="evaluate the checkpoint's moving average of the weights (train --ema)")
    _backend_flags(p)
    p.set_defaults(func=cmd_eval)
    _predict_parser(sub)
    _export_parser(sub)

    p = sub.add_parser("check", help="gradient-check every layer on the live backend (float64)")
    _backend_flags(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("plot", help="draw loss and accuracy curves from a --metrics-out file")
    p.add_argument("metrics", help="JSONL file written by gpucnn train --metrics-out")
    p.add_argument("-o", "--output", default="curves.png",
                   help="image to write, format from the suffix (.png .pdf .svg .eps .ps .jpg .tif .webp; none: .png is "
                        "added); replaces only an image of that format; its directory is created if missing "
                        "(default: curves.png)")
    p.set_defaults(func=cmd_plot)
    return parser


def _predict_parser(sub):
    p = sub.add_parser("predict", help="class probabilities of a checkpoint for image files",
                       description="Classify image files (PNG, JPEG, BMP, ... via Pillow: pip install 'gpucnn[image]'). "
                                   "Each image becomes what the net was trained on: grey or RGB, resized to the training "
                                   "images' size (--fit), pixels scaled to 0..1 and normalised with the checkpoint's mean/std. "
                                   "MNIST-style nets expect white digits on a black background; use --invert for "
                                   "black-on-white scans. One line per image (path: class (probability)  top-k), or --json.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file written by gpucnn train")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders (searched recursively for images)")
    p.add_argument("--top-k", type=int, default=3, help="how many classes to list per image (default: 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of a line of text")
    p.add_argument("--invert", action="store_true", help="invert the pixels (v -> 1 - v): black-on-white images for a white-on-black net")
    p.add_argument("--fit", choices=["stretch", "crop", "pad"], default="stretch",
                   help="how an image is brought to the net's size: stretch (resize the whole image), crop (centre crop "
                        "to the net's aspect ratio, then resize) or pad (fit inside, borders of background colour) "
                        "(default: stretch; bilinear resampling, antialiased)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _backend_flags(p)
    p.set_defaults(func=cmd_predict)


def _export_parser(sub):
    p = sub.add_parser("export", help="write a checkpoint's net as ONNX or safetensors",
                       description="Export the eval-mode net of a checkpoint. FILE.onnx: a standard ONNX graph "
                                   "(pip install 'gpucnn[onnx]'); FILE.safetensors: the state_dict under PyTorch's keys "
                                   "with the model's name, input shape, classes and mean/std in its metadata "
                                   "(pip install 'gpucnn[safetensors]').")
    p.add_argument("--checkpoint", required=True, help="checkpoint file written by gpucnn train")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="FILE.onnx or FILE.safetensors")
    p.add_argument("--softmax", action="store_true", help="ONNX: end the graph with a Softmax (output 'probabilities' instead of 'logits')")
    p.add_argument("--fold-bn", action="store_true", help="ONNX: fold each BatchNorm into the convolution before it (default: BatchNormalization nodes)")
    _backend_flags(p)
    p.set_defaults(func=cmd_export)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "backend", None):
        os.environ["GPUCNN_BACKEND"] = args.backend
    if getattr(args, "tf32", False):
        os.environ["CUPY_TF32"] = "1"  # read by CuPy when it loads, which is after this
    from gpucnn.errors import GpucnnError
    from gpucnn.host_memory import keep_freed_memory
    from gpucnn.stdout import BROKEN_PIPE_EXIT, StdoutClosed, guarded_stdout

    keep_freed_memory()
    try:
        with guarded_stdout(keep_going=args.func is cmd_train):  # a run's product is its checkpoint
            return args.func(args) or 0
    except StdoutClosed:  # `gpucnn predict ... | head -1`: the reader has all it wanted
        return BROKEN_PIPE_EXIT
    except GpucnnError as e:
        print(f"gpucnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them
        return 128 + int(getattr(e, "signum", 2))


def _config(args):
    """The run's configuration: defaults, then the checkpoint's (on --resume), then flags."""
    from gpucnn import validate
    from gpucnn.checkpoint import load_checkpoint
    from gpucnn.errors import GpucnnError

    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    if _is_path(given.get("dataset")):  # saved absolute, so a resume or eval from elsewhere finds it
        given["dataset"] = os.path.abspath(given["dataset"])
    config, start, ckpt = dict(TRAIN_DEFAULTS), None, None
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        validate.check_saved_run(ckpt, args.resume, for_resume=True)
        saved = ckpt["meta"]["config"]
        for key, value in given.items():
            if key == "dataset" and _is_path(saved[key]) and _same_or_moved(saved[key], value):
                continue  # the same file by another path, or a file moved since (its shape is checked later)
            if key not in RESUMABLE and key in saved and saved[key] != value:
                raise GpucnnError(f"{args.resume} was trained with --{key.replace('_', '-')} {saved[key]}, not {value}; "
                                  f"drop the flag or start a new run")
        config.update(saved)
        start = {k: ckpt["meta"][k] for k in ("epoch", "step", "loss_sum", "correct", "seen", "seconds")}
    config.update(given)
    if config["epochs"] is None:
        config["epochs"] = 30 if config["dataset"] == "digits" else 10
    if config["augment"] is None:
        config["augment"] = config["dataset"] == "cifar10"
    return config, start, ckpt


def _is_path(dataset):
    return isinstance(dataset, str) and (dataset.lower().endswith(".npz") or os.sep in dataset)


def _same_or_moved(saved, given):
    if not os.path.exists(saved):
        return True
    return os.path.exists(given) and os.path.samefile(saved, given)


def cmd_train(args):
    from gpucnn import distributed

    # Before the backend starts: on a GPU, each rank creates its context on its own device.
    comm = distributed.launch(required=args.distributed, device=args.device)
    if comm.rank:
        sys.stdout = open(os.devnull, "w")  # one rank speaks; every rank's errors still reach stderr
    with comm.guard():
        return _train(args, comm)


def _train(args, comm):
    from gpucnn import backend, distributed, init, models, validate
    from gpucnn.checkpoint import CheckpointError, check_model_state
    from gpucnn.data import load
    from gpucnn.errors import GpucnnError
    from gpucnn.optim import make_optimizer, make_schedule
    from gpucnn.recipe import Recipe
    from gpucnn.train import TrainingStopped, fit

    if args.init_from and args.resume:
        raise GpucnnError("--init-from starts a new run; --resume continues one: give one of them")
    config, start, ckpt = _config(args)
    config["graph"] = bool(args.graph)
    config["sync_bn"] = bool(args.sync_bn or config.get("sync_bn"))  # a resumed run keeps it
    validate.check_train_settings(config, args.stop_after)
    save, metrics_out = validate.check_train_outputs(args, config)
    weights = None
    if args.init_from:
        from gpucnn.init_from import read_weights

        weights = read_weights(args.init_from)  # a missing or damaged file is told before the data loads
    done = validate.finished(start, config, args.stop_after, args.resume)
    if done:
        print(done)
        return 0
    data = load(config["dataset"], data_dir=config["data_dir"], download=args.download, cache_dir=args.cache_dir)
    validate.check_splits(data)
    if ckpt is not None:
        validate.check_data_fits(data, ckpt, args.resume)
    init.seed(config["seed"])
    try:  # a bad hyper-parameter is the user's to fix: its message, not a traceback
        model = models.build(config["model"], data.x_train.shape[1:], len(data.classes))
        steps_per_epoch = -(-len(data.y_train) // config["batch_size"])
        optimizer = make_optimizer(config["optimizer"], model.parameters(), lr=config["lr"], momentum=config["momentum"],
                                   nesterov=config["nesterov"], weight_decay=config["weight_decay"])
        schedule = make_schedule(config["schedule"], config["lr"], total_steps=config["epochs"] * steps_per_epoch,
                                 warmup_steps=config["warmup_steps"], step_size=config["step_size"] * steps_per_epoch,
                                 gamma=config["gamma"], min_lr=config["min_lr"], peak_fraction=config["peak_fraction"])
        recipe = Recipe(model, config)  # label smoothing and --ema, checked before the first step
    except ValueError as e:
        raise GpucnnError(str(e)) from None
    if args.init_from:
        from gpucnn.init_from import init_from

        print(f"initialised from {args.init_from} ({init_from(model, args.init_from, weights)} arrays)")
    if ckpt is not None:
        validate.check_resume_position(start, steps_per_epoch, args.resume)
        check_model_state(ckpt["model_state"], model.state_dict(), args.resume)
        try:
            model.load_state_dict(ckpt["model_state"])
            optimizer.load_state_dict(ckpt["optim_state"])
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:  # a damaged state has any shape
            raise CheckpointError(f"{args.resume}: its weights or optimiser state do not fit this run: {e}") from None
        if recipe.ema is not None:
            recipe.load_ema(ckpt, args.resume)
        print(f"resuming {args.resume} at epoch {start['epoch'] + 1}, step {start['step']}")
    distributed.synchronise_start(comm, model, optimizer, config, data)
    if recipe.ema is not None and ckpt is None:  # the average starts from the weights the run starts from
        recipe.ema.load_state_dict(model.state_dict())
    if config["sync_bn"]:
        distributed.use_sync_bn(model, comm)
    print(f"gpucnn: {config['model']} ({model.num_parameters():,} parameters) on {data.name} "
          f"({len(data.y_train):,} train / {len(data.y_test):,} test, {'x'.join(map(str, data.x_train.shape[1:]))}), "
          f"backend {backend.name()}" + (", CUDA graphs" if backend.name() == "cupy" and config["graph"] else "")
          + (f", {comm.size} ranks (global batch {config['batch_size']})" if comm.size > 1 else ""))
    if metrics_out and ckpt is None and comm.rank == 0:
        from gpucnn import metrics

        metrics.start(metrics_out)  # a new run's metrics replace an earlier run's; a resume appends
    try:
        fit(model, optimizer, schedule, data, config, start=start, save_path=save,
            metrics_path=metrics_out, progress=not args.no_progress and comm.rank == 0,
            stop_after=args.stop_after, comm=comm, ema=recipe.ema)
    except TrainingStopped as e:
        print(f"gpucnn: {e}", file=sys.stderr)
        return 1
    if save:
        print(f"checkpoint: {save}")
    return 0


def cmd_eval(args):
    from gpucnn import models, validate
    from gpucnn.checkpoint import CheckpointError, check_model_state, load_checkpoint
    from gpucnn.data import load
    from gpucnn.errors import GpucnnError
    from gpucnn.train import evaluate

    validate.check_eval_settings(args)
    ckpt = load_checkpoint(args.checkpoint)
    validate.check_saved_run(ckpt, args.checkpoint, for_resume=False)
    config = ckpt["meta"]["config"]
    name = args.dataset or config["dataset"]
    data = load(name, data_dir=args.data_dir or (config.get("data_dir") if name == config["dataset"] else None),
                cache_dir=args.cache_dir)
    validate.check_splits(data, ("test",))
    classes = validate.check_data_fits(data, ckpt, args.checkpoint)
    try:
        model = models.build(config["model"], data.x_test.shape[1:], classes)
    except ValueError as e:
        raise GpucnnError(f"{args.checkpoint}: {e}") from None
    try:
        check_model_state(ckpt["model_state"], model.state_dict(), args.checkpoint)
    except CheckpointError as e:
        raise validate.model_mismatch(e, data, args.checkpoint) from None
    try:
        model.load_state_dict(ckpt["model_state"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{args.checkpoint}: its weights cannot be loaded: {e}") from None
    if args.ema:
        from gpucnn.recipe import load_ema_weights

        load_ema_weights(model, ckpt, args.checkpoint)
    import numpy

    mean = numpy.asarray(ckpt["meta"].get("mean", data.mean), dtype=numpy.float32)
    std = numpy.asarray(ckpt["meta"].get("std", data.std), dtype=numpy.float32)
    tta = config.get("tta", False) if args.tta is None else args.tta
    loss, acc, per_class = evaluate(model, data.x_test, data.y_test, mean, std,
                                    batch_size=args.batch_size, classes=classes, tta=tta)
    names = list(data.classes) + [str(i) for i in range(len(data.classes), classes)]
    how = ", ".join(w for w, on in (("moving-average weights", args.ema), ("flip TTA", tta)) if on)
    print(f"{args.checkpoint} on {data.name} test set ({len(data.y_test):,} images{'; ' + how if how else ''}): "
          f"loss {loss:.4f}, accuracy {acc:.4f}")
    print(f"{'class':<16} {'accuracy':>8}")
    for label, a in zip(names, per_class):
        print(f"{str(label):<16} {a:>8.4f}")
    return 0


def cmd_predict(args):
    from gpucnn.predict import run

    return run(args)


def cmd_export(args):
    from gpucnn.export import run

    return run(args)


def cmd_check(args):
    from gpucnn.check import run

    return 0 if run() else 1


def cmd_plot(args):
    from gpucnn.plot import plot

    print(f"wrote {plot(args.metrics, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
