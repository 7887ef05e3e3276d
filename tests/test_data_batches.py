"""Mini-batches: determinism from (seed, epoch), normalisation, drop_last, augmentation."""
import numpy
import pytest

from gpucnn import backend
from gpucnn.data import crop_flip, epoch_plan, iterate, num_batches
from gpucnn.data.batches import PAD


def _host(batches):
    return [(backend.to_numpy(x), backend.to_numpy(y)) for x, y in batches]


def _images(n=10, c=3, h=6, w=5, seed=0):
    return numpy.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=numpy.uint8)


def _run(x, y=None, bs=4, **kw):
    y = numpy.arange(len(x)) if y is None else y
    args = dict(shuffle=True, seed=7, epoch=0, mean=0.0, std=1.0)
    args.update(kw)
    return _host(iterate(x, y, bs, **args))


def test_num_batches():
    assert num_batches(10, 4) == 3 and num_batches(10, 4, drop_last=True) == 2
    assert num_batches(8, 4) == 2 == num_batches(8, 4, drop_last=True)
    assert num_batches(3, 4, drop_last=True) == 0
    with pytest.raises(ValueError):
        num_batches(10, 0)


def test_batches_live_on_backend_with_dtypes():
    x = _images()
    for xb, yb in iterate(x, numpy.arange(10), 4, shuffle=True, seed=0, epoch=0, mean=0.5, std=0.25):
        assert isinstance(xb, backend.xp.ndarray) and isinstance(yb, backend.xp.ndarray)
        assert xb.dtype == numpy.float32 and yb.dtype == numpy.int64


def test_same_seed_and_epoch_same_batches_other_epoch_other_order():
    x = _images()
    a, b = _run(x, epoch=3), _run(x, epoch=3)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        numpy.testing.assert_array_equal(xa, xb)
        numpy.testing.assert_array_equal(ya, yb)
    order3 = numpy.concatenate([y for _, y in a])
    order4 = numpy.concatenate([y for _, y in _run(x, epoch=4)])
    other_seed = numpy.concatenate([y for _, y in _run(x, epoch=3, seed=8)])
    assert sorted(order3) == sorted(order4) == list(range(10))  # each sample once per epoch
    assert not numpy.array_equal(order3, order4)
    assert not numpy.array_equal(order3, other_seed)


def test_no_shuffle_keeps_order():
    order = numpy.concatenate([y for _, y in _run(_images(), shuffle=False)])
    numpy.testing.assert_array_equal(order, numpy.arange(10))


def test_images_follow_their_labels():
    x = _images()
    for xb, yb in _run(x, std=1 / 255):  # mean 0, std 1/255: xb is the raw pixel value
        numpy.testing.assert_array_equal(xb, x[yb])


def test_skip_resumes_the_same_sequence():
    x = _images(n=11)
    full = _run(x, bs=3, epoch=2, augment=True)
    resumed = _run(x, bs=3, epoch=2, augment=True, skip=2)
    assert len(resumed) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], resumed, strict=True):
        numpy.testing.assert_array_equal(xa, xb)
        numpy.testing.assert_array_equal(ya, yb)


def test_drop_last():
    x = _images()
    assert [len(y) for _, y in _run(x)] == [4, 4, 2]
    assert [len(y) for _, y in _run(x, drop_last=True)] == [4, 4]


def test_normalisation_uint8_per_channel():
    x = _images()
    mean = numpy.array([0.4, 0.5, 0.6], numpy.float32)
    std = numpy.array([0.2, 0.25, 0.3], numpy.float32)
    for xb, yb in _run(x, mean=mean, std=std):
        expected = (x[yb] / 255.0 - mean[:, None, None]) / std[:, None, None]
        numpy.testing.assert_allclose(xb, expected, rtol=1e-5, atol=1e-5)


def test_normalisation_float_images_not_divided_by_255():
    x = numpy.random.default_rng(1).random((6, 1, 4, 4)).astype(numpy.float32)
    for xb, yb in _run(x, mean=0.3, std=0.5):
        numpy.testing.assert_allclose(xb, (x[yb] - 0.3) / 0.5, rtol=1e-5, atol=1e-6)


def test_label_count_mismatch():
    with pytest.raises(ValueError, match="10 samples but y has 9"):
        next(iterate(_images(), numpy.arange(9), 4, shuffle=False, seed=0, epoch=0, mean=0, std=1))


# ---------------------------------------------------------------- augmentation

def _reference(x, shifts, flips, pad=PAD):
    """Naive per-image pad, crop, flip."""
    out = []
    h, w = x.shape[2:]
    for img, (dy, dx), flip in zip(x, shifts, flips):
        p = numpy.pad(img, ((0, 0), (pad, pad), (pad, pad)))
        crop = p[:, dy:dy + h, dx:dx + w]
        out.append(crop[:, :, ::-1] if flip else crop)
    return numpy.stack(out)


def _crop_flip(x, shifts, flips):
    return backend.to_numpy(crop_flip(backend.to_device(x), backend.to_device(numpy.asarray(shifts)),
                                      backend.to_device(numpy.asarray(flips))))


def test_crop_flip_moves_pixels_as_expected():
    x = _images(n=3, h=8, w=8)
    centre = [[PAD, PAD]] * 3
    numpy.testing.assert_array_equal(_crop_flip(x, centre, [False] * 3), x)            # no-op
    numpy.testing.assert_array_equal(_crop_flip(x, centre, [True] * 3), x[..., ::-1])  # mirror
    # Window at the padded image's top-left: the image moves down-right by PAD,
    # zeros fill the top rows and left columns.
    out = _crop_flip(x, [[0, 0]] * 3, [False] * 3)
    numpy.testing.assert_array_equal(out[:, :, PAD:, PAD:], x[:, :, :-PAD, :-PAD])
    assert not out[:, :, :PAD].any() and not out[:, :, :, :PAD].any()
    # One pixel right: column j shows the image's column j+1, the last column is padding.
    out = _crop_flip(x, [[PAD, PAD + 1]] * 3, [False] * 3)
    numpy.testing.assert_array_equal(out[..., :-1], x[..., 1:])
    assert not out[..., -1].any()


def test_crop_flip_matches_naive_reference():
    x = _images(n=40, h=7, w=9)
    rng = numpy.random.default_rng(5)
    shifts = rng.integers(0, 2 * PAD + 1, size=(40, 2))
    flips = rng.random(40) < 0.5
    numpy.testing.assert_array_equal(_crop_flip(x, shifts, flips), _reference(x, shifts, flips))


def test_iterate_augment_follows_the_epoch_plan():
    x = _images(n=13, h=8, w=8)
    batches = _run(x, bs=5, epoch=1, augment=True, std=1 / 255)
    plan = epoch_plan(13, shuffle=True, seed=7, epoch=1, augment=True)
    got = numpy.concatenate([b for b, _ in batches])
    assert got.shape == (13, 3, 8, 8)
    numpy.testing.assert_array_equal(got, _reference(x[plan.order], plan.shifts, plan.flips))
    assert plan.flips.any() and not plan.flips.all()
    assert len(numpy.unique(plan.shifts)) > 3
    # Padding is black pixels: after normalisation it is (0 - mean) / std.
    norm = _run(x, bs=13, epoch=1, augment=True, mean=0.5, std=0.25)[0][0]
    padded_top = numpy.flatnonzero(plan.shifts[:, 0] < PAD)  # window starts above the image
    assert padded_top.size
    numpy.testing.assert_allclose(norm[padded_top, :, 0], -2.0)


def test_augmentation_draws_do_not_depend_on_shuffle():
    a = epoch_plan(20, shuffle=True, seed=1, epoch=0, augment=True)
    b = epoch_plan(20, shuffle=False, seed=1, epoch=0, augment=True)
    numpy.testing.assert_array_equal(a.shifts, b.shifts)
    numpy.testing.assert_array_equal(a.flips, b.flips)


@pytest.mark.gpu
def test_numpy_and_cupy_give_the_same_batches():
    x = _images(n=33, h=32, w=32)
    kw = dict(bs=8, epoch=5, augment=True, mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26])
    previous = backend.name()
    try:
        backend.select("numpy")
        on_host = _run(x, **kw)
        backend.select("cupy")
        on_device = _run(x, **kw)
    finally:
        backend.select(previous)
    assert len(on_host) == num_batches(33, 8) == 5, len(on_host)
    same_batches(on_host, on_device)


def same_batches(a, b):
    """Batch for batch: labels equal, images to float32 rounding; a batch missing on one side fails."""
    assert len(a) == len(b), (len(a), len(b))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        numpy.testing.assert_array_equal(ya, yb)
        numpy.testing.assert_allclose(xa, xb, rtol=1e-6, atol=1e-6)


def test_the_batch_comparison_sees_a_missing_or_changed_batch():
    """What the GPU test above relies on, shown where it runs: on the host."""
    a = _run(_images(n=33, h=8, w=8), bs=8, epoch=5, augment=True)
    same_batches(a, a)
    with pytest.raises(AssertionError):
        same_batches(a, a[:-1])
    with pytest.raises(AssertionError):
        same_batches(a[:-1], a)
    with pytest.raises(AssertionError):
        same_batches(a, [a[0], (a[1][0] + 1e-3, a[1][1]), *a[2:]])
