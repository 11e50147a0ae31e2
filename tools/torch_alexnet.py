"""AlexNet in PyTorch: the reference network that `tools/benchmark.py compare` times, and the ONNX model of
`tools/benchmark.py serve` (`export_onnx`, run by ONNX Runtime).

The same network as `alexnet_tf.model.build_alexnet(towers=1, groups=2)` (Caffe's bvlc_alexnet
layout): grouped conv2, conv4 and conv5 (two groups, standing for the paper's two towers), local
response normalization after conv1 and conv2 (section 3.3), overlapping 3x3 stride-2 max pooling
(section 3.4), dropout 0.5 on fc6 and fc7 (section 4.2), and the paper's SGD (section 5): momentum
0.9 and weight decay 0.0005 added to the gradient of the weights (not the biases).

Conventions, so that Keras weights carry over exactly (tests/test_benchmark.py checks it):
- Input is NCHW float32 (PyTorch's layout); conv1 pads as `alexnet_tf.model.conv1_padding_pixels`.
- `nn.LocalResponseNorm` scales the *mean* of the squares (its alpha is the paper's alpha times
  the depth) and divides by the depth even where the window is cut at the first and last
  channels, exactly what TensorFlow's LRN with the paper's alpha computes.
- fc6 reads the pool5 features flattened in PyTorch's (channel, row, column) order; Keras flattens
  (row, column, channel). `load_keras_weights` permutes fc6's rows accordingly.
- Exported to ONNX (`export_onnx`), each LRN is ONNX's own `LRN` operator, whose definition is
  `nn.LocalResponseNorm`'s (mean convention, window cut at the edges, divided by the depth): the
  TorchScript exporter would otherwise spell it out as a 3-D average pooling of the squares.

torch (and, for `export_onnx`, onnx) is not a dependency of `alexnet_tf`; this module is imported
by the benchmark only (requirements-bench.txt).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from alexnet_tf.model import architecture
from alexnet_tf.model import layers as layers_lib
from alexnet_tf.training import optimizer as optimizer_lib


class _OnnxLRN(torch.autograd.Function):
    """`nn.functional.local_response_norm`, exported as ONNX's `LRN` node (same definition)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):  # noqa: D102  Only ever run under torch.no_grad (export).
        return nn.functional.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):  # noqa: D102  The TorchScript exporter's hook.
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class LocalResponseNorm(nn.LocalResponseNorm):
    """`nn.LocalResponseNorm`, which `torch.onnx.export` writes as one ONNX `LRN` node."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return _OnnxLRN.apply(x, self.size, self.alpha, self.beta, self.k)
        return super().forward(x)


class TorchAlexNet(nn.Module):
    """The grouped single-stream AlexNet; `forward` maps NCHW images to logits.

    Args:
        num_classes: units of fc8.
        image_size: the side of the square input, pixels.
        width: scales every channel and unit count (fc8 excepted), as `build_alexnet`'s `width`.
        dropout: rate on fc6 and fc7 (0 disables).
    """

    def __init__(self, num_classes: int = 1000, image_size: int = 224, width: float = 1.0,
                 dropout: float = architecture.DROPOUT_RATE):
        super().__init__()
        # One stream holds both towers' channels (Figure 2), each tower's scaled as build_alexnet's.
        c = {name: 2 * architecture.scaled_count(count, width)
             for name, count in architecture.TOWER_CHANNELS.items()}
        lrn = dict(
            size=layers_lib.LRN_DEPTH,
            alpha=layers_lib.LRN_ALPHA * layers_lib.LRN_DEPTH,  # mean convention, see above
            beta=layers_lib.LRN_BETA,
            k=layers_lib.LRN_K,
        )
        pool, stride = architecture.POOLING["overlapping"]
        self.features = nn.Sequential(
            nn.Conv2d(3, c["conv1"], 11, stride=4, padding=architecture.conv1_padding_pixels(image_size)),
            nn.ReLU(inplace=True),
            LocalResponseNorm(**lrn),
            nn.MaxPool2d(pool, stride),
            nn.Conv2d(c["conv1"], c["conv2"], 5, padding=2, groups=2),
            nn.ReLU(inplace=True),
            LocalResponseNorm(**lrn),
            nn.MaxPool2d(pool, stride),
            nn.Conv2d(c["conv2"], c["conv3"], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c["conv3"], c["conv4"], 3, padding=1, groups=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c["conv4"], c["conv5"], 3, padding=1, groups=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(pool, stride),
        )
        with torch.no_grad():
            features = self.features(torch.zeros(1, 3, image_size, image_size)).numel()
        units = architecture.scaled_count(architecture.FC_UNITS, width)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, units),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(units, units),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(units, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))

    def named_layers(self) -> dict[str, nn.Module]:
        """The weighted layers by the Keras model's names: conv1..conv5, fc6..fc8."""
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        names = [f"conv{i}" for i in range(1, 6)] + [f"fc{i}" for i in range(6, 9)]
        return dict(zip(names, convs + linears))


def paper_sgd(model: nn.Module, learning_rate: float = optimizer_lib.LEARNING_RATE) -> torch.optim.SGD:
    """`alexnet_tf.training.optimizer.PaperSGD` in PyTorch: `torch.optim.SGD`'s weight decay is added to the
    gradient before the momentum (coupled L2), as the paper's; biases take none."""
    weights = [p for p in model.parameters() if p.dim() > 1]
    biases = [p for p in model.parameters() if p.dim() <= 1]
    return torch.optim.SGD(
        [{"params": weights, "weight_decay": optimizer_lib.WEIGHT_DECAY},
         {"params": biases, "weight_decay": 0.0}],
        lr=learning_rate,
        momentum=optimizer_lib.MOMENTUM,
    )


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer
                    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One SGD step on a batch (NCHW images, int64 labels) with the softmax cross-entropy; returns
    the loss (a tensor, so that timing loops do not synchronize on `.item()`)."""
    loss_fn = nn.CrossEntropyLoss()

    def train_step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return train_step


def load_keras_weights(model: TorchAlexNet, weights: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Copies weights in the bvlc layout (`alexnet_tf.model.npy_weights.npy_weights`: per layer name, a
    Keras-shaped kernel and a bias, conv kernels [h, w, in/groups, out]) into `model`."""
    layers = model.named_layers()
    with torch.no_grad():
        for name, (kernel, bias) in weights.items():
            layer = layers[name]
            if kernel.ndim == 4:
                kernel = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            else:
                if name == "fc6":
                    # Keras' rows are (row, column, channel)-ordered; PyTorch's (channel, row, column).
                    channels = layers["conv5"].out_channels
                    side = int(round((kernel.shape[0] // channels) ** 0.5))
                    kernel = kernel.reshape(side, side, channels, -1).transpose(2, 0, 1, 3)
                kernel = kernel.reshape(-1, kernel.shape[-1]).T  # (in, out) -> (out, in)
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
            layer.bias.copy_(torch.from_numpy(np.asarray(bias)))


def export_onnx(model: TorchAlexNet, path: str, image_size: int, opset: int = 17) -> None:
    """Writes `model` in inference mode (dropout off) to the ONNX file `path`: input `images` float32 NCHW
    [N, 3, image_size, image_size] with N free, output `logits` [N, num_classes]. TorchScript exporter
    (`dynamo=False`: the dynamo one needs onnxscript)."""
    import warnings

    model.eval()
    example = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # The TorchScript exporter's deprecation notice.
        torch.onnx.export(model, (example,), path, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
