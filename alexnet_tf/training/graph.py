"""The graphs TensorBoard's Graphs tab draws for a training run, as `EpochTensorBoard` writes them to the `train` run.

- `train_step_graph`: the op graph of the train step that `fit` runs, each op with the device it is placed on: with
  --strategy=towers, "Color: Device" shows the towers on their two devices, forward and backward, the classifier
  on the first, and the concatenations at conv3 where each tower reads the other (the paper's Figure 2);
- `conceptual_graph`: the Keras model, one node per layer (the "Conceptual graph" of the same run).

Keras 3.15's TensorBoard callback writes neither for this model ("write_graph: (Not supported at this time)", says
its docstring): its train function is a Python function around the tf.function, which it looks for in vain, and it
writes the conceptual graph only for models whose class is named `Functional` or `Sequential`.
"""

from __future__ import annotations

import json
from typing import Any

import keras
import tensorflow as tf
from tensorboard.plugins.graph import metadata

KERAS_TAG = "keras"  # The tag Keras' own keras_model_summary writes the conceptual graph under.


def train_step_graph(model: keras.Model, element_spec: Any) -> tf.compat.v1.GraphDef:
    """The graph of one training step on batches of `element_spec`, as `fit` traces it (`strategy.run(
    model.train_step)` in a tf.function; the optimizer's variables must exist, as after the first batch).

    Devices are spelled "/device:CPU:0" throughout: the graph names the same local device both so and as
    "/job:localhost/replica:0/task:0/device:CPU:0", which "Color: Device" would show as two devices.
    """
    strategy = model.distribute_strategy
    step = tf.function(lambda data: strategy.run(model.train_step, args=(data,)))
    graph_def = step.get_concrete_function(element_spec).graph.as_graph_def()
    for node in graph_def.node:
        if node.device:
            spec = tf.DeviceSpec.from_string(node.device)
            node.device = tf.DeviceSpec(device_type=spec.device_type, device_index=spec.device_index).to_string()
    return graph_def


def conceptual_graph(model: keras.Model) -> dict[str, Any] | None:
    """The model as the Keras JSON that TensorBoard draws as its conceptual graph, each layer under its own class
    (not the `OnDevice` wrapper that places it); None for a model without a functional graph.

    `AlexNet.get_config()` is its architecture, not its layers: the JSON is that of a plain functional model over
    the same layers.
    """
    if not getattr(model, "inputs", None):
        return None
    concept = json.loads(keras.Model(model.inputs, model.outputs, name=model.name).to_json())
    for layer in concept["config"]["layers"]:
        if layer["class_name"] == "OnDevice":
            inner = layer["config"]["layer"]
            layer["class_name"] = inner["class_name"]
            layer["config"] = {**inner["config"], "name": layer["config"]["name"]}
    return concept


def write_conceptual_graph(concept: dict[str, Any], step: int = 0) -> None:
    """`concept` (`conceptual_graph`) to the default summary writer, as Keras' keras_model_summary writes a model."""
    summary_metadata = tf.compat.v1.SummaryMetadata()
    summary_metadata.plugin_data.plugin_name = metadata.PLUGIN_NAME_KERAS_MODEL
    summary_metadata.plugin_data.content = b"1"  # The format's version.
    tf.summary.write(KERAS_TAG, tf.constant(json.dumps(concept)), step=step, metadata=summary_metadata)
