"""Study: the condition numbers of the real normalization groups of two trained digit CNNs.

The accuracy sweep measures every rule against κ = sqrt(1 + (mean/std)²) on synthetic tensors; this
study asks which κ real activations have. The inputs of every normalization layer of the BatchNorm
and the GroupNorm network (studies.digits_networks) are recorded for random batches of the digits
(inference mode: each recorded input is a function of its own image), grouped as each layer groups
them (BatchNorm: a channel over the batch, so κ depends on the batch size; GroupNorm: a group of
channels of one image), and κ is computed exactly from the stored values
(numerics.reference.condition_number). The report shows their distribution per layer beside the
κ of the sweep's |mean|/std grid (studies.accuracy.MEAN_OVER_STD).
"""
import math

import numpy as np
import pandas as pd

from numerics import reference, unit_roundoff
from studies import accuracy, digits_networks
from studies.engine import Slice, Study

NAME = "activations"
TITLE = "Activations of trained networks"
QUANTILES = {"kappa_min": 0.0, "kappa_q05": 0.05, "kappa_q25": 0.25, "kappa_median": 0.5,
             "kappa_q75": 0.75, "kappa_q95": 0.95, "kappa_max": 1.0}
#: random batches recorded per cell
BATCHES = {"smoke": 2, "default": 16, "full": 28}
SMOKE_BATCH_SIZES = (1, 64)


def grid(profile):
    batch_sizes = SMOKE_BATCH_SIZES if profile == "smoke" else digits_networks.BATCH_SIZES
    return (Slice("recorded", {"network": digits_networks.NETWORKS, "batch_size": batch_sizes,
                               "batches": (BATCHES[profile],),
                               "epochs": (digits_networks.PROFILE_EPOCHS[profile],)}),)


def recorded_batches(network, epochs, batch_size, batches, seed):
    """The trained model and the inputs of its normalization layers for ``batches`` disjoint
    random batches of ``batch_size`` digits drawn with ``seed``."""
    model, _ = digits_networks.cached_network(network, epochs)
    images = digits_networks.digits()[0]
    chosen = np.random.default_rng(seed).permutation(len(images))[:batches * batch_size]
    if len(chosen) < batches * batch_size:
        raise ValueError(f"{batches} batches of {batch_size} need more than the {len(images)} "
                         f"digits")
    return model, digits_networks.record_inputs(model, images[chosen], batch_size)


def layer_row(recorded, norm, groups):
    """κ quantiles and value statistics of one layer's recorded input (batches, B, C, H, W)."""
    kappas = np.concatenate([np.ravel(reference.condition_number(batch, norm, groups=groups))
                             for batch in recorded])
    finite = kappas[np.isfinite(kappas)]
    values = recorded.astype(np.float64)
    batch_size, channels = recorded.shape[1], recorded.shape[2]
    spatial = math.prod(recorded.shape[3:])
    group_size = batch_size * spatial if norm == "batch" else channels // groups * spatial
    row = {"norm": norm, "groups": groups, "channels": channels, "group_size": group_size,
           "group_count": int(kappas.size), "constant_groups": int(np.isinf(kappas).sum()),
           "value_mean": float(values.mean()), "value_std": float(values.std()),
           "value_min": float(values.min()), "value_max": float(values.max()),
           "zero_share": float((values == 0).mean())}
    for column, quantile in QUANTILES.items():
        row[column] = float(np.quantile(finite, quantile)) if finite.size else math.nan
    return row


def cell(cell):
    settings = cell.settings
    model, recorded = recorded_batches(settings["network"], settings["epochs"],
                                       settings["batch_size"], settings["batches"], cell.seed)
    rows = []
    for layer, ((norm, groups), inputs) in enumerate(
            zip(digits_networks.normalization_groups(model), recorded)):
        rows.append({"layer": layer, **layer_row(inputs, norm, groups)})
    return rows


def grid_kappas():
    """κ = sqrt(1 + r²) of every |mean|/std r of the accuracy sweep's grid."""
    return np.array([math.sqrt(1.0 + ratio * ratio) for ratio in accuracy.MEAN_OVER_STD])


def kappa_figure(results, frame):
    import matplotlib.pyplot as plt

    networks = list(digits_networks.NETWORKS)
    figure, axes = plt.subplots(1, len(networks), figsize=(11, 4.2), sharey=True)
    lines = grid_kappas()
    for axis, network in zip(np.atleast_1d(axes), networks):
        for layer, rows in frame[frame["network"] == network].groupby("layer"):
            rows = rows.sort_values("batch_size")
            line, = axis.plot(rows["batch_size"], rows["kappa_median"], marker="o",
                              label=f"layer {layer}")
            axis.fill_between(rows["batch_size"], rows["kappa_q05"], rows["kappa_max"],
                              color=line.get_color(), alpha=0.15)
        for kappa in lines:
            axis.axhline(kappa, color="0.6", linewidth=0.5, linestyle=":")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_ylim(0.9, lines.max() * 1.5)
        axis.set_title(f"{network}: κ per layer (median; band 5 % to max)")
        axis.set_xlabel("batch size")
    np.atleast_1d(axes)[0].set_ylabel("condition number κ (dotted: the sweep's grid)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    figure.tight_layout()
    return results.figure("activations_kappa", figure,
                          "Condition numbers of the recorded normalization groups of the two "
                          "trained networks against batch size, beside the κ of the accuracy "
                          "sweep's |mean|/std grid (dotted)")


def findings(results, frame):
    lines = grid_kappas()
    lowest, highest = frame["kappa_min"].min(), frame["kappa_max"].max()
    worst = frame.loc[frame["kappa_max"].idxmax()]
    inside = int(((lines >= lowest) & (lines <= highest)).sum())
    sentences = [
        results.finding(
            "Over {groups} recorded groups, the condition numbers of the real normalization "
            "groups lie between {lowest} and {highest}; the accuracy sweep's grid spans κ from 1 "
            "to {grid_max}, and {inside} of its {grid_count} points fall inside the recorded "
            "range.",
            groups=int(frame["group_count"].sum()), lowest=lowest, highest=highest,
            grid_max=float(lines.max()), inside=inside, grid_count=len(lines)),
        results.finding(
            "The largest κ, {kappa}, is in layer {layer} of the {network} network at batch size "
            "{batch_size} (median there {median}); at that κ the textbook formula's κ²u is "
            "{float32} with float32 and {bfloat16} with bfloat16 accumulators (every digit is "
            "lost near 1).",
            kappa=worst["kappa_max"], layer=int(worst["layer"]), network=worst["network"],
            batch_size=int(worst["batch_size"]), median=worst["kappa_median"],
            float32=float(worst["kappa_max"] ** 2 * unit_roundoff("float32")),
            bfloat16=float(worst["kappa_max"] ** 2 * unit_roundoff("bfloat16")))]
    return sentences


def report(results):
    frame = results.tables[NAME]
    largest = frame[frame["batch_size"] == frame["batch_size"].max()]
    table = largest[["network", "layer", "norm", "groups", "group_size", "group_count",
                     "kappa_min", "kappa_median", "kappa_q95", "kappa_max", "value_mean",
                     "value_std", "zero_share"]].reset_index(drop=True)
    body = "\n\n".join((
        "Condition numbers κ = sqrt(1 + n·mean²/S) of the inputs of every normalization layer of "
        "the two trained digit networks (layer 0 normalizes the raw pixels 0..16), computed "
        "exactly from the recorded float32 values. BatchNorm groups are a channel over the "
        f"batch, GroupNorm groups are {digits_networks.GROUP_CHANNELS} channels (one for layer 0) "
        "of one image.",
        *("- " + sentence for sentence in findings(results, frame)),
        kappa_figure(results, frame),
        f"κ and the recorded values at batch size {int(largest['batch_size'].max())}:",
        results.table(table, {"groups": lambda value: "–" if pd.isna(value)
                              else str(int(value))})))
    return results.section(body)


STUDY = Study(NAME, TITLE, grid, cell, report,
              seed_factors=("network", "batch_size", "batches"),
              description="κ of the real normalization groups of two trained digit CNNs")
