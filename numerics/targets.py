"""The only module that decorates: the plain functions of algorithms.py, precision.py and
topology.py made callable from compiled code, and the rule contexts of the kernels
(docs/architecture.md section 2).

A rule of algorithms.py takes a context as its first argument (``ctx.rnd``, ``ctx.mul_add``,
``ctx.push``...). In plain Python the context is algorithms.Arithmetic; in a kernel it is a value
of a numba *type* that names the specialization: ``CpuContext`` (rule family, input format,
accumulator format, vector or scalar path) and ``GpuContext`` (the same with the FMA mode instead
of the path). Its methods are chosen from the type (typed and lowered in their caller on the CPU,
``overload_method`` implementations on the GPU), so every compiled function that receives a
context is named (mangled) after its specialization: two formats never share a compiled name, and
numba's own ``cache=True`` keys the disk cache on the kernel's argument types (numerics.cache).

No fastmath anywhere: reassociation rewrites ordered and compensated reductions
(docs/architecture.md trap 3).
"""
import functools
import operator
from dataclasses import dataclass

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.core.typing.templates import AttributeTemplate, bound_function, signature
from numba.extending import (NativeValue, infer_getattr, lower_builtin, models, register_jitable,
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
    """The methods of a GPU context type, with numba-cuda's ``overload_method``:
    ``arithmetic(ctx)`` returns the implementations of ``rnd``, ``to_acc``, ``load``, ``mul`` and
    ``mul_add`` for a context type; ``push`` and ``merge`` are the family's rules
    (algorithms.FAMILY_RULES). Not inlined by numba (``inline="always"``): that gave wrong results
    in the CPU's rows kernel (seen with numba 0.68), and NVVM inlines these small functions."""
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


# The CPU context's methods are typed and lowered in their caller (numba's low-level extension
# API: an attribute template and lower_builtin), not compiled as functions of their own as an
# overload_method's are: every such function costs a kernel's first compilation 10-20 ms of numba's
# pipeline however small it is, and a first call compiled about twenty of them
# (docs/architecture.md 2.7). The arithmetic: two roundings per multiply-add, never fused (trap 2;
# without fastmath numba's ``a * b`` and ``+ c`` are two IEEE operations). float32 and float64
# accumulators round by themselves, so their methods are numba's own operations, typed and lowered
# as numba types and lowers ``a * b + c`` in a function's body (a cast for ``to_acc`` and ``load``,
# the identity for ``rnd``); the rest are compiled functions that the lowering calls: the family's
# rules, the 16-bit accumulators' rounded arithmetic (rounded_arithmetic) and the 16-bit inputs'
# decoding load.

#: the arguments of each method of a CPU context, after the context
CPU_METHOD_ARITY = {"rnd": 1, "to_acc": 1, "load": 1, "mul": 2, "mul_add": 3, "push": 5,
                    "merge": 6}


def _is_plain(ctx, name):
    """Whether the method ``name`` of the CpuContextType ``ctx`` is numba's own operations."""
    if name in ("push", "merge") or ctx.acc_format in ("float16", "bfloat16"):
        return False
    return name != "load" or ctx.input_format in ("float32", "float64")


def _multiply(a, b):
    return a * b


register_jitable(**INTERNAL)(_multiply)


@functools.lru_cache(maxsize=None)
def _compiled_function(ctx, name):
    """The compiled function of a method that is not plain (``_is_plain``), called with the
    context first: a rule registered as jitable, or a dispatcher."""
    if name in ("push", "merge"):
        function = algorithms.FAMILY_RULES[ctx.family][name == "merge"]
    elif ctx.acc_format in ("float16", "bfloat16"):
        function = numba.njit(**INTERNAL)(rounded_arithmetic(ctx, _multiply)[name])
    else:
        compute_type, decode = compute_type_of(ctx.acc_format), INPUT_DECODERS[ctx.input_format]
        function = numba.njit(**INTERNAL)(lambda ctx, raw: compute_type(decode(raw)))
    return function


def _compiled_method(typing_context, ctx, name, args):
    """The function type and signature of a method that is not plain on ``args``."""
    function_type = typing_context.resolve_value_type(_compiled_function(ctx, name))
    return function_type, function_type.get_call_type(typing_context, (ctx, *args), {})


def _operation(typing_context, python_operator, left, right):
    """numba's function type of a Python operator and its signature for ``left <operator>
    right`` (whose arguments are the types it casts the operands to)."""
    function_type = typing_context.resolve_value_type(python_operator)
    return function_type, function_type.get_call_type(typing_context, (left, right), {})


def _method_type(typing_context, ctx, name, args):
    """The return type of the method ``name`` of a CPU context on ``args`` (numba types)."""
    if not _is_plain(ctx, name):
        return _compiled_method(typing_context, ctx, name, args)[1].return_type
    if name == "rnd":
        return args[0]
    if name in ("to_acc", "load"):
        return numba.from_dtype(precision.COMPUTE_DTYPES[ctx.acc_format])
    product = _operation(typing_context, operator.mul, args[0], args[1])[1].return_type
    if name == "mul":
        return product
    return _operation(typing_context, operator.add, product, args[2])[1].return_type


class CpuContextMethods(AttributeTemplate):
    """The types of a CPU context's methods (``ctx.mul(a, b)``...): one ``resolve_<name>`` per
    method, added below."""
    key = CpuContextType

    def _method(self, name, ctx, args, kws):
        if kws or len(args) != CPU_METHOD_ARITY[name]:
            return None
        args = tuple(types.unliteral(argument) for argument in args)
        return signature(_method_type(self.context, ctx, name, args), *args)


def _method_resolver(name):
    """The typing of the method ``name`` of a CPU context, as numba's attribute templates take a
    method: a ``resolve_<name>`` wrapped by ``bound_function``."""
    def resolve(self, ctx, args, kws):
        return self._method(name, ctx, args, kws)
    return bound_function(f"CpuContext.{name}")(resolve)


for _name in CPU_METHOD_ARITY:
    setattr(CpuContextMethods, f"resolve_{_name}", _method_resolver(_name))
infer_getattr(CpuContextMethods)


def _lower_operation(context, builder, python_operator, left, right):
    """``left <python_operator> right`` of two (numba type, LLVM value) pairs, as numba lowers
    it in a function's body: the operands cast to the signature's types, then its
    implementation. Returns the pair of the result."""
    function_type, operation = _operation(context.typing_context, python_operator, left[0],
                                          right[0])
    operands = [context.cast(builder, value, kind, wanted)
                for (kind, value), wanted in zip((left, right), operation.args)]
    return operation.return_type, context.get_function(function_type, operation)(builder,
                                                                                  operands)


def _cpu_method(name):
    """The lowering of the method ``name`` of a CPU context."""
    def lower(context, builder, sig, args):
        ctx = sig.args[0]
        if not _is_plain(ctx, name):
            function_type, call = _compiled_method(context.typing_context, ctx, name,
                                                   sig.args[1:])
            return context.get_function(function_type, call)(builder, args)
        if name == "rnd":
            return args[1]
        if name in ("to_acc", "load"):
            return context.cast(builder, args[1], sig.args[1], sig.return_type)
        operands = list(zip(sig.args[1:], args[1:]))
        product = _lower_operation(context, builder, operator.mul, operands[0], operands[1])
        if name == "mul":
            return product[1]
        return _lower_operation(context, builder, operator.add, product, operands[2])[1]
    return lower


for _name in CPU_METHOD_ARITY:
    lower_builtin(f"CpuContext.{_name}", CpuContextType, types.VarArg(types.Any))(
        _cpu_method(_name))


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
