"""GPU kernels (numba.cuda) realising the reduction order of numerics.topology, and their launcher.

The rules are the scalar functions of algorithms.py, compiled as CUDA device functions by
targets.py (docs/architecture.md section 2): the kernels are module-level functions whose first
argument, a targets.GpuContext, names by its type what they are specialised for (rule family,
formats, FMA mode) and carries the rules as its methods. This module only walks memory and merges
states, in the order the Topology defines, so ``moments(..., device="cpu", topology=t)`` replays
a GPU run with topology ``t`` bit for bit (with ``fma="separate"``). A GPU run with
``Topology(lanes=T, block=B)``:

1. a *unit* is one block of B consecutive elements of one group; lane t of a unit pushes its
   elements j = t, t + T, t + 2T, ... in order (the CPU lane rule), each lane on one thread;
2. the unit's T lane states merge in shared memory by the topology's lane tree: halving inside each
   warp of 32 lanes (shuffle-down order), then halving over the warp results. The tree runs on
   shared memory with block barriers, not on warp shuffles: numba-cuda's simulator has no
   ``shfl_*_sync``, and the merges happen once per unit, outside the streaming loop;
3. a second kernel merges each group's unit states by the adjacent pairwise tree, level by level,
   and finalizes. No atomics anywhere, so the same input gives the same bits on every run.

Two kernels stream the input, like the CPU's (numerics.plan.kernel_for picks one for both):

- ``segments``: a CUDA block holds ``threads_per_block // T`` units (at least one), each on its own
  T threads. Consecutive threads read consecutive elements of a group: coalesced wherever groups are
  contiguous runs (channels first, LayerNorm).
- ``rows``: channels last, where groups interleave in memory (``reduced_inner`` divides T). A
  CUDA block takes one block of rows and a tile of whole groups side by side; lane
  ``r * reduced_inner + q`` of a group owns rows r, r + T/reduced_inner, ... of column q, and
  consecutive threads take consecutive columns, so a warp reads contiguous memory.

Index arithmetic is 64-bit throughout (``element_offset``, ``row_offset`` and ``advance`` below;
every operand is an int64 in the kernels): tensors may pass 2**31 elements. ``fma``
(targets.FMA_MODES) says whether the multiply-adds of the rules are fused (docs/architecture.md trap 2);
it is recorded in every Run with the launch geometry. Scratch buffers stay allocated between calls
(``workspace``), so a call costs its kernels and no cudaMalloc.

Importing this module needs neither a GPU nor the CUDA toolkit; ``moments`` without a GPU raises
NoGPUError, which names the simulator (NUMBA_ENABLE_CUDASIM=1).
"""
import threading
from dataclasses import dataclass

import numpy as np
# a numba type, not numpy's: the simulator sizes a dynamic shared array by ``dtype.itemsize``
from numba import int64

from . import algorithms, precision, targets
from .plan import PASS_ONE, ROWS, SEGMENTS, kernel_for
from .plan import run as run_plan
from .targets import compute_type_of
from .topology import WARP_SIZE, Topology

try:
    # module-level global on purpose: the simulator swaps the global named ``cuda`` of a kernel's
    # module for its fake one, which is how cuda.shared and cuda.syncthreads work there
    from numba import config as numba_config
    from numba import cuda
except ImportError:  # numba-cuda is the optional "gpu" extra; moments() explains
    cuda = None

#: GPU reduction orders (any Topology runs; these are the ones worth a name). "gpu_fast" is the
#: fast order of every rule: one warp per unit, units of 1024 elements, so even a channels-last
#: BatchNorm of (32, 256, 56, 56) launches about 800 CUDA blocks of 256 threads, and a warp of the
#: rows kernel reads 32 consecutive channels.
TOPOLOGIES = {
    "gpu_fast": Topology(32, 1024, "gpu_fast"),
    "gpu_block256": Topology(256, 8192, "gpu_block256"),
    "gpu_block1024": Topology(1024, 16384, "gpu_block1024"),
}
FAST_TOPOLOGY = "gpu_fast"

#: most lane states a CUDA block keeps in shared memory (24 KiB in float64): a unit's lanes (the
#: topology allows at most 1024), or the lanes of a tile of groups in the rows kernel
STATE_CAPACITY = 1024
DEFAULT_THREADS_PER_BLOCK = 256
#: threads of the CUDA block that merges one group's unit states
FINISH_THREADS = 128


class NoGPUError(RuntimeError):
    """device="cuda" on a machine where numba.cuda finds no GPU."""


def require_gpu():
    """Raise NoGPUError (saying what to do instead) unless a GPU or the simulator can run kernels."""
    if cuda is None:
        raise NoGPUError("device='cuda' needs numba-cuda, which is not installed: "
                         "pip install -e '.[gpu]' (or use device='cpu')")
    if numba_config.ENABLE_CUDASIM:
        return
    if not cuda.is_available():
        raise NoGPUError(
            "device='cuda' needs an NVIDIA GPU with a working driver, and numba.cuda finds none on "
            "this machine. To run the GPU kernels without a GPU, set NUMBA_ENABLE_CUDASIM=1 before "
            "importing numerics (numba-cuda's simulator: slow, for small tensors); "
            "device='cpu' with the same topology replays the GPU's reduction order exactly.")


# ---- 64-bit index arithmetic (plain functions: compiled by targets.gpu_inline, tested in Python
# ---- on shapes past 2**31 elements)

def element_offset(k1, k2, i, reduced_outer, kept_inner, reduced_inner):
    """(flat offset, q) of element ``i`` of group (k1, k2) of the C-contiguous canonical view
    (K1, P, K2, Q), with i counted in topology order (p = i // Q slow, q = i mod Q fast)."""
    p = i // reduced_inner
    q = i - p * reduced_inner
    return ((k1 * reduced_outer + p) * kept_inner + k2) * reduced_inner + q, q


def row_offset(k1, p, column, reduced_outer, row_length):
    """Flat offset of row ``p``, column ``column`` (= k2 * Q + q) of slab ``k1`` of the canonical
    view, rows being ``row_length`` = K2 * Q elements long (the rows kernel's addressing)."""
    return (k1 * reduced_outer + p) * row_length + column


def advance(offset, q, step_q, jump, reduced_inner, carry):
    """(offset, q) of element i + step from those of element i, with additions only: a 64-bit
    division per element would cost more than the load. For step = s_p * Q + step_q (step_q < Q)
    and row stride R = K2 * Q: jump = s_p * R + step_q, and carry = R - Q when q wraps."""
    q += step_q
    offset += jump
    if q >= reduced_inner:
        q -= reduced_inner
        offset += carry
    return offset, q


def stepping(step, kept_inner, reduced_inner):
    """(step_q, jump, carry) of ``advance`` for a stride of ``step`` elements of a group."""
    row_stride = kept_inner * reduced_inner
    step_rows = step // reduced_inner
    step_q = step - step_rows * reduced_inner
    return step_q, step_rows * row_stride + step_q, row_stride - reduced_inner


# the same functions as device functions of the kernels
device_element_offset = targets.gpu_inline(element_offset)
device_row_offset = targets.gpu_inline(row_offset)
device_advance = targets.gpu_inline(advance)
device_stepping = targets.gpu_inline(stepping)


# ---- the two merge trees, run in parallel by the threads of a CUDA block --------------------------

@targets.gpu_inline
def merge_lane_sets(ctx, counts, firsts, seconds, sets, lanes, thread, threads):
    """Merge each of ``sets`` consecutive sets of ``lanes`` states (shared arrays) by the lane tree
    of topology.merge_lanes, with ``ctx.merge``; set s ends in slot s * lanes. The threads share
    each level's merges; every thread of the CUDA block must call it (it synchronizes the block)."""
    cuda.syncthreads()
    width = lanes if lanes <= WARP_SIZE else WARP_SIZE
    segments = lanes // width
    # inside each warp segment: lane t takes lane t + offset, for t < offset
    offset = width // 2
    while offset >= 1:
        for item in range(thread, sets * segments * offset, threads):
            segment = item // offset
            a = segment * width + (item - segment * offset)
            b = a + offset
            counts[a], firsts[a], seconds[a] = ctx.merge(counts[a], firsts[a], seconds[a],
                                                         counts[b], firsts[b], seconds[b])
        cuda.syncthreads()
        offset //= 2
    # over the warp results (slot s * lanes + w * width): warp w takes warp w + offset
    offset = segments // 2
    while offset >= 1:
        for item in range(thread, sets * offset, threads):
            s = item // offset
            a = s * lanes + (item - s * offset) * width
            b = a + offset * width
            counts[a], firsts[a], seconds[a] = ctx.merge(counts[a], firsts[a], seconds[a],
                                                         counts[b], firsts[b], seconds[b])
        cuda.syncthreads()
        offset //= 2


@targets.gpu_inline
def merge_unit_states(ctx, counts, firsts, seconds, base, units, thread, threads):
    """Merge the ``units`` states at base, base + 1, ... (global arrays) by the adjacent pairwise
    tree of topology.merge_blocks, with ``ctx.merge``, the threads sharing each level; the result
    ends at ``base``."""
    step = 1
    while step < units:
        pairs = (units - step + 2 * step - 1) // (2 * step)
        for pair in range(thread, pairs, threads):
            a = base + pair * 2 * step
            b = a + step
            counts[a], firsts[a], seconds[a] = ctx.merge(counts[a], firsts[a], seconds[a],
                                                         counts[b], firsts[b], seconds[b])
        # block barrier: makes the level's global writes visible to the next level's readers
        cuda.syncthreads()
        step *= 2


# ---- the streaming kernels -----------------------------------------------------------------------

def shared_bytes(states, acc_format):
    """Dynamic shared memory for ``states`` lane states: a count and two compute-type values each."""
    return states * (8 + 2 * precision.COMPUTE_DTYPES[acc_format].itemsize)


@targets.gpu_inline
def lane_states(states, like):
    """The (counts, firsts, seconds) shared arrays of ``states`` lane states, the values of the
    dtype of the array ``like``, carved out of the dynamic shared memory of the launch
    (shared_bytes): the two value arrays first, then the int64 counts (8-byte aligned, as
    2 * states values are). Dynamic and not static (``cuda.shared.array(1024, ...)``) because the
    simulator finds a static shared array by its call site in a dict without a lock, which its
    threads race on (two threads of a CUDA block can get different arrays); sized per launch, it
    also keeps occupancy up."""
    values = cuda.shared.array(0, like.dtype)
    counts = cuda.shared.array(0, int64)
    counts_start = 2 * states // (8 // values.itemsize)
    return (counts[counts_start:counts_start + states], values[:states],
            values[states:2 * states])


@targets.gpu_inline
def segment_lane(ctx, x, center, k1, k2, start, stop, reduced_outer, kept_inner, reduced_inner,
                 lanes):
    """(count, first, second) of the lane that pushes elements start, start + lanes, ... (below
    ``stop``) of group (k1, k2)."""
    count = 0
    first = ctx.to_acc(0)
    second = ctx.to_acc(0)
    step_q, jump, carry = device_stepping(lanes, kept_inner, reduced_inner)
    i = start
    offset, q = device_element_offset(k1, k2, i, reduced_outer, kept_inner, reduced_inner)
    # four independent loads in flight per thread, then the pushes in element order
    while i + 3 * lanes < stop:
        offset_2, q = device_advance(offset, q, step_q, jump, reduced_inner, carry)
        offset_3, q = device_advance(offset_2, q, step_q, jump, reduced_inner, carry)
        offset_4, q = device_advance(offset_3, q, step_q, jump, reduced_inner, carry)
        value_1 = x[offset]
        value_2 = x[offset_2]
        value_3 = x[offset_3]
        value_4 = x[offset_4]
        count, first, second = ctx.push(count, center, first, second, ctx.load(value_1))
        count, first, second = ctx.push(count, center, first, second, ctx.load(value_2))
        count, first, second = ctx.push(count, center, first, second, ctx.load(value_3))
        count, first, second = ctx.push(count, center, first, second, ctx.load(value_4))
        offset, q = device_advance(offset_4, q, step_q, jump, reduced_inner, carry)
        i += 4 * lanes
    while i < stop:
        count, first, second = ctx.push(count, center, first, second, ctx.load(x[offset]))
        offset, q = device_advance(offset, q, step_q, jump, reduced_inner, carry)
        i += lanes
    return count, first, second


@targets.gpu_kernel
def reduce_segments(ctx, x, centers, reduced_outer, kept_inner, reduced_inner, size, block, blocks,
                    units, lanes, out_counts, out_firsts, out_seconds):
    """One state per unit, a unit being one block of one group reduced by ``lanes`` threads."""
    thread = np.int64(cuda.threadIdx.x)
    threads = np.int64(cuda.blockDim.x)
    counts, firsts, seconds = lane_states(threads, out_firsts)
    sets = threads // lanes
    local_unit = thread // lanes
    lane = thread - local_unit * lanes
    unit = np.int64(cuda.blockIdx.x) * sets + local_unit
    count = 0
    first = ctx.to_acc(0)
    second = ctx.to_acc(0)
    if unit < units:
        group = unit // blocks
        start = (unit - group * blocks) * block
        k1 = group // kept_inner
        count, first, second = segment_lane(ctx, x, centers[group], k1, group - k1 * kept_inner,
                                            start + lane, min(start + block, size), reduced_outer,
                                            kept_inner, reduced_inner, lanes)
    counts[thread] = count
    firsts[thread] = first
    seconds[thread] = second
    merge_lane_sets(ctx, counts, firsts, seconds, sets, lanes, thread, threads)
    if lane == 0 and unit < units:
        out_counts[unit] = counts[thread]
        out_firsts[unit] = firsts[thread]
        out_seconds[unit] = seconds[thread]


@targets.gpu_inline
def row_lane(ctx, x, center, offset, p, stop_row, lane_rows, jump):
    """(count, first, second) of the lane that pushes rows p, p + lane_rows, ... (below
    ``stop_row``) of one column, from flat offset ``offset``, ``jump`` elements per step."""
    count = 0
    first = ctx.to_acc(0)
    second = ctx.to_acc(0)
    # four independent loads in flight per thread, then the pushes in row order
    while p + 3 * lane_rows < stop_row:
        value_1 = x[offset]
        value_2 = x[offset + jump]
        value_3 = x[offset + 2 * jump]
        value_4 = x[offset + 3 * jump]
        count, first, second = ctx.push(count, center, first, second, ctx.load(value_1))
        count, first, second = ctx.push(count, center, first, second, ctx.load(value_2))
        count, first, second = ctx.push(count, center, first, second, ctx.load(value_3))
        count, first, second = ctx.push(count, center, first, second, ctx.load(value_4))
        offset += 4 * jump
        p += 4 * lane_rows
    while p < stop_row:
        count, first, second = ctx.push(count, center, first, second, ctx.load(x[offset]))
        offset += jump
        p += lane_rows
    return count, first, second


@targets.gpu_kernel
def reduce_rows(ctx, x, centers, reduced_outer, kept_inner, reduced_inner, block_rows, blocks,
                tiles, tile_width, lanes, out_counts, out_firsts, out_seconds):
    """One state per unit, a CUDA block reducing one block of rows of a tile of whole groups."""
    thread = np.int64(cuda.threadIdx.x)
    threads = np.int64(cuda.blockDim.x)
    sets = tile_width // reduced_inner
    counts, firsts, seconds = lane_states(sets * lanes, out_firsts)
    row_length = kept_inner * reduced_inner
    lane_rows = lanes // reduced_inner
    tile_block = np.int64(cuda.blockIdx.x)
    outer_block = tile_block // tiles
    tile = tile_block - outer_block * tiles
    k1 = outer_block // blocks
    b = outer_block - k1 * blocks
    first_column = tile * tile_width
    first_row = b * block_rows
    stop_row = min(first_row + block_rows, reduced_outer)
    for item in range(thread, lane_rows * tile_width, threads):
        r = item // tile_width
        c = item - r * tile_width
        set_index = c // reduced_inner
        q = c - set_index * reduced_inner
        column = first_column + c
        count = 0
        first = ctx.to_acc(0)
        second = ctx.to_acc(0)
        if column < row_length:
            p = first_row + r
            count, first, second = row_lane(
                ctx, x, centers[k1 * kept_inner + column // reduced_inner],
                device_row_offset(k1, p, column, reduced_outer, row_length), p, stop_row,
                lane_rows, lane_rows * row_length)
        slot = set_index * lanes + r * reduced_inner + q
        counts[slot] = count
        firsts[slot] = first
        seconds[slot] = second
    merge_lane_sets(ctx, counts, firsts, seconds, sets, lanes, thread, threads)
    for s in range(thread, sets, threads):
        column = first_column + s * reduced_inner
        if column < row_length:
            unit = (k1 * kept_inner + column // reduced_inner) * blocks + b
            out_counts[unit] = counts[s * lanes]
            out_firsts[unit] = firsts[s * lanes]
            out_seconds[unit] = seconds[s * lanes]


#: the streaming kernel of each plan.kernel_for choice
REDUCTIONS = {SEGMENTS: reduce_segments, ROWS: reduce_rows}


# ---- the kernels before and after streaming ------------------------------------------------------

#: the FMA mode of the kernels that multiply nothing (they are the same code in either mode)
WITHOUT_PRODUCTS = "separate"


@targets.gpu_kernel
def first_elements(ctx, x, reduced_outer, kept_inner, reduced_inner, groups, centers):
    """centers[group] = the group's first element (the shift of the shifted rule)."""
    group = np.int64(cuda.grid(1))
    if group < groups:
        k1 = group // kept_inner
        offset, _ = device_element_offset(k1, group - k1 * kept_inner, 0, reduced_outer,
                                          kept_inner, reduced_inner)
        centers[group] = ctx.load(x[offset])


def finishing_formats(acc_format):
    """The context formats of the finishing kernels, which read no input: one build per
    accumulator."""
    return precision.COMPUTE_DTYPES[acc_format].name, acc_format


@targets.gpu_inline
def merge_group(ctx, counts, firsts, seconds, blocks):
    """Merge the ``blocks`` unit states of the group of this CUDA block (one group each) by the
    block tree. Returns (group, the index of its merged state, whether this thread stores the
    result)."""
    group = np.int64(cuda.blockIdx.x)
    thread = np.int64(cuda.threadIdx.x)
    base = group * blocks
    merge_unit_states(ctx, counts, firsts, seconds, base, blocks, thread,
                      np.int64(cuda.blockDim.x))
    return group, base, thread == 0


@targets.gpu_kernel
def pass_one_means(ctx, counts, firsts, seconds, blocks, centers):
    """Per group: merge the pass-one unit states of the two-pass rules by the block tree and store
    their mean, sum(x)/n, as the group's center for pass two."""
    group, base, stores = merge_group(ctx, counts, firsts, seconds, blocks)
    if stores:
        centers[group] = algorithms.pass_one_mean(ctx, counts[base], firsts[base])


@targets.gpu_kernel
def finalize_groups(ctx, algorithm, counts, firsts, seconds, blocks, centers, ddof, means,
                    variances):
    """Per group: merge the unit states by the block tree and finalize to (mean, variance)."""
    group, base, stores = merge_group(ctx, counts, firsts, seconds, blocks)
    if stores:
        means[group], variances[group] = algorithms.finalize(ctx, algorithm, counts[base],
                                                             centers[group], firsts[base],
                                                             seconds[base], ddof)


@targets.gpu_kernel
def clamp(variances):
    """max(variance, 0) in place (NaN stays NaN)."""
    i = cuda.grid(1)
    if i < variances.size and variances[i] < 0:
        variances[i] = 0


# ---- launch geometry -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Launch:
    """How one view and topology map onto CUDA blocks (none of it changes the result)."""
    kernel: str
    threads_per_block: int
    cuda_blocks: int
    states: int          # lane states a CUDA block keeps in shared memory
    blocks: int          # topology blocks (units) per group
    block: int           # elements per unit
    tiles: int = 1       # rows kernel: column tiles per block of rows
    tile_width: int = 0  # rows kernel: columns per tile (whole groups)

    def details(self):
        return (("kernel", f"cuda_{self.kernel}"), ("threads_per_block", self.threads_per_block),
                ("cuda_blocks", self.cuda_blocks), ("units_per_group", self.blocks))


def plan(view, topology, threads_per_block):
    """The Launch of ``topology`` over ``view`` with CUDA blocks of about ``threads_per_block``."""
    lanes = topology.lanes
    block = topology.block_size(view.group_size)
    blocks = -(-view.group_size // block)
    kernel = kernel_for(view, topology)
    if kernel == SEGMENTS:
        threads = max(threads_per_block, lanes)
        sets = threads // lanes
        units = view.group_count * blocks
        return Launch(SEGMENTS, threads, -(-units // sets), threads, blocks, block)
    # rows: a block of B elements is B / Q whole rows (Q divides lanes, which divides B)
    sets = max(1, min(STATE_CAPACITY // lanes, view.kept_inner))
    tile_width = sets * view.reduced_inner
    tiles = -(-view.kept_inner // sets)
    block_rows = block // view.reduced_inner
    blocks = -(-view.reduced_outer // block_rows)
    threads = min(threads_per_block, sets * lanes)
    return Launch(ROWS, threads, view.kept_outer * blocks * tiles, sets * lanes, blocks, block, tiles,
                  tile_width)


def check_options(fma, threads_per_block):
    if fma not in targets.FMA_MODES:
        raise ValueError(f"fma must be one of {targets.FMA_MODES}, got {fma!r}")
    if (isinstance(threads_per_block, bool) or not isinstance(threads_per_block, int)
            or not 1 <= threads_per_block <= STATE_CAPACITY
            or threads_per_block & (threads_per_block - 1)):
        raise ValueError(f"threads_per_block must be a power of two from 1 to {STATE_CAPACITY}, "
                         f"got {threads_per_block!r}")


def device_input(x4, input_format):
    """A flat, C-contiguous device array of the kernel input (16-bit formats as uint16 bits)."""
    if isinstance(x4, np.ndarray):
        return cuda.to_device(x4.reshape(-1))
    array = x4 if getattr(x4, "__cuda_ndarray__", False) else cuda.as_cuda_array(x4)
    if not array.is_c_contiguous():
        raise ValueError("x must be C-contiguous when it is a device array")
    if input_format in ("float16", "bfloat16") and array.dtype != np.uint16:
        array = array.view(np.uint16)
    return array.reshape(array.size)


#: device buffers reused across calls, per thread: (name, size, dtype, thread) -> device array
WORKSPACE = {}


def workspace(name, size, dtype, fill=None):
    """A device array reused by every call of this thread with the same (name, size, dtype): a
    cudaMalloc per call costs about as much as reducing a 100 MB tensor. ``fill``: its value when
    created (buffers that no kernel writes, such as the zero centers)."""
    key = (name, size, np.dtype(dtype).str, threading.get_ident())
    array = WORKSPACE.get(key)
    if array is None:
        array = (cuda.device_array(size, dtype) if fill is None
                 else cuda.to_device(np.full(size, fill, dtype)))
        WORKSPACE[key] = array
    return array


class GpuTarget:
    """The GPU kernels as a target of the pass plan (numerics.plan) over one canonical view: the
    unit states stay on the device between the kernels."""

    def __init__(self, x, view, rule, topology, input_format, acc_format, fma, launch, on_host):
        self.x, self.view, self.rule, self.topology = x, view, rule, topology
        self.on_host = on_host  # whether the results go back to the host
        self.formats, self.fma, self.launch = (input_format, acc_format), fma, launch
        # the finishing kernels' contexts read no input (finishing_formats)
        self.finishing = finishing_formats(acc_format)
        self.compute_type = compute_type_of(acc_format)
        self.groups = view.group_count
        units = self.groups * launch.blocks
        self.states = (workspace("counts", units, np.int64),
                       workspace("firsts", units, self.compute_type),
                       workspace("seconds", units, self.compute_type))
        self.finish_threads = min(FINISH_THREADS, max(1, launch.blocks // 2))

    def zero_centers(self):
        return workspace("zero_centers", self.groups, self.compute_type, fill=0)

    def first_elements(self):
        centers = workspace("centers", self.groups, self.compute_type)
        ctx = targets.gpu_context(algorithms.CENTERED_SUMS, *self.formats, WITHOUT_PRODUCTS)
        first_elements[-(-self.groups // 128), 128](
            ctx, self.x, self.view.reduced_outer, self.view.kept_inner, self.view.reduced_inner,
            self.groups, centers)
        return centers

    def reduce(self, mode, centers):
        view, launch = self.view, self.launch
        family = algorithms.CENTERED_SUMS if mode == PASS_ONE else self.rule.family
        ctx = targets.gpu_context(family, *self.formats, self.fma)
        configured = REDUCTIONS[launch.kernel][launch.cuda_blocks, launch.threads_per_block, 0,
                            shared_bytes(launch.states, self.formats[1])]
        shape = (view.reduced_outer, view.kept_inner, view.reduced_inner)
        if launch.kernel == SEGMENTS:
            configured(ctx, self.x, centers, *shape, view.group_size, launch.block, launch.blocks,
                       self.groups * launch.blocks, self.topology.lanes, *self.states)
        else:
            configured(ctx, self.x, centers, *shape, launch.block // view.reduced_inner, launch.blocks,
                       launch.tiles, launch.tile_width, self.topology.lanes, *self.states)

    def both_passes(self, centers):
        return None

    def pass_one_means(self, centers):
        centers = workspace("centers", self.groups, self.compute_type)
        ctx = targets.gpu_context(algorithms.CENTERED_SUMS, *self.finishing, WITHOUT_PRODUCTS)
        pass_one_means[self.groups, self.finish_threads](
            ctx, *self.states, self.launch.blocks, centers)
        return centers

    def finalize(self, algorithm, centers, ddof):
        # results returned on the device are the caller's; those copied to the host are not
        means, variances = ((workspace("means", self.groups, self.compute_type),
                             workspace("variances", self.groups, self.compute_type))
                            if self.on_host
                            else (cuda.device_array(self.groups, self.compute_type),
                                  cuda.device_array(self.groups, self.compute_type)))
        ctx = targets.gpu_context(self.rule.family, *self.finishing, self.fma)
        finalize_groups[self.groups, self.finish_threads](
            ctx, algorithm, *self.states, self.launch.blocks, centers, ddof, means, variances)
        return means, variances


def moments(x4, view, algorithm, topology, ddof, input_format, acc_format, *, fma="separate",
            threads_per_block=DEFAULT_THREADS_PER_BLOCK):
    """(means, variances, kernel name, details) of every group of the canonical view ``x4``, computed
    on the GPU in the order ``topology`` defines. ``x4``: a numpy array (results come back as numpy
    arrays) or a device array (results stay on the device: no copy back, for chained work); either
    way C-contiguous, in the compute type of ``acc_format`` (float32 for 16-bit accumulators, whose
    values it holds exactly), 16-bit inputs as uint16 bit patterns.

    Device options: ``fma`` "separate" (default: two roundings, bitwise the CPU's result) or "fused"
    (one FMA at every multiply-add of the rules); ``threads_per_block`` (default 256) sizes the CUDA
    blocks only: the result does not depend on it.
    """
    require_gpu()
    check_options(fma, threads_per_block)
    rule = algorithms.ALGORITHMS[algorithm]
    launch = plan(view, topology, threads_per_block)
    on_host = isinstance(x4, np.ndarray)
    target = GpuTarget(device_input(x4, input_format), view, rule, topology, input_format,
                       acc_format, fma, launch, on_host)
    means, variances = run_plan(rule, target, ddof)
    details = (("fma", fma), ("lanes", topology.lanes), ("block", launch.block)) + launch.details()
    if on_host:
        return means.copy_to_host(), variances.copy_to_host(), f"cuda_{launch.kernel}", details
    return means, variances, f"cuda_{launch.kernel}", details


def clamped(variances):
    """max(variance, 0) of a device array, on the device (NaN stays NaN)."""
    clamp[-(-variances.size // 256), 256](variances)
    return variances


# ---- every specialization a launch can ask for (numerics.gpu_compile compiles them all to PTX) ------

#: (input format, accumulator format) pairs the kernels see: float64 input with a 16-bit
#: accumulator is rounded to that format on the host first (statistics.kernel_input_of)
FORMAT_PAIRS = tuple((input_format, acc_format) for input_format in precision.FORMATS
                     for acc_format in precision.FORMATS
                     if not (input_format == "float64" and acc_format in ("float16", "bfloat16")))

FAMILIES = (algorithms.CENTERED_SUMS, algorithms.WELFORD_UPDATES, algorithms.CHAN_UPDATES)


def context_type(family, input_format, acc_format, fma):
    """The numba-cuda type of the context a launch passes (a kernel's first argument type)."""
    return targets.gpu_context_type(targets.gpu_context(family, input_format, acc_format, fma))


def specializations():
    """``(label, fma, python function, numba signature)`` of every kernel specialization, typed as a
    launch types its arguments (the context by its type, Python ints as int64, device arrays 1-D
    C-contiguous). Kernels that multiply nothing have one build for both FMA modes, labelled fma
    "none"."""
    from numba import from_dtype, types

    def array(dtype):
        return types.Array(from_dtype(np.dtype(dtype)), 1, "C")

    def kernel_dtype(input_format):
        return np.uint16 if input_format in ("float16", "bfloat16") else np.dtype(input_format)

    integer = types.int64
    counts = array(np.int64)
    for fma in targets.FMA_MODES:
        for input_format, acc_format in FORMAT_PAIRS:
            x, state = array(kernel_dtype(input_format)), array(compute_type_of(acc_format))
            for family in FAMILIES:
                ctx = context_type(family, input_format, acc_format, fma)
                for kind in (SEGMENTS, ROWS):
                    yield (f"{family}/{kind}/{input_format}->{acc_format}", fma,
                           REDUCTIONS[kind].py_func,
                           types.void(ctx, x, state, *[integer] * 8, counts, state, state))
        for acc_format in precision.FORMATS:
            state = array(compute_type_of(acc_format))
            for family in FAMILIES:
                ctx = context_type(family, *finishing_formats(acc_format), fma)
                yield (f"{family}/finalize/{acc_format}", fma, finalize_groups.py_func,
                       types.void(ctx, integer, counts, state, state, integer, state, integer,
                                  state, state))
    for input_format, acc_format in FORMAT_PAIRS:
        x, state = array(kernel_dtype(input_format)), array(compute_type_of(acc_format))
        ctx = context_type(algorithms.CENTERED_SUMS, input_format, acc_format, WITHOUT_PRODUCTS)
        yield (f"first_elements/{input_format}->{acc_format}", "none", first_elements.py_func,
               types.void(ctx, x, *[integer] * 4, state))
    for acc_format in precision.FORMATS:
        state = array(compute_type_of(acc_format))
        ctx = context_type(algorithms.CENTERED_SUMS, *finishing_formats(acc_format),
                           WITHOUT_PRODUCTS)
        yield (f"pass_one_means/{acc_format}", "none", pass_one_means.py_func,
               types.void(ctx, counts, state, state, integer, state))
    for dtype in (np.float32, np.float64):
        yield f"clamp/{np.dtype(dtype).name}", "none", clamp.py_func, types.void(array(dtype))
