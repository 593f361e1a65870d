"""Preference pairs long enough to fill `length` tokens, for the DPO benchmark and its TRL baseline.

Shared by `dpo_throughput.py` (TensorFlow) and `trl_dpo_baseline.py` (PyTorch), so it uses the standard
library only. Each text joins consecutive sentences of the shipped corpus, so prompt + response is
longer than any benchmark length, and both sides cut the sequence to exactly `length` tokens, keeping
its start (TRL's `truncation_mode="keep_start"`).
"""

import csv
import pathlib
import tempfile

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def long_pairs(count, words=(24, 48)):
    """`count` (prompt, chosen, rejected) texts of about `words` = (prompt, response) words each.

    Example:
        prompt, chosen, rejected = long_pairs(64)[0]
    """
    sentence_words = [line.split() for line in (DATA / "corpus.txt").read_text().splitlines() if line.strip()]
    stream = (word for _ in range(1000) for sentence in sentence_words for word in sentence)
    take = lambda n: " ".join(next(stream) for _ in range(n))  # noqa: E731
    return [(take(words[0]), take(words[1]), take(words[1])) for _ in range(count)]


def write_pairs_csv(pairs):
    """A `prompt,chosen,rejected,split` CSV of `pairs` (all train, plus the first 8 repeated as held-out)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="long-pairs-")) / "pairs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "chosen", "rejected", "split"])
        writer.writerows([*pair, "train"] for pair in pairs)
        writer.writerows([*pair, "heldout"] for pair in pairs[:8])
    return path
