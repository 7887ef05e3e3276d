"""Sequential: order, modes, parameters and strict state_dict loading."""
import numpy
import pytest

from gpucnn import Sequential
from gpucnn.layers import BatchNorm2d, Conv2d, Flatten, Linear, ReLU


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
