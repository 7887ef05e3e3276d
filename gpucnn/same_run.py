"""What the ranks of a data-parallel job compare before training, so that ranks started
differently are told so, by name, instead of one of them skipping a collective the others
make (a rank that stops or saves on its own leaves the others waiting for ever).

Every flag of `gpucnn train` is compared, by its effective value (the run's configuration,
where the flag has one), unless it is listed in PER_RANK with the reason it may differ. Flags
that name files are compared by what they decide, not by their text, since paths may
differ between machines: whether a checkpoint is written, whether metrics or TensorBoard are,
whether --dataset is a file or folder (its data is compared at distributed.synchronise_start),
the position and early-stop state a run resumes at, and (`starting_weights`) a checksum of the
weights --resume or --init-from loaded. A flag a later change adds is compared until someone lists it here with a reason.
"""
import zlib

from gpucnn import distributed

# flag (argparse dest) -> why its value may differ between ranks
PER_RANK = {
    "data_dir": "where this machine keeps the dataset; the data itself (sizes, label checksums) is compared",
    "cache_dir": "where this machine keeps downloads; the data itself is compared",
    "download": "fetches files missing on this machine; the data itself is compared",
    "device": "each rank's own GPU; ranks that share one are refused (distributed.check_gpu_sharing)",
    "no_progress": "rank 0 alone draws progress bars",
    "distributed": "with several ranks the job is data-parallel either way; it only refuses a launch of one",
    "backend": "the backend in use is compared instead, at launch (a rank's auto may find no GPU)",
    "tensorboard_every": "rank 0 alone writes TensorBoard; the other ranks read nothing back for it",
    "workers": "processes decoding images on this machine; the decoded pixels are the same",
    "no_cache": "decodes into memory instead of the cache; the decoded pixels are the same",
    "command": "always train here",
    "func": "argparse's handler",
}
# flags compared through what they decide (see `facts`)
DECIDED = ("save", "no_save", "metrics_out", "resume", "init_from", "tensorboard")


def _flag(key):
    return "--" + key.replace("_", "-")


def facts(args, config, start, monitor=None):
    """What this rank will do, to compare with the other ranks' before any work; `monitor`:
    the early-stop state the resumed checkpoint saved (a rank may stop on it before training)."""
    mine = {_flag(k): v for k, v in sorted(config.items()) if k not in PER_RANK}
    if "dataset" in config:
        mine["--dataset"] = dataset_fact(config["dataset"])
    for key, value in sorted(vars(args).items()):
        if key not in config and key not in PER_RANK and key not in DECIDED:
            mine[_flag(key)] = value
    mine["whether a checkpoint is written (--save, --no-save)"] = not args.no_save
    mine["whether metrics are written (--metrics-out)"] = args.metrics_out is not None
    mine["whether TensorBoard is written (--tensorboard)"] = args.tensorboard is not None
    mine["where the run starts (--resume: epoch, step)"] = None if start is None else (start["epoch"], start["step"])
    mine["whether the weights come from a file (--init-from)"] = args.init_from is not None
    mine["the early-stop state saved in the checkpoint (--resume: best val_acc, epochs waited, stopped)"] = monitor
    return mine


def dataset_fact(dataset):
    """--dataset as compared: a built-in's name, else whether it is a file or a folder (its
    path may differ between machines; its data is compared at distributed.synchronise_start)."""
    from gpucnn.data import NAMES

    if not isinstance(dataset, str) or dataset.lower() in NAMES:
        return dataset
    return "a .npz file" if dataset.lower().endswith(".npz") else "a folder"


def agree_on_flags(comm, args, config, start, monitor=None):
    """RanksDisagree on every rank unless every rank was started with the same run."""
    distributed.agree(comm, facts(args, config, start, monitor))


def starting_weights(model, loaded):
    """A checksum of the weights a run starts from when `loaded` (from --resume or --init-from:
    the same file on every rank must give the same), else None (built from the compared seed)."""
    if not loaded:
        return None
    crc = 0
    for key, value in model.state_dict().items():
        crc = zlib.crc32(key.encode(), crc)
        crc = zlib.crc32(value.tobytes(), crc)
    return crc
