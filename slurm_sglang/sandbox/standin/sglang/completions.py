"""sglang's OpenAI-compatible /v1/completions: request parsing and response bodies (pure)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .generation import Generation, TokenChoice, generate
from .request_fields import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    DONE,
    Body,
    Pace,
    RequestError,
    check_context,
    int_field,
    parse_sampling,
    usage_body,
)


def _prompts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return list(value)
    if isinstance(value, list) and value and all(isinstance(item, int) for item in value):
        return [" ".join(str(item) for item in value)]
    if isinstance(value, list) and value and all(isinstance(item, list) for item in value):
        return [" ".join(str(token) for token in item) for item in value]
    raise RequestError("'prompt' must be a string, a list of strings or token ids")


def _completion_logprobs(tokens: tuple[TokenChoice, ...], top: int, offset: int) -> Body:
    offsets = []
    for choice in tokens:
        offsets.append(offset)
        offset += len(choice.token)
    return {
        "tokens": [choice.token for choice in tokens],
        "token_logprobs": [choice.logprob for choice in tokens],
        "top_logprobs": [dict(choice.top[:top]) for choice in tokens],
        "text_offset": offsets,
    }


@dataclass(frozen=True)
class CompletionJob:
    """A parsed /v1/completions request and its generations, one per (prompt, sample)."""

    model: str
    prompts: list[str]
    generations: list[Generation]
    logprobs: int | None
    echo: bool
    stream: bool
    include_usage: bool

    @classmethod
    def from_body(cls, body: Body, model: str, context_length: int) -> CompletionJob:
        """Parse the request body and generate every choice."""
        prompts = _prompts(body.get("prompt"))
        sampling = parse_sampling(body, ("max_tokens",), COMPLETIONS_DEFAULT_MAX_TOKENS)
        generations = []
        for prompt in prompts:
            for sample in range(sampling.n):
                generation = generate(
                    prompt,
                    sampling.max_tokens,
                    sampling.stop,
                    sampling.temperature,
                    sampling.seed,
                    sample,
                    ignore_eos=sampling.ignore_eos,
                )
                check_context(generation.prompt_tokens, sampling.max_tokens, context_length)
                generations.append(generation)
        options = body.get("stream_options") or {}
        return cls(
            model=model,
            prompts=prompts,
            generations=generations,
            logprobs=int_field(body, "logprobs", None, 0),
            echo=bool(body.get("echo")),
            stream=bool(body.get("stream")),
            include_usage=bool(options.get("include_usage")),
        )

    def _prompt_for(self, index: int) -> str:
        return self.prompts[index * len(self.prompts) // len(self.generations)]

    def _prompt_tokens(self) -> int:
        samples = len(self.generations) // len(self.prompts)
        return sum(g.prompt_tokens for g in self.generations[::samples])

    def response(self, pace: Pace) -> Body:
        """The whole /v1/completions response (after pacing every token)."""
        choices = []
        for index, generation in enumerate(self.generations):
            pace(len(generation.tokens))
            prefix = self._prompt_for(index) if self.echo else ""
            logprobs = None
            if self.logprobs is not None:
                logprobs = _completion_logprobs(generation.tokens, self.logprobs, len(prefix))
            choices.append(
                {
                    "index": index,
                    "text": prefix + generation.text,
                    "logprobs": logprobs,
                    "finish_reason": generation.finish_reason,
                    "matched_stop": generation.matched_stop,
                }
            )
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            "usage": usage_body(self.generations, self._prompt_tokens()),
        }

    def events(self, pace: Pace) -> Iterator[Body | str]:
        """Server-sent events of a streamed completion, ending with [DONE]."""
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
        }
        for index, generation in enumerate(self.generations):
            if self.echo:
                yield {
                    **head,
                    "choices": [
                        {
                            "index": index,
                            "text": self._prompt_for(index),
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            for choice in generation.tokens:
                pace(1)
                logprobs = None
                if self.logprobs is not None:
                    logprobs = _completion_logprobs((choice,), self.logprobs, 0)
                yield {
                    **head,
                    "choices": [
                        {
                            "index": index,
                            "text": choice.token,
                            "logprobs": logprobs,
                            "finish_reason": None,
                        }
                    ],
                }
            yield {
                **head,
                "choices": [
                    {
                        "index": index,
                        "text": "",
                        "logprobs": None,
                        "finish_reason": generation.finish_reason,
                        "matched_stop": generation.matched_stop,
                    }
                ],
            }
        if self.include_usage:
            usage = usage_body(self.generations, self._prompt_tokens())
            yield {**head, "choices": [], "usage": usage}
        yield DONE
