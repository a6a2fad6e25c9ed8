"""Study: does the rule or the accumulator precision of the statistics change a network's answers?

Both trained digit networks (studies.digits_networks) classify held-out digits with the statistics
of every normalization layer computed by numerics through the PyTorch integration
(numerics.torch_integration.numerics_statistics: each rule × float32, bfloat16 and float16
accumulators; BatchNorm from the current batch's statistics) and, as the reference, with exact
statistics and correctly rounded outputs (``exact=True``). Per cell: the share of images whose
predicted class differs from the reference's (a non-finite logit counts as a change), the share with
non-finite logits, and the largest absolute logit change over the images whose logits are finite.

Then again with every pixel shifted by a constant offset, as raw pixel or sensor data arrive: the
first normalization layer sees the raw input, so in exact arithmetic its output, and so the whole
network's, does not change, while the |mean|/std of its groups grows with the offset. Offsets up
to 1e6 keep the shifted pixels (integers) exact in float32. The x-axis of the figure is the
median condition number κ of the first layer's groups, computed exactly from the shifted input.
"""
import functools
import warnings

import numpy as np
import torch

import numerics
from numerics import reference
from numerics.torch_integration import numerics_statistics
from studies import digits_networks
from studies.engine import Slice, Study

NAME = "predictions"
TITLE = "Effect on predictions"
ALGORITHMS = tuple(numerics.ALGORITHMS)
ACCUMULATORS = ("float32", "bfloat16", "float16")
OFFSETS = (0.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6)
#: the full profile adds the half decades
FULL_OFFSETS = tuple(sorted({*OFFSETS, *(3.0 * 10.0 ** exponent for exponent in range(6))}))
#: held-out images per cell (the held-out split has 449) and the batch they are classified in
IMAGES = {"smoke": 16, "default": 448, "full": 448}
BATCH_SIZE = {"smoke": 16, "default": 32, "full": 32}


def grid(profile):
    common = {"images": (IMAGES[profile],), "batch_size": (BATCH_SIZE[profile],),
              "epochs": (digits_networks.PROFILE_EPOCHS[profile],)}
    if profile == "smoke":
        return (Slice("offsets", {"network": digits_networks.NETWORKS, "offset": (0.0, 1e4),
                                  "algorithm": ("naive", "welford"),
                                  "acc_dtype": ("float32", "bfloat16"), **common}),)
    offsets = FULL_OFFSETS if profile == "full" else OFFSETS
    return (Slice("offsets", {"network": digits_networks.NETWORKS, "offset": offsets,
                              "algorithm": ALGORITHMS, "acc_dtype": ACCUMULATORS, **common}),)


def held_out(images_count, offset):
    """The first ``images_count`` held-out digits shifted by ``offset`` (float32) and labels."""
    images, labels, _, held_out_indices = digits_networks.digits()
    chosen = held_out_indices[:images_count]
    return (images[chosen] + np.float32(offset)).astype(np.float32), labels[chosen]


def logits(model, images, batch_size, **statistics):
    """The model's logits for ``images`` in batches, its normalization layers' statistics computed
    by numerics (``statistics``: numerics_statistics's arguments)."""
    outputs = []
    with warnings.catch_warnings():
        # overflow of 16-bit accumulators is measured (non-finite logits), not warned about
        warnings.simplefilter("ignore", RuntimeWarning)
        with torch.no_grad(), digits_networks.deterministic_torch(), \
                numerics_statistics(model, **statistics):
            for start in range(0, len(images), batch_size):
                batch = digits_networks.image_tensor(images[start:start + batch_size])
                outputs.append(model(batch).numpy().astype(np.float64))
    return np.concatenate(outputs)


@functools.lru_cache(maxsize=16)
def exact_run(network, epochs, images_count, offset, batch_size):
    """Reference logits (exact statistics), the labels, and the exact κ of the first layer's
    groups (BatchNorm: the pixels of a batch; GroupNorm: of one image) for every batch."""
    model, _ = digits_networks.cached_network(network, epochs)
    images, labels = held_out(images_count, offset)
    reference_logits = logits(model, images, batch_size, exact=True)
    norm, groups = digits_networks.normalization_groups(model)[0]
    kappas = np.concatenate([np.ravel(reference.condition_number(
        images[start:start + batch_size], norm, groups=groups))
        for start in range(0, len(images), batch_size)])
    return reference_logits, labels, kappas


def cell(cell):
    settings = cell.settings
    network, epochs, offset = settings["network"], settings["epochs"], settings["offset"]
    reference_logits, labels, kappas = exact_run(network, epochs, settings["images"], offset,
                                                 settings["batch_size"])
    model, _ = digits_networks.cached_network(network, epochs)
    images, _ = held_out(settings["images"], offset)
    computed = logits(model, images, settings["batch_size"], algorithm=settings["algorithm"],
                      acc_dtype=settings["acc_dtype"])
    finite = np.isfinite(computed).all(axis=1)
    changed = ~finite | (computed.argmax(axis=1) != reference_logits.argmax(axis=1))
    logit_change = np.abs(computed[finite] - reference_logits[finite])
    return [{"changed_share": float(changed.mean()), "changed_count": int(changed.sum()),
             "nonfinite_share": float((~finite).mean()),
             "max_logit_change": float(logit_change.max()) if finite.any() else float("nan"),
             "accuracy": float((finite & (computed.argmax(axis=1) == labels)).mean()),
             "exact_accuracy": float((reference_logits.argmax(axis=1) == labels).mean()),
             "kappa_median": float(np.median(kappas)), "kappa_max": float(kappas.max())}]


# ---- report -------------------------------------------------------------------------------------

def changes_figure(results, frame):
    import matplotlib.pyplot as plt

    accumulators = [name for name in ACCUMULATORS if name in set(frame["acc_dtype"])]
    figure, axes = plt.subplots(1, len(accumulators), figsize=(13, 4.4), sharey=True,
                                squeeze=False)
    styles = {"batchnorm": "-", "groupnorm": "--"}
    colours = {}
    for axis, accumulator in zip(axes[0], accumulators):
        for (network, algorithm), rows in frame[frame["acc_dtype"] == accumulator].groupby(
                ["network", "algorithm"]):
            rows = rows.sort_values("kappa_median")
            line, = axis.plot(rows["kappa_median"], rows["changed_share"], styles[network],
                              marker=".", color=colours.get(algorithm),
                              label=f"{algorithm} ({network})")
            colours[algorithm] = line.get_color()
        axis.set_xscale("log")
        axis.set_title(f"{accumulator} accumulator")
        axis.set_xlabel("κ of the first layer's groups (median), raised by the offset")
    axes[0][0].set_ylabel("share of predictions changed vs exact statistics")
    axes[0][0].legend(fontsize=6, ncol=2)
    figure.tight_layout()
    return results.figure("predictions_changed", figure,
                          "Share of held-out predictions that change when the statistics are "
                          "computed by each rule and accumulator instead of exactly, against the "
                          "condition number of the first normalization layer's groups (solid: "
                          "BatchNorm network, dashed: GroupNorm network)")


def first_change(rows):
    """The row of the smallest offset at which any prediction changed, or None."""
    changed = rows[rows["changed_count"] > 0].sort_values("offset")
    return None if changed.empty else changed.iloc[0]


def findings(results, frame):
    sentences = []
    unshifted = frame[frame["offset"] == frame["offset"].min()]
    changing = unshifted[unshifted["changed_count"] > 0]
    largest = unshifted.loc[unshifted["max_logit_change"].idxmax()]
    float32 = unshifted[unshifted["acc_dtype"] == "float32"]["max_logit_change"]
    sentences.append(results.finding(
        "Unshifted pixels (κ of the first layer about {kappa}): {changing} of {total} network × "
        "rule × accumulator combinations change at least one of {images} predictions; the largest "
        "logit change is {logit} ({network}, {algorithm}, {accumulator} accumulators), and at most "
        "{float32} with float32 accumulators.",
        kappa=float(unshifted["kappa_median"].median()), changing=len(changing),
        total=len(unshifted), images=int(frame["images"].iloc[0]),
        logit=float(largest["max_logit_change"]), network=largest["network"],
        algorithm=largest["algorithm"], accumulator=largest["acc_dtype"],
        float32=float(float32.max()) if len(float32) else float("nan")))
    lowest = unshifted.loc[unshifted["accuracy"].idxmin()]
    exact = unshifted.groupby("network")["exact_accuracy"].first()
    sentences.append(results.finding(
        "Accuracy on the held-out digits with exact statistics: {batchnorm:.1%} (BatchNorm), "
        "{groupnorm:.1%} (GroupNorm); the lowest with computed statistics on unshifted pixels is "
        "{lowest:.1%} ({network}, {algorithm}, {accumulator} accumulators).",
        batchnorm=exact.get("batchnorm", float("nan")),
        groupnorm=exact.get("groupnorm", float("nan")), lowest=lowest["accuracy"],
        network=lowest["network"], algorithm=lowest["algorithm"], accumulator=lowest["acc_dtype"]))
    nonfinite = frame[frame["nonfinite_share"] > 0]
    sentences.append(results.finding(
        "Non-finite logits (a NaN or Inf statistic reached the output) appear in {count} of "
        "{total} cells{where}.", count=len(nonfinite), total=len(frame),
        where="" if nonfinite.empty else ", first at offset " + ", ".join(
            f"{offset:g} ({accumulator})" for accumulator, offset in
            nonfinite.groupby("acc_dtype")["offset"].min().items())))
    for (network, accumulator), rows in frame.groupby(["network", "acc_dtype"], sort=False):
        firsts = {algorithm: first_change(group) for algorithm, group in rows.groupby("algorithm")}
        never = sorted(name for name, row in firsts.items() if row is None)
        changed = {name: row for name, row in firsts.items() if row is not None}
        order = sorted(changed, key=lambda name: (changed[name]["offset"], name))
        described = "; ".join(
            f"{name} from offset {changed[name]['offset']:g} "
            f"(κ ≈ {changed[name]['kappa_median']:.3g}, {changed[name]['changed_count']} of "
            f"{changed[name]['images']} changed)" for name in order)
        sentences.append(results.finding(
            "{network}, {accumulator} accumulators: {described}{never}.", network=network,
            accumulator=accumulator, described=described or "no rule changes any prediction",
            never=(f"; never up to κ ≈ {rows['kappa_median'].max():.3g}: {', '.join(never)}"
                   if never and changed else "")))
    return sentences


def report(results):
    frame = results.tables[NAME]
    table = frame.pivot_table(index=["network", "acc_dtype", "algorithm"], columns="offset",
                              values="changed_share").reset_index()
    table.columns = [column if isinstance(column, str) else f"offset {column:g}"
                     for column in table.columns]
    kappas = frame.groupby(["network", "offset"])["kappa_median"].first().unstack().reset_index()
    kappas.columns = [column if isinstance(column, str) else f"offset {column:g}"
                      for column in kappas.columns]
    body = "\n\n".join((
        "Held-out digits classified with the normalization statistics computed by each rule and "
        "accumulator (through numerics.torch_integration), against exact statistics; then with "
        "every pixel shifted by a constant offset, which leaves the exact network's answers "
        "unchanged but raises the first layer's |mean|/std. A 16-bit accumulator also rounds the "
        "float32 input to its own format on the way in (numerics.moments), so once the format's "
        "spacing at the offset exceeds the pixel steps, every rule fails alike: that part is the "
        "rounding of the data, not of the rule.",
        *("- " + sentence for sentence in findings(results, frame)),
        changes_figure(results, frame),
        "Share of predictions changed, per offset:",
        results.table(table),
        "Median κ of the first layer's groups, per offset:",
        results.table(kappas)))
    return results.section(body)


STUDY = Study(NAME, TITLE, grid, cell, report,
              seed_factors=("network", "offset", "images"),
              description="share of predictions and logits that change with the rule and precision")
