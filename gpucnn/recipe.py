"""The training-recipe options of a run's configuration, checked and built before the
first step: label smoothing (for the loss) and the weight average (--ema).

The trainer gets what this builds; checkpoints keep the average in meta["ema"].
"""
from gpucnn.checkpoint import CheckpointError, check_model_state
from gpucnn.layers import SoftmaxCrossEntropy


class Recipe:
    def __init__(self, model, config):
        SoftmaxCrossEntropy(config.get("label_smoothing", 0.0))  # its range check, now rather than at step 1
        decay = config.get("ema")
        if decay is None:
            self.ema = None
        else:
            from gpucnn.ema import EMA

            self.ema = EMA(model, decay)

    def load_ema(self, ckpt, path):
        """Continue the average saved in a checkpoint (a run with --ema saves one every time)."""
        state = _ema_state(ckpt, path)
        check_model_state(state, self.ema.state_dict(), path)
        self.ema.load_state_dict(state)


def load_ema_weights(model, ckpt, path):
    """Put the checkpoint's averaged weights into `model` (gpucnn eval --ema)."""
    state = _ema_state(ckpt, path)
    check_model_state(state, model.state_dict(), path)
    model.load_state_dict(state)


def _ema_state(ckpt, path):
    state = ckpt["meta"].get("ema")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds no moving average of the weights (train with --ema DECAY to keep one)")
    return state
