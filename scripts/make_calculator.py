"""Generate the calculator task in `data/`, deterministically.

Word problems whose numbers are too large for a small model to work out in its head: products of a
3-digit and a 2-digit number, and sums of three or four numbers of 2-3 digits:

    tom packs 347 pens in each of 28 boxes . how many pens does he pack ?

The SFT demonstrations show two ways to answer. Some call the tool, then copy its result:

    <call>calculator("347 * 28")</call><|endoftext|><result>9716</result> #### 9716

(the model's turn ends at its end token; `<result>...</result>` is the environment's reply, written by
`tf_ppo.rl.environment.ToolEnvironment` at run time). The others answer at once, `#### 9716`, which a
small model cannot do: RL has to learn when to call the tool, and to copy its result. Held-out problems
never occur in training. Every answer is read back from its text by `tf_ppo.tasks.calculator.solve`.

Outputs (all under `data/`):
    calculator_train.csv, calculator_heldout.csv   input_text,target  (the article's CSV format)
    calculator-vocab.json, calculator-merges.txt   byte-level BPE for keras_hub.models.GPT2Tokenizer

Run: python scripts/make_calculator.py   (needs the `tokenizers` package: pip install -e .[data])
"""

import json
import pathlib
import random
import sys

import pandas as pd

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from scripts.make_data import DATA_DIR, END_OF_TEXT, move_end_of_text_last, train_tokenizer  # noqa: E402
from tf_ppo.tasks.arithmetic import MARKER  # noqa: E402
from tf_ppo.tasks.calculator import solve  # noqa: E402

SEED = 0
NUM_TRAIN = 8000
NUM_HELDOUT = 500
TOOL_SHARE = 0.3  # of the demonstrations, the ones that call the calculator
VOCAB_SIZE = 600
NAMES = {"tom": "he", "sam": "he", "ben": "he", "leo": "he", "ann": "she", "mia": "she", "eva": "she", "zoe": "she"}
OBJECTS = ["apples", "pens", "books", "marbles", "stickers", "cookies", "cards", "coins", "shells", "stamps"]
PRODUCTS = [  # {a}: 100-999, {b}: 11-99
    "{name} packs {a} {obj} in each of {b} boxes . how many {obj} does {pron} pack ?",
    "a shop has {b} crates with {a} {obj} in each . how many {obj} are there ?",
    "{name} buys {b} bags of {a} {obj} each . how many {obj} does {pron} buy ?",
]
SUMS = [  # every number: 10-999
    "{name} has {a} {obj} , finds {b} more and gets {c} more . how many {obj} does {pron} have ?",
    "a school has {a} {obj} in one room , {b} in another and {c} in a third . how many {obj} are there ?",
    "{name} sells {a} , {b} , {c} and {d} {obj} on four days . how many {obj} does {pron} sell ?",
]


def make_problem(rng):
    """One `(input_text, answer, expression)`."""
    name = rng.choice(sorted(NAMES))
    if rng.random() < 0.5:
        template = rng.choice(PRODUCTS)
        numbers = {"a": rng.randint(100, 999), "b": rng.randint(11, 99)}
        operator = " * "
    else:
        template = rng.choice(SUMS)
        numbers = {key: rng.randint(10, 999) for key in "abcd"}
        operator = " + "
    text = template.format(name=name, pron=NAMES[name], obj=rng.choice(OBJECTS), **numbers)
    in_text_order = [word for word in text.split() if word.isdigit()]
    expression = operator.join(in_text_order)
    answer = eval(expression)  # noqa: S307  the script's own digits and one operator
    if solve(text) != answer:
        raise AssertionError(f"the solver reads {solve(text)} from {text!r}, the expression gives {answer}")
    return text, answer, expression


def target(answer, expression, with_tool):
    """The demonstration: a tool call, the environment's reply and the answer; or the answer alone."""
    if not with_tool:
        return f"{MARKER} {answer}"
    return f'<call>calculator("{expression}")</call>{END_OF_TEXT}<result>{answer}</result> {MARKER} {answer}'


def one_token_per_digit(vocab_path, merges_path):
    """Drop every merge and token that joins a digit to anything: each digit is then one token, the same
    wherever it stands, so copying a number (into a call, or from a result) is copying digit tokens.

    Without it, "625" was "Ġ6 25" after a space and "6 25" or "62 5" elsewhere; the tiny SFT policy then
    copied no number right.
    """
    def has_digit_merge(token):
        return len(token) > 1 and any(character.isdigit() for character in token)

    lines = merges_path.read_text().splitlines()
    merges = [line for line in lines[1:] if not any(character.isdigit() for character in line)]
    merges_path.write_text("\n".join(lines[:1] + merges) + "\n")
    vocab = json.loads(vocab_path.read_text())
    kept = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1]) if not has_digit_merge(token)]
    vocab_path.write_text(json.dumps({token: index for index, token in enumerate(kept)}, ensure_ascii=False,
                                     separators=(",", ":")))
    move_end_of_text_last(vocab_path)


def main():
    rng = random.Random(SEED)
    problems, seen = [], set()
    while len(problems) < NUM_TRAIN + NUM_HELDOUT:
        problem = make_problem(rng)
        if problem[0] not in seen:
            seen.add(problem[0])
            problems.append(problem)
    rows = [(text, target(answer, expression, rng.random() < TOOL_SHARE)) for text, answer, expression in problems]
    heldout, train = rows[:NUM_HELDOUT], rows[NUM_HELDOUT:]
    for name, part in [("calculator_train.csv", train), ("calculator_heldout.csv", heldout)]:
        pd.DataFrame(part, columns=["input_text", "target"]).to_csv(DATA_DIR / name, index=False)
    corpus_path = DATA_DIR / "calculator_corpus.txt"
    corpus_path.write_text("".join(f"{text} {target(answer, expression, True)} {MARKER} {answer}\n"
                                   for text, answer, expression in problems).replace(END_OF_TEXT, " "))
    train_tokenizer(corpus_path, prefix="calculator", vocab_size=VOCAB_SIZE)
    corpus_path.unlink()  # the CSVs hold the same text
    one_token_per_digit(DATA_DIR / "calculator-vocab.json", DATA_DIR / "calculator-merges.txt")
    print(f"{len(rows)} problems ({len(train)} train, {len(heldout)} held-out), written to {DATA_DIR}")


if __name__ == "__main__":
    main()
