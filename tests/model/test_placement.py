"""The two towers on two devices, forward and backward, in the train step that fit runs.

Two logical CPU devices (tests/conftest.py) stand in for the paper's two GPUs.
"""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf.model import build_alexnet, inner_layer, without_placement
from alexnet_tf.training.optimizer import PaperSGD

DEVICES = ("/CPU:0", "/CPU:1")
# LRN sums its windows with a MatMul forward and backward (alexnet_tf.layers.local_response_normalization).
COMPUTE_OPS = {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul", "MaxPool", "MaxPoolGrad"}
IMAGE_SIZE = 67


def build_placed_model():
    model = build_alexnet(num_classes=5, image_size=IMAGE_SIZE, width=0.125,
                          tower_devices=DEVICES, seed=0)
    model.compile(optimizer=PaperSGD(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="module")
def trained():
    """A placed model after two real `fit` steps, and the graph of its traced train step."""
    model = build_placed_model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    y = np.arange(4) % 5
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    # The function fit runs for one step is strategy.run(model.train_step) inside a tf.function
    # (keras/src/backend/tensorflow/trainer.py); trace exactly that to read its graph.
    step = tf.function(lambda data: model.distribute_strategy.run(model.train_step, args=(data,)))
    spec = (tf.TensorSpec([4, IMAGE_SIZE, IMAGE_SIZE, 3]), tf.TensorSpec([4], tf.int64))
    graph = step.get_concrete_function(spec).graph
    return model, history, graph


def device_index(op) -> int:
    return tf.DeviceSpec.from_string(op.device).device_index


def layer_of(op) -> str:
    """The model layer an op belongs to, from its name: alexnet/<layer>/<layer>/...."""
    parts = op.name.split("/")
    start = 1 if parts[0] == "gradient_tape" else 0
    return parts[start + 1].rsplit("_", 1)[0]


def test_fit_trains_the_placed_model(trained):
    model, history, _ = trained
    assert model.jit_compile is False
    assert all(np.isfinite(history.history["loss"]))


def test_every_tower_op_runs_on_its_towers_device_forward_and_backward(trained):
    _, _, graph = trained
    ops = [op for op in graph.get_operations() if op.type in COMPUTE_OPS]
    forward = [op for op in ops if not op.name.startswith("gradient_tape/")]
    backward = [op for op in ops if op.name.startswith("gradient_tape/")]
    # 5 convs, 2 LRNs and 3 pools per tower, and fc6-fc8 (one matmul forward, two backward).
    assert len(forward) == 2 * 10 + 3 and len(backward) == 2 * 10 + 2 * 5 + 2 * 3
    for op in ops:
        layer = layer_of(op)
        assert op.device, f"{op.name} is left to the placer"
        if layer.startswith("fc"):
            expected = 0  # The classifier, which reads both towers, runs on the first device.
        else:
            assert layer[-1] in "ab", op.name
            expected = "ab".index(layer[-1])
        assert device_index(op) == expected, f"{op.type} {op.name} on {op.device}"


def test_towers_exchange_activations_only_at_conv3_and_the_classifier(trained):
    _, _, graph = trained
    concats = {layer_of(op): device_index(op) for op in graph.get_operations()
               if op.type == "ConcatV2" and not op.name.startswith("gradient_tape/")}
    assert concats == {"concat3a": 0, "concat3b": 1, "pool5_concat": 0}


def test_variables_and_optimizer_slots_live_on_their_towers_device(trained):
    model, _, _ = trained
    for name in ["conv1", "conv2", "conv3", "conv4", "conv5"]:
        for index, tower in enumerate("ab"):
            layer = inner_layer(model, name + tower)
            for variable in (layer.kernel, layer.bias):
                assert tf.DeviceSpec.from_string(variable.value.device).device_index == index
    for variable in model.trainable_variables:
        slot = model.optimizer.momentums[model.optimizer._get_variable_index(variable)]
        assert slot.value.device == variable.value.device, slot.path


def test_optimizer_updates_run_on_their_variables_device(trained):
    _, _, graph = trained
    # One fused (XLA) update per variable: tower a's 10 and the classifier's 6 on device 0,
    # tower b's 10 on device 1.
    updates = [device_index(op) for op in graph.get_operations()
               if op.type == "StatefulPartitionedCall" and op.name.startswith("paper_sgd/")]
    assert sorted(updates) == [0] * 16 + [1] * 10


def test_placed_and_unplaced_models_compute_the_same_function():
    placed = build_placed_model()
    plain = build_alexnet(num_classes=5, image_size=IMAGE_SIZE, width=0.125, seed=1)
    plain.set_weights(placed.get_weights())
    x = np.random.default_rng(1).normal(size=(3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(placed.predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-5)


def test_without_placement_pins_no_op_to_a_device():
    placed = build_placed_model()
    spec = tf.TensorSpec([1, IMAGE_SIZE, IMAGE_SIZE, 3])

    def pinned(model):
        graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
        return {op.type for op in graph.get_operations() if op.device and op.type in COMPUTE_OPS}

    assert pinned(placed) == {"Conv2D", "MatMul", "MaxPool"}
    assert pinned(without_placement(placed)) == set()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
