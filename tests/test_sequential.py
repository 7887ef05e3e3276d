"""Sequential: order, modes, parameters and strict state_dict loading."""
import numpy
import pytest

from gpucnn import Sequential, models
from gpucnn.layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from gpucnn.sequential import run_order


def net():
    return Sequential(Conv2d(1, 2, 3), BatchNorm2d(2), ReLU(), Flatten(), Linear(2 * 4 * 4, 3))


def test_state_dict_round_trip_is_in_place():
    a, b = net(), net()
    b.layers[0].params["weight"][...] = 0
    target = b.layers[0].params["weight"]
    b.load_state_dict(a.state_dict())
    assert b.layers[0].params["weight"] is target  # optimisers and CUDA graphs hold this array
    for k, v in a.state_dict().items():
        numpy.testing.assert_array_equal(b.state_dict()[k], v)
    assert list(a.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                    "1.running_var", "1.num_batches_tracked", "4.weight", "4.bias"]


def test_load_rejects_missing_unexpected_and_misshapen_keys():
    state = net().state_dict()
    missing = dict(state)
    del missing["4.bias"]
    with pytest.raises(ValueError, match=r"missing: \['4.bias'\]"):
        net().load_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected: \['9.weight'\]"):
        net().load_state_dict({**state, "9.weight": numpy.zeros(1)})
    with pytest.raises(ValueError, match=r"4.weight has shape \(3, 5\).*expects \(3, 32\)"):
        net().load_state_dict({**state, "4.weight": numpy.zeros((3, 5))})


def test_train_eval_reach_every_layer():
    model = net().eval()
    assert not model.training and not any(layer.training for layer in model.layers)
    model.train()
    assert all(layer.training for layer in model.layers)


def test_backward_runs_in_reverse_and_can_skip_the_input_gradient():
    model = net()
    x = numpy.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(numpy.float32)
    y = model.forward(x)
    dx = model.backward(numpy.ones_like(y))
    assert dx.shape == x.shape
    model.forward(x)
    assert model.backward(numpy.ones_like(y), input_grad=False) is None
    assert model.layers[0].grads["weight"].shape == (2, 1, 3, 3)
    assert [p.key for p in model.parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]


def test_not_a_layer_is_named():
    with pytest.raises(ValueError, match="item 1"):
        Sequential(ReLU(), "relu")


def test_run_order_puts_maxpool_before_the_relu_just_ahead_of_it():
    assert run_order(models.lenet().layers) == [0, 2, 1, 3, 5, 4, 6, 7, 8, 9, 10, 11]
    assert run_order(models.vgg_bn().layers)[:8] == [0, 1, 2, 3, 4, 6, 5, 7]
    assert run_order([ReLU(), ReLU(), MaxPool2d(2), MaxPool2d(2)]) == [0, 2, 1, 3]
    assert run_order(net().layers) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("first_conv", [True, False])
def test_swapped_relu_and_maxpool_give_bit_identical_results(first_conv):
    """Against the same layers run one by one in the written order. Small integers make
    ties, zeros and all-negative windows common, where the two orders could differ."""
    rng = numpy.random.default_rng(1)
    head = [Conv2d(1, 3, 3, padding=1)] if first_conv else []
    model = Sequential(*head, ReLU(), MaxPool2d(2), Flatten(), Linear(3 * 3 * 3 if first_conv else 9, 4))
    for layer in model.layers:
        for name, p in layer.params.items():
            p[...] = rng.integers(-1, 2, p.shape)  # exact integer sums: ties survive the conv
    x = rng.integers(-2, 3, (5, 1, 6, 6)).astype(numpy.float32)
    dy = rng.standard_normal((5, 4)).astype(numpy.float32)
    pre = model.layers[0].forward(x) if first_conv else x  # what the ReLU gets
    windows = pre.reshape(5, -1, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4)
    top = windows.max(axis=1)
    assert (top <= 0).any() and ((windows == top[:, None]).sum(axis=1)[top > 0] > 1).any()

    y = model.forward(x)
    dx = model.backward(dy)
    grads = [dict(layer.grads) for layer in model.layers]

    h = x
    for layer in model.layers:  # the written order, layer by layer
        h = layer.forward(h)
    d = dy
    for layer in reversed(model.layers):
        d = layer.backward(d)
    numpy.testing.assert_array_equal(y, h)
    numpy.testing.assert_array_equal(dx, d)
    for before, layer in zip(grads, model.layers):
        for name in before:
            numpy.testing.assert_array_equal(before[name], layer.grads[name])


def test_swapped_relu_and_maxpool_agree_bit_for_bit_with_nans():
    """relu(NaN) is NaN and MaxPool2d sends a NaN window's dy to its last NaN, so the run
    order changes nothing with NaNs either: the same NaNs out, the same dx."""
    rng = numpy.random.default_rng(2)
    x = rng.integers(-2, 3, (3, 2, 6, 6)).astype(numpy.float32)
    x[rng.random(x.shape) < 0.2] = numpy.nan
    model = Sequential(ReLU(), MaxPool2d(2))
    assert run_order(model.layers) == [1, 0]
    y = model.forward(x)
    dy = rng.standard_normal(y.shape).astype(numpy.float32)
    dx = model.backward(dy)
    relu, pool = ReLU(), MaxPool2d(2)
    h = pool.forward(relu.forward(x))
    d = relu.backward(pool.backward(dy))
    assert numpy.isnan(y).any() and not numpy.isnan(y).all()
    numpy.testing.assert_array_equal(y, h)
    numpy.testing.assert_array_equal(dx, d)
