"""The trained digit networks (studies/digits_networks.py) and the three studies built on them:
deterministic training, the weight cache (round trip, corrupt files retrained), the recorded
normalization-layer inputs, and each study's cells and report on its smoke grid."""
import numpy as np
import pandas as pd
import pytest
import torch

import numerics
from numerics import reference
from studies import activations, digits_networks, predictions, report, small_batch
from studies.engine import Cell, runner

#: the shortest training that runs the whole code path
TINY_EPOCHS = 1


@pytest.mark.parametrize("network", digits_networks.NETWORKS)
def test_training_is_deterministic(network):
    training = digits_networks.Training(network, epochs=TINY_EPOCHS)
    first, measured = digits_networks.train(training)
    second, _ = digits_networks.train(training)
    first_state, second_state = first.state_dict(), second.state_dict()
    assert digits_networks.state_digest(first_state) == digits_networks.state_digest(second_state)
    for name, tensor in first_state.items():
        assert torch.equal(tensor, second_state[name]), name
    # one epoch already learns: far above the 10 % of guessing
    assert measured["held_out_accuracy"] > 0.5


def test_training_settings_are_checked():
    with pytest.raises(ValueError, match="network"):
        digits_networks.Training("layernorm")
    with pytest.raises(ValueError, match="epochs"):
        digits_networks.Training("batchnorm", epochs=0)


def test_cache_round_trip_and_corrupt_files(tmp_path):
    model, info = digits_networks.trained_network("groupnorm", TINY_EPOCHS, tmp_path)
    assert not info["from_cache"]
    digest = digits_networks.state_digest(model.state_dict())
    again, info_again = digits_networks.trained_network("groupnorm", TINY_EPOCHS, tmp_path)
    assert info_again["from_cache"] and info_again["cache_path"] == info["cache_path"]
    assert digits_networks.state_digest(again.state_dict()) == digest
    assert [path.name for path in tmp_path.iterdir()] == [f"groupnorm-{info['cache_key']}.pt"]

    path = tmp_path / f"groupnorm-{info['cache_key']}.pt"
    path.write_bytes(path.read_bytes()[:200])  # truncated: does not load
    retrained, info_truncated = digits_networks.trained_network("groupnorm", TINY_EPOCHS, tmp_path)
    assert not info_truncated["from_cache"]
    assert digits_networks.state_digest(retrained.state_dict()) == digest

    payload = torch.load(path, weights_only=True)
    payload["state"]["classifier.bias"][0] += 1.0  # loads, but the weights no longer match
    torch.save(payload, path)
    _, info_tampered = digits_networks.trained_network("groupnorm", TINY_EPOCHS, tmp_path)
    assert not info_tampered["from_cache"]
    _, info_repaired = digits_networks.trained_network("groupnorm", TINY_EPOCHS, tmp_path)
    assert info_repaired["from_cache"]


def test_cache_key_follows_the_settings():
    keys = {digits_networks.cache_key(digits_networks.Training(network, epochs))
            for network in digits_networks.NETWORKS for epochs in (1, 2)}
    assert len(keys) == 4


def test_recorded_inputs():
    model, _ = digits_networks.cached_network("batchnorm", digits_networks.PROFILE_EPOCHS["smoke"])
    images = digits_networks.digits()[0][:10]
    recorded = digits_networks.record_inputs(model, images, 4)
    assert [layer.shape for layer in recorded] == [(2, 4, 1, 8, 8), (2, 4, 16, 8, 8),
                                                   (2, 4, 32, 8, 8), (2, 4, 32, 4, 4)]
    # the first layer normalizes the raw pixels: its input is the images themselves
    np.testing.assert_array_equal(recorded[0].reshape(8, 1, 8, 8), images[:8])
    # inference mode: an image's recorded inputs do not depend on the batch it ran in
    single = digits_networks.record_inputs(model, images[:8], 1)
    for in_batches, alone in zip(recorded, single):
        np.testing.assert_allclose(in_batches.reshape(alone.shape), alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        digits_networks.record_inputs(model, images, 0)
    with pytest.raises(ValueError, match="batch_size"):
        digits_networks.record_inputs(model, images, 11)
    assert digits_networks.normalization_groups(model) == [("batch", None)] * 4


def test_single_channel_input_has_canonical_strides():
    """numpy gives the size-1 channel axis of a fancy-indexed array a stride that makes a
    from_numpy tensor read as channels-last too (torch 2.13's GroupNorm backward crashes on it)."""
    images = digits_networks.digits()[0][np.array([3, 1, 2])]
    tensor = digits_networks.image_tensor(images)
    assert tensor.stride() == (64, 64, 8, 1)
    np.testing.assert_array_equal(tensor.numpy(), images)


def test_activation_rows_match_the_exact_condition_number():
    images = digits_networks.digits()[0][:16].reshape(2, 8, 1, 8, 8)
    row = activations.layer_row(images, "batch", None)
    expected = [float(reference.condition_number(batch, "batch")[0]) for batch in images]
    assert row["kappa_min"] == min(expected) and row["kappa_max"] == max(expected)
    assert row["group_count"] == 2 and row["group_size"] == 8 * 64
    assert row["zero_share"] == float((images == 0).mean())


def test_stacked_batches_give_each_batch_its_own_statistics():
    """small_batch computes all batches of a layer in one call, stacked as (B, batches·C, ...):
    the same groups, in the same order, so the same bits as one call per batch."""
    samples = numerics.data.generate((3, 4, 5, 6, 6), "float32", "half_normal", 1.0, 2.0, seed=3)
    stacked = np.ascontiguousarray(np.swapaxes(samples, 0, 1)).reshape(4, 15, 6, 6)
    for algorithm in ("naive", "welford"):
        together = numerics.moments(stacked, "batch", algorithm=algorithm, acc_dtype="bfloat16")
        for batch in range(3):
            alone = numerics.moments(samples[batch], "batch", algorithm=algorithm,
                                     acc_dtype="bfloat16")
            for statistic in range(2):
                np.testing.assert_array_equal(together[statistic][batch * 5:(batch + 1) * 5],
                                              alone[statistic])


def test_error_summary():
    mean_error, var_error = small_batch.errors([1.0, 2.0], [4.0, np.nan], [1.5, 2.0], [4.0, 1.0])
    np.testing.assert_array_equal(mean_error, [0.25, 0.0])
    row = small_batch.summary("rounding", mean_error, var_error)
    assert row["nonfinite_groups"] == 1 and row["max_var_error"] == np.inf
    assert row["median_mean_error"] == 0.125


def test_exact_statistics_reproduce_torch_groupnorm():
    """The GroupNorm network computes its statistics per image, as torch does: with exact
    statistics through the integration its logits are torch's own up to float32 rounding."""
    model, _ = digits_networks.cached_network("groupnorm", digits_networks.PROFILE_EPOCHS["smoke"])
    images, _ = predictions.held_out(8, 0.0)
    exact = predictions.logits(model, images, 4, exact=True)
    with torch.no_grad():
        plain = model(digits_networks.image_tensor(images)).numpy()
    np.testing.assert_allclose(exact, plain, rtol=1e-4, atol=1e-4)


def test_prediction_cell():
    settings = {"network": "batchnorm", "offset": 1e4, "algorithm": "naive",
                "acc_dtype": "bfloat16", "images": 8, "batch_size": 4,
                "epochs": digits_networks.PROFILE_EPOCHS["smoke"]}
    (row,) = predictions.cell(Cell("predictions", "offsets", settings, 0))
    assert row["changed_count"] == round(row["changed_share"] * 8)
    # the first layer's groups are the shifted pixels of a batch: |mean|/std near 1e4/6
    assert 1e3 < row["kappa_median"] < 1e4
    assert predictions.cell(Cell("predictions", "offsets", settings, 0)) == [row]


EXPECTED_COLUMNS = {
    "activations": {"network", "batch_size", "layer", "norm", "group_size", "group_count",
                    "kappa_min", "kappa_median", "kappa_max", "value_mean", "value_std",
                    "zero_share"},
    "small_batch": {"network", "batch_size", "layer", "kind", "algorithm", "acc_dtype",
                    "median_var_error", "max_var_error", "median_mean_error", "nonfinite_groups"},
    "predictions": {"network", "offset", "algorithm", "acc_dtype", "changed_share",
                    "max_logit_change", "nonfinite_share", "kappa_median", "exact_accuracy"},
}


@pytest.mark.parametrize("module", (activations, small_batch, predictions),
                         ids=lambda module: module.STUDY.name)
def test_study_smoke_run(module, tmp_path):
    section, _ = runner.run_study(module, runner.RunOptions(tmp_path, "smoke"),
                                  report.provenance(0, "smoke"))
    name = module.STUDY.name
    table = pd.read_parquet(tmp_path / "data" / f"{name}.parquet")
    assert EXPECTED_COLUMNS[name] <= set(table.columns)
    assert len(table) > 0
    figures = [path for path in section.files if path.suffix == ".png"]
    assert figures and all(path.exists() for path in figures)
    assert section.body.count("\n- ") >= 2  # findings, filled from the data
    assert "{" not in section.body  # every template field was filled
