"""Request parsing and response bodies of sglang's OpenAI-compatible and native APIs (pure)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .generation import Generation, TokenChoice, generate

Body = dict[str, Any]
Pace = Callable[[int], None]
DONE = "[DONE]"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
NATIVE_DEFAULT_MAX_NEW_TOKENS = 128


class RequestError(ValueError):
    """A request sglang would answer with 400 and an OpenAI-style error body."""


@dataclass(frozen=True)
class Sampling:
    """The sampling fields the stand-in honours."""

    max_tokens: int | None
    stop: list[str]
    temperature: float
    seed: int | None
    n: int


def error_body(message: str, status: int = 400) -> Body:
    """OpenAI-style error body as sglang returns it."""
    return {
        "object": "error",
        "message": message,
        "type": "BadRequestError",
        "param": None,
        "code": status,
    }


def _stop_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise RequestError("'stop' must be a string or a list of strings")


def _int_field(body: Body, name: str, default: int | None, minimum: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise RequestError(f"'{name}' must be an integer >= {minimum}, got {value!r}")
    return value


def parse_sampling(body: Body, max_tokens_names: tuple[str, ...], default: int | None) -> Sampling:
    """Read max tokens (under any of its names), stop, temperature, seed and n."""
    max_tokens = default
    for name in max_tokens_names:
        if body.get(name) is not None:
            max_tokens = _int_field(body, name, default, 0)
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise RequestError(f"'temperature' must be a number >= 0, got {temperature!r}")
    return Sampling(
        max_tokens=max_tokens,
        stop=_stop_list(body.get("stop")),
        temperature=float(temperature),
        seed=_int_field(body, "seed", None, 0),
        n=_int_field(body, "n", 1, 1) or 1,
    )


def check_context(prompt_tokens: int, max_tokens: int | None, context_length: int) -> None:
    """Refuse a request longer than the context, with sglang's arithmetic."""
    total = prompt_tokens + (max_tokens or 0)
    if total > context_length:
        raise RequestError(
            f"Requested token count exceeds the model's maximum context length of "
            f"{context_length} tokens. You requested a total of {total} tokens: "
            f"{prompt_tokens} tokens from the input messages and {max_tokens or 0} tokens "
            "for the completion. Please reduce the number of tokens in the input messages "
            "or the completion to fit within the limit."
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


def _usage(generations: list[Generation], prompt_tokens: int) -> Body:
    completion_tokens = sum(len(generation.tokens) for generation in generations)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": None,
    }


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
                )
                check_context(generation.prompt_tokens, sampling.max_tokens, context_length)
                generations.append(generation)
        options = body.get("stream_options") or {}
        return cls(
            model=model,
            prompts=prompts,
            generations=generations,
            logprobs=_int_field(body, "logprobs", None, 0),
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
            "usage": _usage(self.generations, self._prompt_tokens()),
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
            yield {**head, "choices": [], "usage": _usage(self.generations, self._prompt_tokens())}
        yield DONE


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
            )
            for sample in range(sampling.n)
        ]
        check_context(generations[0].prompt_tokens, sampling.max_tokens, context_length)
        top = None
        if body.get("logprobs"):
            top = _int_field(body, "top_logprobs", 0, 0)
        options = body.get("stream_options") or {}
        return cls(
            model=model,
            generations=generations,
            top_logprobs=top,
            stream=bool(body.get("stream")),
            include_usage=bool(options.get("include_usage")),
        )

    def _usage(self) -> Body:
        return _usage(self.generations, self.generations[0].prompt_tokens)

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
