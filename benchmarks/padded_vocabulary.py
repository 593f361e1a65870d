"""A copy of the shipped byte-level BPE vocabulary padded with unused tokens to N ids (`--vocab N`).

Shared by `ppo_throughput.py` (TensorFlow) and the TRL baselines (PyTorch), so it uses the standard
library only. The BPE merges are unchanged, so text tokenises exactly as before; the extra ids are
never produced by the tokenizer, but the models' embedding and output projection have N rows, so the
head and its log-softmax cost what they cost at a real vocabulary (GPT-2's is 50,257).
"""

import json
import pathlib
import tempfile

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def padded_vocabulary(size, vocabulary=DATA / "vocab.json"):
    """Path of a vocab.json with `size` ids: the shipped ones, then `<|unused_k|>` tokens.

    Example:
        path = padded_vocabulary(50257)   # then load it with the shipped data/merges.txt
    """
    tokens = json.loads(pathlib.Path(vocabulary).read_text())
    if size < len(tokens):
        raise SystemExit(f"--vocab {size} is smaller than the shipped vocabulary ({len(tokens)} ids)")
    padded = {**tokens, **{f"<|unused_{k}|>": len(tokens) + k for k in range(size - len(tokens))}}
    path = pathlib.Path(tempfile.mkdtemp(prefix="padded-vocab-")) / "vocab.json"
    path.write_text(json.dumps(padded))
    return path
