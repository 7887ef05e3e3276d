"""The command line: gpucnn train | eval | predict | export | check | plot | data | summary | profile | lr-find
(also `python -m gpucnn ...`).

Arguments are parsed before gpucnn.backend is imported, so --backend and --tf32 take
effect at start-up, the one moment the backend is chosen.
"""
import argparse
import errno
import os
import sys

from gpucnn.install_hint import install_hint

# One table of training defaults: the parser's help shows them, a resumed run starts from them.
TRAIN_DEFAULTS = {
    "model": "small", "dataset": "digits", "data_dir": None, "epochs": None, "batch_size": 64,
    "optimizer": "adam", "lr": 2e-3, "momentum": 0.9, "nesterov": False, "weight_decay": None,
    "schedule": "cosine", "warmup_steps": 0, "step_size": 10, "gamma": 0.1, "min_lr": 0.0,
    "seed": 0, "augment": None, "dtype": "float32",
    "label_smoothing": 0.0, "peak_fraction": 0.25, "tta": False, "ema": None,  # the residual-net recipe (#12)
    "image_size": None, "channels": None, "fit": None,  # folders of images (#17): what changes pixels
    "val_split": None, "save_best": False, "early_stop": None, "augmentation": "crop-flip",  # trainflow (#17)
}
# gpucnn.models.MODELS and gpucnn.optim.OPTIMIZERS, named without importing them (see the module docstring)
MODEL_CHOICES = ["small", "lenet", "vgg_bn", "resnet20", "resnet56", "resnet9"]
OPTIMIZER_CHOICES = ["sgd", "adam", "adamw"]
# Flags a resumed run may change; every other one is taken from the checkpoint.
RESUMABLE = {"epochs", "data_dir"}


def _train_parser(sub):
    d = TRAIN_DEFAULTS
    p = sub.add_parser("train", help="train a model", description="Train a CNN; Ctrl-C or SIGTERM saves a checkpoint and stops (exit 130 or 143).")
    _data_flags(p)
    _folder_flags(p)
    p.add_argument("--epochs", type=int, help="number of epochs (default: 30 for digits, 10 otherwise)")
    _step_flags(p)
    p.add_argument("--lr", type=float, help=f"base learning rate (default: {d['lr']})")
    p.add_argument("--schedule", choices=list(SCHEDULE_HELP), help="learning-rate schedule: " + "; ".join(
        f"{k}: {v}" for k, v in SCHEDULE_HELP.items()) + f" (default: {d['schedule']})")
    p.add_argument("--warmup-steps", type=int, help=f"linear warm-up steps before the schedule (default: {d['warmup_steps']})")
    p.add_argument("--step-size", type=int, help=f"epochs between decays for --schedule step (default: {d['step_size']})")
    p.add_argument("--gamma", type=float, help=f"decay factor for --schedule step (default: {d['gamma']})")
    p.add_argument("--min-lr", type=float, help=f"final learning rate for --schedule cosine and onecycle (default: {d['min_lr']})")
    p.add_argument("--peak-fraction", type=float, metavar="F",
                   help=f"fraction of the run over which --schedule onecycle rises to --lr (default: {d['peak_fraction']})")
    p.add_argument("--tta", action="store_true", default=None,
                   help="evaluate on each test image and its horizontal flip, logits averaged (default: off)")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="keep an exponential moving average of the weights (e.g. 0.999), updated every step, "
                        "evaluated each epoch and saved in the checkpoint (default: off)")
    _sample_flags(p)
    _trainflow_flags(p)
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
                   help="write one strict-JSON object per epoch: a new run starts FILE afresh, --resume appends to "
                        "it; FILE must be new, empty, or have every line such an object (with epoch, train_loss, "
                        "train_acc, test_loss, test_acc); its directory is created if missing (default: none)")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="write TensorBoard scalars (per epoch, and loss and lr every --tensorboard-every steps) and the "
                        "configuration as hparams into DIR (created if missing; a new run needs one without event "
                        "files, a --resume goes on in the same DIR); needs " + install_hint("tensorboard") + " (default: none)")
    p.add_argument("--tensorboard-every", type=int, metavar="N",
                   help="steps between the per-step TensorBoard scalars; each reads the loss back from the device (default: 50)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (summary lines only)")
    _distributed_flags(p)
    p.set_defaults(func=cmd_train)


# Flags gpucnn train shares with lr-find: what the net, the data and a step are.
def _data_flags(p):
    d = TRAIN_DEFAULTS
    p.add_argument("--model", choices=MODEL_CHOICES,
                   help=f"network (default: {d['model']})")
    p.add_argument("--dataset", help=f"digits | mnist | fashion-mnist | cifar10 | PATH.npz | PATH a folder of images "
                   f"(PATH/train/<class>/... with PATH/test/ or PATH/val/, or PATH/<class>/...) (default: {d['dataset']}, built in)")
    p.add_argument("--data-dir", help="directory holding the dataset's files (default: the download cache)")
    p.add_argument("--download", action="store_true",
                   help="fetch missing mnist/fashion-mnist/cifar10 files into --data-dir (or the cache) and verify their checksums")
    p.add_argument("--cache-dir", help="download cache, and decoded image folders in its folders/ (default: ~/.cache/gpucnn)")


def _step_flags(p):
    d = TRAIN_DEFAULTS
    p.add_argument("--batch-size", type=int, help=f"batch size of the whole job: under mpirun each rank takes its share, "
                   f"so any number of ranks trains the same run (default: {d['batch_size']})")
    p.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, help=f"optimiser (default: {d['optimizer']})")
    p.add_argument("--momentum", type=float, help=f"SGD momentum (default: {d['momentum']})")
    p.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum for SGD (default: off)")
    p.add_argument("--weight-decay", type=float, help="L2 (sgd, adam) or decoupled (adamw) weight decay (default: 0 for sgd and adam, 0.01 for adamw)")
    p.add_argument("--label-smoothing", type=float, metavar="EPS",
                   help="mix each one-hot target with the uniform distribution, PyTorch's label_smoothing (default: 0)")


def _sample_flags(p):
    d = TRAIN_DEFAULTS
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="augment the training images on the device, as --augmentation says (default: on for cifar10, "
                        "or when --augmentation is given; off otherwise, folders of images included: for photos, "
                        "--augmentation rrc-flip is the usual choice)")
    p.add_argument("--seed", type=int, help=f"seed of weights, shuffling and augmentation (default: {d['seed']})")
    p.add_argument("--dtype", choices=["float32", "float64"],
                   help=f"float type of weights, activations and gradients; float64 is for checking results, and "
                        f"slower (default: {d['dtype']})")


def _folder_flags(p, training=True):
    g = p.add_argument_group("folders of images (--dataset PATH; " + install_hint("image") + ")")
    if training:
        g.add_argument("--image-size", metavar="H[xW]", help="size images are brought to (default: the one size all images "
                       "have; an error listing the sizes when they differ)")
        g.add_argument("--channels", type=int, choices=[1, 3], help="1 (grey) or 3 (RGB) (default: as the images are; "
                       "an error when grey and colour images are mixed)")
        g.add_argument("--fit", choices=["stretch", "crop", "pad"], help="how an image is brought to --image-size, the rule "
                       "gpucnn predict --fit applies (default: stretch)")
        g.add_argument("--strict-images", action="store_true", help="any file that does not decode is an error before "
                       "training (default: named on stderr and skipped)")
    g.add_argument("--workers", type=int, metavar="N", help="processes decoding images (default: the number of cores; "
                   "under mpirun, train divides them among the ranks on the node)")
    g.add_argument("--no-cache", action="store_true", help="decode into memory, not into the decoded cache "
                   "(default: decoded once into <cache-dir>/folders, read memory-mapped afterwards)")


def _folder_options(args, config=None, ranks_here=1):
    """load()'s folder_options: the pixel settings from the run's config, the rest from flags.
    Decoding workers default to the cores shared among the ranks on this node."""
    from gpucnn.data.cache import default_workers
    from gpucnn.errors import GpucnnError

    if getattr(args, "workers", None) is not None and args.workers < 1:
        raise GpucnnError(f"--workers must be >= 1, got {args.workers}")
    config = config or {}
    return {"image_size": config.get("image_size"), "channels": config.get("channels"),
            "fit": config.get("fit"), "strict_images": getattr(args, "strict_images", False),
            "workers": args.workers or max(1, default_workers() // ranks_here), "no_cache": args.no_cache,
            "progress": not getattr(args, "no_progress", False)}


# --augmentation's choices and help (gpucnn.data.augment.KINDS names them; a test keeps the two equal).
AUGMENTATION_HELP = {
    "crop-flip": "pad 4 with zeros, random crop back to size, random horizontal flip (CIFAR's)",
    "rrc-flip": "random-resized-crop (torchvision's RandomResizedCrop: 8-100%% of the area, aspect 3/4-4/3, "
                "bilinear, back to size) and random horizontal flip",
}


def _augmentation_flag(p):
    p.add_argument("--augmentation", choices=list(AUGMENTATION_HELP), help="which augmentation --augment applies: "
                   + "; ".join(f"{k}: {v}" for k, v in AUGMENTATION_HELP.items())
                   + " (default: crop-flip; naming one turns --augment on)")


def _trainflow_flags(p):
    _augmentation_flag(p)
    p.add_argument("--val-split", type=float, metavar="FRACTION",
                   help="hold out this stratified part of the training images (drawn from --seed): each epoch reports "
                        "val_loss and val_acc, the test split is scored once, after the last epoch; required for a "
                        "dataset without a test split, whose held-out part is then its test split (default: none)")
    p.add_argument("--save-best", action="store_true", default=None,
                   help="also keep the checkpoint of the epoch with the best val_acc, beside --save's, "
                        "named as it with .best before its suffix (runs/last.ckpt -> runs/last.best.ckpt, run.pt -> "
                        "run.best.pt) (needs --val-split; default: off)")
    p.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=True,
                   help="gather (and on cupy, send on a second stream) the next batch while the current step runs; "
                        "the batches are the same either way (default: on)")
    p.add_argument("--early-stop", type=int, metavar="N",
                   help="stop after N epochs without a higher val_acc (needs --val-split; default: off)")


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
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{train,eval,predict,export,check,plot,data,summary,profile,lr-find}")
    _train_parser(sub)

    p = sub.add_parser("eval", help="test loss, accuracy and per-class metrics of a checkpoint; its confusion matrix and mistakes drawn")
    p.add_argument("--checkpoint", required=True, help="checkpoint file written by gpucnn train")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the checkpoint's)")
    p.add_argument("--data-dir", help="directory holding the dataset's files (default: the checkpoint's)")
    p.add_argument("--cache-dir", help="download cache, and decoded image folders in its folders/ (default: ~/.cache/gpucnn)")
    _folder_flags(p, training=False)
    p.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size (default: 1000)")
    _tta_flag(p)
    p.add_argument("--ema", action="store_true", help="evaluate the checkpoint's moving average of the weights (train --ema)")
    _eval_view_flags(p)
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
                        "added); replaces only a figure gpucnn wrote, never a picture of yours; its directory is created if missing "
                        "(default: curves.png)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("data", help="scan a folder of images and summarise it, without training",
                       description="List a folder dataset as gpucnn train --dataset PATH would: classes with their "
                                   "image counts per split, the sizes and modes found, bad files (path and reason) "
                                   "and ignored ones. Decodes every file to find bad ones (JPEGs at 1/8 scale); writes nothing.")
    p.add_argument("path", metavar="PATH", help="PATH/train/<class>/... (with PATH/test/ or PATH/val/) or PATH/<class>/...")
    p.add_argument("--workers", type=int, metavar="N", help="processes reading headers (default: the number of cores)")
    p.set_defaults(func=cmd_data)
    _summary_parser(sub)
    _profile_parser(sub)
    _lr_find_parser(sub)
    return parser


def _net_flags(p):
    """The net summary and profile look at: --model with its input, as train would build it."""
    p.add_argument("--model", choices=MODEL_CHOICES,
                   help=f"network (default: {TRAIN_DEFAULTS['model']})")
    p.add_argument("--input-shape", metavar="C,H,W",
                   help="image shape the net is built for (default: the model's own: 1,8,8 small, 1,28,28 lenet, 3,32,32 the others)")
    p.add_argument("--classes", type=int, metavar="K", help="number of classes (default: 10)")
    p.add_argument("--batch-size", type=int, help=f"batch size of the training step (default: {TRAIN_DEFAULTS['batch_size']})")
    p.add_argument("--optimizer", choices=OPTIMIZER_CHOICES,
                   help=f"optimiser whose state is counted (default: {TRAIN_DEFAULTS['optimizer']})")
    _backend_flags(p)


def _summary_parser(sub):
    p = sub.add_parser("summary", help="layers, output shapes, parameters, multiply-adds and memory of a net",
                       description="One row per layer (named by its state_dict prefix) with its type, output shape, "
                                   "parameters and forward multiply-adds per image; then the totals, the memory of the "
                                   "weights and optimiser state, and the activation memory one training step keeps at "
                                   "the batch size, measured on the live backend.")
    _net_flags(p)
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="describe the net of a gpucnn checkpoint (its model, input shape, classes, batch size and optimiser)")
    p.set_defaults(func=cmd_summary)


def _profile_parser(sub):
    p = sub.add_parser("profile", help="time each layer's forward and backward in a training step",
                       description="Run training steps on random data and time every layer's forward and backward "
                                   "(CUDA events on cupy, so device time; perf_counter on numpy), with its share of the "
                                   "step and achieved GFLOP/s, beside the time of the same step without the clocks.")
    _net_flags(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps, after 2 warm-up steps (default: 20)")
    p.set_defaults(func=cmd_profile, checkpoint=None)


def _lr_find_parser(sub):
    p = sub.add_parser("lr-find", help="learning-rate range test: suggest a learning rate and plot loss against it",
                       description="Train the run's fresh net (same model, data and optimiser flags as train) while "
                                   "the learning rate grows exponentially from --start-lr to --end-lr, stop when the "
                                   "smoothed loss exceeds 4x its minimum, print a suggested rate and draw loss against "
                                   f"rate ({install_hint('plot')}). Writes no checkpoint.")
    _data_flags(p)
    _folder_flags(p)
    _step_flags(p)
    _sample_flags(p)
    _augmentation_flag(p)
    p.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate (default: 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last learning rate (default: 10)")
    p.add_argument("--steps", type=int, default=100, help="steps of the sweep (default: 100)")
    p.add_argument("-o", "--output", default="lr_find.png",
                   help="image to write, as gpucnn plot -o: format from the suffix, replaces only an image of that "
                        "format (default: lr_find.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _backend_flags(p)
    p.set_defaults(func=cmd_lr_find)


def _eval_view_flags(p):
    image = ("; format from the suffix as for plot -o, replaces only a figure gpucnn wrote (needs matplotlib: "
             + install_hint("plot") + ")")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document: accuracy, loss, per-class precision, recall, F1 and support, and the "
                        "confusion matrix (rows: true class)")
    p.add_argument("--confusion-matrix", metavar="FILE.png", help="draw the confusion matrix, counts and row-normalised" + image)
    p.add_argument("--mistakes", metavar="FILE.png",
                   help="draw the most confidently wrong test images with true and predicted class" + image)
    p.add_argument("--mistakes-count", type=int, default=25, metavar="N", help="images in the --mistakes grid (default: 25)")


def _tta_flag(p):
    """eval's and predict's --tta/--no-tta: None unless given, so each follows the run's own --tta."""
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average each image's logits with its horizontal flip's (default: as the run was trained)")


def _predict_parser(sub):
    p = sub.add_parser("predict", help="class probabilities of a checkpoint for image files",
                       description=f"Classify image files (PNG, JPEG, BMP, ... via Pillow: {install_hint('image')}). "
                                   "Each image becomes what the net was trained on: grey or RGB, resized to the training "
                                   "images' size (--fit), pixels scaled to 0..1 and normalised with the checkpoint's mean/std. "
                                   "MNIST-style nets expect white digits on a black background; use --invert for "
                                   "black-on-white scans. One line per image (path: class (probability)  top-k), or --json.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file written by gpucnn train")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders (searched recursively for images)")
    p.add_argument("--top-k", type=int, default=3, help="how many classes to list per image (default: 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of a line of text")
    p.add_argument("--invert", action="store_true", help="invert the pixels (v -> 1 - v): black-on-white images for a white-on-black net")
    p.add_argument("--fit", choices=["stretch", "crop", "pad"],
                   help="how an image is brought to the net's size: stretch (resize the whole image), crop (centre crop "
                        "to the net's aspect ratio, then resize) or pad (fit inside, borders of background colour) "
                        "(default: the --fit the net was trained with on a folder of images, else stretch; bilinear "
                        "resampling, antialiased)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    _tta_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _backend_flags(p)
    p.set_defaults(func=cmd_predict)


def _export_parser(sub):
    p = sub.add_parser("export", help="write a checkpoint's net as ONNX or safetensors",
                       description="Export the eval-mode net of a checkpoint. FILE.onnx: a standard ONNX graph "
                                   f"({install_hint('onnx')}); FILE.safetensors: the state_dict under PyTorch's keys "
                                   "with the model's name, input shape, classes and mean/std in its metadata "
                                   f"({install_hint('safetensors')}).")
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
    except (MemoryError, OSError) as e:  # an array larger than the machine: said, not NumPy's traceback
        if isinstance(e, OSError) and e.errno != errno.ENOMEM:
            raise
        print(f"gpucnn: error: not enough memory ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
              f"try a smaller --batch-size, image size or model", file=sys.stderr)
        return 2


def _config(args):
    """The run's configuration: defaults, then the checkpoint's (on --resume), then flags."""
    from gpucnn import validate
    from gpucnn.checkpoint import load_checkpoint
    from gpucnn.data.datasets import is_folder
    from gpucnn.errors import GpucnnError

    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k, None) is not None}
    if given.get("image_size") is not None:  # one spelling, "HxW", in the config
        from gpucnn.data.folder import parse_size

        given["image_size"] = "x".join(map(str, parse_size(given["image_size"])))
    if _is_path(given.get("dataset")):  # saved absolute, so a resume or eval from elsewhere finds it
        given["dataset"] = os.path.abspath(given["dataset"])
    config, start, ckpt = dict(TRAIN_DEFAULTS), None, None
    if getattr(args, "resume", None):  # lr-find has no --resume
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
        if saved.get("fit") == "stretch" and not is_folder(saved["dataset"]):
            config["fit"] = None  # saved by a gpucnn that took --fit for any dataset: it meant nothing
        start = {k: ckpt["meta"][k] for k in ("epoch", "step", "loss_sum", "correct", "seen", "seconds")}
    config.update(given)
    if config["epochs"] is None:
        config["epochs"] = 30 if config["dataset"] == "digits" else 10
    if config["augment"] is None:
        config["augment"] = "augmentation" in given or config["dataset"] == "cifar10"
    return config, start, ckpt


def _is_path(dataset):
    from gpucnn.data import NAMES

    return isinstance(dataset, str) and (dataset.lower().endswith(".npz") or os.sep in dataset
                                         or (dataset.lower() not in NAMES and os.path.isdir(dataset)))


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
    from gpucnn import backend, distributed, init, models, same_run, validate
    from gpucnn.checkpoint import CheckpointError, check_model_state
    from gpucnn.data import load
    from gpucnn.errors import GpucnnError
    from gpucnn.optim import make_optimizer, make_schedule
    from gpucnn.recipe import Recipe
    from gpucnn.train import TrainingStopped, fit
    from gpucnn import best
    from gpucnn.data import split

    if args.init_from and args.resume:
        raise GpucnnError("--init-from starts a new run; --resume continues one: give one of them")
    config, start, ckpt = _config(args)
    config["graph"] = bool(args.graph)
    config["prefetch"] = bool(args.prefetch)  # changes no result: a resumed run may differ
    config["sync_bn"] = bool(args.sync_bn or config.get("sync_bn"))  # a resumed run keeps it
    validate.check_train_settings(config, args.stop_after)
    same_run.agree_on_flags(comm, args, config, start,  # before any rank writes, returns or skips a step
                            monitor=ckpt["meta"].get("monitor") if ckpt is not None else None)
    save, metrics_out = validate.check_train_outputs(args, config)
    best_path = best.check_outputs(config, save, args)
    if args.tensorboard_every is not None and not args.tensorboard:
        raise GpucnnError("--tensorboard-every applies only with --tensorboard DIR")
    args.tensorboard_every = 50 if args.tensorboard_every is None else args.tensorboard_every
    if args.tensorboard and comm.rank == 0:  # last of the checks that create a directory; rank 0 alone writes it
        from gpucnn.tensorboard_log import check_directory

        args.tensorboard = check_directory(args.tensorboard, args.tensorboard_every, resumed=ckpt is not None)
    weights = None
    if args.init_from:
        from gpucnn.init_from import read_weights

        weights = read_weights(args.init_from)  # a missing or damaged file is told before the data loads
    done = validate.finished(start, config, args.stop_after, args.resume) or best.stopped_early(ckpt, args.resume, config)
    if done:
        print(done)
        return 0
    data = load(config["dataset"], data_dir=config["data_dir"], download=args.download, cache_dir=args.cache_dir,
                folder_options=_folder_options(args, config, comm.local_size))
    config.update(data.pixels or {})  # a folder's size and channels as found, so eval and predict see the same
    validate.check_splits(data, ("train",))
    data = split.prepare(data, config["val_split"], config["seed"])  # a dataset without a test split needs one
    validate.check_splits(data)
    if ckpt is not None:
        validate.check_data_fits(data, ckpt, args.resume)
        validate.check_same_data(data, ckpt, args.resume)
    init.seed(config["seed"])
    try:  # a bad hyper-parameter is the user's to fix: its message, not a traceback
        model = models.build(config["model"], data.x_train.shape[1:], len(data.classes), dtype=config["dtype"])
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
    distributed.synchronise_start(comm, model, optimizer, config, data,
                                  same_run.starting_weights(model, args.init_from or ckpt is not None))
    if recipe.ema is not None and ckpt is None:  # the average starts from the weights the run starts from
        recipe.ema.load_state_dict(model.state_dict())
    if config["sync_bn"]:
        distributed.use_sync_bn(model, comm)
    from gpucnn.summary import total_multiply_adds

    macs = total_multiply_adds(model, data.x_train.shape[1:])
    print(f"gpucnn: {config['model']} ({model.num_parameters():,} parameters, {macs:,} multiply-adds an image) on {data.name} "
          f"({split.sizes(data)}, {'x'.join(map(str, data.x_train.shape[1:]))}), "
          f"backend {backend.name()}" + (", CUDA graphs" if backend.name() == "cupy" and config["graph"] else "")
          + (f", {comm.size} ranks (global batch {config['batch_size']})" if comm.size > 1 else ""))
    from gpucnn.sinks import open_sinks

    # A new run's metrics replace an earlier run's; a resume appends. Rank 0 alone holds sinks.
    sinks = open_sinks(rank=comm.rank, metrics_path=metrics_out, tensorboard_dir=args.tensorboard,
                       every=args.tensorboard_every, config=config, new_run=ckpt is None,
                       first_step=start["epoch"] * steps_per_epoch + start["step"] if start else 0)
    try:
        fit(model, optimizer, schedule, data, config, start=start, save_path=save,
            sinks=sinks, progress=not args.no_progress and comm.rank == 0,
            stop_after=args.stop_after, comm=comm, ema=recipe.ema,
            monitor=best.from_checkpoint(ckpt, config, args.resume) if config["val_split"] else None, best_path=best_path)
    except TrainingStopped as e:
        print(f"gpucnn: {e}", file=sys.stderr)
        return 1
    if save:
        print(f"checkpoint: {save}")
    return 0


def cmd_eval(args):
    from gpucnn import eval_report, models, validate
    from gpucnn.checkpoint import CheckpointError, check_model_state, load_checkpoint
    from gpucnn.data import load
    from gpucnn.errors import GpucnnError
    from gpucnn.evaluation import predict
    from gpucnn.data import split

    validate.check_eval_settings(args)
    images = eval_report.check_outputs(args, args.dataset if _is_path(args.dataset) else None)
    ckpt = load_checkpoint(args.checkpoint)
    validate.check_saved_run(ckpt, args.checkpoint, for_resume=False)
    config = ckpt["meta"]["config"]
    name = args.dataset or config["dataset"]
    data = load(name, data_dir=args.data_dir or (config.get("data_dir") if name == config["dataset"] else None),
                cache_dir=args.cache_dir, folder_options=_folder_options(args, _eval_pixels(name, ckpt["meta"])))
    data, scored = split.for_eval(data, config)
    validate.check_splits(data, ("test",))
    classes = validate.check_data_fits(data, ckpt, args.checkpoint)
    try:
        model = models.build(config["model"], data.x_test.shape[1:], classes, dtype=config.get("dtype"))
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
    predictions = predict(model, data.x_test, data.y_test, mean, std, batch_size=args.batch_size, classes=classes, tta=tta)
    names = list(data.classes) + [str(i) for i in range(len(data.classes), classes)]
    how = ", ".join(w for w, on in (("moving-average weights", args.ema), ("flip TTA", tta)) if on)
    eval_report.show(args, predictions, names, data.x_test, images,
                     header=f"{args.checkpoint} on {data.name} {scored} ({len(data.y_test):,} images{'; ' + how if how else ''})",
                     about={"checkpoint": args.checkpoint, "dataset": data.name, "ema": bool(args.ema), "tta": bool(tta)})
    return 0


def _eval_pixels(name, meta):
    """The pixel settings eval reads dataset `name` with: none unless it is a folder of images;
    for a folder, the run's own, else (a run on a built-in set or .npz) the net's input shape,
    the size predict resizes images to."""
    from gpucnn.data.datasets import is_folder

    config = meta["config"]
    if not is_folder(name):
        return {}
    if "input_shape" in meta:
        channels, height, width = meta["input_shape"]
        config = {**config, "image_size": config.get("image_size") or f"{height}x{width}",
                  "channels": config.get("channels") or channels}
    return config


def cmd_predict(args):
    from gpucnn.predict import run

    return run(args)


def cmd_data(args):
    from gpucnn.data import cache, folder

    scan = folder.scan(args.path)
    with cache.worker_map(args.workers or cache.default_workers()) as pool_map:
        folder.read_headers(scan, pool_map, decode=True)
    print("\n".join(folder.summary(scan)))
    return 0


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


def cmd_summary(args):
    from gpucnn.summary import run

    return run(args)


def cmd_profile(args):
    from gpucnn.profile import run

    return run(args)


def cmd_lr_find(args):
    from gpucnn.lr_find import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
