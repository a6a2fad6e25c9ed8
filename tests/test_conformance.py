"""The conformance cases: every case of the issue trackers named, sourced, seeded, and its expected
statistics confirmed by the exact reference; the failure mechanism each report describes reproduced
by the numerics rule it names."""
from fractions import Fraction

import numpy as np
import pytest

import numerics
from numerics import conformance, reference

from helpers import assert_bitwise_equal

#: the cases of docs/architecture.md, section 7.4, with their trackers and numbers
REQUIRED = {"onnxruntime-21935": "ONNX Runtime #21935", "onnxruntime-28463": "ONNX Runtime #28463",
            "pytorch-40302": "PyTorch #40302", "pytorch-51102": "PyTorch #51102",
            "pytorch-5410": "PyTorch #5410", "tensorflow-118701": "TensorFlow #118701",
            "flax-1491": "Flax #1491", "numerics-groupnorm-channels-last": "numerics"}


def test_every_required_case_is_there_with_its_source():
    for name, source in REQUIRED.items():
        case = conformance.case(name)
        assert case.source.startswith(source)
        assert case.url.endswith(source.split("#")[-1]) or source == "numerics"
        assert case.what_broke and case.expected
        assert case.norm in numerics.NORMS and case.layout in numerics.LAYOUTS and case.eps > 0


@pytest.mark.parametrize("case", conformance.CASES, ids=lambda case: case.name)
def test_inputs_are_seeded_float32_in_the_cases_layout(case):
    x = case.input("smoke")
    assert x.dtype == np.float32
    logical = x.shape if case.layout == "NCHW" else (x.shape[0], x.shape[-1], *x.shape[1:-1])
    assert logical == case.smoke_shape
    assert_bitwise_equal(x, case.input("smoke"))
    if np.unique(x).size > x.shape[-1]:  # random data (not constants or arange rows): seeded
        assert not np.array_equal(x, case.input("smoke", base_seed=1))


def test_expected_values_are_the_exact_ones():
    exact = {name: conformance.case(name).exact(conformance.case(name).input("smoke"))
             for name in ("onnxruntime-21935", "onnxruntime-28463", "onnxruntime-28463-shifted",
                          "pytorch-5410")}
    mean, var = exact["onnxruntime-21935"]
    assert mean[0] == 1234 and var[0] == 0
    for name, centre in (("onnxruntime-28463", Fraction(80003, 2)),
                         ("onnxruntime-28463-shifted", Fraction(160003, 2))):
        mean, var = exact[name]
        assert mean[0] == centre.numerator / numerics.reference.mpmath.mpf(centre.denominator)
        assert var[0] == 1.25
    mean, var = exact["pytorch-5410"]
    assert all(value == 0 for value in var) and all(abs(value) > 1e7 for value in mean)
    x = conformance.case("pytorch-40302").input("smoke")
    _, var = conformance.case("pytorch-40302").exact(x)
    assert all(0.8e-4 < value < 1.2e-4 for value in var)


@pytest.mark.parametrize("name, kappa_at_least", [("pytorch-40302", 5e3), ("pytorch-51102", 1e3),
                                                  ("tensorflow-118701", 5e3), ("flax-1491", 4e3),
                                                  ("numerics-groupnorm-channels-last", 5e3)])
def test_each_case_is_ill_conditioned_enough_to_break_the_textbook_formula(name, kappa_at_least):
    case = conformance.case(name)
    kappa = reference.condition_number(case.input("smoke"), case.norm, groups=case.groups,
                                       layout=case.layout)
    # κ²u near or above 1 in float32: the textbook one-pass formula keeps few or no digits
    assert np.min(kappa) >= kappa_at_least


def test_the_reported_mechanisms_reproduce():
    # ONNX Runtime #21935: the textbook formula in float32, summed in order, goes negative on
    # 256 copies of 1234.0, so 1/sqrt(var + 1e-5) is NaN; two passes give exactly 0
    case = conformance.case("onnxruntime-21935")
    x = case.input()
    naive = numerics.moments(x, "layer", algorithm="naive", acc_dtype="float32",
                             topology="sequential").var
    assert naive[0] + np.float32(case.eps) < 0  # 1/sqrt of it is NaN
    assert numerics.moments(x, "layer", algorithm="two_pass", acc_dtype="float32").var[0] == 0
    # PyTorch #51102: the textbook formula on randn + 2000 over 4 values loses every digit
    case = conformance.case("pytorch-51102")
    x = case.input()
    _, exact = case.exact(x)
    naive = numerics.moments(x, "layer", algorithm="naive", acc_dtype="float32").var
    assert np.max(numerics.metrics.relative_error(naive, exact)) > 0.1


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="no conformance case"):
        conformance.case("caffe-1")
    with pytest.raises(ValueError, match="profile"):
        conformance.CASES[0].input("huge")
