"""sglang's OpenAI-compatible /v1/chat/completions: request parsing and response bodies (pure)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .generation import Generation, TokenChoice, generate
from .request_fields import (
    DONE,
    Body,
    Pace,
    RequestError,
    check_context,
    int_field,
    parse_sampling,
    usage_body,
)


def _chat_logprobs(tokens: tuple[TokenChoice, ...], top: int) -> Body:
    def entry(token: str, logprob: float) -> Body:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {
                **entry(choice.token, choice.logprob),
                "top_logprobs": [entry(token, logprob) for token, logprob in choice.top[:top]],
            }
            for choice in tokens
        ]
    }


def render_chat(messages: Any) -> str:
    """Flatten chat messages into one prompt, as a chat template would."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list")
    lines = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError("every message needs a 'role'")
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        lines.append(f"<|{message['role']}|>\n{content or ''}")
    return "\n".join([*lines, "<|assistant|>\n"])


@dataclass(frozen=True)
class ChatJob:
    """A parsed /v1/chat/completions request and its generations, one per sample."""

    model: str
    generations: list[Generation]
    top_logprobs: int | None
    stream: bool
    include_usage: bool

    @classmethod
    def from_body(cls, body: Body, model: str, context_length: int) -> ChatJob:
        """Parse the request body and generate every choice."""
        prompt = render_chat(body.get("messages"))
        sampling = parse_sampling(body, ("max_tokens", "max_completion_tokens"), None)
        generations = [
            generate(
                prompt,
                sampling.max_tokens,
                sampling.stop,
                sampling.temperature,
                sampling.seed,
                sample,
                ignore_eos=sampling.ignore_eos,
            )
            for sample in range(sampling.n)
        ]
        check_context(generations[0].prompt_tokens, sampling.max_tokens, context_length)
        top = None
        if body.get("logprobs"):
            top = int_field(body, "top_logprobs", 0, 0)
        options = body.get("stream_options") or {}
        return cls(
            model=model,
            generations=generations,
            top_logprobs=top,
            stream=bool(body.get("stream")),
            include_usage=bool(options.get("include_usage")),
        )

    def _usage(self) -> Body:
        return usage_body(self.generations, self.generations[0].prompt_tokens)

    def response(self, pace: Pace) -> Body:
        """The whole /v1/chat/completions response (after pacing every token)."""
        choices = []
        for index, generation in enumerate(self.generations):
            pace(len(generation.tokens))
            logprobs = None
            if self.top_logprobs is not None:
                logprobs = _chat_logprobs(generation.tokens, self.top_logprobs)
            message = {
                "role": "assistant",
                "content": generation.text.lstrip(),
                "reasoning_content": None,
                "tool_calls": None,
            }
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": generation.finish_reason,
                    "matched_stop": generation.matched_stop,
                }
            )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            "usage": self._usage(),
        }

    def events(self, pace: Pace) -> Iterator[Body | str]:
        """Server-sent events of a streamed chat completion, ending with [DONE]."""
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
        }
        for index, generation in enumerate(self.generations):
            yield {
                **head,
                "choices": [
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
            for position, choice in enumerate(generation.tokens):
                pace(1)
                logprobs = None
                if self.top_logprobs is not None:
                    logprobs = _chat_logprobs((choice,), self.top_logprobs)
                text = choice.token.lstrip() if position == 0 else choice.token
                yield {
                    **head,
                    "choices": [
                        {
                            "index": index,
                            "delta": {"content": text},
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
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": generation.finish_reason,
                        "matched_stop": generation.matched_stop,
                    }
                ],
            }
        if self.include_usage:
            yield {**head, "choices": [], "usage": self._usage()}
        yield DONE
