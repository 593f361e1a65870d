"""Dense-layer einsums as one 2-D matmul while a training step is traced, so their weight gradients are too.

Keras' TensorFlow backend runs a dense einsum such as `EinsumDense("abc,cde->abde")` (the attention
projections of keras-hub's transformers) as `tf.matmul(x[batch, seq, c], kernel[c, d*e])`, a matmul that
broadcasts the kernel over the batch. TensorFlow's gradient of a broadcast matmul first computes one kernel
gradient per batch row, `[batch, c, d*e]`, then sums them: a batch of small matmuls plus a reduction, where
`tf.tensordot` computes the same product as one `[batch*seq, c] x [c, d*e]` matmul whose kernel gradient is
one matmul too. At S2 of the performance benchmark this is 3-6% of a PPO optimiser step.

Keras offers no hook to choose how a layer's einsum is computed, so `einsum_as_tensordot()` swaps the
backend function for the duration of a `with` block: only what is traced inside the block (the training
step's forward pass under its `GradientTape`) is affected, and every einsum that is not a tensordot goes
to Keras' own implementation unchanged.
"""
import contextlib

import tensorflow as tf
from keras.src.backend.tensorflow import numpy as keras_tf_numpy


def tensordot_axes(subscripts):
    """How many axes an einsum contracts as a tensordot (x's last k with y's first k), or None.

    Example:
    >>> tensordot_axes("btd,dnh->btnh"), tensordot_axes("btnh,nhd->btd"), tensordot_axes("bqd,bkd->bqk")
    (1, 2, None)
    """
    inputs, arrow, output = subscripts.replace(" ", "").partition("->")
    x, comma, y = inputs.partition(",")
    if not (arrow and comma) or "." in subscripts or "," in y:
        return None
    for k in range(1, min(len(x), len(y)) + 1):
        # x = free_x + contracted, y = contracted + free_y, output = free_x + free_y, no letter twice.
        if x[-k:] == y[:k] and output == x[:-k] + y[k:] and len(set(x + y)) == len(x + y) - k:
            return k
    return None


@contextlib.contextmanager
def einsum_as_tensordot():
    """Inside the block, Keras' TensorFlow einsum runs tensordot-shaped products as `tf.tensordot`.

    Example:
    >>> import keras
    >>> layer = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 8))
    >>> with tf.GradientTape() as tape, einsum_as_tensordot():
    ...     loss = tf.reduce_sum(layer(tf.ones([2, 3, 4])))
    >>> tape.gradient(loss, layer.kernel).shape  # one [4, 8] matmul, not [2, 4, 8] then a sum
    TensorShape([4, 8])
    """
    keras_einsum = keras_tf_numpy.einsum

    def einsum(subscripts, *operands, **kwargs):
        axes = tensordot_axes(subscripts) if len(operands) == 2 and not kwargs else None
        x, y = (tf.convert_to_tensor(operand) for operand in operands) if axes else (None, None)
        # Keras casts mixed or integer operands (int8 quantisation) its own way: leave those to it.
        if axes is None or x.dtype != y.dtype or not x.dtype.is_floating:
            return keras_einsum(subscripts, *operands, **kwargs)
        return tf.tensordot(x, y, axes)  # reshapes to one [rows, contracted] x [contracted, columns] matmul

    keras_tf_numpy.einsum = einsum
    try:
        yield
    finally:
        keras_tf_numpy.einsum = keras_einsum
