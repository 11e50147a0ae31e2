"""The paper's optimizer: SGD with momentum and weight decay inside the gradient step."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import keras
import tensorflow as tf

from alexnet_tf.errors import ConfigError

# Section 5: "batch size of 128 examples, momentum of 0.9, and weight decay of 0.0005";
# "The learning rate was initialized at 0.01".
LEARNING_RATE = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The arguments of `PaperSGD`, with the paper's values (section 5) as defaults."""

    learning_rate: float = LEARNING_RATE
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY

    def __post_init__(self) -> None:
        # NaN passes every comparison's negation: each check is written so that NaN fails it.
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"--learning_rate must be a finite number > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"--weight_decay must be a finite number >= 0, got {self.weight_decay}")

    def build(self) -> "PaperSGD":
        return PaperSGD(self.learning_rate, self.momentum, self.weight_decay)


@keras.saving.register_keras_serializable(package="alexnet_tf")
class PaperSGD(keras.optimizers.SGD):
    """SGD with the update rule of section 5 of the paper, for learning rate eps:

        v <- 0.9 * v - 0.0005 * eps * w - eps * dL/dw
        w <- w + v

    That is Keras' momentum SGD applied to the gradient dL/dw + weight_decay * w: the decay is
    part of the gradient step and is carried by the momentum (L2 regularization). It is not
    Keras' `weight_decay` argument, which is decoupled (w <- w - eps * decay * w outside the
    momentum, as AdamW). The decay applies to weights (kernels), not biases, as in the paper's
    cuda-convnet, whose layers take weight decay for weights only.

    Placement: each update runs on its variable's device, and each momentum slot is created on
    its variable's device. Keras builds the optimizer inside the traced train step when no
    distribution strategy is set, and its `colocate_vars_with` is a graph colocation that
    `tf.Variable`'s init scope drops: without this, both towers' slots and update arithmetic
    land on the first device.

    Args:
        learning_rate: a float (the plateau schedule assigns to it).
        momentum: the momentum coefficient.
        weight_decay_l2: the decay coefficient inside the gradient step (0.0005 in the paper).
    """

    def __init__(
        self,
        learning_rate: float = LEARNING_RATE,
        momentum: float = MOMENTUM,
        weight_decay_l2: float = WEIGHT_DECAY,
        name: str = "paper_sgd",
        **kwargs: Any,
    ):
        super().__init__(learning_rate=learning_rate, momentum=momentum, name=name, **kwargs)
        self.weight_decay_l2 = float(weight_decay_l2)
        # One traced function per optimizer: a module-level one would keep traces that capture
        # the variables of optimizers since deleted.
        self._fused_update = tf.function(_fused_update, jit_compile=True, autograph=False)

    def add_variable_from_reference(self, reference_variable, name=None, initializer="zeros"):
        with _on_device_of(reference_variable):
            return super().add_variable_from_reference(
                reference_variable, name=name, initializer=initializer
            )

    def update_step(self, gradient, variable, learning_rate):
        decay = self.weight_decay_l2 if len(variable.shape) > 1 else 0.0
        with _on_device_of(variable):
            if self.momentum and not self.nesterov:
                momentum = self.momentums[self._get_variable_index(variable)]
                learning_rate = tf.cast(learning_rate, variable.dtype)  # a Keras variable
                self._fused_update(_tf_variable(variable), _tf_variable(momentum), gradient,
                                   learning_rate, self.momentum, decay)
                return
            if decay:
                gradient = tf.cast(gradient, variable.dtype)
                gradient = gradient + tf.cast(decay, variable.dtype) * variable
            super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weight_decay_l2": self.weight_decay_l2}


def _fused_update(variable, velocity, gradient, learning_rate, momentum, decay):
    """Keras' momentum SGD on the gradient plus decay * variable, compiled by XLA:

        velocity <- momentum * velocity - learning_rate * (gradient + decay * variable)
        variable <- variable + velocity

    XLA fuses this into two passes over memory (velocity, then variable) where Keras' update and
    the decay run seven element-wise ops, each a memory-bound pass. On this project's 2-core CPU
    the update of AlexNet's 61 million parameters takes 55 ms instead of 113 (docs/benchmarks.md).
    One XLA kernel per variable shape, run on the variable's device.
    """
    dtype = variable.dtype
    gradient = tf.cast(gradient, dtype) + tf.cast(decay, dtype) * variable
    velocity.assign(tf.cast(momentum, dtype) * velocity - learning_rate * gradient)
    variable.assign_add(velocity)


def _on_device_of(variable) -> contextlib.AbstractContextManager:
    """`tf.device` of a variable placed by hand; no scope under a distribution strategy,
    which places its own variables and updates."""
    if tf.distribute.has_strategy():
        return contextlib.nullcontext()
    return tf.device(_tf_variable(variable).device)


def _tf_variable(variable) -> tf.Variable:
    """The `tf.Variable` behind a Keras variable (or the variable itself)."""
    return variable.value if isinstance(variable, keras.Variable) else variable
