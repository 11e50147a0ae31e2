"""Throughput benchmarks; each prints JSON lines.

  python tools/benchmark.py pipeline --data_dir=DIR --threads=N [--raw_dir=PHOTOS]
  python tools/benchmark.py model --batch_size=32 --steps=N [--variant=paper --variant=dense ...]
  python tools/benchmark.py compare --batch_size=32   # needs requirements-bench.txt (torch)
  python tools/benchmark.py serve --batch_size=32 --image_size=227 --threads=2   # needs requirements-bench.txt

Subcommands:
  pipeline  Training batches per second from `pipeline.make_train_dataset` (crop, flip, PCA noise, mean
            subtraction, batching) on a prepared data set, with the process pinned to --threads cores and
            tf.data given a private pool of --threads threads. With --raw_dir, a naive pipeline (decode the
            full JPEG, rescale, random crop, flip) over the photos in that folder is measured in the same run,
            alternating repeats, so machine load affects both alike. Reports medians over --repeats.
  model     Training and inference images per second of `build_alexnet` on synthetic input, through Keras' own
            `fit` and `predict` with the training binary's optimizer, loss and metrics. Each --variant and
            --dtype_policy pair is one contender (both flags repeat); contenders alternate repeat by repeat and
            each prints one line, with its medians and its per-repeat ratio to the first contender.
  compare   This project's training step (the first --variant) against the same network in PyTorch
            (tools/torch_alexnet.py), alternating repeats; prints both medians, their ratio, and the fraction
            of the roofline: the machine's float32 matmul peak (measured here) over the training FLOPs per
            image (counted from the model's layers).
  serve     Inference as served: the SavedModel of `serving.export_model` (the grouped network, towers=1 groups=2,
            --width, --image_size, he-initialized, seed 0) through its two signatures, `predict_images` on a float
            batch and `serving_default` on a batch of JPEG bytes, against the same network with the same weights
            in ONNX Runtime (tools/torch_alexnet.py, `torch.onnx.export`), alternating repeats, --threads threads
            for both (TensorFlow's intra- and inter-op pools, ONNX Runtime's intra-op pool) on --threads pinned
            cores. Prints the medians, their per-repeat ratio, the roofline fraction (the inference FLOPs per
            image against the measured matmul peak; also paired, each repeat against the matmul timed just
            before it) and the largest difference of the two runtimes' logits.

Timings start after --warmup_steps and are synchronous: Keras' batch callbacks wait for each execution,
PyTorch on the CPU runs eagerly, `serve` fetches every result. Process-wide settings (the thread flags,
TF_ENABLE_ONEDNN_OPTS, which alexnet_tf sets to 1 unless it is set: alexnet_tf/onednn.py) take effect when
TensorFlow starts, so comparing them takes alternating invocations; each JSON line records them, and `onednn`
whether TensorFlow runs its oneDNN kernels.
"""

import contextlib
import itertools
import json
import math
import os
import statistics
import tempfile
import time

import alexnet_tf  # noqa: F401  First: it imports TensorFlow with the start-up notices held back.
import keras
import numpy as np
import tensorflow as tf
from absl import app, flags
from tensorflow.python.util import _pywrap_util_port  # IsMklEnabled: whether oneDNN's kernels run.

from alexnet_tf import cli, errors, onednn, serving
from alexnet_tf.data import ilsvrc, pipeline, records
from alexnet_tf.metrics import TopKError
from alexnet_tf.model import alexnet, architecture, npy_weights
from alexnet_tf.model.layers import unwrap
from alexnet_tf.training.optimizer import PaperSGD

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared data set (tools/prepare_imagenet.py output).")
_RAW_DIR = flags.DEFINE_string("raw_dir", None, "Optional folder of original photos (searched recursively) for "
                                                "the naive baseline, e.g. ../shared/imagenet-sample-100.")
_THREADS = flags.DEFINE_integer("threads", 1, "CPU cores to pin to; pipeline: tf.data threads; serve: threads of "
                                "TensorFlow's intra- and inter-op pools and of ONNX Runtime's intra-op pool.",
                                lower_bound=1, upper_bound=len(os.sched_getaffinity(0)))
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Images per batch (128 in the paper, Section 5).",
                                   lower_bound=1)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", pipeline.IMAGENET_CROP_SIZE, "Training crop side.",
                                   lower_bound=1)
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 40, "Batches timed per repeat.", lower_bound=1)
_WARMUP_BATCHES = flags.DEFINE_integer("warmup_batches", 5, "Batches drawn before timing (autotuning, buffers).",
                                       lower_bound=0)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats; medians are reported.", lower_bound=1)

# The model and compare subcommands.
VARIANTS = {  # build_alexnet arguments; see alexnet_tf/model/architecture.py.
    "paper": dict(towers=2, groups=2),
    "grouped": dict(towers=1, groups=2),
    "dense": dict(towers=1, groups=1),
}
NUM_CLASSES = 1000  # ILSVRC-2012, section 2.
_VARIANT = flags.DEFINE_multi_enum("variant", ["paper"], list(VARIANTS),
                                   "Network variant; repeat the flag to alternate several. paper: the two towers "
                                   "of Figure 2 (towers=2); grouped: one stream with Conv2D(groups=2) (Caffe); "
                                   "dense: one stream, ungrouped. compare takes the first.")
_STEPS = flags.DEFINE_integer("steps", 6, "Training (and inference) steps timed per repeat.", lower_bound=1)
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 2, "Steps run once per contender before any timing "
                                     "(tracing, oneDNN kernel selection, buffers).", lower_bound=1)
_WIDTH = flags.DEFINE_float("width", 1.0, "Scales every channel and unit count; 1.0 is the paper's network.")
_XLA = flags.DEFINE_boolean("xla", False, "XLA-compile the Keras train and predict steps (jit_compile).")
_STEPS_PER_EXECUTION = flags.DEFINE_integer("steps_per_execution", 1, "Keras steps_per_execution: steps run "
                                            "by one call into the compiled function.", lower_bound=1)
_DTYPE_POLICY = flags.DEFINE_multi_enum("dtype_policy", ["float32"], list(cli.DTYPE_POLICIES),
                                        "Keras dtype policy of the TensorFlow network, as the training binary's "
                                        "--dtype_policy (PyTorch's and ONNX Runtime's stay float32); model: repeat "
                                        "it to alternate several, compare and serve take the first. "
                                        "mixed_bfloat16 uses the AMX/AVX-512 BF16 units of recent Xeons; it "
                                        "changes the numerics, so it is a lever, not the same result.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 4096, "compare, serve: side of the square float32 matrices whose "
                                    "product measures the machine's peak (large enough to be compute-bound).",
                                    lower_bound=1)
_INTRA_OP_THREADS = flags.DEFINE_integer("intra_op_threads", 0, "Threads inside one op, for TensorFlow and "
                                         "PyTorch (0: one per core, both frameworks' default).", lower_bound=0)
_INTER_OP_THREADS = flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow threads running independent ops "
                                         "(such as the two towers) at once (0: TensorFlow's default).",
                                         lower_bound=0)

_JPEG_HEIGHT, _JPEG_WIDTH = 375, 500  # serve: a typical ImageNet photo (docs/data.md).

flags.register_validator("width", lambda v: 0 < v <= 4, message="--width must be in (0, 4]")
flags.register_multi_flags_validator(
    ["steps", "warmup_steps", "steps_per_execution"],
    lambda v: v["steps"] % v["steps_per_execution"] == 0 and v["warmup_steps"] % v["steps_per_execution"] == 0,
    message="--steps and --warmup_steps must be multiples of --steps_per_execution")
flags.register_validator("data_dir", lambda v: v is None or os.path.isdir(v), message="--data_dir: no such folder")
flags.register_validator("raw_dir", lambda v: v is None or os.path.isdir(v), message="--raw_dir: no such folder")


def naive_train_dataset(raw_dir: str, batch_size: int, image_size: int, threads: int) -> tf.data.Dataset:
    """The naive baseline: decode the whole photo, rescale its shorter side to 256, random crop, flip, batch."""
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(raw_dir) for f in files
                   if f.lower().endswith(ilsvrc.IMAGE_EXTENSIONS))
    if not paths:
        raise errors.DataError(f"--raw_dir={raw_dir}: no images")

    def transform(path: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        new_shape = tf.cast(tf.round(shape * records.IMAGENET_STORED_SIZE / tf.reduce_min(shape)), tf.int32)
        image = tf.image.resize(image, tf.maximum(new_shape, records.IMAGENET_STORED_SIZE))
        return tf.image.random_flip_left_right(tf.image.random_crop(image, [image_size, image_size, 3]))

    dataset = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths)).repeat()
    dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    return dataset.with_options(options)


def _measure(dataset: tf.data.Dataset, batch_size: int) -> float:
    """Images per second over --num_batches batches of a fresh iterator, after --warmup_batches.

    The iterator is dropped afterwards, so no idle pipeline keeps filling its buffers on the pinned cores while
    another is timed.
    """
    iterator = iter(dataset)
    for _ in range(_WARMUP_BATCHES.value):
        next(iterator)
    start = time.perf_counter()
    for _ in range(_NUM_BATCHES.value):
        next(iterator)
    elapsed = time.perf_counter() - start
    del iterator
    return _NUM_BATCHES.value * batch_size / elapsed


def run_pipeline() -> dict:
    """The `pipeline` subcommand."""
    if _DATA_DIR.value is None:
        raise errors.ConfigError("pipeline needs --data_dir")
    threads, batch_size = _THREADS.value, _BATCH_SIZE.value
    # Pinning makes images_per_sec_per_thread a per-core figure even when tf.data spawns helper threads.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    config = pipeline.DataConfig(data_dir=_DATA_DIR.value)
    datasets = {"images_per_sec": pipeline.make_train_dataset(
        config, batch_size, image_size=_IMAGE_SIZE.value, threads=threads).repeat()}
    if _RAW_DIR.value:
        datasets["naive_images_per_sec"] = naive_train_dataset(_RAW_DIR.value, batch_size, _IMAGE_SIZE.value,
                                                               threads)
    runs = {name: [] for name in datasets}
    for _ in range(_REPEATS.value):
        for name, dataset in datasets.items():
            runs[name].append(round(_measure(dataset, batch_size), 1))
    result = {"subcommand": "pipeline", "data_dir": _DATA_DIR.value, "threads": threads, "batch_size": batch_size,
              "image_size": _IMAGE_SIZE.value, "num_batches": _NUM_BATCHES.value, "repeats": _REPEATS.value}
    for name, values in runs.items():
        result[name] = round(statistics.median(values), 1)
        result[name.replace("_per_sec", "_per_sec_per_thread")] = round(result[name] / threads, 1)
        result[name.replace("images_per_sec", "runs")] = values
    if _RAW_DIR.value:
        ratios = [fast / naive for fast, naive in zip(runs["images_per_sec"], runs["naive_images_per_sec"])]
        result["speedup_vs_naive"] = round(statistics.median(ratios), 2)
    return result


@contextlib.contextmanager
def dtype_policy(name: str):
    """Keras' global dtype policy set to `name` while models are built (a model keeps the policy it was built
    under), restored afterwards."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class KerasContender:
    """`build_alexnet` under a dtype policy, compiled as the training binary compiles it (PaperSGD, softmax
    cross-entropy, top-1/top-5 error; Keras adds loss scaling under mixed_float16), timed through `fit` and
    `predict` on one synthetic batch repeated."""

    def __init__(self, variant: str, images: np.ndarray, labels: np.ndarray, policy: str = "float32"):
        self.variant, self.dtype_policy = variant, policy
        self.name = variant if policy == "float32" else f"{variant}/{policy}"
        self.batch_size = len(images)
        with dtype_policy(policy):
            self.model = alexnet.build_alexnet(num_classes=NUM_CLASSES, image_size=images.shape[1],
                                                 width=_WIDTH.value, seed=0, **VARIANTS[variant])
        self.model.compile(optimizer=PaperSGD(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           metrics=[TopKError(1), TopKError(5)], jit_compile=_XLA.value,
                           steps_per_execution=_STEPS_PER_EXECUTION.value)
        self.train_data = tf.data.Dataset.from_tensors((images, labels)).repeat()
        self.infer_data = tf.data.Dataset.from_tensors(images).repeat()
        self.train_rate(_WARMUP_STEPS.value)
        self.infer_rate(_WARMUP_STEPS.value)

    def train_rate(self, steps: int) -> float:
        """Training images per second over `steps` steps of `fit`."""
        clock = StepClock()
        self.model.fit(self.train_data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[clock])
        return steps * self.batch_size / clock.elapsed()

    def infer_rate(self, steps: int) -> float:
        """Inference images per second over `steps` steps of `predict`."""
        clock = StepClock()
        self.model.predict(self.infer_data, steps=steps, verbose=0, callbacks=[clock])
        return steps * self.batch_size / clock.elapsed()


class StepClock(keras.callbacks.Callback):
    """Seconds from the start of the first batch to the end of the last, leaving out `fit`'s and `predict`'s
    set-up. Keras calls the batch hooks once per execution, after the compiled function has returned."""

    def __init__(self):
        super().__init__()
        self.start = self.end = None

    def on_train_batch_begin(self, batch, logs=None):
        self.start = self.start or time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.end = time.perf_counter()

    on_predict_batch_begin = on_train_batch_begin
    on_predict_batch_end = on_train_batch_end

    def elapsed(self) -> float:
        return self.end - self.start


class TorchContender:
    """tools/torch_alexnet.py's network and SGD on the same batch, NCHW, timed eagerly."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        import torch  # Only compare needs it (requirements-bench.txt).

        import torch_alexnet  # Beside this script (requirements-bench.txt): torch is imported only here.

        torch.manual_seed(0)
        if _INTRA_OP_THREADS.value:
            torch.set_num_threads(_INTRA_OP_THREADS.value)
        self.batch_size = len(images)
        self.model = torch_alexnet.TorchAlexNet(NUM_CLASSES, images.shape[1], _WIDTH.value)
        self.step = torch_alexnet.make_train_step(self.model, torch_alexnet.paper_sgd(self.model))
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.train_rate(_WARMUP_STEPS.value)

    def train_rate(self, steps: int) -> float:
        """Training images per second over `steps` steps."""
        start = time.perf_counter()
        for _ in range(steps):
            self.step(self.images, self.labels)
        return steps * self.batch_size / (time.perf_counter() - start)


def synthetic_batch(batch_size: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean-subtracted-looking float32 images [batch, S, S, 3] (0-255 scale) and int32 labels, seeded."""
    rng = np.random.default_rng(0)
    images = rng.normal(0.0, architecture.PIXEL_STDDEV, (batch_size, image_size, image_size, 3)).astype(np.float32)
    return images, rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)


def _forward_flops(model: keras.Model) -> dict[str, int]:
    """Layer name -> floating-point operations of its forward pass on one image, for the convolutions and fully
    connected layers: 2 per multiply-add (output positions x kernel size, a grouped kernel holding only its
    group's input channels). Pooling, LRN, activations and the update are memory-bound and left out."""
    flops = {}
    for layer in model.layers:
        inner = unwrap(layer)
        if isinstance(inner, (keras.layers.Conv2D, keras.layers.Dense)):
            positions = math.prod(layer.output.shape[1:-1]) if isinstance(inner, keras.layers.Conv2D) else 1
            flops[inner.name] = 2 * positions * math.prod(inner.kernel.shape)
    return flops


def train_flops_per_image(model: keras.Model) -> int:
    """Floating-point operations of one training image (`_forward_flops`'s layers and count).

    Training runs each such layer three times (forward, input gradient, weight gradient), except conv1's input
    gradient, which nothing needs.
    """
    return sum(2 * f if name.startswith("conv1") else 3 * f for name, f in _forward_flops(model).items())


def inference_flops_per_image(model: keras.Model) -> int:
    """Floating-point operations of one inference image: each layer of `_forward_flops` once."""
    return sum(_forward_flops(model).values())


def matmul_gflops(size: int) -> float:
    """GFLOP/s of one float32 [size, size] x [size, size] TensorFlow matmul (oneDNN's GEMM), after one untimed."""
    a, b = tf.random.normal([size, size], seed=1), tf.random.normal([size, size], seed=2)
    _matmul_corner(a, b).numpy()
    start = time.perf_counter()
    _matmul_corner(a, b).numpy()
    return 2.0 * size**3 / (time.perf_counter() - start) / 1e9


@tf.function
def _matmul_corner(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    # One element out: fetching it waits for the product without copying it.
    return tf.matmul(a, b)[0, 0]


def _settings() -> dict:
    """What decides the speed besides the flags: threads and oneDNN, as TensorFlow and the environment say."""
    return {"intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "cores": len(os.sched_getaffinity(0)), "xla": _XLA.value, "dtype_policy": _DTYPE_POLICY.value[0],
            "steps_per_execution": _STEPS_PER_EXECUTION.value,
            onednn.VARIABLE: os.environ.get(onednn.VARIABLE, "unset"),
            "onednn": _pywrap_util_port.IsMklEnabled(),
            "batch_size": _BATCH_SIZE.value, "image_size": _IMAGE_SIZE.value, "width": _WIDTH.value,
            "steps": _STEPS.value, "repeats": _REPEATS.value}


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def _median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median of the per-repeat ratios: each pair ran back to back, under the same load."""
    return round(statistics.median(n / d for n, d in zip(numerators, denominators)), 2)


def run_model() -> list[dict]:
    """The `model` subcommand: one line per (--variant, --dtype_policy) pair."""
    images, labels = synthetic_batch(_BATCH_SIZE.value, _IMAGE_SIZE.value)
    contenders = [KerasContender(v, images, labels, p)
                  for v, p in itertools.product(dict.fromkeys(_VARIANT.value), dict.fromkeys(_DTYPE_POLICY.value))]
    train = {c.name: [] for c in contenders}
    infer = {c.name: [] for c in contenders}
    for _, contender in itertools.product(range(_REPEATS.value), contenders):
        train[contender.name].append(round(contender.train_rate(_STEPS.value), 2))
        infer[contender.name].append(round(contender.infer_rate(_STEPS.value), 2))
    first = contenders[0].name
    results = []
    for contender in contenders:
        name = contender.name
        results.append({"subcommand": "model", "variant": contender.variant, **VARIANTS[contender.variant],
                        "params": contender.model.count_params(),
                        "train_flops_per_image": train_flops_per_image(contender.model),
                        "train_images_per_sec": _median(train[name]), "infer_images_per_sec": _median(infer[name]),
                        "train_ratio_to_first": _median_ratio(train[name], train[first]),
                        "infer_ratio_to_first": _median_ratio(infer[name], infer[first]),
                        "train_runs": train[name], "infer_runs": infer[name], **_settings(),
                        "dtype_policy": contender.dtype_policy})
    return results


def run_compare() -> dict:
    """The `compare` subcommand: the first --variant's training step against PyTorch's, alternating."""
    try:
        import torch  # noqa: F401  Checked first: building the Keras model takes a while.
    except ImportError:
        raise errors.ConfigError("compare needs torch: pip install -r requirements-bench.txt") from None
    images, labels = synthetic_batch(_BATCH_SIZE.value, _IMAGE_SIZE.value)
    ours = KerasContender(_VARIANT.value[0], images, labels, _DTYPE_POLICY.value[0])
    theirs = TorchContender(images, labels)
    runs = {"tf": [], "torch": [], "matmul_gflops": []}
    for _ in range(_REPEATS.value):
        runs["tf"].append(round(ours.train_rate(_STEPS.value), 2))
        runs["torch"].append(round(theirs.train_rate(_STEPS.value), 2))
        runs["matmul_gflops"].append(round(matmul_gflops(_MATMUL_SIZE.value), 1))
    flops = train_flops_per_image(ours.model)
    peak = max(runs["matmul_gflops"])  # A peak: load from other processes only lowers the samples.
    roofline = peak * 1e9 / flops
    tf_rate = _median(runs["tf"])
    return {"subcommand": "compare", "variant": ours.variant, **VARIANTS[ours.variant],
            "tf_train_images_per_sec": tf_rate, "torch_train_images_per_sec": _median(runs["torch"]),
            "tf_over_torch": _median_ratio(runs["tf"], runs["torch"]),
            "train_flops_per_image": flops, "matmul_peak_gflops": peak,
            "roofline_images_per_sec": round(roofline, 1), "roofline_fraction": round(tf_rate / roofline, 3),
            "tf_runs": runs["tf"], "torch_runs": runs["torch"], "matmul_runs": runs["matmul_gflops"],
            "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__, **_settings()}


def synthetic_jpegs(count: int, height: int = _JPEG_HEIGHT, width: int = _JPEG_WIDTH) -> np.ndarray:
    """`count` distinct JPEG photos-alike (smooth colour fields with some grain, quality 90) as a bytes array."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(count):
        coarse = tf.constant(rng.uniform(0, 255, (1, height // 25, width // 25, 3)), tf.float32)
        image = tf.image.resize(coarse, [height, width], "bicubic")[0] + rng.normal(0, 8, (height, width, 3))
        out.append(tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=90).numpy())
    return np.array(out, dtype=object)


class SavedModelContender:
    """The exported SavedModel, loaded as TensorFlow Serving would (`tf.saved_model.load`), called through its
    signatures; every call's outputs are fetched as numpy, so a timing ends when the answer exists."""

    def __init__(self, export_dir: str, images: np.ndarray, jpegs: np.ndarray):
        self.loaded = tf.saved_model.load(export_dir)
        self.predict = self.loaded.signatures[serving.IMAGES_SIGNATURE]
        self.serve = self.loaded.signatures[serving.SERVING_SIGNATURE]
        self.images, self.jpegs = tf.constant(images), tf.constant(jpegs, tf.string)
        self.batch_size = len(images)
        self.images_rate(_WARMUP_STEPS.value)
        self.jpeg_rate(_WARMUP_STEPS.value)

    def logits(self) -> np.ndarray:
        return self.predict(images=self.images)["logits"].numpy()

    def images_rate(self, steps: int) -> float:
        """`predict_images` images per second on the float batch, over `steps` calls."""
        return _images_per_sec(lambda: _fetch(self.predict(images=self.images)), steps, self.batch_size)

    def jpeg_rate(self, steps: int) -> float:
        """`serving_default` images per second on the JPEG batch (decode, rescale, crop, mean, network, top 5)."""
        return _images_per_sec(lambda: _fetch(self.serve(images=self.jpegs)), steps, len(self.jpegs))


def _fetch(outputs: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in outputs.items()}


def _images_per_sec(call, steps: int, batch_size: int) -> float:
    """Images per second of `steps` calls of `call()`, each answering `batch_size` images."""
    start = time.perf_counter()
    for _ in range(steps):
        call()
    return steps * batch_size / (time.perf_counter() - start)


class OnnxRuntimeContender:
    """tools/torch_alexnet.py's network with the Keras model's weights, exported by `torch.onnx.export` and run
    by ONNX Runtime's CPU provider (all graph optimizations, sequential execution, `threads` intra-op threads)
    on the same batch, NCHW."""

    def __init__(self, model: keras.Model, onnx_path: str, images: np.ndarray, threads: int):
        import onnxruntime
        import torch

        import torch_alexnet  # Beside this script (requirements-bench.txt): torch is imported only here.

        config = alexnet.architecture_of(model)
        twin = torch_alexnet.TorchAlexNet(config.num_classes, config.image_size, config.width, dropout=0.0)
        torch_alexnet.load_keras_weights(twin, npy_weights.npy_weights(model))
        torch_alexnet.export_onnx(twin, onnx_path, config.image_size)
        del twin
        torch.set_num_threads(threads)  # The exporter's pool; idle afterwards.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.version = onnxruntime.__version__
        self.feed = {"images": np.ascontiguousarray(images.transpose(0, 3, 1, 2))}
        self.batch_size = len(images)
        self.images_rate(_WARMUP_STEPS.value)

    def logits(self) -> np.ndarray:
        return self.session.run(["logits"], self.feed)[0]

    def images_rate(self, steps: int) -> float:
        return _images_per_sec(lambda: self.session.run(["logits"], self.feed), steps, self.batch_size)


def run_serve() -> dict:
    """The `serve` subcommand: the SavedModel's two signatures against ONNX Runtime, alternating."""
    if flags.FLAGS["variant"].present and set(_VARIANT.value) != {"grouped"}:
        raise errors.ConfigError("serve times the grouped network (ONNX Runtime's twin is grouped): drop --variant")
    try:
        import onnxruntime  # noqa: F401  Checked before the model: building and exporting take a while.
        import torch  # noqa: F401
    except ImportError as error:
        raise errors.ConfigError(f"serve needs {error.name}: pip install -r requirements-bench.txt") from None
    threads, batch_size, image_size = _THREADS.value, _BATCH_SIZE.value, _IMAGE_SIZE.value
    policy = _DTYPE_POLICY.value[0]
    with dtype_policy(policy):
        model = alexnet.build_alexnet(num_classes=NUM_CLASSES, image_size=image_size, width=_WIDTH.value,
                                        init="he", seed=0, **VARIANTS["grouped"])
    images, _ = synthetic_batch(batch_size, image_size)
    jpegs = synthetic_jpegs(batch_size)
    # ImageNet's published per-channel mean: no statistics file needed, the same arithmetic as a mean image.
    data = pipeline.DataConfig(data_dir=None, mean="channel", mean_rgb=(123.68, 116.779, 103.939))
    with tempfile.TemporaryDirectory(prefix="benchmark_serve_") as scratch:
        export_dir = os.path.join(scratch, "saved_model")
        serving.export_model(model, data, export_dir)
        ours = SavedModelContender(export_dir, images, jpegs)
        theirs = OnnxRuntimeContender(model, os.path.join(scratch, "alexnet.onnx"), images, threads)
        logits, reference = ours.logits(), theirs.logits()
        runs = {"savedmodel": [], "onnxruntime": [], "savedmodel_jpeg": [], "matmul_gflops": []}
        for _ in range(_REPEATS.value):
            # The matmul next to predict_images, so that their ratio (the paired roofline fraction) sees one load.
            runs["matmul_gflops"].append(round(matmul_gflops(_MATMUL_SIZE.value), 1))
            runs["savedmodel"].append(round(ours.images_rate(_STEPS.value), 2))
            runs["onnxruntime"].append(round(theirs.images_rate(_STEPS.value), 2))
            runs["savedmodel_jpeg"].append(round(ours.jpeg_rate(_STEPS.value), 2))
    flops = inference_flops_per_image(model)
    peak = max(runs["matmul_gflops"])  # A peak: load from other processes only lowers the samples.
    roofline = peak * 1e9 / flops
    rate = _median(runs["savedmodel"])
    # Each repeat's rate against its own matmul sample: on a shared machine, load scales both alike.
    paired = statistics.median(r * flops / (g * 1e9) for r, g in zip(runs["savedmodel"], runs["matmul_gflops"]))
    return {"subcommand": "serve", "variant": "grouped", **VARIANTS["grouped"], "params": model.count_params(),
            "savedmodel_images_per_sec": rate, "onnxruntime_images_per_sec": _median(runs["onnxruntime"]),
            "savedmodel_over_onnxruntime": _median_ratio(runs["savedmodel"], runs["onnxruntime"]),
            "savedmodel_jpeg_images_per_sec": _median(runs["savedmodel_jpeg"]),
            "inference_flops_per_image": flops, "matmul_peak_gflops": peak,
            "roofline_images_per_sec": round(roofline, 1), "roofline_fraction": round(rate / roofline, 3),
            "roofline_fraction_paired": round(paired, 3),
            "max_abs_logit_difference": float(np.abs(logits - reference).max()),
            "max_abs_logit": float(np.abs(reference).max()),
            "savedmodel_runs": runs["savedmodel"], "onnxruntime_runs": runs["onnxruntime"],
            "savedmodel_jpeg_runs": runs["savedmodel_jpeg"], "matmul_runs": runs["matmul_gflops"],
            "jpeg_size": [_JPEG_HEIGHT, _JPEG_WIDTH], "threads": threads,
            "onnxruntime_intra_op_threads": threads, "onnxruntime_version": theirs.version,
            **_settings(), "dtype_policy": policy}


SUBCOMMANDS = {"pipeline": run_pipeline, "model": run_model, "compare": run_compare, "serve": run_serve}


def _configure(subcommand: str) -> None:
    """Applies the thread flags, which TensorFlow accepts only before its runtime starts (so this runs first).
    `serve` pins the process to --threads cores and gives both TensorFlow pools --threads threads."""
    intra, inter = _INTRA_OP_THREADS.value, _INTER_OP_THREADS.value
    if subcommand == "serve":
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:_THREADS.value])
        intra = inter = _THREADS.value
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)


def run(subcommand: str) -> None:
    _configure(subcommand)
    results = SUBCOMMANDS[subcommand]()
    for result in results if isinstance(results, list) else [results]:
        print(json.dumps(result))


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
        raise app.UsageError(f"expected one subcommand of {sorted(SUBCOMMANDS)}, got {argv[1:]}")
    cli.run_main("benchmark", lambda: run(argv[1]), argv[:1])


if __name__ == "__main__":
    cli.quiet_main(main)
