"""Generate the arithmetic word-problem task in `data/`, deterministically.

Problems add and subtract numbers of 1-2 digits (1 to 12), in one or two
steps, in several sentence orders with varied names, objects and verbs:

    tom has 12 apples and buys 9 more . how many apples does he have now ?
    -> 12 + 9 = 21 #### 21

The target is one line of working, then the answer after GSM8K's marker.
Held-out problems never occur in training (the texts are disjoint). The
answer of every problem is read back from its text by `tf_ppo.tasks.arithmetic.solve`
and checked against the working here, so the rewards can trust the prompts.

Outputs (all under `data/`):
    arithmetic_train.csv, arithmetic_heldout.csv   input_text,target  (the article's CSV format)
    arithmetic-vocab.json, arithmetic-merges.txt   byte-level BPE for keras_hub.models.GPT2Tokenizer

Run: python scripts/make_arithmetic.py   (needs the `tokenizers` package: pip install -e .[data])
"""

import pathlib
import random
import sys

import pandas as pd

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from scripts.make_data import DATA_DIR, train_tokenizer  # noqa: E402
from tf_ppo.tasks.arithmetic import GAIN_VERBS, LOSS_VERBS, MARKER, START_VERBS, solve  # noqa: E402

SEED = 0
NUM_TRAIN = 8000
NUM_HELDOUT = 500
LARGEST = 12  # every number of a problem is 1..LARGEST: a table RL can cover, from 1-2 digit numbers
VOCAB_SIZE = 600
NAMES = {"tom": "he", "sam": "he", "ben": "he", "max": "he", "leo": "he", "jack": "he",
         "ann": "she", "mia": "she", "eva": "she", "lily": "she", "zoe": "she", "kate": "she"}
OBJECTS = ["apples", "pens", "books", "marbles", "stickers", "cookies", "cards", "coins", "shells", "stamps",
           "balloons", "pencils"]
# Each template: its text, and its steps in text order as (verb kind, number name). The working starts with
# the start count, then the other steps in the order the text gives them.
TEMPLATES = [
    ("{name} {start} {a} {obj} and {gain} {b} more . how many {obj} does {pron} have now ?",
     [("start", "a"), ("gain", "b")]),
    ("{name} {start} {a} {obj} . then {pron} {gain} {b} more . how many {obj} does {pron} have ?",
     [("start", "a"), ("gain", "b")]),
    ("{name} {gain} {b} {obj} . {pron} already has {a} . how many {obj} does {pron} have now ?",
     [("gain", "b"), ("start", "a")]),
    ("{name} {start} {a} {obj} and {loss} {b} of them . how many {obj} are left ?",
     [("start", "a"), ("loss", "b")]),
    ("{name} {start} {a} {obj} . then {pron} {loss} {b} . how many {obj} does {pron} have now ?",
     [("start", "a"), ("loss", "b")]),
    ("{name} {start} {a} {obj} , {gain} {b} more and then {loss} {c} . how many {obj} does {pron} have now ?",
     [("start", "a"), ("gain", "b"), ("loss", "c")]),
    ("{name} {start} {a} {obj} . {pron} {loss} {c} and then {gain} {b} more . how many {obj} are there now ?",
     [("start", "a"), ("loss", "c"), ("gain", "b")]),
]
VERBS = {"start": START_VERBS, "gain": GAIN_VERBS, "loss": LOSS_VERBS}


def make_problem(rng):
    """One `(input_text, target)` pair, or None when its count would go below zero."""
    template, steps = rng.choice(TEMPLATES)
    numbers = {name: rng.randint(1, LARGEST) for name in "abc"}
    name = rng.choice(sorted(NAMES))
    words = {kind: rng.choice(VERBS[kind]) for kind in VERBS}
    ordered = sorted(steps, key=lambda step: step[0] != "start")  # the start count first
    working, total = str(numbers[ordered[0][1]]), numbers[ordered[0][1]]
    for kind, number in ordered[1:]:
        total += numbers[number] if kind == "gain" else -numbers[number]
        if total < 0:
            return None
        working += f" {'+' if kind == 'gain' else '-'} {numbers[number]}"
    text = template.format(name=name, pron=NAMES[name], obj=rng.choice(OBJECTS), **numbers, **words)
    if solve(text) != total:
        raise AssertionError(f"the solver reads {solve(text)} from {text!r}, the working says {total}")
    return text, f"{working} = {total} {MARKER} {total}"


def make_problems(rng, count):
    """`count` distinct problems, in generation order."""
    problems, seen = [], set()
    while len(problems) < count:
        problem = make_problem(rng)
        if problem is not None and problem[0] not in seen:
            seen.add(problem[0])
            problems.append(problem)
    return problems


def main():
    rng = random.Random(SEED)
    problems = make_problems(rng, NUM_TRAIN + NUM_HELDOUT)
    heldout, train = problems[:NUM_HELDOUT], problems[NUM_HELDOUT:]
    DATA_DIR.mkdir(exist_ok=True)
    for name, rows in [("arithmetic_train.csv", train), ("arithmetic_heldout.csv", heldout)]:
        pd.DataFrame(rows, columns=["input_text", "target"]).to_csv(DATA_DIR / name, index=False)
    corpus_path = DATA_DIR / "arithmetic_corpus.txt"
    corpus_path.write_text("".join(f"{problem} {target}\n" for problem, target in problems))
    train_tokenizer(corpus_path, prefix="arithmetic", vocab_size=VOCAB_SIZE)
    corpus_path.unlink()  # the CSVs hold the same text
    print(f"{len(problems)} problems ({len(train)} train, {len(heldout)} held-out), written to {DATA_DIR}")


if __name__ == "__main__":
    main()
