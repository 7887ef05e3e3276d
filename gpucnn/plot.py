"""`gpucnn plot`: loss and accuracy curves from a --metrics-out JSONL file."""
import json
import os

from gpucnn.errors import GpucnnError


def read_metrics(path):
    rows = []
    try:
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise GpucnnError(f"{path}, line {lineno}: not a JSON object ({e.msg})") from None
    except OSError as e:
        raise GpucnnError(f"cannot read metrics file {path}: {e.strerror}") from None
    need = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc"}
    for i, row in enumerate(rows, 1):
        missing = need - set(row)
        if missing:
            raise GpucnnError(f"{path}, record {i}: missing {', '.join(sorted(missing))}")
    if not rows:
        raise GpucnnError(f"{path} holds no epochs")
    return rows


def plot(metrics_path, out_path):
    rows = read_metrics(metrics_path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GpucnnError("plotting needs matplotlib: pip install 'gpucnn[plot]'") from None
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], "o-", label="train")
        ax.plot(epochs, [r[f"test_{key}"] for r in rows], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(os.path.basename(str(metrics_path)))
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
