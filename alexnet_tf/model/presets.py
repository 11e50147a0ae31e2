"""Named networks with the input they expect, as keras-hub names its presets: `PRESETS[name]`.

- `paper`: the network of the paper (Figure 2): two towers, LRN with k=2 (section 3.3), 224-pixel crops of RGB
  images with the training set's mean image subtracted (sections 2 and 4.1). Every default of `AlexNetConfig` and
  `DataConfig` is this preset's.
- `bvlc_alexnet`: Caffe's published bvlc_alexnet (models/bvlc_alexnet in BVLC/caffe), the network of the widely
  shared `bvlc_alexnet.npy` weights. The same function as the paper's with these differences, each from Caffe's
  deploy.prototxt or its data layer:
  - one stream whose conv2, conv4 and conv5 are grouped convolutions (`group: 2`): the paper's two towers folded
    into one, with the same 60,965,224 parameters; its LRN then reads all channels, not one tower's;
  - LRN k=1 (Caffe's default; the paper's is 2) and alpha 1e-4 on the mean of the 5 squares, which is 2e-5 on their
    sum (`AlexNetConfig.lrn_alpha`'s convention);
  - 227-pixel crops (`crop_size: 227`), which an 11x11 stride-4 conv1 maps to 55x55 without padding;
  - BGR input (Caffe decoded with OpenCV), with the mean pixel subtracted, not the mean image: 104, 117, 123 in
    BGR order on the 0-255 scale (123, 117, 104 as R, G, B).

A preset is a starting point: any field may be given on top of it (`--preset=bvlc_alexnet --num_classes=5`).
"""

from __future__ import annotations

import dataclasses

from alexnet_tf.errors import ConfigError
from alexnet_tf.model.architecture import AlexNetConfig

PAPER = "paper"
BVLC_ALEXNET = "bvlc_alexnet"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A network and the preprocessing its weights expect (the `DataConfig` fields of the same names)."""

    architecture: AlexNetConfig
    channel_order: str = "RGB"
    mean: str = "image"
    mean_rgb: tuple[float, float, float] | None = None

    def preprocessing(self) -> dict[str, object]:
        """The preset's `DataConfig` fields, by name."""
        return {"channel_order": self.channel_order, "mean": self.mean, "mean_rgb": self.mean_rgb}


PRESETS = {
    PAPER: Preset(AlexNetConfig()),
    BVLC_ALEXNET: Preset(
        AlexNetConfig(towers=1, groups=2, image_size=227, lrn_k=1.0, lrn_alpha=2e-5),
        channel_order="BGR", mean="channel", mean_rgb=(123.0, 117.0, 104.0)),
}


def get(name: str) -> Preset:
    """The preset called `name`; a ConfigError naming the presets otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"no preset {name!r}: one of {', '.join(PRESETS)}")
    return PRESETS[name]
