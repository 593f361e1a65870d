"""Sampling noise with and without XLA (issue item 10): the same seed must give the same tokens.

On CPU (TF 2.21) `tf.random.stateless_uniform` with a FLOAT dtype gives other
numbers under `jit_compile=True` than without XLA, whatever `alg` is pinned
("philox", `Algorithm.PHILOX`, "auto_select"; "threefry" has no CPU kernel
outside XLA): XLA turns the random bits into floats its own way. The INTEGER
draws are bit-identical, and so is `stateless_fold_in`. So the noise is drawn
as uint32 bits, turned into floats with exact arithmetic, and put through the
Gumbel logs in float64 (XLA's float32 log differs from Eigen's in the last
bits; rounded from float64 the two agree).
"""

import numpy as np
import pytest
import tensorflow as tf

from tf_ppo.generation.sampling import sample_next_token

SEEDS = [tf.constant([seed, 7 * seed + 1]) for seed in range(4)]


def exact_uniform(shape, seed):
    """Uniform in (0, 1): 23 random bits per value, exact float arithmetic (identical with and without XLA)."""
    bits = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint32, alg="philox")
    mantissa = tf.cast(tf.bitwise.right_shift(bits, tf.constant(9, tf.uint32)), tf.float32)  # < 2**23: exact
    return (mantissa + 0.5) * 2.0 ** -23  # in [2**-24, 1 - 2**-24]: never 0 or 1, so the logs are finite


def gumbel_noise(shape, seed):
    """-log(-log(u)) in float64, rounded to float32."""
    uniform = tf.cast(exact_uniform(shape, seed), tf.float64)
    return tf.cast(-tf.math.log(-tf.math.log(uniform)), tf.float32)


def without_and_with_xla(function, *args):
    return function(*args).numpy(), tf.function(function, jit_compile=True)(*args).numpy()


@pytest.mark.parametrize("seed", SEEDS)
def test_integer_bits_recipe_gives_bit_identical_gumbel_noise_with_and_without_xla(seed):
    step_seed = tf.random.experimental.stateless_fold_in(seed, 3)  # as rollout.generate folds in each step
    plain, compiled = without_and_with_xla(lambda s: gumbel_noise([16, 4099], s), step_seed)
    np.testing.assert_array_equal(plain.view(np.uint32), compiled.view(np.uint32))
    assert np.all(np.isfinite(plain))


def test_integer_bits_recipe_is_uniform():
    uniform = exact_uniform([200_000], tf.constant([1, 2])).numpy()
    assert 0.0 < uniform.min() and uniform.max() < 1.0
    assert abs(uniform.mean() - 0.5) < 3e-3 and abs(uniform.var() - 1 / 12) < 1e-3


def test_sample_next_token_draws_the_same_tokens_with_and_without_xla():
    logits = tf.random.stateless_normal([16, 500], [3, 4]) * 2.0
    for seed in SEEDS:
        plain, compiled = without_and_with_xla(lambda s: sample_next_token(logits, s), seed)
        np.testing.assert_array_equal(plain, compiled)


@pytest.mark.parametrize("row_offset", [0, 1, 3, 6, 13])  # 4099 x offset: every place in a block of 4
def test_rows_drawn_from_an_offset_are_those_rows_of_the_whole_batch_with_and_without_xla(row_offset):
    from tf_ppo.generation.sampling import gumbel_noise as rows_of_noise

    seed = tf.random.experimental.stateless_fold_in(SEEDS[1], 5)
    whole = gumbel_noise([16, 4099], seed).numpy()[row_offset: row_offset + 3]
    plain, compiled = without_and_with_xla(lambda s: rows_of_noise([3, 4099], s, row_offset), seed)
    np.testing.assert_array_equal(plain.view(np.uint32), whole.view(np.uint32))
    np.testing.assert_array_equal(compiled.view(np.uint32), whole.view(np.uint32))


def test_a_chunk_of_rows_samples_what_the_whole_batch_samples_for_those_rows():
    logits = tf.random.stateless_normal([8, 300], [5, 6]) * 2.0
    whole = sample_next_token(logits, SEEDS[2], top_k=50).numpy()
    chunks = [sample_next_token(logits[start: start + 2], SEEDS[2], top_k=50, row_offset=start).numpy()
              for start in range(0, 8, 2)]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
