"""Deterministic text in place of a model: the same prompt and seed give the same tokens."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

VOCABULARY = (
    "the",
    "cluster",
    "node",
    "serves",
    "tokens",
    "across",
    "a",
    "stand-in",
    "model",
    "ready",
    "rank",
    "tensor",
    "parallel",
    "request",
    "answer",
    "quickly",
    "and",
    "with",
    "every",
    "gpu",
    "slurm",
    "job",
    "runs",
    "on",
    "fabric",
    "batch",
    "prompt",
    "stream",
    "of",
    "words",
    "kernel",
    "cache",
    "router",
    "replica",
    "health",
    "port",
    "head",
    "worker",
    "shard",
    "weights",
)
_TOKEN_PATTERN = re.compile(r"\s*\S+|\s+")
NATURAL_LENGTH_MIN = 6
NATURAL_LENGTH_SPREAD = 10
TOP_ALTERNATIVES = 5


def tokenize(text: str) -> list[str]:
    """Split text into word-like tokens that keep their leading space, as BPE tokens do."""
    return _TOKEN_PATTERN.findall(text)


def count_prompt_tokens(text: str) -> int:
    """Prompt length in tokens, counting a begin-of-sequence token as real tokenizers do."""
    return len(tokenize(text)) + 1


def _digest(*parts: object) -> int:
    material = "\x1f".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big")


@dataclass(frozen=True)
class TokenChoice:
    """One generated token with its log-probability and the most likely alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Generation:
    """The result of one generation: tokens, why it stopped, and the stop string it hit."""

    prompt_tokens: int
    tokens: tuple[TokenChoice, ...]
    finish_reason: str
    matched_stop: str | None

    @property
    def text(self) -> str:
        """The generated text (the concatenated tokens)."""
        return "".join(choice.token for choice in self.tokens)


def _token_at(seed: int, position: int) -> TokenChoice:
    ranked = sorted(VOCABULARY, key=lambda word: _digest(seed, position, word))
    top = tuple(
        (f" {word}", round(-0.05 - rank * 0.9 - (_digest(seed, position, rank) % 100) / 400, 4))
        for rank, word in enumerate(ranked[:TOP_ALTERNATIVES])
    )
    token, logprob = top[0]
    return TokenChoice(token=token, logprob=logprob, top=top)


def _cut_at_stop(
    tokens: list[TokenChoice], stop: list[str]
) -> tuple[list[TokenChoice], str | None]:
    text = "".join(choice.token for choice in tokens)
    hits = [(text.find(word), word) for word in stop if word and word in text]
    if not hits:
        return tokens, None
    cut, word = min(hits)
    kept: list[TokenChoice] = []
    consumed = 0
    for choice in tokens:
        if consumed >= cut:
            break
        piece = choice.token[: cut - consumed]
        kept.append(TokenChoice(token=piece, logprob=choice.logprob, top=choice.top))
        consumed += len(choice.token)
    return kept, word


def generate(
    prompt: str,
    max_tokens: int | None,
    stop: list[str],
    temperature: float,
    seed: int | None,
    sample_index: int,
    ignore_eos: bool = False,
) -> Generation:
    """Generate deterministic tokens for `prompt`; greedy (temperature 0) ignores seed and index.

    ignore_eos (sglang's sampling parameter, which benchmark clients set) generates exactly
    max_tokens, as a real model that never stops early would."""
    sampling = (seed, sample_index) if temperature > 0 else (None, 0)
    stream_seed = _digest(prompt, *sampling)
    natural_length = NATURAL_LENGTH_MIN + stream_seed % NATURAL_LENGTH_SPREAD
    if ignore_eos and max_tokens is not None:
        natural_length = max_tokens
    limit = natural_length if max_tokens is None else min(max_tokens, natural_length)
    tokens = [_token_at(stream_seed, position) for position in range(limit)]
    finish_reason = "stop" if max_tokens is None or natural_length <= max_tokens else "length"
    tokens, matched = _cut_at_stop(tokens, stop)
    if matched is not None:
        finish_reason = "stop"
    return Generation(
        prompt_tokens=count_prompt_tokens(prompt),
        tokens=tuple(tokens),
        finish_reason=finish_reason,
        matched_stop=matched,
    )
