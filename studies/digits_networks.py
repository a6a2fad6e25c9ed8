"""Two small trained CNNs for scikit-learn's bundled digits, and the inputs of their normalization
layers: the real activations the network studies (activations, small_batch, predictions) measure.

The two networks are the same but for their normalization layers: ``"batchnorm"`` uses
``BatchNorm2d``, ``"groupnorm"`` ``GroupNorm`` with ``GROUP_CHANNELS`` channels per group. The
first normalization layer sits on the raw pixels (0..16, as the data set stores them), as an input
normalization for raw sensor data does; so a constant offset added to the pixels reaches that
layer's groups unchanged and changes only their |mean|/std, which is what the predictions study
sweeps. Convolutions have no bias before a normalization layer (it would be removed anyway).

Training is on the CPU, seeded and deterministic: the split and the batch order come from seeded
generators, torch runs on ``TRAINING_THREADS`` threads with deterministic algorithms, and two runs
give the same weights bit for bit. The trained weights are cached under ``cache_directory()``
keyed by a hash of this module's source, the training settings and the torch version; a file is
written to a temporary name and renamed, and one that does not load or whose weights do not match
their stored digest is retrained, not trusted.
"""
import contextlib
import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from numerics import cache
from studies import report

NETWORKS = ("batchnorm", "groupnorm")
#: channels per GroupNorm group (the single-channel input layer has one group)
GROUP_CHANNELS = 4
#: the batch sizes whose normalization-layer inputs the studies record
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
#: share of the 1797 images held out (fixed by SPLIT_SEED)
HELD_OUT_SHARE = 0.25
SPLIT_SEED = 0
TRAINING_THREADS = 1
CLASSES = 10
#: training epochs per study profile: smoke trains briefly through the same code path
PROFILE_EPOCHS = {"smoke": 2, "default": 12, "full": 12}


@dataclasses.dataclass(frozen=True)
class Training:
    """Everything that decides the trained weights (with this module's source and torch's
    version: both are in the cache key)."""
    network: str
    epochs: int = 12
    seed: int = 0
    batch_size: int = 32
    learning_rate: float = 3e-3

    def __post_init__(self):
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {self.network!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


class DigitNetwork(torch.nn.Module):
    """norm → (conv → norm → ReLU) ×3 with a 2×2 max-pool after the second block → global average
    pool → linear. 8×8 inputs: the normalization layers see 8×8, 8×8, 8×8 and 4×4 maps."""

    def __init__(self, network):
        super().__init__()

        def normalization(channels):
            if network == "batchnorm":
                return torch.nn.BatchNorm2d(channels)
            return torch.nn.GroupNorm(max(1, channels // GROUP_CHANNELS), channels)

        def block(inputs, outputs):
            return [torch.nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
                    normalization(outputs), torch.nn.ReLU()]

        self.features = torch.nn.Sequential(
            normalization(1), *block(1, 16), *block(16, 32), torch.nn.MaxPool2d(2),
            *block(32, 32), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.classifier = torch.nn.Linear(32, CLASSES)

    def forward(self, images):
        return self.classifier(self.features(images))


def image_tensor(images):
    """``images`` as a torch tensor with the canonical NCHW strides. torch.from_numpy keeps numpy's
    strides, and numpy gives a size-1 channel axis of a fancy-indexed array a stride that makes
    the tensor read as channels-last too: torch 2.13's CPU GroupNorm backward then crashes the
    process (segmentation fault) on single-channel input, so the copy here is not optional."""
    return torch.from_numpy(np.array(images, dtype=np.float32)).clone(
        memory_format=torch.contiguous_format)


def normalization_layers(model):
    """The model's normalization modules in forward order, as (name, module)."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))]


# ---- data ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def digits():
    """The bundled digits as float32 images (N, 1, 8, 8) of raw pixel values 0..16, the labels,
    and the fixed split: (images, labels, train_indices, held_out_indices). Read once per process
    and shared: callers index them (a copy) and never write to them."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    held_out_count = int(round(HELD_OUT_SHARE * len(labels)))
    return images, labels, np.sort(order[held_out_count:]), np.sort(order[:held_out_count])


# ---- deterministic training ---------------------------------------------------------------------

@contextlib.contextmanager
def deterministic_torch(threads=TRAINING_THREADS):
    """Fixed thread count and deterministic algorithms for the block; the previous global settings
    come back afterwards."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)


def accuracy(model, images, labels):
    """Share of ``images`` classified as ``labels`` in inference mode (running statistics)."""
    model.eval()
    with torch.no_grad():
        predicted = model(image_tensor(images)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


def train(training):
    """A freshly trained model (in inference mode) and a dict of what the training measured."""
    images, labels, train_indices, held_out_indices = digits()
    start = time.perf_counter()
    with deterministic_torch():
        torch.manual_seed(training.seed)
        model = DigitNetwork(training.network)
        optimizer = torch.optim.Adam(model.parameters(), lr=training.learning_rate)
        order_generator = torch.Generator().manual_seed(training.seed)
        train_images = image_tensor(images[train_indices])
        train_labels = torch.from_numpy(labels[train_indices])
        for _ in range(training.epochs):
            model.train()
            for batch in torch.randperm(len(train_indices), generator=order_generator).split(
                    training.batch_size):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(train_images[batch]),
                                                         train_labels[batch])
                loss.backward()
                optimizer.step()
        held_out_accuracy = accuracy(model, images[held_out_indices], labels[held_out_indices])
    return model, {"training_seconds": time.perf_counter() - start,
                   "held_out_accuracy": held_out_accuracy}


# ---- the weight cache ---------------------------------------------------------------------------

def cache_directory():
    """Where trained weights live: the numerics cache root ($NUMERICS_CACHE_DIR, else
    $XDG_CACHE_HOME/numerics, else ~/.cache/numerics) / networks."""
    return cache.cache_root() / "networks"


def cache_key(training):
    """A hash of the training code (this file), the settings and the torch version."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(json.dumps(dataclasses.asdict(training), sort_keys=True).encode())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:20]


def state_digest(state):
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


def _load_cached(path, key):
    """The cached payload, or None when the file is missing, unreadable, for another key, or its
    weights do not match their digest (a corrupt file is never trusted)."""
    try:
        payload = torch.load(path, weights_only=True)
        if payload["key"] != key or state_digest(payload["state"]) != payload["digest"]:
            return None
        return payload
    except Exception:  # truncated, not a zip, a bad pickle, missing keys: retrain
        return None


def trained_network(network, epochs=Training.epochs, directory=None):
    """The trained model (inference mode) and a dict: the training settings, the cache key and
    path, whether it came from the cache, the measured training seconds (of the run that made the
    weights) and the held-out accuracy."""
    training = Training(network, epochs)
    key = cache_key(training)
    path = Path(directory or cache_directory()) / f"{network}-{key}.pt"
    payload = _load_cached(path, key)
    from_cache = payload is not None
    if not from_cache:
        model, measured = train(training)
        state = model.state_dict()
        payload = {"key": key, "state": state, "digest": state_digest(state), **measured}
        with report.atomic_path(path) as temporary:
            torch.save(payload, temporary)
    model = DigitNetwork(network)
    model.load_state_dict(payload["state"])
    model.eval()
    return model, {**dataclasses.asdict(training), "cache_key": key, "cache_path": str(path),
                   "from_cache": from_cache, "training_seconds": payload["training_seconds"],
                   "held_out_accuracy": payload["held_out_accuracy"]}


# ---- recording the inputs of the normalization layers -------------------------------------------

def record_inputs(model, images, batch_size):
    """The input of every normalization layer for ``images`` run in batches of ``batch_size``
    (forward pre-hooks; the remainder that does not fill a batch is left out). Inference mode:
    BatchNorm uses its running statistics, so every recorded input is a function of its own image
    and a batch of B recorded rows is what a BatchNorm layer would see in a batch of B. Returns a
    list, one entry per layer in forward order, of float32 arrays (batches, batch_size, C, H, W).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    images = np.asarray(images, dtype=np.float32)
    batch_count = len(images) // batch_size
    if batch_count == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {len(images)} images")
    layers = [module for _, module in normalization_layers(model)]
    recorded = [[] for _ in layers]

    def hook_for(index):
        def hook(module, inputs):
            recorded[index].append(inputs[0].detach().numpy().copy())
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(index))
               for index, layer in enumerate(layers)]
    model.eval()
    try:
        with torch.no_grad(), deterministic_torch():
            for batch in range(batch_count):
                model(image_tensor(images[batch * batch_size:(batch + 1) * batch_size]))
    finally:
        for handle in handles:
            handle.remove()
    return [np.stack(batches) for batches in recorded]


@functools.lru_cache(maxsize=4)
def cached_network(network, epochs):
    """trained_network from the default cache directory, kept once per process (the study cells
    of one process share it; it is never modified: numerics_statistics restores what it changes)."""
    return trained_network(network, epochs)


def normalization_groups(model):
    """Per normalization layer in forward order: the (norm, groups) of numerics.moments that
    reproduce its groups: ("batch", None) or ("group", num_groups)."""
    return [("batch", None) if isinstance(module, torch.nn.BatchNorm2d)
            else ("group", module.num_groups) for _, module in normalization_layers(model)]
