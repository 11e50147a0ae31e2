"""Top-k error, the paper's measure (section 6: "top-1 and top-5 error rates")."""

from __future__ import annotations

import keras

# Section 6: "top-1 and top-5 error rates"; top-5 counts "the fraction of test images for which the correct
# label is not among the five labels considered most probable by the model".
TOP_K = (1, 5)


@keras.saving.register_keras_serializable(package="alexnet_tf")
def top_k_error(y_true, y_pred, k: int = 1):
    """1 where the true class is not among the k highest scores, else 0, per example."""
    hit = keras.metrics.sparse_top_k_categorical_accuracy(y_true, y_pred, k=k)
    return 1.0 - keras.ops.cast(hit, "float32")


@keras.saving.register_keras_serializable(package="alexnet_tf")
class TopKError(keras.metrics.MeanMetricWrapper):
    """The fraction of examples whose true class is not among the k highest scores.

    Named "top1_error" / "top5_error", so Keras logs "val_top1_error" for the validation set.
    """

    def __init__(self, k: int = 1, name: str | None = None, dtype=None):
        super().__init__(top_k_error, name=name or f"top{k}_error", dtype=dtype, k=k)
        self.k = k
        self._direction = "down"

    def get_config(self) -> dict:
        return {"k": self.k, "name": self.name, "dtype": self.dtype}
