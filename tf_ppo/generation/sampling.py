"""Sampling: responses drawn with a KV cache, Philox noise per row, temperature, top-k and top-p.

Buffer layout. A rollout buffer `sequence_ids` is `[batch, P + R]`: each row
holds its prompt (right-padded to P, the first `prompt_lengths[i]` slots real),
and its response starts right after its own prompt, at `prompt_lengths[i]`.
Right padding keeps GPT-2's absolute positions right for every row (the same
scheme keras-hub's own `generate_step` uses). `tf_ppo.generation.responses`
then views the R response slots of every row as an aligned `[batch, R]` view.
"""

import functools
import typing

import tensorflow as tf

from tf_ppo.generation.responses import is_stop_token
from tf_ppo.training.compiled import compiled  # noqa: F401  used by the doctests
from tf_ppo.models.families import decoder_for

# Response tokens per decoding segment. Shorter segments attend over fewer unwritten positions but add a
# compiled loop each; 16 measured best (benchmarks/ppo_throughput.py --scaling 32,64,128).
SEGMENT_LENGTH = 16
# Widths of the forward passes that append a later turn's forced tokens (an environment's reply) to the cache:
# chunks of 16, then of 4, then the step loop token by token. Two compiled chunk shapes cover a reply of any length.
REPLY_CHUNKS = (16, 4)


def sample_next_token(logits, seed, temperature=1.0, top_k=0, top_p=1.0, row_offset=0):
    """Sample one token per row from `logits / temperature`, optionally top-k / top-p.

    Sampling is Gumbel-max (argmax of logits + Gumbel noise, an exact
    categorical sample). Row i of this batch takes the noise of global row
    `row_offset + i` (`gumbel_noise`): a row's sample depends only on the seed
    and its global row, so a batch split over replicas, or generated in chunks,
    samples exactly what one whole batch would. Top-k and top-p sample among
    the sorted top values and gather the id, much cheaper than masking the
    whole vocabulary.

    Args:
        logits: float `[batch, vocab]`.
        seed: int32 `[2]`, a stateless seed (same seed, same samples).
        top_k: keep the k most likely tokens; 0 = all.
        top_p: keep the smallest set of most likely tokens whose probability reaches top_p; 1.0 = all.
        row_offset: the global row of this batch's first row (int or int32 scalar tensor).

    Returns:
        int32 `[batch]` token ids.

    Example:
    >>> sample_next_token(tf.constant([[0.0, 9.0, 0.0]]), seed=tf.constant([1, 2]), top_k=1).numpy().tolist()
    [1]
    """
    logits = logits / temperature
    ids = None
    if tf.is_tensor(top_k) or top_k or top_p < 1.0:
        # top_k may be a tensor (the exported SavedModel takes it as an input): 0 still means "all".
        k = tf.where(top_k > 0, top_k, tf.shape(logits)[-1]) if tf.is_tensor(top_k) else (top_k or logits.shape[-1])
        logits, ids = tf.math.top_k(logits, k)  # sorted, most likely first
        if top_p < 1.0:
            probability_before = tf.cumsum(tf.nn.softmax(logits), axis=-1, exclusive=True)
            # The first token always survives: its probability_before is 0.
            logits = tf.where(probability_before < top_p, logits, float("-inf"))
    batch, width = tf.shape(logits)[0], tf.shape(logits)[1]
    gumbel = gumbel_noise([batch, width], seed, row_offset)
    choice = tf.argmax(logits + tf.cast(gumbel, logits.dtype), axis=-1, output_type=tf.int32)  # [batch]
    return choice if ids is None else tf.gather(ids, choice, batch_dims=1)


def gumbel_noise(shape, seed, row_offset=0):
    """Standard Gumbel noise `[rows, width]`: rows `row_offset ...` of the noise for this stateless seed.

    Row r's noise is the same whatever batch it is drawn in (`gumbel_noise([n, w], seed)[r]` ==
    `gumbel_noise([1, w], seed, r)[0]`), and drawing it costs only its own rows: Philox is a
    counter-mode generator (4 uint32 per counter value), so the draw starts at the counter of
    element `row_offset * width`.

    The numbers are bit-identical with and without XLA. A float `stateless_uniform` gives other
    numbers under XLA on CPU, whatever algorithm is pinned (XLA turns the random bits into floats
    its own way). Philox's integer bits agree, so the uniform is made from 23 of them with exact
    arithmetic, in [2^-24, 1 - 2^-24] (never 0 or 1: the logs stay finite), and the two logs run in
    float64 (XLA's float32 log differs in the last bit; rounded from float64 both agree).

    Example:
    >>> noise = gumbel_noise([2, 3], tf.constant([1, 2]))
    >>> bool(tf.reduce_all(noise == compiled(gumbel_noise, jit_compile=True)([2, 3], tf.constant([1, 2]))))
    True
    >>> bool(tf.reduce_all(noise[1] == gumbel_noise([1, 3], tf.constant([1, 2]), row_offset=1)[0]))
    True
    """
    rows, width = shape[0], shape[1]
    key, counter = philox_key_counter(seed)
    first = tf.cast(row_offset, tf.int64) * tf.cast(width, tf.int64)  # the first element drawn
    skip = tf.cast(first % 4, tf.int32)  # its place inside its counter's block of 4
    low = counter[0] + tf.cast(first // 4, tf.uint64)  # the 128-bit counter, low word first
    counter = tf.stack([low, counter[1] + tf.cast(low < counter[0], tf.uint64)])  # carry into the high word
    bits = tf.raw_ops.StatelessRandomUniformFullIntV2(shape=[rows * width + skip], key=key, counter=counter,
                                                      alg=1, dtype=tf.uint32)  # alg 1: Philox
    bits = tf.reshape(bits[skip:], [rows, width])
    mantissa = tf.cast(tf.bitwise.right_shift(bits, tf.constant(9, tf.uint32)), tf.float64)  # < 2^23: exact
    uniform = (mantissa + 0.5) * 2.0 ** -23
    return tf.cast(-tf.math.log(-tf.math.log(uniform)), tf.float32)


def philox_key_counter(seed):
    """Philox's key `[1]` and counter `[2]` (uint64, low word first) for a stateless seed, as TF derives them.

    The recipe of `tf.random.stateless_uniform(..., alg="philox")` (TF's `random_ops_util`), so the bits
    are the ones it draws. The raw `StatelessRandomGetKeyCounter` op is not used: compiled with XLA it
    gives another counter for negative seeds, which `stateless_fold_in` produces.

    Example:
    >>> key, counter = philox_key_counter(tf.constant([1, 2]))
    >>> key.shape, counter.shape
    (TensorShape([1]), TensorShape([2]))
    """
    def as_uint64(words):  # two uint32 -> one uint64, low word first
        return tf.bitwise.bitwise_or(tf.cast(words[0], tf.uint64),
                                     tf.bitwise.left_shift(tf.cast(words[1], tf.uint64), tf.constant(32, tf.uint64)))

    mix = tf.raw_ops.StatelessRandomUniformFullIntV2(shape=[4], key=tf.constant([0x02461E293EC8F720], tf.uint64),
                                                     counter=tf.cast(seed, tf.uint64), alg=1, dtype=tf.uint32)
    return tf.reshape(as_uint64(mix[:2]), [1]), tf.stack([tf.constant(0, tf.uint64), as_uint64(mix[2:])])


def generate(policy, prompt_ids, prompt_lengths, seed, response_length,
             temperature=1.0, top_k=0, top_p=1.0, row_offset=0):
    """Sample `response_length` new tokens after each prompt, decoding with a cache.

    Wrap it in `tf.function` (the trainer does, with `jit_compile`); the loop
    is a `tf.while_loop`, one cached forward step per token, no Python per token.

    Args:
        policy: a model with `_build_cache` / `call_with_cache` (see `tf_ppo.models`),
            decoded through `tf_ppo.models.families.decoder_for(policy)`.
        prompt_ids: int32 `[batch, P]`, right-padded prompts.
        prompt_lengths: int32 `[batch]`, real tokens per prompt.
        seed: int32 `[2]` stateless seed; step t samples with `fold_in(seed, t)`.
        response_length: R, new tokens per row.
        row_offset: the global row of this batch's first row, when it is one
            replica's share or one chunk of a larger batch (see `sample_next_token`).

    Returns:
        int32 `[batch, P + R]` buffer: each prompt, then its R sampled tokens
        (rows with shorter prompts also sample a few throw-away tokens past R).

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> policy = BigramLM(vocabulary_size=5, hidden_dim=2)
    >>> generate(policy, tf.constant([[1, 2, 0]]), tf.constant([2]), tf.constant([0, 0]), 3).shape
    TensorShape([1, 6])
    """
    return sample_responses(policy, prompt_ids, prompt_lengths, seed, response_length, temperature, top_k, top_p,
                            row_offset).buffer


def sample_responses(policy, prompt_ids, prompt_lengths, seed, response_length, temperature=1.0, top_k=0, top_p=1.0,
                     row_offset=0, stop_token_ids=()):
    """`generate`, with what the sampler saw: a `Sampled` whose log-probs and entropies are those of every
    sampled token (the rollout's `old_logprobs="sampler"` reads them).

    With `stop_token_ids`, a row writes nothing after its first stop token (its slots stay 0), and sampling
    ends once every row has stopped: the steps past the last response's end are not run. The tokens up to
    each stop are those sampled without it (each row draws its own noise).

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> policy = BigramLM(vocabulary_size=5, hidden_dim=2)
    >>> sampled = sample_responses(policy, tf.constant([[1, 2, 0]]), tf.constant([2]), tf.constant([0, 0]), 3)
    >>> sampled.logprobs.shape, sampled.entropies.shape
    (TensorShape([1, 6]), TensorShape([1, 6]))
    """
    batch_size = tf.shape(prompt_ids)[0]
    buffer = tf.concat([prompt_ids, tf.zeros([batch_size, response_length], prompt_ids.dtype)], axis=1)
    total_length = tf.shape(buffer)[1]  # dynamic: the SavedModel takes any prompt and response length
    turn = Turn(prompt_lengths, tf.fill([batch_size], total_length), tuple(stop_token_ids))
    return sample_turn(policy, buffer, None, turn, prompt_ids.shape[1], response_length, seed, temperature, top_k,
                       top_p, row_offset)


class Sampled(typing.NamedTuple):
    """What a turn of sampling returns."""

    buffer: tf.Tensor  # int32 [batch, P + R], the turn's tokens written in
    cache: object  # the decoding cache, holding every position (grown to P + R)
    turn_end: tf.Tensor  # int32 [batch]: where each row's turn ended (exclusive; forced_until if it sampled nothing)
    logprobs: tf.Tensor  # float32 [batch, P + R]: each sampled token's log-prob under logits / temperature, else 0
    entropies: tf.Tensor  # float32 [batch, P + R]: the entropy of logits / temperature where a token was sampled


class Turn(typing.NamedTuple):
    """Which buffer slots a turn of sampling writes, per row.

    Row i keeps its buffer tokens below `forced_until[i]` (its prompt, or its episode so far) and samples
    from there up to `limit[i]` (exclusive), or up to and including its first stop token. A row with
    `limit <= forced_until` samples nothing (a finished episode).
    """

    forced_until: tf.Tensor  # int32 [batch]
    limit: tf.Tensor  # int32 [batch]
    stop_token_ids: tuple = ()  # the tokens that end a row's turn; () = sample up to `limit`


def sample_turn(policy, buffer, cache, turn, prompt_width, response_length, seed, temperature=1.0, top_k=0,
                top_p=1.0, row_offset=0, index=None):
    """Sample one turn into `buffer` `[batch, P + R]`: the one step loop of single- and multi-turn sampling.

    `cache` None starts the decoding cache from the prompts (`buffer[:, :prompt_width]`), the first turn;
    a later turn passes the cache the last one returned, and `index`, the first position whose cache entry
    may be stale (the step at `index` feeds the token at `index - 1`): the episode is not encoded again,
    only the tokens from `index - 1` on are fed. A family whose cache cannot be rewound (a recurrent state)
    starts again from the empty state.

    Returns:
        `Sampled(buffer, cache, turn_end, logprobs, entropies)`. The log-probs and entropies are those of the
        cached decoding's logits over the whole vocabulary (before top-k / top-p), as a forward pass scores them.

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> policy = BigramLM(vocabulary_size=5, hidden_dim=2)
    >>> turn = Turn(tf.constant([2]), tf.constant([4]))
    >>> sample_turn(policy, tf.constant([[1, 2, 0, 0, 0]]), None, turn, 2, 3, tf.constant([0, 0])).turn_end.numpy()
    array([4], dtype=int32)
    """
    batch_size, total_length = tf.shape(buffer)[0], tf.shape(buffer)[1]
    decoder = decoder_for(policy)
    ends = [total_length]  # a later turn's cache already holds every position
    if cache is None or not decoder.rewinds:
        width = prompt_width if prompt_width is not None else total_length - response_length  # the SavedModel's
        cache = decoder.start(buffer[:, :width])  # keys/values of the buffer's first P slots
        index = decoder.first_step(tf.minimum(turn.forced_until, width))
        ends = segment_ends(prompt_width, response_length, total_length)
    else:
        index, cache = append_forced(decoder, buffer, cache, index, turn)
    positions = tf.range(total_length)[None, :]  # [1, P + R]

    def step(index, buffer, cache, stopped, turn_end, logprobs, entropies):
        # Feed the token at index - 1 (its keys/values go into the cache), sample the one at index.
        previous = tf.slice(buffer, [0, index - 1], [batch_size, 1])
        logits, cache = decoder.step(previous, index - 1, cache)
        logits = tf.cast(logits[:, 0, :], tf.float32)  # [batch, vocab]
        sampled = sample_next_token(logits, tf.random.experimental.stateless_fold_in(seed, index),
                                    temperature, top_k, top_p, row_offset)
        # Rows whose prompt (or episode so far) reaches past `index` keep their own token there.
        writing = (index >= turn.forced_until) & (index < turn.limit) & ~stopped  # [batch]
        current = tf.where(writing, tf.cast(sampled, buffer.dtype), buffer[:, index])
        buffer = tf.where(positions == index, current[:, None], buffer)
        # Without stop tokens `stopped` still goes through an op: XLA fails to compile a while loop with a loop
        # variable it can prove constant across iterations ("Cannot find body function ..._const_0").
        ends_turn = is_stop_token(current, turn.stop_token_ids) if turn.stop_token_ids else index < 0
        stopped = stopped | (writing & ends_turn)
        turn_end = tf.where(writing, index + 1, turn_end)
        log_softmax = tf.nn.log_softmax(logits / temperature)  # [batch, vocab]
        written = (positions == index) & writing[:, None]  # [batch, P + R]
        logprob = tf.gather(log_softmax, sampled, batch_dims=1)  # [batch]
        logprobs = tf.where(written, logprob[:, None], logprobs)
        entropy = -tf.reduce_sum(tf.exp(log_softmax) * log_softmax, axis=-1)  # [batch]
        entropies = tf.where(written, entropy[:, None], entropies)
        return index + 1, buffer, cache, stopped, turn_end, logprobs, entropies

    def more(index, buffer, cache, stopped, turn_end, logprobs, entropies, end):
        if not turn.stop_token_ids:
            return index < end  # a fixed number of steps: one loop, no per-step reduction
        return (index < end) & tf.reduce_any(~stopped & (index < turn.limit))

    state = (index, buffer, cache, tf.zeros([batch_size], tf.bool), turn.forced_until,
             tf.zeros(tf.shape(buffer), tf.float32), tf.zeros(tf.shape(buffer), tf.float32))
    for end in ends:
        # A fixed cache length per segment (XLA needs static shapes); steps attend over `end` positions, not all.
        state = (state[0], state[1], decoder.grow(state[2], end), *state[3:])
        state = tf.while_loop(functools.partial(more, end=end), step, state)
    _, buffer, cache, _, turn_end, logprobs, entropies = state
    return Sampled(buffer, cache, turn_end, logprobs, entropies)


def append_forced(decoder, buffer, cache, index, turn, chunks=REPLY_CHUNKS):
    """Feed a later turn's forced tokens (the environment's reply) into the cache, a chunk per forward pass.

    The step at `index` would feed the token at `index - 1`. Every row that samples this turn keeps its own
    tokens up to `forced_until`, so the positions before the first of those (W) hold no sampled token: they
    go into the cache in passes of `chunks[0]` tokens, then `chunks[1]`, ... while a whole chunk fits below W.
    The step loop then feeds the rest (fewer than the last chunk width) and samples from W on. Rows that
    sample nothing, or whose reply starts later, feed their own tokens again: the same keys and values.

    Returns:
        `(index, cache)`: the step loop's first index, and the cache holding every position before it - 1.

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> from tf_ppo.models.families import decoder_for
    >>> decoder = decoder_for(BigramLM(vocabulary_size=5, hidden_dim=2))
    >>> cache = decoder.grow(decoder.start(tf.constant([[1, 2]])), 30)
    >>> turn = Turn(tf.constant([24]), tf.constant([30]))
    >>> int(append_forced(decoder, tf.zeros([1, 30], tf.int32), cache, tf.constant(3), turn)[0])
    23
    """
    batch_size, total_length = tf.shape(buffer)[0], tf.shape(buffer)[1]
    samples = turn.limit > turn.forced_until  # [batch]: the rows that sample this turn
    first_sampled = tf.reduce_min(tf.where(samples, turn.forced_until, total_length))  # W

    def feed(width):
        def body(index, cache):
            _, cache = decoder.step(tf.slice(buffer, [0, index - 1], [batch_size, width]), index - 1, cache)
            return index + width, cache
        return body

    for width in chunks:
        index, cache = tf.while_loop(lambda index, cache, width=width: index + width <= first_sampled,
                                     feed(width), (index, cache))
    return index, cache


def segment_ends(prompt_width, response_length, total_length, segment_length=SEGMENT_LENGTH):
    """Where each decoding segment ends: every `segment_length` response tokens, when the shapes are static.

    With a dynamic prompt width or response length (the SavedModel) there is one segment, the whole buffer.

    Example:
    >>> segment_ends(16, 40, 56)
    [32, 48, 56]
    """
    if prompt_width is None or not isinstance(response_length, int):
        return [total_length]
    return [prompt_width + min(end, response_length)
            for end in range(segment_length, response_length + segment_length, segment_length)]
