"""Generate the shipped movie-review data in `data/`, deterministically.

The corpus is written by a small grammar, not downloaded: a neutral opening
("i thought the acting was") followed by a tail that is positive, negative,
neutral or mixed ("surprisingly charming and i smiled the whole time.").
Prompts are the neutral openings, targets the tails, so the sentiment of a
continuation is decided by the model, which is what PPO then steers.

Outputs (all under `data/`):
    corpus.txt         every sentence, one per line (train + held-out)
    train_data.csv     input_text,target  (the article's CSV format)
    heldout_data.csv   input_text,target  (openings never seen in training)
    vocab.json, merges.txt  byte-level BPE for keras_hub.models.GPT2Tokenizer

Run: python scripts/make_data.py   (needs the `tokenizers` package: pip install -e .[data])
"""

import json
import pathlib
import random

import pandas as pd

DATA_DIR = pathlib.Path(__file__).resolve().parent.parent / "data"
SEED = 0
NUM_SENTENCES = 6000
HELDOUT_OPENING_FRACTION = 0.15
VOCAB_SIZE = 1000
END_OF_TEXT = "<|endoftext|>"

SUBJECTS = [
    "the movie", "the film", "this film", "this movie", "the acting", "the story",
    "the plot", "the ending", "the script", "the soundtrack", "the cast",
    "the director", "the dialogue", "the music", "the lead actor",
    "the second half", "the first hour", "the special effects", "the pacing",
    "the villain", "the camera work", "the sequel", "the final scene", "the humor",
]
VERBS = ["was", "is", "felt", "seemed", "turned out to be"]
OPENINGS = [
    "{s} {v}", "i thought {s} {v}", "honestly, {s} {v}", "to be fair, {s} {v}",
    "in my opinion {s} {v}", "my friends said {s} {v}", "overall {s} {v}",
    "for me {s} {v}", "i have to say {s} {v}", "after ten minutes {s} {v}",
]
ADJECTIVES = {
    "positive": ["wonderful", "brilliant", "beautiful", "charming", "delightful",
                 "excellent", "fantastic", "moving", "funny", "great", "superb",
                 "lovely", "enjoyable", "amazing", "impressive", "clever", "touching"],
    "negative": ["boring", "dull", "awful", "terrible", "bad", "weak", "messy",
                 "predictable", "painful", "silly", "lifeless", "clumsy", "tedious",
                 "disappointing", "horrible", "forgettable", "stupid"],
    "neutral": ["long", "quiet", "slow", "simple", "familiar", "short", "loud",
                "dark", "unusual", "different", "strange", "old fashioned"],
}
ADVERBS = ["really", "very", "quite", "truly", "rather", "pretty", "surprisingly",
           "completely", "mostly", "a bit", "fairly"]
CLAUSES = {
    "positive": ["and i loved every minute of it", "and i would watch it again",
                 "and the audience cheered", "and i smiled the whole time",
                 "and it made me happy", "so i recommend it to everyone",
                 "and my kids loved it too"],
    "negative": ["and i wanted to leave early", "and i almost fell asleep",
                 "and i want my money back", "and nobody laughed",
                 "so i would not recommend it", "and it made me angry",
                 "and we left before the end"],
    "neutral": ["and it ended after two hours", "and then the lights came on",
                "and we went home after that", "like most films this year",
                "as i expected from the trailer", "and it was shown in color"],
}
SENTIMENT_WEIGHTS = {"positive": 0.4, "negative": 0.4, "neutral": 0.2}


def adjective_phrase(rng, sentiment):
    """'surprisingly charming' or 'charming and funny' or 'dull'."""
    first, second = rng.sample(ADJECTIVES[sentiment], 2)
    form = rng.randrange(3)
    if form == 0:
        return f"{rng.choice(ADVERBS)} {first}"
    if form == 1:
        return f"{first} and {second}"
    return first


def tail(rng, sentiment):
    """The continuation after a neutral opening; carries the sentiment."""
    phrase = adjective_phrase(rng, sentiment)
    form = rng.randrange(4)
    if form == 0:
        return f"{phrase}."
    if form == 1:
        return f"{phrase} {rng.choice(CLAUSES[sentiment])}."
    if form == 2 and sentiment != "neutral":
        # Mixed sentiment: the second half contradicts the first.
        other = "negative" if sentiment == "positive" else "positive"
        subject = rng.choice(SUBJECTS)
        return f"{phrase}, but {subject} was {adjective_phrase(rng, other)}."
    return f"{phrase}{'!' if sentiment == 'positive' else '.'}"


def make_sentences(rng):
    """Unique (opening, tail) pairs, in generation order."""
    pairs, seen = [], set()
    sentiments, weights = zip(*SENTIMENT_WEIGHTS.items())
    while len(pairs) < NUM_SENTENCES:
        opening = rng.choice(OPENINGS).format(s=rng.choice(SUBJECTS), v=rng.choice(VERBS))
        sentiment = rng.choices(sentiments, weights)[0]
        pair = (opening, tail(rng, sentiment))
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    return pairs


def split_by_opening(rng, pairs):
    """Held-out rows use openings that never occur in the training rows."""
    openings = sorted({opening for opening, _ in pairs})
    rng.shuffle(openings)
    heldout = set(openings[: int(len(openings) * HELDOUT_OPENING_FRACTION)])
    train = [p for p in pairs if p[0] not in heldout]
    test = [p for p in pairs if p[0] in heldout]
    return train, test


def train_tokenizer(corpus_path, prefix=None, vocab_size=VOCAB_SIZE):
    """Byte-level BPE on `corpus_path`: `data/vocab.json` and `merges.txt` (`<prefix>-vocab.json`, ... with a prefix)."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train([str(corpus_path)], vocab_size=vocab_size, min_frequency=2,
                    special_tokens=[END_OF_TEXT])
    tokenizer.save_model(str(DATA_DIR), prefix)
    move_end_of_text_last(DATA_DIR / (f"{prefix}-vocab.json" if prefix else "vocab.json"))


def move_end_of_text_last(vocab_path):
    """Give `<|endoftext|>` the last id, as GPT-2's own vocabulary does (50256).

    keras-hub's GPT2Tokenizer pads with id 0; were 0 the end token, padding
    would read as "stop", and `CausalLM.generate()` would stop before its first
    token. Merges name strings, not ids, so merges.txt is unchanged.
    """
    vocab = json.loads(vocab_path.read_text())
    if vocab[END_OF_TEXT] == len(vocab) - 1:
        return
    removed = vocab.pop(END_OF_TEXT)
    vocab = {token: index - (index > removed) for token, index in vocab.items()}
    vocab[END_OF_TEXT] = len(vocab)
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")))


def main():
    rng = random.Random(SEED)
    pairs = make_sentences(rng)
    train, heldout = split_by_opening(rng, pairs)
    DATA_DIR.mkdir(exist_ok=True)
    corpus_path = DATA_DIR / "corpus.txt"
    corpus_path.write_text("".join(f"{o} {t}\n" for o, t in pairs))
    for name, rows in [("train_data.csv", train), ("heldout_data.csv", heldout)]:
        pd.DataFrame(rows, columns=["input_text", "target"]).to_csv(DATA_DIR / name, index=False)
    train_tokenizer(corpus_path)
    vocab = json.loads((DATA_DIR / "vocab.json").read_text())
    print(f"{len(pairs)} sentences ({len(train)} train, {len(heldout)} held-out), "
          f"vocabulary {len(vocab)} tokens, written to {DATA_DIR}")


if __name__ == "__main__":
    main()
