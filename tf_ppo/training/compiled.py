"""`compiled`: `tf.function` without AutoGraph, the one way tf_ppo compiles a function.

tf_ppo writes its graph control flow in TensorFlow itself (`tf.while_loop` in sampling, `tf.cond` in the
non-finite guard), and Keras layers hold no tensor-dependent Python control flow (they run under JAX too),
so AutoGraph has nothing to convert. It would still parse and rewrite the Python source of every function
it reaches, ours and keras-hub's, when each function is first traced: measured on a 1-update tiny PPO run
(`tiny_config`, first trainer in a fresh process, XLA cache warm), 23-32 s with AutoGraph, 16-17 s without.
That is paid again by every CLI run, notebook kernel and test. A Python `if` on a tensor inside a compiled
function now fails loudly at trace time instead of being converted: use `tf.cond`/`tf.where`.
"""
import tensorflow as tf


def compiled(fn=None, **options):
    """`tf.function(fn, autograph=False, **options)`; without `fn`, a decorator.

    Example:
    >>> double = compiled(lambda x: 2 * x, jit_compile=True)
    >>> int(double(tf.constant(3)))
    6
    >>> @compiled(input_signature=[tf.TensorSpec([], tf.int32)])
    ... def square(x):
    ...     return x * x
    >>> int(square(tf.constant(4)))
    16
    """
    return tf.function(fn, autograph=False, **options)
