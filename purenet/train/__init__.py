"""Training: a jit-compiled optax step, fit() with K steps fused into one dispatch, evaluation.

The package is split by concern, its imports running one way:
``base`` (the shared names) <- ``step`` (one step, K steps in one dispatch)
<- ``evaluation`` (metrics, ``evaluate``), ``resume`` (fit's checkpoint),
``callbacks`` (the epoch-end protocol, ``EarlyStopping``) <- ``keep``
(``KeepCheckpoints``), ``inputs`` (fit's argument checks), ``history`` (its entries per
epoch) <- ``loop`` (``fit``).
"""

from purenet.train.base import FitResult, NonFiniteLossError, ResumeError, StepOutput, TrainState
from purenet.train.callbacks import EarlyStopping
from purenet.train.evaluation import accuracy, binary_accuracy, evaluate
from purenet.train.inputs import _mesh_shardings as _mesh_shardings  # tests/test_mesh.py reads it here
from purenet.train.keep import KeepCheckpoints
from purenet.train.loop import fit
from purenet.train.monitor import Monitor
from purenet.train.step import _scan_steps as _scan_steps  # tests/test_mesh.py reads it here
from purenet.train.step import _step_function as _step_function  # tests/test_mesh.py reads it here
from purenet.train.step import make_train_step

__all__ = [
    "EarlyStopping",
    "FitResult",
    "KeepCheckpoints",
    "Monitor",
    "NonFiniteLossError",
    "ResumeError",
    "StepOutput",
    "TrainState",
    "accuracy",
    "binary_accuracy",
    "evaluate",
    "fit",
    "make_train_step",
]
