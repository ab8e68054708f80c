"""The layer families, one module each; every constructor returns a ``Layer``."""

from purenet.layers.activations import (
    Cos,
    HardTanh,
    Identity,
    Sigmoid,
    Softplus,
    Tanh,
    elementwise,
)
from purenet.layers.dense import Dense, LowRankDense
from purenet.layers.joins import fan_in_concat, fan_in_sum, fan_out
from purenet.layers.maxout import Maxout
from purenet.layers.rbf import RBF
from purenet.layers.rectifiers import AbsRect, LeakyReLU, PReLU, ReLU
from purenet.layers.structural import Dropout, Flatten

__all__ = [
    "RBF",
    "AbsRect",
    "Cos",
    "Dense",
    "Dropout",
    "Flatten",
    "HardTanh",
    "Identity",
    "LeakyReLU",
    "LowRankDense",
    "Maxout",
    "PReLU",
    "ReLU",
    "Sigmoid",
    "Softplus",
    "Tanh",
    "elementwise",
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
]
