"""sglang's native /generate API: request parsing and response bodies (pure)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .generation import VOCABULARY, Generation, generate
from .request_fields import (
    DONE,
    NATIVE_DEFAULT_MAX_NEW_TOKENS,
    Body,
    Pace,
    RequestError,
    check_context,
    parse_sampling,
)

TOKEN_ID_OFFSET = 1000


def token_id(token: str) -> int:
    """A stable token id for a stand-in token."""
    word = token.strip()
    return TOKEN_ID_OFFSET + VOCABULARY.index(word) if word in VOCABULARY else 0


def _texts(body: Body) -> tuple[list[str], bool]:
    text = body.get("text")
    if text is None and body.get("input_ids") is not None:
        ids = body["input_ids"]
        if isinstance(ids, list) and ids and all(isinstance(item, list) for item in ids):
            return [" ".join(map(str, item)) for item in ids], True
        if isinstance(ids, list):
            return [" ".join(map(str, ids))], False
    if isinstance(text, str):
        return [text], False
    if isinstance(text, list) and text and all(isinstance(item, str) for item in text):
        return list(text), True
    raise RequestError("'text' must be a string or a list of strings (or give 'input_ids')")


def _finish_reason(generation: Generation) -> Body:
    if generation.finish_reason == "length":
        return {"type": "length", "length": len(generation.tokens)}
    return {"type": "stop", "matched": generation.matched_stop}


@dataclass(frozen=True)
class GenerateJob:
    """A parsed /generate request and one generation per input text."""

    generations: list[Generation]
    batched: bool
    stream: bool
    started: float

    @classmethod
    def from_body(cls, body: Body, context_length: int) -> GenerateJob:
        """Parse the request body and generate every text."""
        texts, batched = _texts(body)
        params: Any = body.get("sampling_params") or {}
        if not isinstance(params, dict):
            raise RequestError("'sampling_params' must be an object")
        sampling = parse_sampling(params, ("max_new_tokens",), NATIVE_DEFAULT_MAX_NEW_TOKENS)
        generations = []
        for text in texts:
            generation = generate(
                text, sampling.max_tokens, sampling.stop, sampling.temperature, sampling.seed, 0,
                ignore_eos=sampling.ignore_eos,
            )
            check_context(generation.prompt_tokens, sampling.max_tokens, context_length)
            generations.append(generation)
        return cls(generations, batched, bool(body.get("stream")), time.monotonic())

    def _item(self, generation: Generation, count: int, index: int, final: bool) -> Body:
        tokens = generation.tokens[:count]
        meta = {
            "id": uuid.uuid4().hex,
            "finish_reason": _finish_reason(generation) if final else None,
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": len(tokens),
            "cached_tokens": 0,
            "e2e_latency": round(time.monotonic() - self.started, 6),
        }
        if self.batched:
            meta["index"] = index
        return {
            "text": "".join(choice.token for choice in tokens),
            "output_ids": [token_id(choice.token) for choice in tokens],
            "meta_info": meta,
        }

    def response(self, pace: Pace) -> Body | list[Body]:
        """The whole /generate response: one object, or a list for batched input."""
        items = []
        for index, generation in enumerate(self.generations):
            pace(len(generation.tokens))
            items.append(self._item(generation, len(generation.tokens), index, final=True))
        return items if self.batched else items[0]

    def events(self, pace: Pace) -> Iterator[Body | str]:
        """Streamed /generate: cumulative text per event, as sglang sends it, then [DONE]."""
        for index, generation in enumerate(self.generations):
            for count in range(1, len(generation.tokens) + 1):
                pace(1)
                yield self._item(generation, count, index, final=False)
            yield self._item(generation, len(generation.tokens), index, final=True)
        yield DONE
