"""`TrainConfig`: everything a training run needs, typed, made once from the flags at the binary's edge."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import tensorflow as tf

from alexnet_tf.data.pipeline import DataConfig
from alexnet_tf.model.architecture import AlexNetConfig
from alexnet_tf.training import multi_worker
from alexnet_tf.training.distribute import STRATEGIES
from alexnet_tf.training.optimizer import OptimizerConfig
from alexnet_tf.training.schedule import ScheduleConfig
from alexnet_tf.errors import ConfigError

EPOCHS = 90  # Section 5: "roughly 90 cycles through the training set".
BATCH_SIZE = 128  # Section 5: "a batch size of 128 examples".


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, from the flags (`alexnet_tf.train.config_from_flags`) or built by a test.

    `architecture.num_classes` is replaced by the data set's when `classes_from_data` (no --num_classes given).
    """

    architecture: AlexNetConfig
    data: DataConfig
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    model_dir: str
    epochs: int = EPOCHS
    batch_size: int = BATCH_SIZE
    steps_per_epoch: int | None = None
    strategy: str = "one_device"
    tower_devices: tuple[str, str] = ("/GPU:0", "/GPU:1")
    cluster_timeout: float = multi_worker.DEFAULT_TIMEOUT_SECONDS
    dtype_policy: str = "float32"
    xla: bool = False
    seed: int | None = None
    deterministic: bool = False
    keep_checkpoints: int = 3
    demo: bool = False
    pretrained: str | None = None
    freeze_conv: bool = False
    export_dir: str | None = None
    classes_from_data: bool = True
    # TensorBoard (alexnet_tf.training.tensorboard): epochs between weight histograms (0: none), and the batches
    # (first, last; 1-based) that TensorFlow's profiler traces (None: none).
    histogram_freq: int = 1
    profile_steps: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.xla and self.strategy == "towers":
            raise ConfigError("--xla: XLA ignores tf.device placement (tensorflow issue 124880), so it is refused "
                              "with --strategy=towers")
        if self.strategy == "towers" and self.architecture.towers != 2:
            raise ConfigError("--strategy=towers needs --towers=2")
        if self.freeze_conv and not self.pretrained:
            raise ConfigError("--freeze_conv needs --pretrained: frozen random convolutions learn nothing")
        if self.deterministic and self.seed is None:
            raise ConfigError("--deterministic needs --seed")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be in [0, 2**32), got {self.seed}")  # NumPy's and Keras' range.
        if not (math.isfinite(self.cluster_timeout) and self.cluster_timeout > 0):
            raise ConfigError(f"--cluster_timeout must be a finite number of seconds > 0, got {self.cluster_timeout}")
        for device in self.tower_devices:
            try:
                tf.DeviceSpec.from_string(device)
            except ValueError:
                raise ConfigError(f"--tower_devices: {device!r} is not a device (e.g. /GPU:0, /CPU:0)") from None
        if self.histogram_freq < 0:
            raise ConfigError(f"--histogram_freq={self.histogram_freq}: give the epochs between histograms, or 0 for "
                              "none")
        if self.profile_steps is not None and (len(self.profile_steps) != 2
                                               or not 1 <= self.profile_steps[0] <= self.profile_steps[1]):
            raise ConfigError(f"--profile_steps={','.join(map(str, self.profile_steps))}: give START,END, the first "
                              "and last batch to trace, with 1 <= START <= END (e.g. 10,15)")

    def to_json(self) -> dict[str, Any]:
        """The whole config as plain JSON values, nested by part (MODEL_DIR/config.json)."""
        return dataclasses.asdict(self)
