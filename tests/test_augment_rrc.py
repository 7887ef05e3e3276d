"""Random-resized-crop: torchvision's box rule, PyTorch's bilinear resize, the CUDA kernel on a
GPU (on the host: tests/test_kernels_on_host.py), and the (seed, epoch) draws that keep a resumed
run bit-exact."""
import math

import numpy
import pytest

from gpucnn.data import augment
from gpucnn.data.augment import RATIO, SCALE, TRIES, rrc_boxes, rrc_numpy
from gpucnn.data.batches import epoch_plan


class Recorded:
    """A Generator stand-in that records the arrays it hands out, so a scalar reference
    can replay the same draws through torchvision's loop."""

    def __init__(self, seed):
        self.rng, self.draws = numpy.random.default_rng(seed), []

    def uniform(self, low, high, size):
        self.draws.append(self.rng.uniform(low, high, size))
        return self.draws[-1]

    def random(self, size):
        self.draws.append(self.rng.random(size))
        return self.draws[-1]


def torchvision_get_params(height, width, areas, log_ratios, place):
    """torchvision.transforms.RandomResizedCrop.get_params, written out (v0.19), with its
    torch draws replaced by the given numbers: area fractions and log aspect ratios per try,
    place (2,) in [0, 1) for the offsets."""
    area = height * width
    for target_fraction, log_ratio in zip(areas, log_ratios):
        target_area = area * target_fraction
        aspect_ratio = math.exp(log_ratio)
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            # torch.randint(0, height - h + 1) from a uniform draw
            i = int(place[0] * (height - h + 1))
            j = int(place[1] * (width - w + 1))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(RATIO):
        w = width
        h = int(round(w / min(RATIO)))
    elif in_ratio > max(RATIO):
        h = height
        w = int(round(h * max(RATIO)))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("height,width", [(32, 32), (28, 28), (5, 40), (40, 5), (3, 3), (1, 7)])
def test_boxes_follow_torchvisions_rule(height, width):
    rec = Recorded(11)
    boxes = rrc_boxes(rec, 400, height, width)
    fractions, log_ratios, place = rec.draws
    assert fractions.shape == log_ratios.shape == (400, TRIES) and place.shape == (400, 2)
    for k in range(400):
        want = torchvision_get_params(height, width, fractions[k], log_ratios[k], place[k])
        assert tuple(boxes[k]) == want, (k, boxes[k], want)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()


def test_box_areas_and_aspects_cover_the_ranges():
    boxes = rrc_boxes(numpy.random.default_rng(0), 20000, 224, 224)
    area = boxes[:, 2] * boxes[:, 3] / 224**2
    aspect = boxes[:, 3] / boxes[:, 2]
    assert SCALE[0] - 0.01 < area.min() < 0.1 and area.max() > 0.97
    assert RATIO[0] - 0.02 < aspect.min() < 0.77 and 1.3 < aspect.max() < RATIO[1] + 0.02
    # torchvision's draws are uniform in area fraction (before the rejections at large areas)
    assert abs(numpy.median(area) - 0.5) < 0.05


def reference_resize(x, box, flip):
    """Crop then torch.nn.functional.interpolate(bilinear, align_corners=False) in float64:
    what torchvision's resized_crop does to a float tensor."""
    torch = pytest.importorskip("torch")
    top, left, h, w = box
    crop = torch.from_numpy(x[:, top:top + h, left:left + w].astype(numpy.float64))[None]
    out = torch.nn.functional.interpolate(crop, size=x.shape[1:], mode="bilinear", align_corners=False)[0].numpy()
    return out[..., ::-1] if flip else out


def test_resize_matches_pytorchs_bilinear(rng):
    x = rng.random((40, 3, 13, 17)).astype(numpy.float32)
    boxes = rrc_boxes(rng, 40, 13, 17)
    boxes[:3] = [[0, 0, 13, 17], [2, 3, 1, 1], [0, 5, 13, 2]]  # whole, one pixel, a strip
    flips = rng.random(40) < 0.5
    out = rrc_numpy(x, boxes, flips)
    assert out.dtype == numpy.float32 and out.shape == x.shape
    for k in range(40):
        numpy.testing.assert_allclose(out[k], reference_resize(x[k].astype(numpy.float64), boxes[k], flips[k]),
                                      rtol=0, atol=2e-6)
    numpy.testing.assert_array_equal(out[0], x[0][..., ::-1] if flips[0] else x[0])  # the whole image: unchanged


def test_resize_matches_pillows_bilinear(rng):
    """An independent resampler: Pillow's float ('F') images, cropped then resized (a resize
    from a box would read past the box's edges, which torchvision's crop-then-resize does not)."""
    Image = pytest.importorskip("PIL.Image")
    x = rng.random((1, 1, 20, 24)).astype(numpy.float32)
    box = numpy.array([[3, 5, 9, 14]])
    out = rrc_numpy(x, box, [False])[0, 0]
    img = Image.fromarray(x[0, 0], mode="F")
    want = numpy.asarray(img.crop((5, 3, 5 + 14, 3 + 9)).resize((24, 20), Image.BILINEAR))
    numpy.testing.assert_allclose(out, want, rtol=0, atol=1e-5)


def test_plan_draws_depend_on_seed_and_epoch_alone():
    a = epoch_plan(50, shuffle=True, seed=4, epoch=3, augment="rrc-flip", image_size=(28, 28))
    b = epoch_plan(50, shuffle=False, seed=4, epoch=3, augment="rrc-flip", image_size=(28, 28))
    c = epoch_plan(50, shuffle=True, seed=4, epoch=4, augment="rrc-flip", image_size=(28, 28))
    numpy.testing.assert_array_equal(a.boxes, b.boxes)
    numpy.testing.assert_array_equal(a.flips, b.flips)
    assert not numpy.array_equal(a.boxes, c.boxes) and a.shifts is None
    old = epoch_plan(50, shuffle=True, seed=4, epoch=3, augment=True)
    new = epoch_plan(50, shuffle=True, seed=4, epoch=3, augment="crop-flip")
    numpy.testing.assert_array_equal(old.shifts, new.shifts)  # --augment alone: today's draws
    assert old.boxes is None


def test_resume_with_rrc_is_bit_exact(tmp_path):
    pytest.importorskip("sklearn")
    from gpucnn import cli
    from gpucnn.checkpoint import load_checkpoint

    common = ["train", "--no-progress", "--batch-size", "128", "--augmentation", "rrc-flip", "--epochs", "2"]
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    assert cli.main([*common, "--save", str(a)]) == 0
    assert cli.main([*common, "--save", str(b), "--stop-after", "1"]) == 0
    assert load_checkpoint(b)["meta"]["config"]["augmentation"] == "rrc-flip"
    assert cli.main(["train", "--no-progress", "--resume", str(b), "--save", str(b)]) == 0
    wa, wb = load_checkpoint(a)["model_state"], load_checkpoint(b)["model_state"]
    for k in wa:
        numpy.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_help_names_the_choices(capsys):
    from gpucnn import cli

    assert tuple(cli.AUGMENTATION_HELP) == augment.KINDS
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "rrc-flip: random-resized-" in out and "RandomResizedCrop: 8-100% of the area" in out


# --- the kernel (on the host: tests/test_kernels_on_host.py) ----------------------------
@pytest.mark.gpu
def test_cupy_kernel_matches_numpy(on_cupy, rng):
    x = rng.random((16, 3, 32, 32)).astype(numpy.float32)
    boxes = rrc_boxes(rng, 16, 32, 32)
    flips = rng.random(16) < 0.5
    got = on_cupy.asnumpy(augment.random_resized_crop(on_cupy.asarray(x), boxes, flips))
    numpy.testing.assert_allclose(got, rrc_numpy(x, boxes, flips), rtol=0, atol=1e-6)


def test_an_unknown_augmentation_in_a_checkpoint_is_refused():
    from gpucnn import validate
    from gpucnn.errors import GpucnnError

    with pytest.raises(GpucnnError, match="--augmentation must be one of crop-flip, rrc-flip, got 'blur'"):
        validate.check_train_settings({"augmentation": "blur"})
