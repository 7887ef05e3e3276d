"""Every layer: one concept a file, each a forward/backward pair."""
from gpucnn.layers.avgpool import AvgPool2d, GlobalAvgPool2d
from gpucnn.layers.base import Layer
from gpucnn.layers.batchnorm import BatchNorm2d
from gpucnn.layers.conv import Conv2d
from gpucnn.layers.dropout import Dropout
from gpucnn.layers.flatten import Flatten
from gpucnn.layers.linear import Linear
from gpucnn.layers.loss import SoftmaxCrossEntropy
from gpucnn.layers.maxpool import MaxPool2d
from gpucnn.layers.relu import ReLU
from gpucnn.layers.residual import Residual
from gpucnn.layers.scale import Scale
from gpucnn.layers.softmax import Softmax

__all__ = [
    "Layer",
    "Conv2d",
    "Linear",
    "MaxPool2d",
    "BatchNorm2d",
    "ReLU",
    "Flatten",
    "Softmax",
    "SoftmaxCrossEntropy",
    "Residual",
    "AvgPool2d",
    "GlobalAvgPool2d",
    "Dropout",
    "Scale",
]
