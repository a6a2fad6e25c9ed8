"""The only module that decorates: the plain functions of algorithms.py, precision.py and
topology.py made callable from compiled code, and the rule contexts of the kernels
(docs/architecture.md section 2).

A rule of algorithms.py takes a context as its first argument (``ctx.rnd``, ``ctx.mul_add``,
``ctx.push``...). In plain Python the context is algorithms.Arithmetic; in a kernel it is a value
of a numba *type* that names the specialization: ``CpuContext`` (rule family, input format,
accumulator format, vector or scalar path) and ``GpuContext`` (the same with the FMA mode instead
of the path). Its methods are ``numba.extending.overload_method`` implementations chosen from the
type, so every compiled function that receives a context is named (mangled) after its
specialization: two formats never share a compiled name, and numba's own ``cache=True`` keys the
disk cache on the kernel's argument types (numerics.cache).

No fastmath anywhere: reassociation rewrites ordered and compensated reductions
(docs/architecture.md trap 3).
"""
import functools
from dataclasses import dataclass

import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import (NativeValue, models, overload_method, register_jitable,
                             register_model, typeof_impl, unbox)

from . import algorithms, precision, topology

INPUT_DECODERS = {
    "float16": precision.float16_bits_to_float32,
    "bfloat16": precision.bfloat16_bits_to_float32,
    "float32": precision.identity,
    "float64": precision.identity,
}

ROUNDERS = {
    "float16": precision.round_float32_to_float16,
    "bfloat16": precision.round_float32_to_bfloat16,
    "float32": precision.identity,
    "float64": precision.identity,
}

#: the jit options of every CPU function that only compiled code calls (``jit_options`` of numba's
#: ``overload``): no C-callable (cfunc) wrapper, which numba builds for every compiled function
#: unless told not to and nothing here uses, and no CPython wrapper (an overload's default);
#: the wrappers were about an eighth of a first call's compile time (docs/architecture.md 2.7)
INTERNAL = {"no_cfunc_wrapper": True, "no_cpython_wrapper": True}

#: the plain functions that compiled code calls by name
JITABLE = (algorithms.RULE_FUNCTIONS + tuple(INPUT_DECODERS.values())
           + (precision.round_float32_to_float16, precision.round_float32_to_bfloat16,
              topology.merge_lanes, topology.merge_blocks))

for _function in JITABLE:
    register_jitable(**INTERNAL)(_function)


def compute_type_of(acc_format):
    """The numpy scalar type a kernel computes in for an accumulator format."""
    return precision.COMPUTE_DTYPES[acc_format].type


# ---- CPU ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CpuContext:
    """What a CPU kernel is specialised for: passed as an argument, its numba type (CpuContextType)
    carries every field. Each instance carries that type as ``_numba_type_``, the attribute numba's
    dispatcher reads first when it types an argument: without it every kernel call would type the
    context by calling ``typeof`` in Python, several microseconds apiece (docs/architecture.md
    2.8)."""
    family: str
    input_format: str
    acc_format: str
    vectorized: bool

    def __post_init__(self):
        object.__setattr__(self, "_numba_type_", CpuContextType(
            self.family, self.input_format, self.acc_format, self.vectorized))


class CpuContextType(types.Type):
    def __init__(self, family, input_format, acc_format, vectorized):
        self.family = family
        self.input_format = input_format
        self.acc_format = acc_format
        self.vectorized = vectorized
        path = "simd" if vectorized else "scalar"
        super().__init__(name=f"CpuContext({family}, {input_format}, {acc_format}, {path})")


@typeof_impl.register(CpuContext)
def _typeof_context(context, _):
    return context._numba_type_


# a context carries nothing at run time: an opaque pointer, always null
register_model(CpuContextType)(models.OpaqueModel)


@unbox(CpuContextType)
def _unbox_context(typ, obj, c):
    return NativeValue(cgutils.get_null_value(c.context.get_value_type(typ)))


def _define_arithmetic(context_type, arithmetic, overload_method):
    """The methods of a context type, with the target's ``overload_method``: ``arithmetic(ctx)``
    returns the implementations of ``rnd``, ``to_acc``, ``load``, ``mul`` and ``mul_add`` for a
    context type; ``push`` and ``merge`` are the family's rules (algorithms.FAMILY_RULES). Not
    inlined by numba (``inline="always"``): that gave wrong results in the rows kernel (seen with
    numba 0.68), and LLVM inlines these small functions anyway."""
    @overload_method(context_type, "rnd")
    def _rnd(ctx, value):
        return arithmetic(ctx)["rnd"]

    @overload_method(context_type, "to_acc")
    def _to_acc(ctx, value):
        return arithmetic(ctx)["to_acc"]

    @overload_method(context_type, "load")
    def _load(ctx, raw):
        return arithmetic(ctx)["load"]

    @overload_method(context_type, "mul")
    def _mul(ctx, a, b):
        return arithmetic(ctx)["mul"]

    @overload_method(context_type, "mul_add")
    def _mul_add(ctx, a, b, c):
        return arithmetic(ctx)["mul_add"]

    @overload_method(context_type, "push")
    def _push(ctx, count, center, first, second, x):
        push = algorithms.FAMILY_RULES[ctx.family][0]
        return lambda ctx, count, center, first, second, x: push(ctx, count, center, first,
                                                                 second, x)

    @overload_method(context_type, "merge")
    def _merge(ctx, count_a, first_a, second_a, count_b, first_b, second_b):
        merge = algorithms.FAMILY_RULES[ctx.family][1]
        return (lambda ctx, count_a, first_a, second_a, count_b, first_b, second_b:
                merge(ctx, count_a, first_a, second_a, count_b, first_b, second_b))


def rounded_arithmetic(ctx, product):
    """The implementations of an arithmetic whose every result goes through the format's
    rounding, ``product(a, b)`` being the target's product and a multiply-add two roundings."""
    rounder, decode = ROUNDERS[ctx.acc_format], INPUT_DECODERS[ctx.input_format]
    compute_type = compute_type_of(ctx.acc_format)

    def mul_add(ctx, a, b, c):
        return rounder(rounder(product(a, b)) + c)

    return {"rnd": lambda ctx, value: rounder(value),
            "to_acc": lambda ctx, value: rounder(compute_type(value)),
            "load": lambda ctx, raw: rounder(compute_type(decode(raw))),
            "mul": lambda ctx, a, b: rounder(product(a, b)),
            "mul_add": mul_add}


def _multiply(a, b):
    return a * b


register_jitable(**INTERNAL)(_multiply)


def cpu_arithmetic(ctx):
    """The CPU's arithmetic: two roundings per multiply-add, never fused (docs/architecture.md
    trap 2; without fastmath numba's ``a * b + c`` is two IEEE operations). float32 and float64
    accumulators round by themselves: their methods are plain operations."""
    if ctx.acc_format in ("float16", "bfloat16"):
        return rounded_arithmetic(ctx, _multiply)
    compute_type = compute_type_of(ctx.acc_format)
    if ctx.input_format in ("float16", "bfloat16"):
        decode = INPUT_DECODERS[ctx.input_format]
        load = lambda ctx, raw: compute_type(decode(raw))  # noqa: E731
    else:
        load = lambda ctx, raw: compute_type(raw)  # noqa: E731
    return {"rnd": lambda ctx, value: value,
            "to_acc": lambda ctx, value: compute_type(value),
            "load": load,
            "mul": lambda ctx, a, b: a * b,
            "mul_add": lambda ctx, a, b, c: a * b + c}


_define_arithmetic(CpuContextType, cpu_arithmetic,
                   functools.partial(overload_method, jit_options=INTERNAL))


# ---- GPU ------------------------------------------------------------------------------------------

#: how a GPU build treats ``c + a*b`` (docs/architecture.md trap 2): "separate" rounds the product
#: and the sum apart, exactly as the CPU does; "fused" rounds once, with an FMA at every mul_add site.
FMA_MODES = ("separate", "fused")


class GpuContext:
    """The rule context of the GPU kernels, passed as their first argument. Compiled for a GPU, its
    numba-cuda type names (family, input format, accumulator format, FMA mode), whose methods are
    defined by ``register_gpu_types``, and its value is nothing: no kernel parameter
    (``ContextArguments``). In numba-cuda's simulator, which runs kernels as Python, it is this
    object, whose methods compute what the simulator's arithmetic computes.

    NVVM contracts a plain ``a*b + c`` into an FMA even without fastmath, so on a GPU every product
    goes through libdevice's ``fmul_rn``/``dmul_rn``: a multiply with an explicit rounding mode,
    which neither NVVM nor ptxas fuses. Only "fused" writes FMAs (``cuda.fma``), at the mul_add
    sites and nowhere else. The simulator has no libdevice and its ``cuda.fma`` is ``a*b + c``
    in Python arithmetic, which never contracts: there the products are plain products, the same
    correctly rounded operation, and "fused" computes what the simulator's FMA computes, two
    roundings; only the PTX shows the fusion (numerics.gpu_compile)."""

    def __init__(self, family, input_format, acc_format, fma):
        if fma not in FMA_MODES:
            raise ValueError(f"fma must be one of {FMA_MODES}, got {fma!r}")
        self.family, self.input_format, self.acc_format, self.fma = (family, input_format,
                                                                      acc_format, fma)
        self.compute_type = compute_type_of(acc_format)

    def rnd(self, value):
        return ROUNDERS[self.acc_format](value)

    def to_acc(self, value):
        return self.rnd(self.compute_type(value))

    def load(self, raw):
        return self.to_acc(INPUT_DECODERS[self.input_format](raw))

    def mul(self, a, b):
        return self.rnd(a * b)

    def mul_add(self, a, b, c):
        if self.fma == "fused":
            return self.rnd(a * b + c)  # what the simulator's cuda.fma computes
        return self.rnd(self.rnd(a * b) + c)

    def push(self, count, center, first, second, x):
        return algorithms.FAMILY_RULES[self.family][0](self, count, center, first, second, x)

    def merge(self, count_a, first_a, second_a, count_b, first_b, second_b):
        return algorithms.FAMILY_RULES[self.family][1](self, count_a, first_a, second_a, count_b,
                                                       first_b, second_b)


@functools.lru_cache(maxsize=None)
def register_gpu_types():
    """Teach numba-cuda the GpuContext type (numba-cuda keeps its own type system and
    registries): called before a GPU kernel or a kernel signature is typed (gpu_context,
    gpu_context_type); the simulator, which types nothing, runs without it."""
    from numba import cuda
    from numba.cuda import libdevice
    from numba.cuda import types as cuda_types
    from numba.cuda.extending import overload_method as cuda_overload_method
    from numba.cuda.extending import register_jitable as cuda_register_jitable
    from numba.cuda.extending import typeof_impl as cuda_typeof_impl

    class GpuContextType(cuda_types.Type):
        def __init__(self, family, input_format, acc_format, fma):
            self.family, self.input_format = family, input_format
            self.acc_format, self.fma = acc_format, fma
            super().__init__(name=f"GpuContext({family}, {input_format}, {acc_format}, {fma})")

    @cuda_typeof_impl.register(GpuContext)
    def _typeof_gpu_context(context, _):
        return GpuContextType(context.family, context.input_format, context.acc_format,
                              context.fma)

    register_empty_model(GpuContextType)

    for function in JITABLE:
        cuda_register_jitable(function)

    def arithmetic(ctx):
        product = (libdevice.fmul_rn if compute_type_of(ctx.acc_format) is np.float32
                   else libdevice.dmul_rn)
        implementations = rounded_arithmetic(ctx, product)
        if ctx.fma == "fused":
            rounder = ROUNDERS[ctx.acc_format]

            def mul_add(ctx, a, b, c):
                return rounder(cuda.fma(a, b, c))

            implementations["mul_add"] = mul_add
        return implementations

    _define_arithmetic(GpuContextType, arithmetic, cuda_overload_method)


def register_empty_model(type_class):
    """Give a numba-cuda type that carries nothing at run time (a context) the data model of a
    struct with no members: numba-cuda flattens a kernel's arguments into parameters member by
    member, so such an argument is no parameter at all, and a device function's is an empty
    struct that LLVM drops."""
    from numba.cuda.datamodel import models as cuda_models
    from numba.cuda.extending import register_model as cuda_register_model

    class EmptyModel(cuda_models.StructModel):
        def __init__(self, dmm, fe_type):
            super().__init__(dmm, fe_type, [])

    cuda_register_model(type_class)(EmptyModel)


class ContextArguments:
    """How a kernel launch passes a context: a numba-cuda kernel-argument extension (the
    ``extensions`` option of ``cuda.jit``, documented on numba-cuda's Dispatcher). numba-cuda types
    every argument first (the context's type names the specialization), then marshals the values;
    this turns an instance of ``classes`` into the empty tuple, which numba-cuda marshals as no
    parameter, matching the empty data model of its type (register_empty_model)."""

    def __init__(self, *classes):
        self.classes = classes

    def prepare_args(self, ty, val, stream=None, retr=None):
        if isinstance(val, self.classes):
            from numba.cuda import types as cuda_types
            return cuda_types.Tuple(()), ()
        return ty, val


def numba_cuda():
    """numba.cuda, or None where numba-cuda (the optional "gpu" extra) is not installed: then the
    GPU functions stay plain Python, never launched (numerics.gpu.require_gpu says why)."""
    try:
        from numba import cuda
    except ImportError:
        return None
    return cuda


def gpu_inline(function):
    """A GPU device function, inlined into its caller. Undecorated helpers pass in the simulator but
    fail in real NVVM (docs/architecture.md section 2), so every helper a kernel calls goes through
    here. The inlining is LLVM's (``forceinline``), not numba's (``inline="always"``): numba's IR
    inlining copies the callee's IR at every call site and re-types it, which took 10 to 40 s per
    kernel here; this way each device function is compiled once per signature and NVVM inlines it.
    The simulator's jit takes no ``forceinline`` (it compiles nothing: device functions are Python
    calls)."""
    cuda = numba_cuda()
    if cuda is None:
        return function
    from numba import config
    if config.ENABLE_CUDASIM:
        return cuda.jit(device=True)(function)
    return cuda.jit(device=True, forceinline=True)(function)


def gpu_kernel(function):
    """A GPU kernel (numba.cuda.jit), specialised by its argument types: a context argument
    (GpuContext) is passed as its type only (ContextArguments); the simulator passes the object.
    No fastmath (docs/architecture.md trap 3): it would also turn on NVVM's FMA contraction and
    approximate division."""
    cuda = numba_cuda()
    if cuda is None:
        return function
    from numba import config
    if config.ENABLE_CUDASIM:
        return cuda.jit(function)
    return cuda.jit(extensions=[ContextArguments(GpuContext)])(function)


@functools.lru_cache(maxsize=None)
def gpu_context(family, input_format, acc_format, fma):
    """The GpuContext of one specialization, its numba-cuda type registered first."""
    from numba import config
    if not config.ENABLE_CUDASIM:
        register_gpu_types()
    return GpuContext(family, input_format, acc_format, fma)


def gpu_context_type(context):
    """The numba-cuda type of a GpuContext: the first argument type of a kernel signature."""
    from numba.cuda.typing.typeof import typeof
    register_gpu_types()
    return typeof(context)
