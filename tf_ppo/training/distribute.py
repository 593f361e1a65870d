"""tf.distribute for tf_ppo: pick the strategy, split a global batch over replicas, reduce, gather.

One code path serves one CPU, 8 GPUs (MirroredStrategy) and several hosts
(MultiWorkerMirroredStrategy): with the default strategy every helper here is
the identity. The rules that make a multi-replica update equal to the
single-device one on the same global batch:
  * every replica's loss is its sum over tokens divided by the GLOBAL token
    count (`masked.masked_mean` does this inside `strategy.run`), so the SUM of
    the replicas' gradients is the global gradient;
  * gradients are summed across replicas first, then clipped, then applied
    once, in cross-replica context (clipping per replica is not equivalent);
  * sampling noise is drawn per global row (`rollout.sample_next_token`), so
    a replica samples exactly what one device would for the same rows.
"""

import hashlib
import json
import pathlib
import tempfile

import numpy as np
import tensorflow as tf

from tf_ppo.config import ConfigError
from tf_ppo.training.compiled import compiled

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


def resolve_strategy(strategy="auto", timeout_seconds=300):
    """A `tf.distribute.Strategy` from a name or an instance.

    `"auto"`: MirroredStrategy when more than one GPU is visible, else the
    default (one device). `"multi_worker"` reads `TF_CONFIG`; a collective
    that waits more than `timeout_seconds` for a dead worker fails instead of
    hanging forever.

    Example:
    >>> resolve_strategy("default").num_replicas_in_sync
    1
    """
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"PPOConfig.strategy must be one of {STRATEGIES} or a tf.distribute.Strategy, got {strategy!r}")
    if strategy == "auto":
        strategy = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if strategy == "multi_worker":
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_seconds)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return tf.distribute.get_strategy()


def check_replicas(config, replicas):
    """Raise a `ConfigError` when a minibatch or a rollout chunk does not split evenly over the replicas.

    Example:
        check_replicas(PPOConfig(batch_size=64), strategy.num_replicas_in_sync)
    """
    if config.mini_batch_size % replicas:
        raise ConfigError(f"PPOConfig.batch_size / num_mini_batches = {config.mini_batch_size} rollouts per "
                          f"minibatch must be divisible by the {replicas} replicas")
    if (config.rollout_batch_size or config.batch_size) % replicas:
        raise ConfigError(f"PPOConfig.rollout_batch_size={config.rollout_batch_size} rollouts per chunk must "
                          f"be divisible by the {replicas} replicas")


def split_batch(strategy, tensors):
    """Give each replica its consecutive share of a global batch (a nest of tensors, batch-major).

    Raises:
        ValueError: the batch's rows do not divide by the replicas (the
            remainder would be silently dropped, and every loss changed).

    Example:
    >>> split_batch(tf.distribute.get_strategy(), {"x": tf.range(4)})["x"].numpy().tolist()
    [0, 1, 2, 3]
    """
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return tensors
    rows = int(tf.nest.flatten(tensors)[0].shape[0])
    if rows % replicas:
        raise ValueError(f"split_batch: a batch of {rows} rows cannot be split evenly over {replicas} replicas "
                         f"({rows % replicas} rows would be dropped); use a batch size divisible by {replicas}")

    def share(context):
        per_replica = rows // replicas
        start = context.replica_id_in_sync_group * per_replica
        return tf.nest.map_structure(lambda t: t[start: start + per_replica], tensors)

    return strategy.experimental_distribute_values_from_function(share)


def gather(strategy, per_replica):
    """Concatenate the replicas' outputs (a nest) back into the global batch, on every worker."""
    if strategy.num_replicas_in_sync == 1:
        return per_replica

    def gather_one(value):
        if strategy.experimental_local_results(value)[0].dtype == tf.bool:  # collectives carry numbers only
            as_numbers = strategy.run(lambda mask: tf.cast(mask, tf.int32), args=(value,))
            return tf.cast(strategy.gather(as_numbers, axis=0), tf.bool)
        return strategy.gather(value, axis=0)

    return tf.nest.map_structure(gather_one, per_replica)


def reduce_sum(strategy, per_replica):
    """Sum a nest of per-replica values across replicas (identity on one replica)."""
    if strategy.num_replicas_in_sync == 1:
        return per_replica
    return tf.nest.map_structure(lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None),
                                 per_replica)


def replica_row_offset(local_rows):
    """The global row of this replica's first row, when each replica holds `local_rows` rows."""
    return tf.distribute.get_replica_context().replica_id_in_sync_group * local_rows


def compiled_per_replica(strategy, fn, jit_compile):
    """`fn` compiled to run inside `strategy.run`, with XLA (`jit_compile`) on any number of replicas.

    An XLA computation runs on one device and cannot read a variable held on
    another ("Trying to access resource ... located in device CPU:1 from device
    CPU:0", https://www.tensorflow.org/xla/known_issues#tfvariable_on_a_different_device).
    Inside `strategy.run`, MirroredStrategy placed every replica's call on the
    first device. Calling the function under its replica's own device scope
    traces it once per device, each trace reading that replica's copy of the
    mirrored variables. `fn` must hold no synchronisation point (an
    `all_reduce` or `merge_call`): TensorFlow cannot run one inside a
    function nested in `strategy.run`, with or without XLA.

    Example:
    >>> strategy = tf.distribute.get_strategy()
    >>> double = compiled_per_replica(strategy, lambda x: 2 * x, jit_compile=True)
    >>> int(strategy.run(double, args=(tf.constant(3),)))
    6
    """
    function = compiled(fn, jit_compile=jit_compile)
    if strategy.num_replicas_in_sync == 1 or not jit_compile:
        return function

    def on_the_replicas_device(*args, **kwargs):
        with tf.device(replica_device(strategy)):
            return function(*args, **kwargs)

    return on_the_replicas_device


def replica_device(strategy):
    """The device of the replica whose `strategy.run` call is running (one of this worker's devices)."""
    replica_id = tf.get_static_value(tf.distribute.get_replica_context().replica_id_in_sync_group)
    local_devices = strategy.extended.worker_devices
    return local_devices[int(replica_id) % len(local_devices)]  # every worker holds as many replicas


def is_chief(strategy):
    """True on the worker that writes checkpoints, logs and exports (always, on one host)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and "chief" not in resolver.cluster_spec().as_dict())


def agreed_stop_signal(strategy, signal_received):
    """The signal every worker stops for: SIGTERM if any worker got one, else SIGINT if any did, else None.

    Workers of a cluster must stop after the same update, or one would wait forever in a collective the
    other never joins; a Ctrl-C reaches each process at its own moment. So at the end of every update
    the workers sum who got which signal (one small all-reduce). One worker alone decides by itself.

    Example:
    >>> agreed_stop_signal(tf.distribute.get_strategy(), "SIGINT")
    'SIGINT'
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or len(resolver.cluster_spec().as_dict()) == 0:
        return signal_received
    flags = tf.constant([signal_received == "SIGTERM", signal_received == "SIGINT"], tf.int32)
    sigterm, sigint = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: flags), axis=None).numpy()
    return "SIGTERM" if sigterm else "SIGINT" if sigint else None


def writable_dir(run_dir, strategy):
    """The run directory on the chief; a throw-away directory on other workers (TF's multi-worker recipe)."""
    if is_chief(strategy):
        return pathlib.Path(run_dir)
    return pathlib.Path(tempfile.mkdtemp(prefix=f"tf_ppo-worker{strategy.cluster_resolver.task_id}-"))


def local_cluster(ports):
    """`TF_CONFIG` values for one worker process per port on 127.0.0.1 (worker 0 is the chief).

    Example:
    >>> json.loads(local_cluster([20000, 20001])[1])["task"]
    {'type': 'worker', 'index': 1}
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(len(ports))]


def free_port():
    """A TCP port that was free a moment ago (for local multi-worker runs)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weights_fingerprint(model):
    """A short hash of a model's weights, to check that replicas and workers ended identical.

    Example:
    >>> layer = tf.keras.layers.Dense(2)
    >>> _ = layer(tf.zeros([1, 3]))
    >>> len(weights_fingerprint(layer))
    16
    """
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()[:16]
