"""Explicit SIMD for the CPU kernels: a numba type for LLVM vectors of ``width`` lanes (and
``borrowed``, views that skip reference counting; ``smaller`` and ``larger``, an integer min and
max lowered in place).

Why: numba's CPU pipeline leaves the lanes topology scalar. Lane states in small arrays are either
spilled to memory or, once LLVM unrolls the lane loop, promoted to scalar registers; the SLP
vectorizer is off in numba (NUMBA_SLP_VECTORIZE=0), and fastmath may not be used to let the loop
vectorizer reorder the sums (docs/architecture.md traps 3 and 9). A ``Vector`` value *is* an LLVM
``<width x T>``, so ``W`` adjacent lanes of a topology live in one register and every operation on
them is one packed instruction with exactly IEEE semantics per lane (no reassociation, no
contraction: the FMA-free arithmetic of the scalar rules is kept).

The scalar rules of algorithms.py run on vectors unchanged: ``+ - * /`` and unary minus accept two
vectors or a vector and a scalar (the scalar is broadcast), and a scalar unifies with a vector (a
rule returning ``to_acc(0)`` on one branch and a vector on the other types as a vector). Counts stay
scalar: the kernels only push vectors whose lanes hold the same count.
"""
import operator

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.imputils import lower_cast
from numba.extending import intrinsic, lower_builtin, models, register_model, type_callable

_I32 = ir.IntType(32)


class Vector(types.Type):
    """``width`` lanes of ``dtype`` (a numba scalar type) in one LLVM vector value."""

    def __init__(self, dtype, width):
        self.dtype = dtype
        self.width = width
        super().__init__(name=f"Vector({dtype}, {width})")

    def unify(self, typingctx, other):
        if isinstance(other, (types.Float, types.Integer)):
            return self
        return None

    def can_convert_from(self, typingctx, other):
        if isinstance(other, (types.Float, types.Integer)):
            return types.Conversion.safe
        return None


@register_model(Vector)
class VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.width))


def _broadcast(context, builder, value, from_type, vector_type):
    """The LLVM vector with every lane equal to ``value`` (converted to the vector's dtype)."""
    element = context.cast(builder, value, from_type, vector_type.dtype)
    llvm_type = context.get_value_type(vector_type)
    undefined = ir.Constant(llvm_type, ir.Undefined)
    first = builder.insert_element(undefined, element, ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, undefined,
                                  ir.Constant(ir.VectorType(_I32, vector_type.width),
                                              [0] * vector_type.width))


@lower_cast(types.Float, Vector)
@lower_cast(types.Integer, Vector)
def _scalar_to_vector(context, builder, from_type, to_type, value):
    return _broadcast(context, builder, value, from_type, to_type)


def _scalar_type(dtype):
    return dtype.dtype if isinstance(dtype, (types.NumberClass, types.DType)) else dtype


def _element_pointer(context, builder, array_type, array, index):
    """Address of element ``index`` of a C-contiguous array, counted flat from its start."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic(prefer_literal=True)
def load(typingctx, array, index, width):
    """Elements ``index .. index + width - 1`` of a C-contiguous array, counted flat (no bounds
    check), as a Vector. A flat offset into a 2-D array avoids a row view, whose reference count
    would be a call in the caller's loop."""
    if not isinstance(width, types.IntegerLiteral):
        return None
    return _load_definition(array, index, width)


def _load_definition(array, index, width):
    """The signature and code of ``load``."""
    vector_type = Vector(array.dtype, width.literal_value)

    def codegen(context, builder, signature, arguments):
        pointer = _element_pointer(context, builder, signature.args[0], arguments[0], arguments[1])
        pointer = builder.bitcast(pointer, context.get_value_type(vector_type).as_pointer())
        element_bytes = context.get_abi_sizeof(context.get_value_type(array.dtype))
        return builder.load(pointer, align=element_bytes)

    return vector_type(array, index, width), codegen


@intrinsic
def store(typingctx, array, index, vector):
    """Elements ``index .. index + width - 1`` of a C-contiguous array, counted flat (no bounds
    check), set to the lanes of ``vector``."""
    if not isinstance(vector, Vector):
        return None

    def codegen(context, builder, signature, arguments):
        pointer = _element_pointer(context, builder, signature.args[0], arguments[0], arguments[1])
        pointer = builder.bitcast(pointer, context.get_value_type(vector).as_pointer())
        builder.store(arguments[2], pointer,
                      align=context.get_abi_sizeof(context.get_value_type(array.dtype)))
        return context.get_dummy_value()

    return types.none(array, index, vector), codegen


@intrinsic(prefer_literal=True)
def splat(typingctx, value, width):
    """A Vector of ``width`` copies of ``value``."""
    if not isinstance(width, types.IntegerLiteral):
        return None
    vector_type = Vector(value, width.literal_value)

    def codegen(context, builder, signature, arguments):
        return _broadcast(context, builder, arguments[0], value, vector_type)

    return vector_type(value, width), codegen


@intrinsic(prefer_literal=True)
def lanes_of(typingctx, source, index, width):
    """A Vector of ``width`` lanes: elements ``index ..`` of a C-contiguous array (as ``load``),
    or copies of a scalar (as ``splat``, ``index`` unused). Kernels written once for centers that
    are an array (one per lane) or one scalar take either, with no compiled function between."""
    if not isinstance(width, types.IntegerLiteral):
        return None
    if isinstance(source, types.Array):
        return _load_definition(source, index, width)
    vector_type = Vector(source, width.literal_value)

    def codegen(context, builder, signature, arguments):
        return _broadcast(context, builder, arguments[0], source, vector_type)

    return vector_type(source, index, width), codegen


@intrinsic
def convert(typingctx, vector, dtype):
    """Each lane converted to ``dtype`` (IEEE conversion: exact when widening, correctly rounded
    when narrowing, integers to their nearest value). Lanes holding float16 or bfloat16 bit
    patterns as uint16 go through ``decode`` first."""
    if not isinstance(vector, Vector):
        return None
    target = _scalar_type(dtype)
    result = Vector(target, vector.width)

    def codegen(context, builder, signature, arguments):
        llvm_type = context.get_value_type(result)
        source = vector.dtype
        if source == target:
            return arguments[0]
        if isinstance(source, types.Float):
            if source.bitwidth < target.bitwidth:
                return builder.fpext(arguments[0], llvm_type)
            return builder.fptrunc(arguments[0], llvm_type)
        if source.signed:
            return builder.sitofp(arguments[0], llvm_type)
        return builder.uitofp(arguments[0], llvm_type)

    return result(vector, dtype), codegen


@intrinsic(prefer_literal=True)
def decode(typingctx, bits, format_name):
    """float32 lanes from uint16 lanes holding float16 (an IEEE conversion: vcvtph2ps) or bfloat16
    (the top half of a float32) bit patterns; exact, like precision.py's scalar decoders."""
    if not isinstance(bits, Vector) or not isinstance(format_name, types.StringLiteral):
        return None
    name = format_name.literal_value
    if name not in ("float16", "bfloat16"):
        return None
    result = Vector(types.float32, bits.width)

    def codegen(context, builder, signature, arguments):
        width = bits.width
        if name == "float16":
            halves = builder.bitcast(arguments[0], ir.VectorType(ir.HalfType(), width))
            return builder.fpext(halves, ir.VectorType(ir.FloatType(), width))
        words = builder.zext(arguments[0], ir.VectorType(_I32, width))
        words = builder.shl(words, ir.Constant(ir.VectorType(_I32, width), [16] * width))
        return builder.bitcast(words, ir.VectorType(ir.FloatType(), width))

    return result(bits, format_name), codegen


@intrinsic
def extract(typingctx, vector, index):
    """Lane ``index`` of ``vector`` as a scalar."""
    if not isinstance(vector, Vector):
        return None

    def codegen(context, builder, signature, arguments):
        index_value = context.cast(builder, arguments[1], signature.args[1], types.int32)
        return builder.extract_element(arguments[0], index_value)

    return vector.dtype(vector, index), codegen


@intrinsic(prefer_literal=True)
def stack_vectors(typingctx, count, width, dtype):
    """A pointer to ``count`` Vectors in the caller's stack frame (allocated in its entry block):
    indexed with constants after LLVM unrolls the loops over them, they are promoted to registers
    (SROA), which a heap array that may alias the input never is."""
    if not (isinstance(count, types.IntegerLiteral) and isinstance(width, types.IntegerLiteral)):
        return None
    vector_type = Vector(_scalar_type(dtype), width.literal_value)

    def codegen(context, builder, signature, arguments):
        return cgutils.alloca_once(builder, context.get_value_type(vector_type),
                                   size=count.literal_value)

    return types.CPointer(vector_type)(count, width, dtype), codegen


def _vector_result(left, right):
    """The Vector type of an arithmetic operation on two vectors of one type, or on a vector and
    a scalar (broadcast), or None."""
    if isinstance(left, Vector) and isinstance(right, Vector):
        return left if left == right else None
    if isinstance(left, Vector) and isinstance(right, types.Number):
        return left
    if isinstance(right, Vector) and isinstance(left, types.Number):
        return right
    return None


# The operators are typed and lowered in their caller (numba's low-level extension API), not
# overloads: an overload's implementation is a function compiled on its own, 10-20 ms of numba's
# pipeline per signature in a kernel's first compilation (docs/architecture.md 2.7)
def _register_operator(python_operator, instruction):
    @type_callable(python_operator)
    def vector_operator(context):
        return _vector_result

    def lower(context, builder, signature, arguments):
        operands = [argument if isinstance(kind, Vector)
                    else _broadcast(context, builder, argument, kind, signature.return_type)
                    for kind, argument in zip(signature.args, arguments)]
        return getattr(builder, instruction)(*operands)

    for kinds in ((Vector, Vector), (Vector, types.Number), (types.Number, Vector)):
        lower_builtin(python_operator, *kinds)(lower)


for _python_operator, _instruction in ((operator.add, "fadd"), (operator.sub, "fsub"),
                                       (operator.mul, "fmul"), (operator.truediv, "fdiv")):
    _register_operator(_python_operator, _instruction)


@type_callable(operator.neg)
def _vector_negation(context):
    return lambda vector: vector if isinstance(vector, Vector) else None


@lower_builtin(operator.neg, Vector)
def _negate(context, builder, signature, arguments):
    return builder.fneg(arguments[0])


def _borrow(context, builder, array_type, value):
    view = context.make_array(array_type)(context, builder, value)
    view.meminfo = cgutils.get_null_value(view.meminfo.type)
    return view._getvalue()


@intrinsic
def borrowed(typingctx, array):
    """``array`` without its reference count (a NULL meminfo): views taken from it cost no atomic
    increments and decrements. Numba counts a reference for every array view and call argument,
    and with two threads the shared counter of the input bounces between the cores; the kernels
    borrow arrays that their Python caller keeps alive for the whole call."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, arguments):
        return _borrow(context, builder, array, arguments[0])

    return array(array), codegen


@intrinsic
def borrowed_tuple(typingctx, arrays):
    """A tuple (or namedtuple) of arrays, and of Nones in place of arrays a kernel does not use,
    with every array ``borrowed``."""
    if not (isinstance(arrays, types.BaseTuple)
            and all(isinstance(member, (types.Array, types.NoneType)) for member in arrays)):
        return None

    def codegen(context, builder, signature, arguments):
        members = [builder.extract_value(arguments[0], index) for index in range(len(arrays))]
        members = [_borrow(context, builder, member, value)
                   if isinstance(member, types.Array) else value
                   for member, value in zip(arrays, members)]
        return context.make_tuple(builder, arrays, members)

    return arrays(arrays), codegen


@intrinsic(prefer_literal=True)
def as_vectors(typingctx, array, width):
    """A C-contiguous array of ``n * width`` elements seen as ``n`` Vectors (a CPointer: element
    ``t`` loads and stores lanes ``t * width ..``), for code written for arrays of scalars (the
    topology's lane tree) to run on vectors when the lane count is known only at run time. The
    CPointer's loads and stores assume the vector's alignment (32 bytes for AVX2): the array's
    data must start on such a boundary."""
    if not isinstance(array, types.Array) or not isinstance(width, types.IntegerLiteral):
        return None
    vector_type = Vector(array.dtype, width.literal_value)

    def codegen(context, builder, signature, arguments):
        data = context.make_array(array)(context, builder, arguments[0]).data
        return builder.bitcast(data, context.get_value_type(vector_type).as_pointer())

    return types.CPointer(vector_type)(array, width), codegen


def _integer_choice(typingctx, a, b, comparison):
    """The signature and code of ``a if a <comparison> b else b`` for two integers."""
    if not (isinstance(a, types.Integer) and isinstance(b, types.Integer)):
        return None
    result = types.unliteral(typingctx.unify_types(a, b))

    def codegen(context, builder, signature, arguments):
        a_value, b_value = (context.cast(builder, value, kind, result)
                            for value, kind in zip(arguments, signature.args))
        compare = builder.icmp_signed if result.signed else builder.icmp_unsigned
        return builder.select(compare(comparison, a_value, b_value), a_value, b_value)

    return result(a, b), codegen


# numba's min and max are overloads: each signature compiles as a function of its own, with
# numba's whole pipeline, about 20 ms of a kernel's first call apiece (docs/architecture.md 2.7);
# an intrinsic is lowered in its caller
@intrinsic
def smaller(typingctx, a, b):
    """min(a, b) of two integers."""
    return _integer_choice(typingctx, a, b, "<")


@intrinsic
def larger(typingctx, a, b):
    """max(a, b) of two integers."""
    return _integer_choice(typingctx, a, b, ">")
