"""The `tf-ppo` commands, one function each: what `tf_ppo.cli` runs once it has parsed the config.

`run_demo`, `run_train`, `run_sft`, `run_reward`, `run_pipeline`, `run_dpo`
take the parsed arguments and/or the `PPOConfig`; `run_export` and
`run_generate` the arguments only. Each prints what the command reports (its
last stdout line is JSON where a script may read it). A run stopped by Ctrl-C
raises `Interrupted` with the one line `tf_ppo.cli` prints (where it stopped,
how to resume); one stopped by SIGTERM prints that on stdout and returns.
`launch_workers` runs `tf-ppo train --workers N` as N local processes of one
multi-worker cluster.
"""

import json
import numbers
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import keras_hub

from tf_ppo.config import PPOConfig
from tf_ppo.training.distribute import free_port, local_cluster, resolve_strategy
from tf_ppo.preference.dpo import dpo
from tf_ppo.export import ExportError, export, save_preset
from tf_ppo.models import tokenizer_for
from tf_ppo.pipeline import dpo_summary, judge_dpo, pipeline, write_summary
from tf_ppo.preference.reward_training import read_preferences, save_atomically, train_reward_model
from tf_ppo.sft import default_policy, sft, starting_policy
from tf_ppo.rl.trainer import train
from tf_ppo.training.interrupts import Interrupted


def run_demo(config, tools=None):
    """SFT + RL on the shipped data of `config.task`; prints samples, figures and a final JSON line.

    `tools`: None, the task's tools; [] none (the calculator task's baseline without tools).
    """
    if config.task in ("arithmetic", "calculator"):
        return run_accuracy_demo(config, tools)
    started = time.perf_counter()
    result = train(config)
    if _rl_stopped_early(result):
        return None
    before, after = result.evaluation_before, result.evaluation_after
    _print_samples(before, after, "PPO")
    summary = {
        "sentiment_before": round(before["score_mean"], 4),
        "sentiment_after": round(after["score_mean"], 4),
        "sentiment_gain": round(after["score_mean"] - before["score_mean"], 4),
        # Two KLs, named apart: held-out is the k1 sum on sampled completions of held-out prompts (what the
        # bars are on); train is the last update's batch mean with the configured estimator.
        "heldout_kl": round(after["heldout_kl"], 4),
        "train_kl": round(result.history[-1]["kl"], 4) if result.history else None,
        "kl_estimator": config.kl_estimator,
        "fluency": round(after["fluency"], 4),
        "updates": len(result.history),
        "seconds": round(time.perf_counter() - started, 1),
        "run_dir": str(result.run_dir),
    }
    print(f"\nSentiment (VADER, held-out prompts): {summary['sentiment_before']:.3f} -> "
          f"{summary['sentiment_after']:.3f} (gain {summary['sentiment_gain']:+.3f}); KL to reference "
          f"{summary['heldout_kl']:.2f} nats/response (k1 on held-out completions); "
          f"fluent completions {summary['fluency']:.0%}; "
          f"artefacts in {result.run_dir}")
    print(json.dumps(summary))
    return summary


def run_accuracy_demo(config, tools=None):
    """SFT + RL on a task with checkable answers: accuracy and pass@k before and after, sample answers, JSON.

    With tools, also the share of held-out episodes that call one, and the turns of a sample episode.
    """
    started = time.perf_counter()
    result = train(config, tools=tools)
    if _rl_stopped_early(result):
        return None
    before, after = result.evaluation_before, result.evaluation_after
    k = config.eval_pass_k
    print(f"\nHeld-out problems, greedy answers before {config.algorithm.upper()} -> after:")
    for (problem, old), (_, new) in list(zip(before["greedy_samples"], after["greedy_samples"]))[:6]:
        print(f"  {problem}\n      SFT: {old.strip()}\n      {config.algorithm.upper()}: {new.strip()}")
    summary = {
        "accuracy_before": round(before["accuracy"], 4), "accuracy_after": round(after["accuracy"], 4),
        "pass_at_k_before": round(before[f"pass@{k}"], 4), "pass_at_k_after": round(after[f"pass@{k}"], 4),
        "k": k, "kl": round(after["heldout_kl"], 4) if "heldout_kl" in after else None,
        **{f"tool_call_rate_{when}": round(figures["tool_call_rate"], 4)
           for when, figures in (("before", before), ("after", after)) if "tool_call_rate" in figures},
        "algorithm": config.algorithm, "updates": len(result.history),
        "seconds": round(time.perf_counter() - started, 1), "run_dir": str(result.run_dir),
    }
    print(f"\nHeld-out exact-match accuracy (greedy): {summary['accuracy_before']:.1%} -> "
          f"{summary['accuracy_after']:.1%}; pass@{k}: {summary['pass_at_k_before']:.1%} -> "
          f"{summary['pass_at_k_after']:.1%}; KL to the SFT policy "
          + (f"{summary['kl']:.2f} nats/response" if summary["kl"] is not None else "not measured (no reference)")
          + f"; artefacts in {result.run_dir}")
    if "tool_call_rate_after" in summary:
        print(f"Held-out episodes that call a tool: {summary['tool_call_rate_before']:.1%} -> "
              f"{summary['tool_call_rate_after']:.1%}. A sample episode after {config.algorithm.upper()}, turn "
              f"by turn:")
        for speaker, text in result.evaluation_after["sample_episode"]:
            print(f"  {speaker:>11}: {text}")
    print(json.dumps(summary))
    return summary


def run_reward(config):
    """Train a reward model from the default SFT policy's backbone, normalised on its samples."""
    run_dir = pathlib.Path(config.run_dir or f"runs/reward-{time.strftime('%Y%m%d-%H%M%S')}")
    read_preferences(config.reward.preferences_csv)  # a bad file is named now, not after the SFT stage
    policy = default_policy(config)
    result = train_reward_model(config, policy.backbone, run_dir, policy=policy)
    if _stopped_early(result, f"step {result.steps_done}/{result.total_steps}",
                      f"tf-ppo reward --run_dir {run_dir} and the same flags (it continues from its checkpoints)"):
        return
    print(f"reward model written to {result.path}")
    print(json.dumps(result.history[-1]))


def run_sft(config):
    """Supervised fine-tuning; writes `policy.keras` and, for a keras-hub policy, a preset PPO can start from."""
    run_dir = pathlib.Path(config.run_dir or f"runs/sft-{time.strftime('%Y%m%d-%H%M%S')}")
    result = sft(config, checkpoint_dir=run_dir / "checkpoints")
    if _stopped_early(result, f"step {result.steps_done}/{result.total_steps}",
                      f"tf-ppo sft --run_dir {run_dir} and the same flags (it continues from its checkpoints)"):
        return
    save_atomically(result.policy, run_dir / "policy.keras")
    if isinstance(result.policy, keras_hub.models.CausalLM) and not (run_dir / "preset").exists():
        save_preset(result.policy, tokenizer_for(config, result.policy), run_dir / "preset")
        print(f"preset written to {run_dir / 'preset'} (tf-ppo train --model {run_dir / 'preset'})")
    print(json.dumps({**result.history[-1], "run_dir": str(run_dir)}))


def run_generate(args):
    """Load a SavedModel with TensorFlow alone and print one completion per prompt."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the tokenizer ops the SavedModel uses

    export_dir = pathlib.Path(args.export_dir)
    if not export_dir.is_dir():
        raise FileNotFoundError(f"{export_dir}: export directory not found (write one with "
                                f"tf-ppo export RUN_DIR {export_dir})")
    if not (export_dir / "saved_model.pb").is_file():
        raise ExportError(f"{export_dir} is not a SavedModel directory (no saved_model.pb); write one with "
                          f"tf-ppo export RUN_DIR EXPORT_DIR")
    model = tf.saved_model.load(str(export_dir))
    outputs = model.generate(tf.constant(args.prompts), args.max_new_tokens, args.temperature, args.top_k,
                             args.seed)
    for prompt, completion in zip(args.prompts, outputs["completions"].numpy()):
        print(f"{prompt}{completion.decode()}")


def launch_workers(argv, workers):
    """Run `tf-ppo train` as `workers` processes of one MultiWorkerMirroredStrategy cluster on 127.0.0.1.

    Each process gets its `TF_CONFIG`; worker 0 is the chief (it alone writes the
    run directory). Output lines are prefixed with the worker index. If a
    worker fails, the others are stopped and its exit code is returned.

    Ctrl-C in the terminal reaches every worker (they share its process group):
    they agree on an update, save its checkpoint and exit 130, and this process
    waits for them, then prints how to resume with the same number of workers.
    """
    child_argv = _without_flag(argv, "--workers") + ["--strategy", "multi_worker"]
    run_dir = _flag_value(child_argv, "--run_dir") or _flag_value(child_argv, "--resume")
    if run_dir is None:  # every worker must name the same run
        algorithm = _flag_value(child_argv, "--algorithm") or PPOConfig().algorithm
        run_dir = f"runs/{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
        child_argv += ["--run_dir", run_dir]
    ports = [free_port() for _ in range(workers)]
    processes, printers = [], []
    for index, tf_config in enumerate(local_cluster(ports)):
        process = subprocess.Popen([sys.executable, "-m", "tf_ppo.cli", *child_argv], text=True,
                                   env={**os.environ, "TF_CONFIG": tf_config},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        print(f"started worker {index} (pid {process.pid}) on 127.0.0.1:{ports[index]}", flush=True)
        printers.append(threading.Thread(target=_prefix_lines, args=(process.stdout, f"[worker {index}] "),
                                         daemon=True))
        printers[-1].start()
        processes.append(process)
    # The workers got the same Ctrl-C: wait for their checkpoint rather than die with a traceback.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = _wait_for_workers(processes)
    finally:
        signal.signal(signal.SIGINT, previous)
    for printer in printers:
        printer.join(timeout=5)  # their last lines (where each stopped) before ours
    if code == INTERRUPTED:
        print(f"interrupted; resume with: tf-ppo train --resume {run_dir} --workers {workers}", file=sys.stderr,
              flush=True)
    return code


INTERRUPTED = 130  # the shell's code for a command ended by SIGINT; a worker stopped by Ctrl-C exits with it


def _wait_for_workers(processes):
    """The workers' exit code once all ended: 0, 130 after Ctrl-C, or the first failure (the others stopped)."""
    while True:
        codes = [process.poll() for process in processes]
        failed = [code for code in codes if code not in (None, 0, INTERRUPTED)]
        if failed or all(code is not None for code in codes):
            for process in processes:
                if process.poll() is None:
                    process.terminate()
                process.wait()
            return failed[0] if failed else max(codes)
        time.sleep(0.5)


def _flag_value(argv, flag):
    """The value of `flag` in `argv` (`--flag value` or `--flag=value`), or None.

    Example:
    >>> _flag_value(["train", "--algorithm=grpo"], "--algorithm"), _flag_value(["--seed", "3"], "--seed")
    ('grpo', '3')
    """
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


def _without_flag(argv, flag):
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            kept.append(arg)
    return kept


def _prefix_lines(stream, prefix):
    for line in stream:
        print(prefix + line, end="", flush=True)


def train_summary(result):
    """The last line of `tf-ppo train`: the run directory and each held-out figure before and after training.

    Example:
    >>> from types import SimpleNamespace
    >>> train_summary(SimpleNamespace(run_dir="runs/x", evaluation_before={"score_mean": 0.123456, "samples": []},
    ...                               evaluation_after={"score_mean": 0.5, "samples": []}))
    {'run_dir': 'runs/x', 'score_mean_before': 0.1235, 'score_mean_after': 0.5}
    """
    summary = {"run_dir": str(result.run_dir)}
    evaluations = {"before": result.evaluation_before, "after": result.evaluation_after}
    for key in dict.fromkeys([*result.evaluation_before, *result.evaluation_after]):  # generic over the keys
        for when, evaluation in evaluations.items():
            if _is_figure(evaluation.get(key)):
                summary[f"{key}_{when}"] = round(float(evaluation[key]), 4)
    return summary


def _is_figure(value):
    # floats (NumPy's too), not samples, counts or flags
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)


def run_train(args, config):
    """PPO; the last stdout line is `train_summary` as JSON (or how to continue a preempted run)."""
    # MultiWorkerMirroredStrategy must exist before any other TensorFlow op runs in the process.
    strategy = resolve_strategy("multi_worker", config.collective_timeout) \
        if config.strategy == "multi_worker" else None
    result = train(config, resume=bool(args.resume), strategy=strategy)
    if not _rl_stopped_early(result):
        print(json.dumps(train_summary(result)))


def run_dpo(args, config):
    """DPO, judged as `tf-ppo pipeline --method dpo` judges it; the last stdout line is its summary as JSON.

    The summary (also written to RUN_DIR/summary.json) has the gold score before
    and after, the KL to the starting policy and fluency on held-out prompts.
    """
    started = time.perf_counter()
    result = dpo(config, resume=bool(args.resume))
    if not _stopped_early(result, f"step {result.steps_done}/{result.total_steps}",
                          f"tf-ppo dpo --resume {result.run_dir}"):
        # The start again (the cached SFT policy, or the preset): not held during training, where no reference
        # model is kept (precompute_ref_log_probs).
        judged = judge_dpo(result, starting_policy(config), config)
        print_dpo_report(judged, write_summary(result.run_dir, dpo_summary(judged, time.perf_counter() - started,
                                                                            result.run_dir)))


def print_dpo_report(result, summary):
    """Held-out samples before and after DPO, the gold score, KL and fluency, then `summary` as JSON (last line).

    `result` is a `DPOResult` judged by `tf_ppo.pipeline.judge_dpo`, `summary` its `dpo_summary`.

    Example:
        print_dpo_report(pipeline_result.ppo, pipeline_result.summary)
    """
    before, after = result.evaluations
    _print_samples(before, after, "DPO")
    fluency = "" if summary["fluency"] is None else f"; fluent completions {summary['fluency']:.0%}"
    print(f"\nGold score (held-out prompts): {summary['gold_before']:.3f} -> {summary['gold_after']:.3f}; KL to the "
          f"starting policy {summary['heldout_kl']:.2f} nats/response (k1 on held-out completions){fluency}; "
          f"held-out preference accuracy {summary['implicit_reward_heldout_accuracy']:.0%}; "
          f"artefacts in {summary['run_dir']}")
    print(json.dumps(summary))


def _print_samples(before, after, method, count=8):
    """The first `count` held-out completions of the starting policy beside the trained one's."""
    print(f"\nHeld-out completions, before {method} -> after {method}:")
    for (prompt, old), (_, new) in list(zip(before["samples"], after["samples"]))[:count]:
        print(f"  {prompt!r}\n      SFT: {old.strip()!r}\n      {method}: {new.strip()!r}")


def _stopped_early(result, reached, resume):
    """Whether a signal stopped the run (its checkpoint saved); Ctrl-C raises `Interrupted`, SIGTERM prints.

    `reached` says where the run stopped ("update 3/10"), `resume` the command that continues it.

    Example:
    >>> from types import SimpleNamespace
    >>> _stopped_early(SimpleNamespace(interrupted=False, preempted=True), "update 3/10", "tf-ppo train --resume x")
    stopped by SIGTERM at update 3/10; checkpoint saved. Continue with: tf-ppo train --resume x
    True
    """
    if result.interrupted:
        raise Interrupted(f"interrupted at {reached}; resume with: {resume}")
    if result.preempted:
        print(f"stopped by SIGTERM at {reached}; checkpoint saved. Continue with: {resume}")
    return result.preempted


def _rl_stopped_early(result):
    """`_stopped_early` for a `TrainResult`: `tf-ppo train --resume` continues any RL run (a demo's too)."""
    return _stopped_early(result, f"update {result.updates_done}/{result.config.total_updates}",
                          f"tf-ppo train --resume {result.run_dir}")


def run_export(args):
    """Write a run's policy as a SavedModel."""
    print(f"SavedModel written to {export(args.run_dir, args.export_dir)}")


def run_pipeline(args, config):
    """SFT -> reward model -> PPO, or SFT -> DPO (`--method dpo`, reported as by `run_dpo`); last line: the summary."""
    result = pipeline(config, method=args.method)
    if args.method == "dpo":
        print_dpo_report(result.ppo, result.summary)
    else:
        print(json.dumps(result.summary))
