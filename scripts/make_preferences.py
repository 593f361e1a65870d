"""Generate `data/preferences.csv`: which of two continuations of a review opening is better.

The preference is the default task's: a positive continuation is preferred
over a negative or a neutral one. Continuations come from the shipped corpus
(`train_data.csv` / `heldout_data.csv` targets, labelled by the grammar's
adjective lists in `make_data.py`; mixed "..., but ..." tails are left out as
ambiguous). Each CSV row gives one pair; the row's own target is used as the
chosen or the rejected side, the other side is drawn from the same split.

Columns: prompt, chosen, rejected, split ("train" or "heldout"; held-out rows
use the held-out openings, never seen in training).

Run: python scripts/make_preferences.py   (deterministic: fixed seed)
"""

import random
import re

import pandas as pd

from make_data import ADJECTIVES, DATA_DIR

SEED = 1


def sentiment(tail):
    """'positive', 'negative' or 'neutral' from the grammar's adjectives; None for mixed tails."""
    if ", but " in tail:
        return None
    found = {label for label, words in ADJECTIVES.items()
             for word in words if re.search(rf"\b{re.escape(word)}\b", tail)}
    return found.pop() if len(found) == 1 else None


def pairs(frame, split, rng):
    labelled = [(prompt, tail, sentiment(tail)) for prompt, tail in zip(frame["input_text"], frame["target"])]
    positive = [tail for _, tail, label in labelled if label == "positive"]
    other = [tail for _, tail, label in labelled if label in ("negative", "neutral")]
    rows = []
    for prompt, tail, label in labelled:
        if label == "positive":
            rows.append((prompt, tail, rng.choice(other), split))
        elif label is not None:
            rows.append((prompt, rng.choice(positive), tail, split))
    return rows


def main():
    rng = random.Random(SEED)
    rows = []
    for name, split in [("train_data.csv", "train"), ("heldout_data.csv", "heldout")]:
        rows += pairs(pd.read_csv(DATA_DIR / name, keep_default_na=False), split, rng)
    frame = pd.DataFrame(rows, columns=["prompt", "chosen", "rejected", "split"])
    frame.to_csv(DATA_DIR / "preferences.csv", index=False)
    print(f"{len(frame)} preference pairs ({(frame.split == 'train').sum()} train, "
          f"{(frame.split == 'heldout').sum()} held-out) written to {DATA_DIR / 'preferences.csv'}")


if __name__ == "__main__":
    main()
