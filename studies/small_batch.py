"""Study: BatchNorm at small batch: the sampling error of its statistics against their rounding.

The GroupNorm paper's review says BatchNorm fails at small batch because "there are not enough
samples to compute a good approximation for the two moments". That is a sampling error: a batch's
mean and variance estimate the population's (here: the statistics of a layer's input over the whole
digits data set, 1797 images, computed exactly by numerics.reference). Rounding adds a second error:
the rule and the accumulator format of the computation, measured against the exact statistics of
the same batch. This study puts both side by side on the recorded inputs of the trained BatchNorm
network (studies.digits_networks; inference mode, so a batch of B recorded rows is what a BatchNorm
layer sees in a batch of B), for B = 1..64, every rule and float32, bfloat16 and float16
accumulators. GroupNorm's statistics are per image, so they have no sampling error against a
population and do not depend on the batch size: their rounding error on the GroupNorm network's
groups is shown beside both.

Errors: the variance's relative error |v − v_ref|/v_ref and the mean's error in units of the
reference standard deviation |m − m_ref|/sqrt(v_ref) (what shifts the normalized output), per group;
the rows keep the median and the maximum over the groups of all batches. Variances are biased
(ddof 0), as every framework normalizes.
"""
import functools
import warnings

import numpy as np

import numerics
from numerics import reference
from studies import digits_networks
from studies.engine import Slice, Study

NAME = "small_batch"
TITLE = "Small batch: sampling against rounding"
ALGORITHMS = tuple(numerics.ALGORITHMS)
ACCUMULATORS = ("float32", "bfloat16", "float16")
#: the rules and accumulators a cell runs: every pair, or (smoke) two of each, which keeps the
#: kernels a cold cache must compile for the smoke run few
RULE_SETS = {"all": (ALGORITHMS, ACCUMULATORS),
             "smoke": (("naive", "welford"), ("float32", "bfloat16"))}
#: batches per batch size (BatchNorm) and images (GroupNorm) per cell
BATCHES = {"smoke": 2, "default": 16, "full": 28}
GROUPNORM_IMAGES = {"smoke": 16, "default": 256, "full": 1024}
SMOKE_BATCH_SIZES = (1, 64)
#: rounding "matters next to sampling" when its median error reaches this share of the sampling
#: error's median (the same layer, batch size and statistic)
MATTERS = 0.1


def grid(profile):
    common = {"epochs": (digits_networks.PROFILE_EPOCHS[profile],),
              "rule_set": ("smoke" if profile == "smoke" else "all",)}
    batch_sizes = SMOKE_BATCH_SIZES if profile == "smoke" else digits_networks.BATCH_SIZES
    return (Slice("batchnorm", {"network": ("batchnorm",), "batch_size": batch_sizes,
                                "batches": (BATCHES[profile],), **common}),
            Slice("groupnorm", {"network": ("groupnorm",), "images": (GROUPNORM_IMAGES[profile],),
                                **common}))


@functools.lru_cache(maxsize=2)
def population(network, epochs):
    """The trained model, every digit's normalization-layer inputs (one array per layer, N first)
    and each layer's exact population (mean, var) over the whole data set, per channel."""
    model, _ = digits_networks.cached_network(network, epochs)
    images = digits_networks.digits()[0]
    inputs = [recorded[0] for recorded in digits_networks.record_inputs(model, images, len(images))]
    moments = [reference.moments(layer_input, "batch") for layer_input in inputs]
    return model, inputs, moments


def errors(mean, var, reference_mean, reference_var):
    """Per group: the mean's error in reference standard deviations, the variance's relative
    error (float64 arrays; reference values as mpf or float)."""
    reference_mean = np.asarray(reference_mean, dtype=np.float64)
    reference_var = np.asarray(reference_var, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_error = np.abs(np.asarray(mean, np.float64) - reference_mean) / np.sqrt(reference_var)
        var_error = np.abs(np.asarray(var, np.float64) - reference_var) / reference_var
    return mean_error, var_error


def summary(kind, mean_error, var_error, **columns):
    """One row: median and maximum over the groups (a NaN or Inf error counts as the worst)."""
    mean_error = np.where(np.isfinite(mean_error), mean_error, np.inf).ravel()
    var_error = np.where(np.isfinite(var_error), var_error, np.inf).ravel()
    return {"kind": kind, **columns, "groups": int(var_error.size),
            "nonfinite_groups": int(np.isinf(var_error).sum()),
            "median_mean_error": float(np.median(mean_error)),
            "max_mean_error": float(mean_error.max()),
            "median_var_error": float(np.median(var_error)),
            "max_var_error": float(var_error.max())}


def rounding_rows(rule_set, groups_input, norm, groups, exact_mean, exact_var, **columns):
    """Every rule × accumulator of ``rule_set`` on the same groups, against their exact
    statistics."""
    rows = []
    algorithms, accumulators = RULE_SETS[rule_set]
    for algorithm in algorithms:
        for accumulator in accumulators:
            with warnings.catch_warnings():
                # an overflowing float16 accumulator is counted (nonfinite_groups), not warned
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, var = numerics.moments(groups_input, norm, groups=groups,
                                             algorithm=algorithm, acc_dtype=accumulator)
            rows.append(summary("rounding", *errors(mean, var, exact_mean, exact_var),
                                algorithm=algorithm, acc_dtype=accumulator, **columns))
    return rows


def batchnorm_cell(settings, seed):
    """Sampling and rounding rows of every layer of the BatchNorm network at one batch size. The
    batches are stacked as (B, batches·C, H, W): each (batch, channel) is one batch group whose
    elements keep the order a BatchNorm layer reduces them in."""
    _, inputs, moments = population(settings["network"], settings["epochs"])
    batch_size, batches = settings["batch_size"], settings["batches"]
    chosen = np.random.default_rng(seed).permutation(len(inputs[0]))[:batch_size * batches]
    rows = []
    for layer, (layer_input, (population_mean, population_var)) in enumerate(zip(inputs, moments)):
        samples = layer_input[chosen].reshape(batches, batch_size, *layer_input.shape[1:])
        stacked = np.ascontiguousarray(np.swapaxes(samples, 0, 1)).reshape(
            batch_size, batches * layer_input.shape[1], *layer_input.shape[2:])
        exact_mean, exact_var = reference.moments(stacked, "batch")
        columns = {"layer": layer, "group_size": batch_size * int(np.prod(layer_input.shape[2:]))}
        sampling = errors(exact_mean, exact_var, np.tile(population_mean, batches),
                          np.tile(population_var, batches))
        rows.append(summary("sampling", *sampling, algorithm=None, acc_dtype=None, **columns))
        rows.extend(rounding_rows(settings["rule_set"], stacked, "batch", None, exact_mean,
                                  exact_var, **columns))
    return rows


def groupnorm_cell(settings, seed):
    """Rounding rows of every layer of the GroupNorm network on the per-image groups of
    ``images`` random digits (no sampling error: a group's statistics are its own image's)."""
    model, inputs, _ = population(settings["network"], settings["epochs"])
    chosen = np.sort(np.random.default_rng(seed).permutation(len(inputs[0]))[:settings["images"]])
    rows = []
    for layer, ((norm, groups), layer_input) in enumerate(
            zip(digits_networks.normalization_groups(model), inputs)):
        samples = np.ascontiguousarray(layer_input[chosen])
        exact_mean, exact_var = reference.moments(samples, norm, groups=groups)
        columns = {"layer": layer, "group_size": int(np.prod(samples.shape[1:])) // groups}
        rows.extend(rounding_rows(settings["rule_set"], samples, norm, groups, exact_mean,
                                  exact_var, **columns))
    return rows


def cell(cell):
    if cell.settings["network"] == "batchnorm":
        return batchnorm_cell(cell.settings, cell.seed)
    return groupnorm_cell(cell.settings, cell.seed)


# ---- report -------------------------------------------------------------------------------------

def worst_layer(frame, statistic):
    """Per (kind, algorithm, acc_dtype, batch_size): the largest median error over the layers."""
    keys = ["kind", "algorithm", "acc_dtype", "batch_size"]
    return (frame.fillna({"algorithm": "–", "acc_dtype": "–"}).groupby(keys, dropna=False)
            [f"median_{statistic}_error"].max().reset_index())


def ratios(frame, statistic):
    """Rounding's median error over sampling's, layer by layer at each batch size (BatchNorm)."""
    batch = frame[frame["network"] == "batchnorm"]
    sampling = batch[batch["kind"] == "sampling"].set_index(["batch_size", "layer"])[
        f"median_{statistic}_error"]
    rounding = batch[batch["kind"] == "rounding"].copy()
    rounding["sampling"] = [sampling[(size, layer)] for size, layer in
                            zip(rounding["batch_size"], rounding["layer"])]
    rounding["ratio"] = rounding[f"median_{statistic}_error"] / rounding["sampling"]
    return rounding


def present_accumulators(frame):
    """The accumulators the run measured, in ACCUMULATORS' order."""
    return [name for name in ACCUMULATORS if name in set(frame["acc_dtype"])]


def error_panel(axis, batch, group, accumulator):
    """One layer and accumulator: BatchNorm's sampling line, each rule's rounding line, and the
    rule's rounding error on the GroupNorm network's groups of the same layer (dashed)."""
    sampling = batch[batch["kind"] == "sampling"].sort_values("batch_size")
    axis.plot(sampling["batch_size"], sampling["median_var_error"], color="black",
              linewidth=2.5, marker="o", label="sampling (batch vs population)")
    for algorithm in [name for name in ALGORITHMS if name in set(batch["algorithm"])]:
        rows = batch[(batch["algorithm"] == algorithm) & (batch["acc_dtype"] == accumulator)]
        rows = rows.sort_values("batch_size")
        finite = np.isfinite(rows["median_var_error"])
        line, = axis.plot(rows["batch_size"][finite],
                          rows["median_var_error"][finite].clip(lower=1e-12), marker=".",
                          label=f"rounding: {algorithm}")
        # an overflowed statistic (Inf/NaN) has lost every digit: marked at relative error 1
        axis.plot(rows["batch_size"][~finite], np.ones(int((~finite).sum())), "x",
                  color=line.get_color(), markersize=9)
        groupnorm_error = float(group[(group["algorithm"] == algorithm)
                                      & (group["acc_dtype"] == accumulator)]["median_var_error"]
                                .max())
        if np.isnan(groupnorm_error):
            continue
        axis.axhline(min(max(groupnorm_error, 1e-12), 1.0), color=line.get_color(),
                     linestyle="--", linewidth=0.8)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")


def error_figure(results, frame):
    import matplotlib.pyplot as plt

    layers = sorted(set(frame["layer"]))
    accumulators = present_accumulators(frame)
    figure, axes = plt.subplots(len(layers), len(accumulators), squeeze=False, sharex=True,
                                sharey=True, figsize=(13, 3.2 * len(layers)))
    for row, layer in enumerate(layers):
        in_layer = frame[frame["layer"] == layer]
        for column, accumulator in enumerate(accumulators):
            axis = axes[row][column]
            error_panel(axis, in_layer[in_layer["network"] == "batchnorm"],
                        in_layer[in_layer["network"] == "groupnorm"], accumulator)
            axis.set_title(f"layer {layer}, {accumulator} accumulator", fontsize=9)
        axes[row][0].set_ylabel("relative error of the variance")
    for axis in axes[-1]:
        axis.set_xlabel("batch size")
    axes[0][0].legend(fontsize=6)
    figure.tight_layout()
    return results.figure("small_batch_errors", figure,
                          "BatchNorm: median sampling error of the batch variance against the "
                          "population (black) and median rounding error of each rule against the "
                          "batch's exact variance (colours), per layer and accumulator; dashed: "
                          "the same rule's rounding error on the GroupNorm network's per-image "
                          "groups of that layer; ×: a statistic that overflowed to Inf or NaN, "
                          "drawn at 1; an error of 0 (exact) is drawn at 1e-12")


def accumulator_finding(results, rounding, accumulator):
    rows = rounding[rounding["acc_dtype"] == accumulator]
    matters = rows[rows["ratio"] >= MATTERS]
    largest = rows.loc[rows["ratio"].idxmax()]
    if matters.empty:
        return results.finding(
            "With {accumulator} accumulators no rule's median rounding error of the variance "
            "reaches {threshold:.0%} of the sampling error at any batch size; the largest ratio "
            "is {ratio} ({algorithm}, layer {layer}, batch {batch_size}).",
            accumulator=accumulator, threshold=MATTERS, ratio=largest["ratio"],
            algorithm=largest["algorithm"], layer=int(largest["layer"]),
            batch_size=int(largest["batch_size"]))
    sizes = sorted(set(int(size) for size in matters["batch_size"]))
    return results.finding(
        "With {accumulator} accumulators rounding matters next to sampling (a median rounding "
        "error of the variance of at least {threshold:.0%} of the sampling error) at batch sizes "
        "{sizes}, for {rules}; the largest ratio is {ratio} ({algorithm}, layer {layer}, batch "
        "{batch_size}).", accumulator=accumulator, threshold=MATTERS,
        sizes=", ".join(map(str, sizes)), rules=", ".join(sorted(set(matters["algorithm"]))),
        ratio=largest["ratio"], algorithm=largest["algorithm"], layer=int(largest["layer"]),
        batch_size=int(largest["batch_size"]))


def overflow_finding(results, frame):
    """Where a 16-bit accumulator overflowed: groups whose statistics came out Inf or NaN."""
    rounding = frame[(frame["kind"] == "rounding") & (frame["nonfinite_groups"] > 0)]
    if rounding.empty:
        return results.finding("No rule and accumulator returned a non-finite statistic.")
    first = rounding.sort_values(["group_size", "batch_size"]).iloc[0]
    return results.finding(
        "{count} of {cells} rule × accumulator × layer × batch rows have groups whose statistics "
        "overflowed to Inf or NaN ({accumulators}); the smallest such groups have {group_size} "
        "elements ({network}, layer {layer}, {algorithm}, {accumulator}).",
        count=len(rounding), cells=int((frame["kind"] == "rounding").sum()),
        accumulators=", ".join(sorted(set(rounding["acc_dtype"]))),
        group_size=int(first["group_size"]), network=first["network"], layer=int(first["layer"]),
        algorithm=first["algorithm"], accumulator=first["acc_dtype"])


def findings(results, frame):
    batch = frame[frame["network"] == "batchnorm"]
    sampling = worst_layer(batch, "var")
    sampling = sampling[sampling["kind"] == "sampling"].set_index("batch_size")["median_var_error"]
    smallest, largest = int(sampling.index.min()), int(sampling.index.max())
    sentences = [results.finding(
        "Sampling: the median relative error of a batch's variance against the whole data set's "
        "falls from {small_error} at batch {small} to {large_error} at batch {large} (worst "
        "layer); the mean is off by {mean_small} population standard deviations at batch {small} "
        "and {mean_large} at batch {large}.", small=smallest, large=largest,
        small_error=sampling[smallest], large_error=sampling[largest],
        mean_small=float(batch[(batch["kind"] == "sampling") & (batch["batch_size"] == smallest)]
                         ["median_mean_error"].max()),
        mean_large=float(batch[(batch["kind"] == "sampling") & (batch["batch_size"] == largest)]
                         ["median_mean_error"].max()))]
    rounding = ratios(frame, "var")
    sentences.extend(accumulator_finding(results, rounding, accumulator)
                     for accumulator in present_accumulators(frame))
    sentences.append(overflow_finding(results, frame))
    group = frame[(frame["network"] == "groupnorm") & (frame["nonfinite_groups"] == 0)]
    worst = group.loc[group["median_var_error"].idxmax()]
    sentences.append(results.finding(
        "GroupNorm's per-image groups have no sampling error and the same rounding at every batch "
        "size; where nothing overflowed, their worst median rounding error of the variance is "
        "{error} ({algorithm}, {accumulator}, layer {layer}), against a BatchNorm sampling "
        "error of {large_error} at batch {large}.", error=worst["median_var_error"],
        algorithm=worst["algorithm"], accumulator=worst["acc_dtype"], layer=int(worst["layer"]),
        large_error=sampling[largest], large=largest))
    return sentences


def report(results):
    frame = results.tables[NAME]
    rounding = ratios(frame, "var")
    table = (rounding.groupby(["acc_dtype", "algorithm", "batch_size"])["ratio"].max().unstack()
             .reset_index())
    table.columns = [column if isinstance(column, str) else f"B = {int(column)}"
                     for column in table.columns]
    body = "\n\n".join((
        "BatchNorm's batch statistics against the population's (sampling) and against their own "
        "exact values (rounding), on the recorded inputs of the trained BatchNorm network; "
        "GroupNorm's per-image statistics beside both. A 16-bit accumulator rounds the float32 "
        "activations to its own format on the way in (numerics.moments), so its rounding error "
        "includes that of the data.",
        *("- " + sentence for sentence in findings(results, frame)),
        error_figure(results, frame),
        "Rounding over sampling (median relative error of the variance; worst layer) per rule, "
        "accumulator and batch size:",
        results.table(table)))
    return results.section(body)


STUDY = Study(NAME, TITLE, grid, cell, report, seed_factors=("network", "batch_size", "batches",
                                                                "images"),
              description="BatchNorm at batch sizes 1..64: sampling error beside rounding error")
