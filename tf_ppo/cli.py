"""The `tf-ppo` command: `demo`, `train`, `sft`, `reward`, `pipeline`, `export`, `generate`.

Flags are derived from `PPOConfig`'s fields, so the CLI and the config never
disagree: every top-level field is `--field_name VALUE` (JSON values, e.g.
`--target_kl 3.0`, `--cliprange_value null`), nested ones `--model.num_layers 4`.

Example:
    tf-ppo demo
    tf-ppo train --config my_config.json --total_updates 200
    tf-ppo train --resume runs/ppo-20261128-120000 --total_updates 200
    tf-ppo train --workers 2 --run_dir runs/mw       # 2 local processes, MultiWorkerMirroredStrategy
    tf-ppo sft --sft.epochs 8
    tf-ppo train --model presets/my_llama --lora_rank 8 --dtype mixed_bfloat16 --prompts tfds:imdb_reviews
    tf-ppo reward --reward.epochs 2 --run_dir runs/rm
    tf-ppo pipeline --run_dir runs/rlhf           # SFT -> reward model -> PPO, proxy and gold scores
    tf-ppo export runs/ppo-20261128-120000 exported/sentiment
    tf-ppo generate exported/sentiment "the film was" --top_k 1
"""

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import keras_hub

from tf_ppo.config import NESTED, PPOConfig
from tf_ppo.distribute import free_port, local_cluster, resolve_strategy
from tf_ppo.export import export, save_preset
from tf_ppo.models import tokenizer_for
from tf_ppo.pipeline import pipeline
from tf_ppo.reward_model import save_atomically, train_reward_model
from tf_ppo.sft import default_policy, sft
from tf_ppo.checkpoints import CheckpointError
from tf_ppo.trainer import train

DEMO_RUN_DIR = "runs/demo-{time}"


def build_parser():
    parser = argparse.ArgumentParser(prog="tf-ppo", description="PPO fine-tuning of Keras language models.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="SFT a tiny policy on data/, then PPO it toward positive sentiment")
    train = commands.add_parser("train", help="PPO (the policy is SFT-trained first if not cached)")
    sft = commands.add_parser("sft", help="supervised fine-tuning only")
    reward = commands.add_parser("reward", help="train a reward model on preference pairs (--reward.* flags)")
    pipeline = commands.add_parser("pipeline", help="SFT -> reward model -> PPO, with a gold score beside the proxy")
    train.add_argument("--workers", type=int, default=0,
                       help="start N local worker processes (MultiWorkerMirroredStrategy over 127.0.0.1)")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue that run from its latest checkpoint, with its config.json (flags override)")
    export = commands.add_parser("export", help="write a run's policy as a SavedModel (strings in, text out)")
    export.add_argument("run_dir")
    export.add_argument("export_dir")
    generate = commands.add_parser("generate", help="complete prompts with an exported SavedModel")
    generate.add_argument("export_dir")
    generate.add_argument("prompts", nargs="+")
    generate.add_argument("--max_new_tokens", type=int, default=16)
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top_k", type=int, default=0, help="1 = greedy, 0 = sample from all tokens")
    generate.add_argument("--seed", type=int, default=0)
    for command in (demo, train, sft, reward, pipeline):
        command.add_argument("--config", help="a JSON file of PPOConfig fields; flags override it")
        _add_config_flags(command)
    return parser


def _add_config_flags(parser):
    parser.add_argument("--model", type=str, default=argparse.SUPPRESS,
                        help="a keras-hub preset to start from: a name (downloads) or a local preset directory")
    for field in dataclasses.fields(PPOConfig):
        if field.name in NESTED:
            for sub in dataclasses.fields(NESTED[field.name]):
                parser.add_argument(f"--{field.name}.{sub.name}", dest=f"{field.name}.{sub.name}",
                                    type=_parse_value, default=argparse.SUPPRESS)
        else:
            parser.add_argument(f"--{field.name}", type=_parse_value, default=argparse.SUPPRESS)


def _parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string such as a path


def config_from_args(args, **defaults):
    """A `PPOConfig` from `--config` then flags; errors name the bad field."""
    values = dict(defaults)
    if getattr(args, "resume", None):
        values.update(json.loads(_read(pathlib.Path(args.resume) / "config.json")), run_dir=args.resume)
    if args.config:
        values.update(json.loads(_read(args.config)))
    for key, value in vars(args).items():
        if key in ("command", "config", "resume", "workers"):
            continue
        if "." in key:
            outer, inner = key.split(".", 1)
            values.setdefault(outer, {})[inner] = value
        else:
            values[key] = value
    return PPOConfig().replace(**values)


def _read(path):
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return path.read_text()


def run_demo(config):
    """SFT + PPO on the shipped data; prints samples, figures and a final JSON line."""
    started = time.perf_counter()
    result = train(config)
    before, after = result.evaluation_before, result.evaluation_after
    print("\nHeld-out completions, before PPO -> after PPO:")
    for (prompt, old), (_, new) in list(zip(before["samples"], after["samples"]))[:8]:
        print(f"  {prompt!r}\n      SFT: {old.strip()!r}\n      PPO: {new.strip()!r}")
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
          f"{summary['heldout_kl']:.2f} nats/response (k1 on held-out completions); fluent completions {summary['fluency']:.0%}; "
          f"artefacts in {result.run_dir}")
    print(json.dumps(summary))
    return summary


def run_reward(config):
    """Train a reward model from the default SFT policy's backbone, normalised on its samples."""
    run_dir = pathlib.Path(config.run_dir or f"runs/reward-{time.strftime('%Y%m%d-%H%M%S')}")
    policy = default_policy(config)
    result = train_reward_model(config, policy.backbone, run_dir, policy=policy)
    print(f"reward model written to {result.path}")
    print(json.dumps(result.history[-1]))


def run_sft(config):
    """Supervised fine-tuning; writes `policy.keras` and, for a keras-hub policy, a preset PPO can start from."""
    run_dir = pathlib.Path(config.run_dir or f"runs/sft-{time.strftime('%Y%m%d-%H%M%S')}")
    result = sft(config, checkpoint_dir=run_dir / "checkpoints")
    save_atomically(result.policy, run_dir / "policy.keras")
    if isinstance(result.policy, keras_hub.models.CausalLM) and not (run_dir / "preset").exists():
        save_preset(result.policy, tokenizer_for(config, result.policy), run_dir / "preset")
        print(f"preset written to {run_dir / 'preset'} (tf-ppo train --model {run_dir / 'preset'})")
    print(json.dumps({**result.history[-1], "run_dir": str(run_dir)}))


def run_generate(args):
    """Load a SavedModel with TensorFlow alone and print one completion per prompt."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the tokenizer ops the SavedModel uses

    model = tf.saved_model.load(args.export_dir)
    outputs = model.generate(tf.constant(args.prompts), args.max_new_tokens, args.temperature, args.top_k,
                             args.seed)
    for prompt, completion in zip(args.prompts, outputs["completions"].numpy()):
        print(f"{prompt}{completion.decode()}")


def launch_workers(argv, workers):
    """Run `tf-ppo train` as `workers` processes of one MultiWorkerMirroredStrategy cluster on 127.0.0.1.

    Each process gets its `TF_CONFIG`; worker 0 is the chief (it alone writes the
    run directory). Output lines are prefixed with the worker index. If a
    worker fails, the others are stopped and its exit code is returned.
    """
    child_argv = _without_flag(argv, "--workers") + ["--strategy", "multi_worker"]
    if not any(arg.startswith("--run_dir") for arg in child_argv):  # every worker must name the same run
        child_argv += ["--run_dir", f"runs/ppo-{time.strftime('%Y%m%d-%H%M%S')}"]
    ports = [free_port() for _ in range(workers)]
    processes = []
    for index, tf_config in enumerate(local_cluster(ports)):
        process = subprocess.Popen([sys.executable, "-m", "tf_ppo.cli", *child_argv], text=True,
                                   env={**os.environ, "TF_CONFIG": tf_config},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        print(f"started worker {index} (pid {process.pid}) on 127.0.0.1:{ports[index]}", flush=True)
        threading.Thread(target=_prefix_lines, args=(process.stdout, f"[worker {index}] "), daemon=True).start()
        processes.append(process)
    while True:
        codes = [process.poll() for process in processes]
        failed = [code for code in codes if code not in (None, 0)]
        if failed or all(code == 0 for code in codes):
            for process in processes:
                if process.poll() is None:
                    process.terminate()
            return failed[0] if failed else 0
        time.sleep(0.5)


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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "workers", 0):
        return launch_workers(argv, args.workers)
    try:
        if args.command == "demo":
            run_demo(config_from_args(args, run_dir=DEMO_RUN_DIR.format(time=time.strftime("%Y%m%d-%H%M%S"))))
        elif args.command == "train":
            config = config_from_args(args)
            # MultiWorkerMirroredStrategy must exist before any other TensorFlow op runs in the process.
            strategy = resolve_strategy("multi_worker", config.collective_timeout) \
                if config.strategy == "multi_worker" else None
            result = train(config, resume=bool(args.resume), strategy=strategy)
            if result.preempted:
                print(f"stopped by SIGTERM after update {len(result.history)}; checkpoint saved. "
                      f"Continue with: tf-ppo train --resume {result.run_dir}")
            else:
                print(json.dumps({k: v for k, v in result.evaluation_after.items() if k != "samples"}))
        elif args.command == "export":
            print(f"SavedModel written to {export(args.run_dir, args.export_dir)}")
        elif args.command == "generate":
            run_generate(args)
        elif args.command == "reward":
            run_reward(config_from_args(args))
        elif args.command == "pipeline":
            print(json.dumps(pipeline(config_from_args(args)).summary))
        else:
            run_sft(config_from_args(args))
    except (ValueError, FileNotFoundError, CheckpointError) as error:  # user mistakes: one line, no stack trace
        print(f"tf-ppo {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
