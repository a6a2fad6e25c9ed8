"""The PyTorch integration: tensors into numerics (bfloat16 and float16 included), and
numerics_statistics swapping every normalization layer's output for numerics' inside the block."""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import numerics  # noqa: E402
from numerics import precision, reference  # noqa: E402
from numerics.normalization import normalize  # noqa: E402
from numerics.torch_integration import numerics_statistics, numpy_to_tensor, tensor_to_numpy  # noqa: E402
from helpers import assert_bitwise_equal  # noqa: E402

FORMATS = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32",
           torch.float64: "float64"}


def test_importing_numerics_does_not_import_torch():
    code = "import sys, numerics, numerics.reference, numerics.normalization; print('torch' in sys.modules)"
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
    assert finished.stdout.strip() == "False"


@pytest.mark.parametrize("dtype", list(FORMATS))
def test_tensors_enter_moments_normalize_and_reference_as_they_are(dtype):
    values = np.random.default_rng(0).normal(2, 1, (3, 4, 5)).astype(np.float32)
    tensor = torch.from_numpy(values).to(dtype).requires_grad_(dtype != torch.bfloat16)
    as_numpy = precision.convert(values, FORMATS[dtype])
    for left, right in zip(numerics.moments(tensor, "instance"), numerics.moments(as_numpy, "instance")):
        assert_bitwise_equal(left, right)
    assert_bitwise_equal(normalize(tensor, "batch"), normalize(as_numpy, "batch"))
    assert normalize(tensor, "batch").dtype == precision.NUMPY_DTYPES[FORMATS[dtype]]
    assert_bitwise_equal(reference.moments(tensor, "layer")[1].astype(float),
                         reference.moments(as_numpy, "layer")[1].astype(float))


def test_tensor_round_trip_keeps_the_bits():
    tensor = torch.randn(7, dtype=torch.float32).to(torch.bfloat16)
    back = numpy_to_tensor(tensor_to_numpy(tensor))
    assert back.dtype == torch.bfloat16 and torch.equal(back, tensor)


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 1), torch.nn.GroupNorm(4, 8), torch.nn.InstanceNorm2d(8, affine=True),
        torch.nn.Flatten(), torch.nn.LayerNorm(8 * 4 * 4), torch.nn.Linear(8 * 4 * 4, 3),
        torch.nn.Unflatten(1, (1, 3)), torch.nn.BatchNorm1d(1), torch.nn.InstanceNorm1d(1))


def expected_output(module, x, exact, acc_dtype):
    """What numerics_statistics must return for one layer, from the numerics API directly."""
    array = tensor_to_numpy(x)
    weight = None if module.weight is None else tensor_to_numpy(module.weight)
    bias = None if module.bias is None else tensor_to_numpy(module.bias)
    if isinstance(module, torch.nn.LayerNorm):
        array, weight, bias = array.reshape(array.shape[0], -1), weight.reshape(-1), bias.reshape(-1)
        norm, groups = "layer", None
    elif isinstance(module, torch.nn.GroupNorm):
        norm, groups = "group", module.num_groups
    elif isinstance(module, numerics.torch_integration.BATCH_NORMS):
        norm, groups = "batch", None
    else:
        norm, groups = "instance", None
    arguments = dict(groups=groups, eps=module.eps, weight=weight, bias=bias)
    if exact:
        return reference.normalize(array, norm, **arguments).reshape(x.shape)
    return normalize(array, norm, acc_dtype=acc_dtype, algorithm="naive",
                     **arguments).reshape(x.shape)


@pytest.mark.parametrize("exact", [False, True])
def test_every_layer_computes_with_numerics_inside_the_block(exact):
    model = small_model().train()
    x = torch.randn(4, 3, 6, 6) * 3 + 100
    inputs, outputs = {}, {}
    with torch.no_grad():
        plain = model(x)
        before = {name: value.clone() for name, value in model.state_dict().items()}
        with numerics_statistics(model, algorithm="naive", acc_dtype="bfloat16",
                                 exact=exact) as layers:
            # registered after numerics' hooks, so they see the replaced output
            hooks = [hook for module in layers for hook in (
                module.register_forward_pre_hook(
                    lambda module, args: inputs.__setitem__(module, args[0].clone())),
                module.register_forward_hook(
                    lambda module, args, output: outputs.__setitem__(module, output.clone())))]
            model(x)
            for hook in hooks:
                hook.remove()
    assert len(layers) == 6 and set(outputs) == set(layers)
    for module in layers:
        expected = expected_output(module, inputs[module], exact, "bfloat16")
        assert_bitwise_equal(tensor_to_numpy(outputs[module]), expected)
    # outside the block: running statistics untouched, training flags back, same outputs
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(module.training for module in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), plain)


def test_batchnorm_uses_the_current_batch_even_in_eval_mode():
    layer = torch.nn.BatchNorm2d(3).eval()
    layer.running_mean.fill_(50.0)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad(), numerics_statistics(layer, exact=True):
        y = layer(x)
    expected = reference.normalize(tensor_to_numpy(x), "batch", eps=layer.eps,
                                   weight=tensor_to_numpy(layer.weight),
                                   bias=tensor_to_numpy(layer.bias))
    assert_bitwise_equal(tensor_to_numpy(y), expected)
    assert layer.running_mean.eq(50.0).all() and not layer.training


def test_bfloat16_model_stays_in_bfloat16():
    model = small_model().to(torch.bfloat16).eval()
    with torch.no_grad(), numerics_statistics(model):
        logits = model(torch.randn(2, 3, 6, 6, dtype=torch.bfloat16))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_gradients_are_refused_with_a_clear_error():
    model = small_model()
    with numerics_statistics(model), pytest.raises(RuntimeError, match="inference only.*no_grad"):
        model(torch.randn(2, 3, 6, 6))
    assert all(module.training for module in model.modules())  # restored after the error


@pytest.mark.parametrize("arguments, error, message", [
    ({"model": "resnet"}, TypeError, "model must be a torch.nn.Module"),
    ({"algorithm": "kahan"}, ValueError, "algorithm must be one of"),
    ({"acc_dtype": "int8"}, TypeError, "acc_dtype must be one of"),
    ({"topology": "spiral"}, ValueError, "topology"),
    ({"exact": "yes"}, ValueError, "exact must be True or False"),
])
def test_bad_arguments_are_refused_on_entry(arguments, error, message):
    arguments = {"model": torch.nn.LayerNorm(4), **arguments}
    with pytest.raises(error, match=message):
        with numerics_statistics(**arguments):
            pass


def test_tensors_on_other_devices_are_refused():
    with pytest.raises(ValueError, match="PyTorch tensor on meta"):
        numerics.moments(torch.empty(4, device="meta"))


def test_layernorm_over_trailing_dimensions_and_unbatched_instancenorm():
    torch.manual_seed(1)
    layer = torch.nn.LayerNorm((4, 5), bias=False)
    torch.nn.init.normal_(layer.weight)
    x = torch.randn(2, 3, 4, 5)
    with torch.no_grad(), numerics_statistics(layer, exact=True):
        y = layer(x)
    expected = reference.normalize(tensor_to_numpy(x).reshape(6, 20), "layer", eps=layer.eps,
                                   weight=tensor_to_numpy(layer.weight).reshape(20))
    assert_bitwise_equal(tensor_to_numpy(y), expected.reshape(2, 3, 4, 5))
    instance = torch.nn.InstanceNorm1d(3)
    unbatched = torch.randn(3, 7)
    with torch.no_grad(), numerics_statistics(instance, exact=True):
        z = instance(unbatched)
    assert_bitwise_equal(tensor_to_numpy(z), reference.normalize(
        tensor_to_numpy(unbatched)[np.newaxis], "instance", eps=instance.eps)[0])
