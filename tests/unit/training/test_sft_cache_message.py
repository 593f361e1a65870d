"""The first run says where it caches the SFT policy it trains, and why (issue 33, item 10)."""
import importlib
import types

import keras

from tf_ppo import PPOConfig

sft_module = importlib.import_module("tf_ppo.sft")  # `tf_ppo.sft` is the function of the same name


def test_training_the_default_policy_prints_one_line_naming_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TF_PPO_CACHE", str(tmp_path))
    tiny = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])  # stands in for stage 1's policy
    monkeypatch.setattr(sft_module, "sft", lambda config, **kwargs: types.SimpleNamespace(policy=tiny))

    sft_module.default_policy(PPOConfig(), show_progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("SFT:")]
    assert len(lines) == 1 and str(tmp_path) in lines[0] and "training one" in lines[0]
    assert any(tmp_path.glob("sft-*/policy.keras"))

    sft_module.default_policy(PPOConfig(), show_progress=True)  # cached now: nothing trained, nothing said
    assert "SFT:" not in capsys.readouterr().out
