"""Request fields shared by the generation APIs: sampling, errors, usage (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .generation import Generation

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
    ignore_eos: bool = False


def error_body(message: str, status: int = 400) -> Body:
    """OpenAI-style error body as sglang returns it."""
    return {
        "object": "error",
        "message": message,
        "type": "BadRequestError",
        "param": None,
        "code": status,
    }


def stop_list(value: Any) -> list[str]:
    """The `stop` field as a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise RequestError("'stop' must be a string or a list of strings")


def int_field(body: Body, name: str, default: int | None, minimum: int) -> int | None:
    """An optional integer field of at least `minimum`."""
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
            max_tokens = int_field(body, name, default, 0)
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise RequestError(f"'temperature' must be a number >= 0, got {temperature!r}")
    return Sampling(
        max_tokens=max_tokens,
        stop=stop_list(body.get("stop")),
        temperature=float(temperature),
        seed=int_field(body, "seed", None, 0),
        n=int_field(body, "n", 1, 1) or 1,
        ignore_eos=body.get("ignore_eos") is True,
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


def usage_body(generations: list[Generation], prompt_tokens: int) -> Body:
    """The OpenAI `usage` object for these generations."""
    completion_tokens = sum(len(generation.tokens) for generation in generations)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": None,
    }
