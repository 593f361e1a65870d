"""Held-out evaluation: mean score, KL to the reference, fluency, gold score, accuracy and pass@k.

`Evaluator` runs on a `RolloutEngine`, so it samples and scores exactly as
training does. `evaluate(policy, config)` builds what it needs around any
policy, e.g. a DPO policy, without an RL trainer.
"""

import numpy as np
import tensorflow as tf

from tf_ppo.config import ConfigError, run_config
from tf_ppo.data import load_prompts
from tf_ppo.models import tokenizer_for
from tf_ppo.rl.environment import environment_for, environment_rewards_only
from tf_ppo.rl.functional import masked
from tf_ppo.rl.functional.estimators import pass_at_k
from tf_ppo.rl.rewards import RewardFunctionFailed, compute_scores, corpus_bigrams, is_fluent, reward_functions
from tf_ppo.rl.rollout import RolloutEngine
from tf_ppo.tasks import TASKS
from tf_ppo.training.distribute import resolve_strategy

EVALUATION_SEED = 12345  # held-out sampling seed: the same completions before and after training


def accuracy_check(config, accuracy_fn=None):
    """The correctness check behind accuracy and pass@k: `accuracy_fn`, else the task's (None for sentiment).

    Raises `ConfigError` when `eval_pass_k` asks for pass@k and there is no check;
    the trainer calls it before it builds any model, so the mistake costs no time.

    Example:
        accuracy_check(PPOConfig(task="arithmetic")) is exact_match_reward
    """
    accuracy_fn = accuracy_fn or TASKS[config.task].accuracy_fn
    if config.eval_pass_k and accuracy_fn is None:
        raise ConfigError(f"PPOConfig.eval_pass_k={config.eval_pass_k} needs answers to check: "
                          f"task='arithmetic', or train(..., accuracy_fn=fn) with fn(prompts, responses) "
                          f"-> 1.0 / 0.0 each")
    return accuracy_fn


class Evaluator:
    """The held-out figures of the engine's policy on `config.eval_prompts_csv` (or given prompts).

    Args:
        engine: the `RolloutEngine` that samples and scores (its reference, if any, gives `heldout_kl`).
        accuracy_fn: `(prompts, responses) -> 1.0 / 0.0 each`, behind `eval_pass_k`'s accuracy and pass@k.

    Example:
        figures = Evaluator(engine).evaluate()
        figures["score_mean"], figures.get("heldout_kl")
    """

    def __init__(self, engine, accuracy_fn=None):
        self.engine, self.config = engine, engine.config
        self.accuracy_fn = accuracy_check(self.config, accuracy_fn)
        self.prompts = load_prompts(self.config.eval_prompts_csv)[: self.config.eval_size]
        self.bigrams = corpus_bigrams(self.config.fluency_corpus) if self.config.fluency_corpus else None

    def evaluate(self, prompts=None, seed=EVALUATION_SEED):
        """Mean score, KL to the reference and fluency of sampled completions of held-out prompts.

        `heldout_kl` is the k1 estimate, sum over response tokens of
        log pi(y) - log ref(y), averaged over the prompts (nats per response),
        whatever `kl_estimator` shapes the training reward (the history's `kl`).
        Prompts go in chunks of `batch_size` (the last one topped up by cycling
        through them) so evaluation reuses the compiled training-shape functions.

        Example:
            evaluator.evaluate()["heldout_kl"]
        """
        prompts = prompts or self.prompts
        c = self.config
        token_ids, lengths = self.engine.encode(prompts, seed)
        rows = whole_batches(len(prompts), c.batch_size)
        token_ids, lengths = token_ids[rows], lengths[rows]
        scores, kls, texts, prompt_texts, gold, episodes = [], [], [], [], [], []
        for start in range(0, len(token_ids), c.batch_size):
            chunk = slice(start, start + c.batch_size)
            rollout = self.engine.rollout(token_ids[chunk], lengths[chunk], tf.constant([seed, start], tf.int32))
            if rollout.reward_failure:
                raise RewardFunctionFailed(f"evaluation: {rollout.reward_failure}")
            experience = rollout.experience
            if experience.ref_logprobs is not None:
                kls += list(masked.masked_sum(experience.logprobs - experience.ref_logprobs,
                                              experience.model_mask, axis=1).numpy())
            scores += list(experience.scores.numpy())
            texts += rollout.texts
            prompt_texts += rollout.prompt_texts  # what the policy saw: cut to its first k tokens if configured
            gold += list(rollout.gold_scores) if rollout.gold_scores is not None else []
            episodes += [rollout.episodes] if rollout.episodes is not None else []
        n = len(prompts)
        samples = list(zip(prompt_texts[:n], texts[:n]))
        evaluation = {"score_mean": float(np.mean(scores[:n])), "samples": samples}
        if kls:  # without a reference model (GRPO with beta = 0) there is nothing to measure the KL against
            evaluation["heldout_kl"] = float(np.mean(kls[:n]))
        if self.bigrams is not None:
            evaluation["fluency"] = fluency(samples, self.bigrams)
        if gold:
            evaluation["gold_score_mean"] = float(np.mean(gold[:n]))
        if episodes:  # multi-turn: how the episodes went (tool_call_rate: the share with a tool call)
            calls = np.concatenate([part.tool_calls for part in episodes])[:n]
            evaluation.update({"turns_mean": float(np.mean(np.concatenate([part.turns for part in episodes])[:n])),
                               "tool_call_rate": float(np.mean(calls > 0)),
                               "sample_episode": episodes[0].transcripts[0]})
        if c.eval_pass_k:
            evaluation.update(self._accuracy(prompts, token_ids[:n], lengths[:n], seed))
        return evaluation

    def _accuracy(self, prompts, token_ids, lengths, seed):
        """Greedy exact-match accuracy, pass@k from n >= k samples per prompt, and the greedy answers."""
        k = self.config.eval_pass_k
        n = self.config.eval_pass_samples or k
        conversations = self.engine.conversations_of(token_ids, lengths)
        if conversations is not None:  # positional checks read the prompt as the policy saw it
            prompts = self.engine.prompt_texts(token_ids, lengths)
        greedy = self._completions(token_ids, lengths, seed, greedy=True)
        correct = compute_scores(self.accuracy_fn, greedy, prompts, conversations)  # [prompts]
        sampled = self._completions(np.repeat(token_ids, n, axis=0), np.repeat(lengths, n), seed)
        sampled_correct = compute_scores(self.accuracy_fn, sampled, _repeat(prompts, n), _repeat(conversations, n))
        counts = sampled_correct.reshape(len(prompts), n).sum(axis=1).astype(np.int64)  # [prompts] correct of n
        return {"accuracy": float(np.mean(correct)), f"pass@{k}": float(np.mean(pass_at_k(n, counts, k))),
                "greedy_samples": list(zip(prompts, greedy))}

    def _completions(self, token_ids, lengths, seed, greedy=False):
        """Decoded responses of these prompts (greedy, or sampled as in training), in batch_size chunks."""
        c = self.config
        rows = whole_batches(len(token_ids), c.batch_size)
        texts = []
        for start in range(0, len(rows), c.batch_size):
            chunk = rows[start: start + c.batch_size]
            texts += self.engine.completions(tf.gather(token_ids, chunk), tf.gather(lengths, chunk),
                                             tf.constant([seed, start], tf.int32), greedy)
        return texts[: len(token_ids)]


def _repeat(rows, n):
    """Each of `rows` n times in a row (as `np.repeat`, for lists of anything); None stays None."""
    return None if rows is None else [row for row in rows for _ in range(n)]


def evaluate(policy, config=None, reference=None, reward_fn=None, gold_reward_fn=None, accuracy_fn=None,
             prompts=None, strategy=None, environment=None, tools=None):
    """The held-out figures of any policy: score, KL to `reference`, fluency, gold score, accuracy, pass@k.

    Args:
        policy: a keras-hub `CausalLM` (or the bigram model) to evaluate.
        config: `PPOConfig` for the prompts, sampling, batch size and task (default: the demo's).
        reference: the policy `heldout_kl` is measured against; None = no KL.
        reward_fn: as `train`'s (a function, a RewardModel or a list); default the task's.
        gold_reward_fn: an independent judge, reported as `gold_score_mean`.
        accuracy_fn: the correctness check behind accuracy and pass@k (default: the task's).
        prompts: held-out prompts (default: `config.eval_prompts_csv`).
        strategy: a `tf.distribute.Strategy` (default: from `config.strategy`).
        environment, tools: multi-turn episodes, as in `train` (default: the task's tools, if it has any).

    Returns:
        A dict: `score_mean`, `samples` (prompt, completion) and, where they
        apply, `heldout_kl`, `fluency`, `gold_score_mean`, `accuracy`, `pass@k`.

    Example:
        figures = tf_ppo.evaluate(result.policy, config, reference=sft_policy)
        figures["score_mean"], figures["heldout_kl"]
    """
    config = run_config(config)
    reward_fn = environment_rewards_only if environment is not None and reward_fn is None else reward_fn
    reward_fns, weights = reward_functions(reward_fn, config)
    engine = RolloutEngine(config, policy, tokenizer_for(config, policy),
                           resolve_strategy(strategy if strategy is not None else config.strategy,
                                            config.collective_timeout),
                           reward_fns, weights, reference=reference, gold_reward_fn=gold_reward_fn,
                           environment=environment_for(config, environment, tools))
    return Evaluator(engine, accuracy_fn).evaluate(prompts)


def fluency(samples, bigrams):
    """The share of `(prompt, completion)` pairs whose word bigrams all occur in the corpus.

    Example:
    >>> fluency([("the film", " was good"), ("the film", " good was")], {("the", "film"), ("film", "was"),
    ...                                                                   ("was", "good")})
    0.5
    """
    return float(np.mean([is_fluent(prompt + text, bigrams) for prompt, text in samples]))


def whole_batches(count, batch_size):
    """Row indices `0..count-1` cycled up to whole batches, so evaluation reuses the compiled batch shape.

    Example:
    >>> whole_batches(5, 4).tolist()
    [0, 1, 2, 3, 4, 0, 1, 2]
    """
    return np.arange(-(-count // batch_size) * batch_size) % count
