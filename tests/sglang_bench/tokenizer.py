"""A tiny word-level tokenizer, built offline, that sglang's benchmark client can load.

bench_serving loads `AutoTokenizer.from_pretrained(--tokenizer)`; nodes and this machine have no
hub access, so the tests build one into a directory: the stand-in's own vocabulary (so its
answers retokenize to the count it streamed) plus filler words that random-ids samples from.

Usage: python tests/sglang_bench/tokenizer.py DIR   (with a python that has `transformers`)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

GENERATION = (Path(__file__).resolve().parents[2] / "slurm_sglang" / "sandbox" / "standin" /
              "sglang" / "generation.py")


def _standin_vocabulary() -> tuple[str, ...]:
    # Loaded by path: in this python `sglang` is the real package, not the stand-in.
    spec = importlib.util.spec_from_file_location("standin_generation", GENERATION)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return tuple(module.VOCABULARY)

FILLER_WORDS = 2000


def build(directory: Path) -> Path:
    """Write tokenizer.json and tokenizer_config.json into directory; returns it."""
    words = ["[UNK]", *_standin_vocabulary(), *(f"w{i}" for i in range(FILLER_WORDS))]
    model = models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="[UNK]")
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(directory))
    return directory


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
