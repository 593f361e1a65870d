"""PPO throughput of the real trainer: seconds per update, per phase, and FLOP/s against the machine's peak.

Shapes of the performance issue (GPT-2 architecture, byte-level BPE, separate
value model and a Keras reward model of the same size, 64 rollouts of 16
prompt + 32 response tokens, temperature 0.7, 4 epochs x 2 minibatches):

    python benchmarks/ppo_throughput.py                                  # S1: 2 layers, hidden 128
    python benchmarks/ppo_throughput.py --layers 4 --hidden 256          # S2
    python benchmarks/ppo_throughput.py --scaling 32,64,128              # generation time vs response length
    python benchmarks/ppo_throughput.py --compare-trl .venv-trl/bin/python   # TRL 1.12 side by side (see trl_ppo_baseline.py)

With `--target-trl-ratio`, `--target-fraction-of-peak` and
`--target-keras-hub-ratio` it asserts the issue's targets: each is printed as
met or NOT MET, and the exit status is 1 when any is not met.

It times `PPOTrainer.run_update` (warm-up first, so tracing is excluded),
measures the fp32 matmul peak of this machine in the same run (before and
after the timed updates, keeping the higher), and prints a
table and, last, one JSON line.
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_ppo import PPOConfig, PPOTrainer, RewardModel
from tf_ppo.data import prompt_dataset, read_prompt_csv
from tf_ppo.models import build_backbone, build_policy, load_tokenizer
from tf_ppo.generation.responses import response_view
from tf_ppo.rl.rollout import response_logprobs

from long_prompts import long_enough  # noqa: E402  (benchmarks/ is on the path: run as a script)
from padded_vocabulary import padded_vocabulary  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64, help="rollouts per update")
    parser.add_argument("--prompt-length", type=int, default=16, help="tokens per prompt, start token included")
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--updates", type=int, default=5, help="timed updates")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates first (tracing, XLA compilation)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--ppo-epochs", type=int, default=4,
                        help="passes over each rollout (num_iterations)")
    parser.add_argument("--algorithm", default="ppo", help="ppo, grpo, dr_grpo, rloo, reinforce_pp, ...")
    parser.add_argument("--num-generations", type=int, default=1, help="samples per prompt (batch counts rollouts)")
    parser.add_argument("--beta", type=float, default=None,
                        help="KL coefficient of the critic-free algorithms (default: the algorithm's)")
    parser.add_argument("--mini-batches", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="the optimiser's (default: PPOConfig's); 1e-9 keeps every update's rollouts alike")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads")
    parser.add_argument("--replicas", type=int, default=1,
                        help="MirroredStrategy over this many logical CPUs (the multi-replica path on one machine)")
    parser.add_argument("--vocab", type=int, default=0,
                        help="pad the vocabulary to N ids with unused tokens (e.g. 50257), so the head costs as much")
    parser.add_argument("--rollout-batch-size", type=int, default=0,
                        help="sample and score the batch this many rollouts at a time (0: all at once)")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank (0: full fine-tuning)")
    parser.add_argument("--reward", choices=("model", "function"), default="model",
                        help="a Keras reward model of the policy's size, or a Python function (no model held)")
    parser.add_argument("--old-logprobs", choices=("recompute", "sampler"), default="recompute",
                        help="the old log-probs: a scoring forward pass of the policy, or the sampler's own")
    parser.add_argument("--padding-free", action="store_true",
                        help="score and train on packed rows (no padding, each prompt once per group)")
    parser.add_argument("--end-logit-shift", type=float, default=None, metavar="S",
                        help="responses end at the end token, its logit raised by S in the random-init policy "
                             "(variable lengths; the mean is printed); default: every response is full length")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute each transformer block's activations in the backward pass")
    parser.add_argument("--no-generation-jit", action="store_true", help="sample without XLA")
    parser.add_argument("--no-train-jit", action="store_true", help="score and train without XLA")
    parser.add_argument("--scaling", default="", help="comma-separated response lengths: time generation only")
    parser.add_argument("--plot", default="", help="with --scaling: write the growth plot to this PNG")
    parser.add_argument("--compare-trl", metavar="PYTHON",
                        help="a Python with torch and trl==1.12.0: run trl_ppo_baseline.py at the same shape first")
    parser.add_argument("--compare-ppo", action="store_true",
                        help="also time tf_ppo's own PPO at the same rollouts and optimiser steps (same process)")
    parser.add_argument("--target-ppo-ratio", type=float, metavar="Q",
                        help="assert the algorithm's seconds per update <= Q x PPO's (needs --compare-ppo)")
    parser.add_argument("--compare-keras-hub", action="store_true",
                        help="also time keras-hub's CausalLM.generate (XLA) at the same shape")
    parser.add_argument("--target-trl-ratio", type=float, metavar="R",
                        help="assert tf_ppo's seconds per update <= R x TRL's (needs --compare-trl)")
    parser.add_argument("--target-fraction-of-peak", type=float, metavar="F",
                        help="assert achieved GFLOP/s >= F x the fp32 matmul peak")
    parser.add_argument("--target-keras-hub-ratio", type=float, metavar="K",
                        help="assert tf_ppo's sampling + log-probs tokens/s >= K x keras-hub generate's "
                             "(needs --compare-keras-hub)")
    return parser.parse_args(argv)


def matmul_peak_gflops(size=1024, seconds=2.0):
    """Best fp32 matmul GFLOP/s of this machine (compiled, square `size` matrices)."""
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    multiply = tf.function(lambda x, y: tf.matmul(x, y))
    multiply(a, b).numpy()
    best, started = 0.0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        tick = time.perf_counter()
        multiply(a, b).numpy()
        best = max(best, 2 * size**3 / (time.perf_counter() - tick) / 1e9)
    return best


def median_seconds(run, repeats=3):
    """Median wall-clock seconds of `run()` after one untimed call (tracing, XLA compilation)."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def build_trainer(args, response_length, total_updates):
    """The trainer at the requested shape, with random-init models (throughput does not need trained ones)."""
    lengths = [response_length] + [int(r) for r in args.scaling.split(",") if r]
    context = args.prompt_length + max(lengths)
    config = PPOConfig(
        model={"num_layers": args.layers, "hidden_dim": args.hidden, "num_heads": args.heads,
               "intermediate_dim": 4 * args.hidden, "max_sequence_length": context},
        batch_size=args.batch, max_prompt_length=args.prompt_length, truncate_prompts=True,
        response_length=response_length, temperature=args.temperature, stop_at_eos=args.end_logit_shift is not None,
        num_mini_batches=args.mini_batches, total_updates=total_updates, **algorithm_fields(args),
        generation_jit=not args.no_generation_jit, train_jit=not args.no_train_jit, fluency_corpus=None, eval_size=args.batch,
        rollout_batch_size=args.rollout_batch_size, gradient_checkpointing=args.gradient_checkpointing,
        lora_rank=args.lora_rank, old_logprobs=args.old_logprobs, padding_free=args.padding_free,
        **({} if args.learning_rate is None else {"learning_rate": args.learning_rate}),
        **({"vocabulary": str(padded_vocabulary(args.vocab))} if args.vocab else {}),
        run_dir=tempfile.mkdtemp(prefix="tf_ppo-bench-"), strategy="default")
    tokenizer = load_tokenizer(config.vocabulary, config.merges)
    # Whole training sentences, cut to their last prompt_length - 1 tokens: every prompt has exactly that length.
    frame = read_prompt_csv(config.prompts, require_target=True)
    sentences = [f"{p} {t}" for p, t in zip(frame["input_text"], frame["target"])]
    sentences = long_enough(sentences, [len(ids) for ids in tokenizer(sentences)], args.prompt_length - 1)
    prompts = [s for s, ids in zip(sentences, tokenizer(sentences)) if len(ids) >= args.prompt_length - 1]
    keras.utils.set_random_seed(0)  # the same random-init models in every run of a shape
    policy = build_policy(config.model, tokenizer.vocabulary_size())
    if args.end_logit_shift is not None:
        raise_end_token(policy, tokenizer.end_token_id, args.end_logit_shift)
    reward_model = None
    if args.reward == "model":
        reward_model = RewardModel(build_backbone(config.model, tokenizer.vocabulary_size()), tokenizer,
                                   max_length=min(context, args.prompt_length + response_length))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "prompts cut to their last tokens": intended here
        trainer = PPOTrainer(config, reward_fn=reward_model or length_reward, prompts=prompts, policy=policy,
                             show_progress=False, strategy=replica_strategy(args.replicas))
    return trainer, reward_model


def raise_end_token(policy, end_token_id, shift):
    """Raise a GPT-2 policy's end-token logit by `shift` at every position: the final layer norm's bias moves
    along the end token's (tied) embedding. A random-init policy then ends its responses at variable lengths."""
    end = policy.backbone.token_embedding.embeddings.numpy()[end_token_id]  # [hidden]
    layer_norm = policy.backbone.layer_norm
    layer_norm.beta.assign(layer_norm.beta.numpy() + shift * end / np.dot(end, end))


def replica_strategy(replicas):
    """The default strategy for 1; else MirroredStrategy over `replicas` logical CPUs (set up by `set_threads`)."""
    if replicas == 1:
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])


class PhasePeaks:
    """Peak resident memory (MB) of each phase of an update, from Linux's VmHWM reset as each phase starts.

    It wraps the trainer's phase methods on this one instance. Where /proc/self/clear_refs cannot reset
    the peak (not Linux), the figures are None. The resident memory only falls when freed memory goes back
    to the system: glibc keeps freed blocks below its mmap threshold, which grows with each large block
    freed, so a phase's figure also holds what earlier phases left. `MALLOC_MMAP_THRESHOLD_=1048576` in
    the environment pins it (every block of 1 MB or more is returned when freed), and each phase's peak
    is then its own.

    It also reports each phase's peak of TensorFlow's own CPU allocator (`peak_tensor_mb_*`): every
    tensor alive at once, weights and XLA's temporary buffers included, without what the C heap keeps
    after a free or what compilation used. That is the figure a GPU's memory would have to hold. The
    allocator counts tensors of 256 KB and more only (oneDNN's allocator serves smaller ones apart):
    all but the biases and norms at real sizes, next to nothing at tiny ones. Its pool keeps what it
    allocated, which is why the resident memory stays near the process peak in every phase.
    """

    # phase -> (the trainer's part that runs it, its method)
    METHODS = {"generation": ("engine", "_sampled"), "scoring": ("engine", "_score"), "reward": ("engine", "_rewards"),
               "optimisation": ("learner", "optimise")}

    def __init__(self, trainer):
        self.peaks_mb = dict.fromkeys(self.METHODS, 0)
        self.added_mb = dict.fromkeys(self.METHODS, 0)  # the peak above the resident memory at the phase's start
        self.tensor_peaks_mb = dict.fromkeys(self.METHODS, 0)
        self.supported = self.reset_peak()
        for phase, (part, method) in self.METHODS.items():
            owner = getattr(trainer, part)
            setattr(owner, method, self._tracked(phase, getattr(owner, method)))

    def _tracked(self, phase, method):
        def tracked(*args, **kwargs):
            self.reset_peak()
            tf.config.experimental.reset_memory_stats("CPU:0")
            start_mb = self.status_mb("VmRSS:")
            try:
                return method(*args, **kwargs)
            finally:
                tensors_mb = round(tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20, 1)
                self.tensor_peaks_mb[phase] = max(self.tensor_peaks_mb[phase], tensors_mb)
                peak_mb = self.status_mb("VmHWM:")
                self.peaks_mb[phase] = max(self.peaks_mb[phase], peak_mb)
                self.added_mb[phase] = max(self.added_mb[phase], peak_mb - start_mb)
        tracked.method = method  # the trainer's own (compiled) function, for its tracing count
        return tracked

    @staticmethod
    def reset_peak():
        try:
            pathlib.Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
            return True
        except OSError:
            return False

    @staticmethod
    def status_mb(field):
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return round(int(line.split()[1]) / 1024)
        return 0

    def figures(self):
        return {**{f"peak_rss_mb_{phase}": (peak if self.supported else None) for phase, peak in self.peaks_mb.items()},
                **{f"added_rss_mb_{phase}": (added if self.supported else None) for phase, added in self.added_mb.items()},
                **{f"peak_tensor_mb_{phase}": peak for phase, peak in self.tensor_peaks_mb.items()}}


COMPILED = {"_generate": ("engine", "_generate"), "_score": ("engine", "_score"), "_advantages": (None, "_advantages"),
            "_train_step": ("learner", "step")}  # each compiled phase: (the trainer's part, its attribute)


def compiled(trainer, name):
    """The trainer's compiled function `name`, under the PhasePeaks wrapper if it has one."""
    part, attribute = COMPILED[name]
    function = getattr(getattr(trainer, part) if part else trainer, attribute)
    function = getattr(function, "method", function)
    return getattr(function, "_step", function)  # the GuardedStep's tf.function


def algorithm_fields(args):
    """The config fields of `--algorithm`: PPO's epochs, or the group settings of the critic-free ones."""
    if args.algorithm == "ppo":
        return {"num_iterations": args.ppo_epochs}
    return {"algorithm": args.algorithm, "num_generations": args.num_generations, "num_iterations": args.ppo_epochs,
            "beta": args.beta}


def run_updates(trainer, count, first_update=1):
    prompts_per_update = trainer.config.batch_size // trainer.algorithm.num_generations
    batches = iter(prompt_dataset(trainer.prompt_ids, trainer.prompt_lengths, prompts_per_update,
                                  trainer.config.seed))
    return [trainer.run_update(next(batches), first_update + i) for i in range(count)]


def held_parameters(model):
    """Parameters `model` holds itself (0 for None and for LoRA's reference, which holds the policy's)."""
    return 0 if model is None else int(sum(np.prod(weight.shape) for weight in model.weights))


def length_reward(texts):
    """`--reward function`: a reward computed in Python, with no model behind it (as a verifiable reward)."""
    return [len(text) / 100 for text in texts]


def flops_per_update(trainer, reward_model, args):
    """2 P T per forward pass (generation, policy, reference, value, reward), 6 P T per training pass.

    With LoRA a training pass is 4 P T: the base weights get no gradient (the adapters' FLOPs are left out).
    """
    tokens = args.batch * (args.prompt_length + args.response_length)
    policy = trainer.policy.count_params()
    value = trainer.value_model.count_params() if trainer.value_model is not None else 0
    # LoRA's reference owns no weights (the policy with its adapters off) but still runs a forward pass.
    reference = (getattr(trainer.reference, "policy", trainer.reference).count_params()
                 if trainer.reference is not None else 0)
    forward = 2 * tokens * (policy + policy + reference + value)
    if reward_model is not None:
        forward += 2 * args.batch * reward_model.max_length * reward_model.count_params()
    training = (4 if args.lora_rank else 6) * tokens * (policy + value) * args.ppo_epochs
    return forward + training


def keras_hub_generate_tokens_per_second(trainer, args, response_length):
    """keras-hub's own cached sampler, XLA-compiled, at the same shape (no stop token)."""
    import keras_hub

    policy = trainer.policy
    policy.compile(sampler=keras_hub.samplers.RandomSampler(temperature=args.temperature))
    ids = np.asarray(trainer.prompt_ids[: args.batch])
    width = args.prompt_length + response_length
    inputs = {"token_ids": np.pad(ids, [(0, 0), (0, width - ids.shape[1])]),
              "padding_mask": np.pad(np.ones_like(ids, bool), [(0, 0), (0, width - ids.shape[1])])}
    return args.batch * response_length / median_seconds(lambda: policy.generate(inputs, stop_token_ids=None))


TRL_BASELINES = {"ppo": "trl_ppo_baseline.py", "grpo": "trl_grpo_baseline.py"}


def trl_baseline(args):
    """TRL's trainer of `--algorithm` at the same shape, in its own process and environment; its JSON figures."""
    if args.algorithm not in TRL_BASELINES:
        raise SystemExit(f"--compare-trl: no TRL baseline for --algorithm {args.algorithm} "
                         f"(one of {', '.join(TRL_BASELINES)})")
    flags = ["--layers", args.layers, "--hidden", args.hidden, "--heads", args.heads, "--batch", args.batch,
             "--prompt-length", args.prompt_length, "--response-length", args.response_length,
             "--updates", args.updates, "--warmup", args.warmup, "--temperature", args.temperature,
             "--mini-batches", args.mini_batches, "--threads", args.threads, "--vocab", args.vocab]
    if args.algorithm == "ppo":
        flags += ["--ppo-epochs", args.ppo_epochs]
    else:  # GRPO: the same generation batch, groups, KL coefficient and passes
        flags += ["--num-generations", args.num_generations, "--num-iterations", args.ppo_epochs,
                  "--beta", 0.0 if args.beta is None else args.beta]
    script = pathlib.Path(__file__).with_name(TRL_BASELINES[args.algorithm])
    return json_of_run([args.compare_trl, str(script), *map(str, flags)], script.name)


def json_of_run(command, name):
    """Run `command` (a benchmark process); the JSON of its last output line, or exit naming `name`."""
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode:
        raise SystemExit(f"{name} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def policy_logprobs_seconds(trainer, args):
    """One compiled policy forward for the per-token log-probs of a generated batch (what sampling lacks)."""
    prompt_lengths = trainer.prompt_lengths[: args.batch]
    sequence_ids = trainer.sample(trainer.prompt_ids[: args.batch], prompt_lengths, tf.constant([0, 1]))
    responses = response_view(sequence_ids, prompt_lengths, args.response_length)
    logprobs = tf.function(lambda ids: response_logprobs(trainer.policy, ids, responses, trainer.config.temperature)[0],
                           jit_compile=not args.no_train_jit)
    return median_seconds(lambda: logprobs(sequence_ids).numpy())


def target_checks(result, args):
    """The issue's speed targets that this run measured: `{name: (value, target, met)}`."""
    checks = {}
    if args.target_trl_ratio is not None:
        if "tf_ppo_over_trl" not in result:
            raise SystemExit("--target-trl-ratio needs --compare-trl")
        checks["tf_ppo_over_trl <="] = (result["tf_ppo_over_trl"], args.target_trl_ratio)
    if args.target_ppo_ratio is not None:
        if "over_own_ppo" not in result:
            raise SystemExit("--target-ppo-ratio needs --compare-ppo")
        checks["over_own_ppo <="] = (result["over_own_ppo"], args.target_ppo_ratio)
    if args.target_fraction_of_peak is not None:
        checks["fraction_of_peak >="] = (result["fraction_of_peak"], args.target_fraction_of_peak)
    if args.target_keras_hub_ratio is not None:
        if "keras_hub_generate_tokens_per_second" not in result:
            raise SystemExit("--target-keras-hub-ratio needs --compare-keras-hub")
        checks["rollout_with_logprobs_over_keras_hub_generate >="] = (round(
            result["rollout_with_logprobs_tokens_per_second"] / result["keras_hub_generate_tokens_per_second"], 2),
            args.target_keras_hub_ratio)
    return {name: (value, target, value <= target if name.endswith("<=") else value >= target)
            for name, (value, target) in checks.items()}


def timed_updates(trainer, reward_model, args, peak):
    """Warm-up, then timed updates of `trainer`: the result figures (seconds per phase, FLOP/s, peak RSS)."""
    run_updates(trainer, args.warmup)
    whole_run_peak_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # before the resets
    phase_peaks = PhasePeaks(trainer)  # after the warm-up: XLA's compilation memory is not a phase's own
    logs = run_updates(trainer, args.updates, first_update=args.warmup + 1)
    # The peak moves by 10% between measurements on a shared machine: the higher of the two (before and after the
    # timed updates) is the conservative denominator.
    peak = max(peak, matmul_peak_gflops())
    seconds = [row["seconds_update"] for row in logs]
    median = statistics.median(seconds)
    flops = flops_per_update(trainer, reward_model, args)
    phase = {name: statistics.median(row[f"seconds_{name}"] for row in logs)
             for name in ("generate", "score", "reward", "optimise")}
    result = {
        "algorithm": args.algorithm, "num_generations": trainer.algorithm.num_generations,
        "shape": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "batch": args.batch,
                  "prompt_length": args.prompt_length, "response_length": args.response_length,
                  "policy_parameters": trainer.policy.count_params(),
                  "vocabulary": trainer.tokenizer.vocabulary_size(), "generation_jit": not args.no_generation_jit,
                  "train_jit": not args.no_train_jit},
        "seconds_per_update_median": round(median, 4), "seconds_per_update_min": round(min(seconds), 4),
        "seconds_per_update_max": round(max(seconds), 4),
        "rollouts_per_second": round(args.batch / median, 1),
        "generated_tokens_per_second": round(args.batch * args.response_length / phase["generate"]),
        "seconds_generation": round(phase["generate"], 4),
        "seconds_scoring_forwards": round(phase["score"] + phase["reward"], 4),
        "seconds_scoring": round(phase["score"], 4), "seconds_reward": round(phase["reward"], 4),
        "mean_response_length": round(statistics.mean(row["response_length"] for row in logs), 2),
        # The share of the padded buffer's tokens (prompt + response slots) that are padding after a response's end.
        "padding_share": round(1 - (args.prompt_length + statistics.mean(row["response_length"] for row in logs))
                               / (args.prompt_length + args.response_length), 3),
        "seconds_optimisation": round(phase["optimise"], 4),
        "gflop_per_update": round(flops / 1e9, 1), "achieved_gflops": round(flops / median / 1e9, 1),
        "matmul_peak_gflops": round(peak, 1), "fraction_of_peak": round(flops / median / 1e9 / peak, 3),
        "value_model_parameters": trainer.value_model.count_params() if trainer.value_model is not None else 0,
        "reference_parameters": held_parameters(trainer.reference),  # 0 for LoRA's adapters-off policy
        "reference_model": type(trainer.reference).__name__ if trainer.reference is not None else None,
        # The phases' VmHWM resets also reset ru_maxrss: the process's peak is the highest of all three.
        "peak_rss_mb": max(whole_run_peak_mb, *phase_peaks.peaks_mb.values(),
                           round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)),
        **phase_peaks.figures(),
        "traces": {name: compiled(trainer, name).experimental_get_tracing_count()
                   for name in ("_generate", "_score", "_advantages", "_train_step")},
    }
    return result


def set_threads(threads, replicas=1):
    """`threads` intra-op threads and one op at a time (each on all threads: faster here), if still possible.

    With several replicas, the CPU is split into as many logical devices, and ops of different replicas
    run at the same time.
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(replicas)
        if replicas > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:  # TensorFlow already ran in this process (e.g. under pytest): keep its threads
        print("note: TensorFlow was already initialised; thread settings unchanged")


def generation_at(args, length):
    """Seconds and peak memory of sampling `args.batch` rows of `length` response tokens, in this process."""
    start_mb = PhasePeaks.status_mb("VmRSS:")
    trainer, _ = build_trainer(args, length, 1)
    models_mb = PhasePeaks.status_mb("VmRSS:")  # the models built, nothing sampled yet
    generate = lambda: trainer.sample(  # noqa: E731
        trainer.prompt_ids[: args.batch], trainer.prompt_lengths[: args.batch], tf.constant([0, 1])).numpy()
    seconds = median_seconds(generate)  # the first call traces and compiles, untimed
    peak_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    row = {"response_length": length, "seconds_generate": round(seconds, 4),
           "tokens_per_second": round(args.batch * length / seconds), "peak_rss_mb": peak_mb,
           "models_rss_mb": models_mb - start_mb, "added_rss_mb": peak_mb - models_mb}
    if args.compare_keras_hub:  # the same growth there means it comes from keras-hub's cache, not the loop
        row["keras_hub_tokens_per_second"] = round(keras_hub_generate_tokens_per_second(trainer, args, length))
    return row


def one_length_in_its_own_process(argv, length):
    """`generation_at` for one length, run as this script with `--scaling length` in a fresh process."""
    flags, skip_value = [], False
    for flag in argv:  # this run's flags, less --scaling and --plot with their values
        if not skip_value and flag not in ("--scaling", "--plot"):
            flags.append(flag)
        skip_value = flag in ("--scaling", "--plot")
    return json_of_run([sys.executable, __file__, *flags, "--scaling", str(length)],
                       f"--scaling {length}")["scaling"][0]


def scaling(args, peak, argv):
    """Generation time and memory at each `--scaling` response length: a table, a JSON line, `--plot` PNG.

    Each length runs in its own process when there are several: the process's peak resident memory is
    then that length's alone (TensorFlow does not hand back the memory of the models it built before).
    """
    lengths = [int(r) for r in args.scaling.split(",")]
    if len(lengths) == 1:
        rows = [generation_at(args, lengths[0])]
    else:
        rows = [one_length_in_its_own_process(argv, length) for length in lengths]
    for row in rows:
        # Linear growth: time ratio = length ratio. Attention over the cache adds a little per step.
        row["time_ratio_to_shortest"] = round(row["seconds_generate"] / rows[0]["seconds_generate"], 2)
        row["growth_over_linear"] = round(row["time_ratio_to_shortest"]
                                          / (row["response_length"] / rows[0]["response_length"]), 2)
        print(f"response {row['response_length']:4d}: generation {row['seconds_generate']:.3f} s, "
              f"{row['tokens_per_second']} tokens/s, time x{row['time_ratio_to_shortest']:.2f} for "
              f"x{row['response_length'] / rows[0]['response_length']:g} the tokens "
              f"({row['growth_over_linear']:.2f}x linear); peak RSS {row['peak_rss_mb']} MB, of which "
              f"{row['models_rss_mb']} MB the models and {row['added_rss_mb']} MB compiling and generating"
              + (f" (keras-hub generate: {row['keras_hub_tokens_per_second']} tokens/s)"
                 if args.compare_keras_hub else ""))
    if args.plot:
        plot_scaling(rows, args)
    print(json.dumps({"scaling": rows, "matmul_peak_gflops": round(peak, 1)}))


def plot_scaling(rows, args):
    """Two panels: generation seconds (with linear growth from the shortest length) and memory, by length."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [row["response_length"] for row in rows]
    seconds = [row["seconds_generate"] for row in rows]
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    time_axis.plot(lengths, seconds, "o-", label="measured")
    time_axis.plot(lengths, [seconds[0] * length / lengths[0] for length in lengths], "--", label="linear")
    time_axis.set(xlabel="response tokens", ylabel="seconds per generation batch", yscale="log",
                  title=f"generation, {args.batch} rows, {args.layers} layers x {args.hidden}")
    time_axis.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    time_axis.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    time_axis.legend()
    memory_axis.plot(lengths, [row["peak_rss_mb"] for row in rows], "o-", label="peak RSS of the process")
    memory_axis.plot(lengths, [row["added_rss_mb"] for row in rows], "s-", label="added by compiling and generating")
    memory_axis.set(xlabel="response tokens", ylabel="MB", title="memory")
    memory_axis.legend()
    for axis in (time_axis, memory_axis):
        axis.set_xscale("log", base=2)
        axis.set_xticks(lengths, [str(length) for length in lengths])
        axis.minorticks_off()
    figure.tight_layout()
    figure.savefig(args.plot, dpi=100)
    print(f"wrote {args.plot}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    trl = trl_baseline(args) if args.compare_trl else None  # first: the two never share the CPU
    set_threads(args.threads, args.replicas)
    peak = matmul_peak_gflops()

    if args.scaling:
        scaling(args, peak, argv)
        return

    trainer, reward_model = build_trainer(args, args.response_length, args.warmup + args.updates)
    result = timed_updates(trainer, reward_model, args, peak)
    if args.compare_keras_hub:
        result["keras_hub_generate_tokens_per_second"] = round(
            keras_hub_generate_tokens_per_second(trainer, args, args.response_length))
        result["rollout_with_logprobs_tokens_per_second"] = round(
            args.batch * args.response_length / (result["seconds_generation"] + policy_logprobs_seconds(trainer, args)))
    if trl:
        result.update(trl, tf_ppo_over_trl=round(result["seconds_per_update_median"]
                                                 / trl["trl_seconds_per_update_median"], 3))
    if args.compare_ppo:
        del trainer, reward_model  # PPO's peak memory is then (mostly) its own
        ppo_args = argparse.Namespace(**{**vars(args), "algorithm": "ppo", "num_generations": 1, "beta": None})
        ppo_trainer, ppo_reward_model = build_trainer(ppo_args, args.response_length, args.warmup + args.updates)
        ppo = timed_updates(ppo_trainer, ppo_reward_model, ppo_args, peak)
        result["ppo"] = {key: ppo[key] for key in ("seconds_per_update_median", "seconds_generation",
                                                    "seconds_scoring_forwards", "seconds_optimisation",
                                                    "value_model_parameters", "reference_parameters", "peak_rss_mb")}
        result["over_own_ppo"] = round(result["seconds_per_update_median"] / ppo["seconds_per_update_median"], 3)
    print(f"{'phase':28s}{'seconds (median)':>18s}")
    for name, key in [("generation", "seconds_generation"), ("scoring forwards + reward", "seconds_scoring_forwards"),
                      ("optimisation", "seconds_optimisation"), ("whole update", "seconds_per_update_median")]:
        print(f"{name:28s}{result[key]:>18.4f}")
    print(f"responses of {result['mean_response_length']} tokens on average: {result['padding_share']:.1%} of the "
          f"padded buffer's tokens are padding")
    print(f"{result['gflop_per_update']} GFLOP per update, {result['achieved_gflops']} GFLOP/s achieved, "
          f"{result['fraction_of_peak']:.1%} of the {result['matmul_peak_gflops']} GFLOP/s fp32 matmul peak")
    models = (f"value model {result['value_model_parameters']:,} parameters" if result["value_model_parameters"]
              else "no value model") + (f", reference {result['reference_parameters']:,}"
                                        if result["reference_parameters"] else
                                        f", reference: {result['reference_model']} (no weights of its own)"
                                        if result["reference_model"] else ", no reference model")
    print(f"{args.algorithm}: {models}; peak RSS {result['peak_rss_mb']} MB")
    if result["peak_rss_mb_generation"] is not None:
        print("peak RSS per phase (above the phase's start): " + ", ".join(
            f"{phase} {result[f'peak_rss_mb_{phase}']} MB (+{result[f'added_rss_mb_{phase}']})"
            for phase in PhasePeaks.METHODS)
              + ("" if "MALLOC_MMAP_THRESHOLD_" in os.environ else
                 " (with what earlier phases left: set MALLOC_MMAP_THRESHOLD_=1048576 for each phase's own)"))
    print("peak tensor memory per phase (TensorFlow's allocator, weights included): " + ", ".join(
        f"{phase} {result[f'peak_tensor_mb_{phase}']} MB" for phase in PhasePeaks.METHODS))
    if trl:
        trainer_name = "PPOTrainer" if args.algorithm == "ppo" else "GRPOTrainer"
        print(f"TRL 1.12 {trainer_name}: {trl['trl_seconds_per_update_median']:.3f} s per update (generation "
              f"{trl['trl_seconds_generation']:.3f} s); tf_ppo takes {result['tf_ppo_over_trl']:.2f} of that")
    if args.compare_ppo:
        print(f"tf_ppo PPO at the same rollouts and steps: {result['ppo']['seconds_per_update_median']:.3f} s per "
              f"update (peak RSS {result['ppo']['peak_rss_mb']} MB); {args.algorithm} takes "
              f"{result['over_own_ppo']:.2f} of that")
    checks = target_checks(result, args)
    for name, (value, target, met) in checks.items():
        print(f"target {name} {target}: {value} -> {'met' if met else 'NOT MET'}")
    result["targets_met"] = {name: met for name, (_, _, met) in checks.items()}
    print(json.dumps(result))
    if not all(result["targets_met"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
