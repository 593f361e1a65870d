"""Dense einsums as one 2-D matmul while a training step is traced: same values, same gradients, no batch matmul."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.tensorflow import numpy as keras_tf_numpy

from tf_ppo.models.einsum import einsum_as_tensordot, tensordot_axes


@pytest.mark.parametrize("subscripts, axes", [
    ("abc,cd->abd", 1), ("abc,cde->abde", 1), ("abcd,cde->abe", 2),  # keras-hub's dense layers, as Keras writes them
    ("btd,dnh->btnh", 1), ("ab,bc->ac", 1), ("abc,c->ab", 1), ("abc,bcd->ad", 2),
    ("abcd,abde->abce", None),  # batch matmul: the batch axes are shared, not contracted
    ("aecd,abcd->acbe", None),  # attention scores
    ("abc,cd->adb", None),  # output axes reordered
    ("abc,cd->ab", None),  # d summed away
    ("aa,ab->b", None), ("...c,cd->...d", None), ("ab,bc,cd->ad", None), ("abc", None)])
def test_tensordot_axes_recognises_exactly_the_tensordot_shaped_einsums(subscripts, axes):
    assert tensordot_axes(subscripts) == axes


@pytest.mark.parametrize("equation, input_shape, output_shape", [
    ("abc,cd->abd", (3, 4, 5), (None, 6)),
    ("abc,cde->abde", (3, 4, 5), (None, 2, 3)),  # attention query/key/value projections
    ("abcd,cde->abe", (3, 4, 2, 5), (None, 6)),  # attention output projection
])
def test_dense_einsum_values_and_kernel_gradients_match_numpy_without_a_batch_matmul(equation, input_shape,
                                                                                     output_shape):
    rng = np.random.default_rng(0)
    layer = keras.layers.EinsumDense(equation, output_shape=output_shape, dtype="float64")
    layer.build(input_shape)
    kernel = rng.normal(size=layer.kernel.shape)  # [contracted..., out...]
    layer.kernel.assign(kernel)
    inputs = rng.normal(size=input_shape)
    x_axes, kernel_axes, output_axes = equation.replace("->", ",").split(",")
    upstream = rng.normal(size=np.einsum(equation, inputs, kernel).shape)  # d loss / d output

    def traced(block):
        @tf.function
        def output_and_kernel_gradient(x):
            with tf.GradientTape() as tape, block():
                output = layer(x)
                loss = tf.reduce_sum(output * upstream)
            return output, tape.gradient(loss, layer.kernel)

        graph = output_and_kernel_gradient.get_concrete_function(tf.constant(inputs)).graph
        output, gradient = output_and_kernel_gradient(tf.constant(inputs))
        return output.numpy(), gradient.numpy(), {op.type for op in graph.get_operations()}

    output, gradient, op_types = traced(einsum_as_tensordot)
    np.testing.assert_allclose(output, np.einsum(equation, inputs, kernel), rtol=1e-12)
    np.testing.assert_allclose(gradient, np.einsum(f"{x_axes},{output_axes}->{kernel_axes}", inputs, upstream),
                               rtol=1e-12)
    assert "BatchMatMulV2" not in op_types and "MatMul" in op_types
    # Why the block exists: Keras alone runs this as a broadcast batch matmul (if this fails, Keras changed
    # and the block may no longer be needed).
    assert "BatchMatMulV2" in traced(contextlib.nullcontext)[2]


def test_other_einsums_inside_the_block_are_left_to_keras():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 5, 6))
    small = np.arange(24, dtype=np.int8).reshape(2, 3, 4), np.arange(20, dtype=np.int8).reshape(4, 5)
    with einsum_as_tensordot():
        batch_matmul = keras.ops.einsum("abcd,abde->abce", x, y)
        quantised = keras.ops.einsum("abc,cd->abd", *small)  # tensordot-shaped, but int8: Keras gives int32
    np.testing.assert_allclose(batch_matmul, np.einsum("abcd,abde->abce", x, y), rtol=1e-12)
    assert quantised.dtype == tf.int32
    np.testing.assert_array_equal(quantised, np.einsum("abc,cd->abd", *(a.astype(np.int32) for a in small)))


def test_keras_einsum_is_restored_after_the_block_even_on_error():
    keras_einsum = keras_tf_numpy.einsum
    with pytest.raises(ValueError, match="inside"):
        with einsum_as_tensordot():
            assert keras_tf_numpy.einsum is not keras_einsum
            raise ValueError("inside")
    assert keras_tf_numpy.einsum is keras_einsum
