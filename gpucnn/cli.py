"""The command line: gpucnn train | eval | check | plot (also `python -m gpucnn ...`).

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
    p = sub.add_parser("train", help="train a model", description="Train a CNN; Ctrl-C saves a checkpoint and stops.")
    p.add_argument("--model", choices=["small", "lenet", "vgg_bn", "resnet20", "resnet56", "resnet9"],
                   help=f"network (default: {d['model']})")
    p.add_argument("--dataset", help=f"digits | mnist | fashion-mnist | cifar10 | PATH.npz (default: {d['dataset']}, built in)")
    p.add_argument("--data-dir", help="directory holding the dataset's files (default: the download cache)")
    p.add_argument("--download", action="store_true",
                   help="fetch missing mnist/fashion-mnist/cifar10 files into --data-dir (or the cache) and verify their checksums")
    p.add_argument("--cache-dir", help="download cache (default: ~/.cache/gpucnn)")
    p.add_argument("--epochs", type=int, help="number of epochs (default: 30 for digits, 10 otherwise)")
    p.add_argument("--batch-size", type=int, help=f"batch size (default: {d['batch_size']})")
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
    p.add_argument("--save", default="runs/last.ckpt", help="checkpoint written after every epoch and on Ctrl-C (default: runs/last.ckpt)")
    p.add_argument("--no-save", action="store_true", help="write no checkpoint")
    p.add_argument("--resume", metavar="CKPT", help="continue the run saved in CKPT (its configuration is used; --epochs may extend it)")
    p.add_argument("--metrics-out", metavar="FILE.jsonl", help="append one JSON object per epoch (default: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (summary lines only)")
    p.set_defaults(func=cmd_train)


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
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,check,plot}")
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

    p = sub.add_parser("check", help="gradient-check every layer on the live backend (float64)")
    _backend_flags(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("plot", help="draw loss and accuracy curves from a --metrics-out file")
    p.add_argument("metrics", help="JSONL file written by gpucnn train --metrics-out")
    p.add_argument("-o", "--output", default="curves.png", help="image to write (default: curves.png)")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "backend", None):
        os.environ["GPUCNN_BACKEND"] = args.backend
    if getattr(args, "tf32", False):
        os.environ["CUPY_TF32"] = "1"  # read by CuPy when it loads, which is after this
    from gpucnn.errors import GpucnnError
    from gpucnn.host_memory import keep_freed_memory

    keep_freed_memory()
    try:
        return args.func(args) or 0
    except GpucnnError as e:
        print(f"gpucnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _config(args):
    """The run's configuration: defaults, then the checkpoint's (on --resume), then flags."""
    from gpucnn.checkpoint import load_checkpoint
    from gpucnn.errors import GpucnnError

    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    config, start, ckpt = dict(TRAIN_DEFAULTS), None, None
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        saved = ckpt["meta"]["config"]
        for key, value in given.items():
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


def cmd_train(args):
    from gpucnn import backend, init, models
    from gpucnn.checkpoint import CheckpointError, check_model_state
    from gpucnn.data import load
    from gpucnn.errors import GpucnnError
    from gpucnn.optim import make_optimizer, make_schedule
    from gpucnn.recipe import Recipe
    from gpucnn.train import TrainingStopped, fit

    config, start, ckpt = _config(args)
    config["graph"] = bool(args.graph)
    for flag in ("epochs", "batch_size"):
        if config[flag] < 1:
            raise GpucnnError(f"--{flag.replace('_', '-')} must be at least 1, got {config[flag]}")
    if args.stop_after is not None and args.stop_after < 1:
        raise GpucnnError(f"--stop-after must be at least 1, got {args.stop_after}")
    data = load(config["dataset"], data_dir=config["data_dir"], download=args.download, cache_dir=args.cache_dir)
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
    if ckpt is not None:
        check_model_state(ckpt["model_state"], model.state_dict(), args.resume)
        model.load_state_dict(ckpt["model_state"])
        try:
            optimizer.load_state_dict(ckpt["optim_state"])
        except ValueError as e:
            raise CheckpointError(f"{args.resume}: optimiser state does not fit this run: {e}") from None
        if recipe.ema is not None:
            recipe.load_ema(ckpt, args.resume)
        print(f"resuming {args.resume} at epoch {start['epoch'] + 1}, step {start['step']}")
    save = None if args.no_save else args.save
    if save:
        os.makedirs(os.path.dirname(os.path.abspath(save)), exist_ok=True)
    print(f"gpucnn: {config['model']} ({model.num_parameters():,} parameters) on {data.name} "
          f"({len(data.y_train):,} train / {len(data.y_test):,} test, {'x'.join(map(str, data.x_train.shape[1:]))}), "
          f"backend {backend.name()}" + (", CUDA graphs" if backend.name() == "cupy" and config["graph"] else ""))
    try:
        fit(model, optimizer, schedule, data, config, start=start, save_path=save,
            metrics_path=args.metrics_out, progress=not args.no_progress, stop_after=args.stop_after, ema=recipe.ema)
    except TrainingStopped as e:
        print(f"gpucnn: {e}", file=sys.stderr)
        return 1
    if save:
        print(f"checkpoint: {save}")
    return 0


def cmd_eval(args):
    from gpucnn import models
    from gpucnn.checkpoint import check_model_state, load_checkpoint
    from gpucnn.data import load
    from gpucnn.train import evaluate

    ckpt = load_checkpoint(args.checkpoint)
    config = ckpt["meta"]["config"]
    name = args.dataset or config["dataset"]
    data = load(name, data_dir=args.data_dir or (config["data_dir"] if name == config["dataset"] else None),
                cache_dir=args.cache_dir)
    model = models.build(config["model"], data.x_test.shape[1:], len(data.classes))
    check_model_state(ckpt["model_state"], model.state_dict(), args.checkpoint)
    model.load_state_dict(ckpt["model_state"])
    if args.ema:
        from gpucnn.recipe import load_ema_weights

        load_ema_weights(model, ckpt, args.checkpoint)
    import numpy

    mean = numpy.asarray(ckpt["meta"].get("mean", data.mean), dtype=numpy.float32)
    std = numpy.asarray(ckpt["meta"].get("std", data.std), dtype=numpy.float32)
    loss, acc, per_class = evaluate(model, data.x_test, data.y_test, mean, std,
                                    batch_size=args.batch_size, classes=len(data.classes),
                                    tta=config.get("tta", False) if args.tta is None else args.tta)
    print(f"{args.checkpoint} on {data.name} test set ({len(data.y_test):,} images): loss {loss:.4f}, accuracy {acc:.4f}")
    print(f"{'class':<16} {'accuracy':>8}")
    for label, a in zip(data.classes, per_class):
        print(f"{str(label):<16} {a:>8.4f}")
    return 0


def cmd_check(args):
    from gpucnn.check import run

    return 0 if run() else 1


def cmd_plot(args):
    from gpucnn.plot import plot

    print(f"wrote {plot(args.metrics, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
