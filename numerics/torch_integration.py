"""PyTorch integration: a model's normalization layers compute their output with numerics.

    from numerics.torch_integration import numerics_statistics
    with torch.no_grad(), numerics_statistics(model, algorithm="welford", acc_dtype="bfloat16"):
        logits = model(x)

Inside the block every torch.nn.BatchNorm1d/2d/3d, GroupNorm, LayerNorm and InstanceNorm1d/2d/3d of
``model`` returns ``numerics.normalize`` of its input (its eps, weight and bias; the chosen rule,
accumulator and topology; ddof 0, as every framework normalizes), or with ``exact=True`` the
correctly rounded exact output, ``numerics.reference.normalize``. Statistics are always those of
the current input: BatchNorm normalizes with the statistics of the current batch (training-mode
statistics) even in eval mode, and InstanceNorm with each instance's, whatever
``track_running_stats`` says. Running statistics are never read nor updated.

How: a forward hook on each layer (``register_forward_hook``, whose return value replaces the
layer's output), with the layers switched to eval mode for the block so that their own forward,
which still runs first, neither updates running statistics nor rejects a batch of one. On exit the
hooks are removed and every layer's training flag restored: outside the block the model is
unchanged. For inference only: the output is computed outside autograd, so a layer that would need
a gradient (grad mode on and a parameter or the input requiring grad) raises RuntimeError.

Only this module imports torch; numerics.statistics.as_array calls ``tensor_to_numpy`` when it is
handed a tensor, so importing numerics never imports torch.
"""
import contextlib
import math

import ml_dtypes
import numpy as np
import torch

from . import algorithms, normalization, precision, reference
from . import topology as topologies

BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
INSTANCE_NORMS = {torch.nn.InstanceNorm1d: 3, torch.nn.InstanceNorm2d: 4, torch.nn.InstanceNorm3d: 5}
LAYERS = BATCH_NORMS + tuple(INSTANCE_NORMS) + (torch.nn.GroupNorm, torch.nn.LayerNorm)


def tensor_to_numpy(tensor):
    """A PyTorch CPU tensor as a numpy array of the same values and dtype, detached from autograd;
    bfloat16 becomes ml_dtypes.bfloat16 (torch's own conversion has no numpy bfloat16)."""
    if tensor.device.type != "cpu":
        raise ValueError(f"x is a PyTorch tensor on {tensor.device}: pass a CPU tensor, or a CUDA "
                         f"tensor with device='cuda'")
    tensor = tensor.detach().resolve_conj().resolve_neg()
    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def numpy_to_tensor(array):
    """The inverse of tensor_to_numpy for the four float formats."""
    array = np.ascontiguousarray(array)
    if array.dtype == precision.NUMPY_DTYPES["bfloat16"]:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def layer_call(module, x):
    """(input array, normalize keyword arguments, output shape) of one layer on input ``x``."""
    parameters = {"eps": module.eps,
                  "weight": None if module.weight is None else tensor_to_numpy(module.weight),
                  "bias": None if module.bias is None else tensor_to_numpy(module.bias)}
    array = tensor_to_numpy(x)
    if isinstance(module, BATCH_NORMS):
        return array, dict(parameters, norm="batch"), array.shape
    if isinstance(module, torch.nn.GroupNorm):
        return array, dict(parameters, norm="group", groups=module.num_groups), array.shape
    if isinstance(module, torch.nn.LayerNorm):
        # LayerNorm normalizes the trailing normalized_shape: one row per leading index
        normalized = math.prod(module.normalized_shape)
        flat = array.reshape(-1, normalized)
        for name in ("weight", "bias"):
            if parameters[name] is not None:
                parameters[name] = parameters[name].reshape(normalized)
        return flat, dict(parameters, norm="layer"), array.shape
    batched_rank = INSTANCE_NORMS[type(module)]
    # an unbatched input (C, *spatial) is one instance of a batch of one
    batched = array if array.ndim == batched_rank else array[np.newaxis]
    return batched, dict(parameters, norm="instance"), array.shape


def check_inference(module, x):
    if torch.is_grad_enabled() and (x.requires_grad or any(
            parameter.requires_grad for parameter in module.parameters(recurse=False))):
        raise RuntimeError(
            f"numerics_statistics is for inference only (no autograd through numerics): "
            f"{type(module).__name__} got a tensor or parameters that require grad with grad "
            f"mode on; run the model under torch.no_grad() or torch.inference_mode()")


def replacement_hook(algorithm, acc_dtype, topology, exact):
    """A forward hook returning the layer's output computed by numerics."""

    def hook(module, args, output):
        x = args[0]
        check_inference(module, x)
        array, arguments, shape = layer_call(module, x)
        if exact:
            y = reference.normalize(array, **arguments)
        else:
            y = normalization.normalize(array, algorithm=algorithm, acc_dtype=acc_dtype,
                                        topology=topology, **arguments)
        return numpy_to_tensor(y.reshape(shape))

    return hook


@contextlib.contextmanager
def numerics_statistics(model, algorithm="welford", acc_dtype=None, topology=None, exact=False):
    """Within the block, ``model``'s normalization layers compute their output with numerics
    (module docstring). ``algorithm``: one of numerics.ALGORITHMS; ``acc_dtype``: None (float32,
    float64 for float64 input) or one of numerics.FORMATS; ``topology``: a preset or a Topology;
    ``exact=True``: the correctly rounded exact output instead. Yields the list of layers it
    hooked."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if algorithm not in algorithms.ALGORITHMS:
        raise ValueError(f"algorithm must be one of {tuple(algorithms.ALGORITHMS)}, "
                         f"got {algorithm!r}")
    if acc_dtype is not None:
        precision.format_name(acc_dtype, "acc_dtype")
    topologies.resolve(topology)
    if not isinstance(exact, bool):
        raise ValueError(f"exact must be True or False, got {exact!r}")
    layers = [module for module in model.modules() if isinstance(module, LAYERS)]
    training = [layer.training for layer in layers]
    hook = replacement_hook(algorithm, acc_dtype, topology, exact)
    handles = []
    try:
        for layer in layers:
            layer.eval()
            handles.append(layer.register_forward_hook(hook))
        yield layers
    finally:
        for handle in handles:
            handle.remove()
        for layer, was_training in zip(layers, training):
            layer.train(was_training)
