"""ServeSpec: what the user asked to serve, validated by the launcher's rules.

The sglang arguments stay a list of strings from the command line to the rank's argv. The rules
(reserved and secret flags, parallel sizes, placement) live in launch_plan, which the script
runs too; this module wraps them in the pydantic model the API passes around.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slurm_sglang.launch_plan import (
    NODES_MAX,
    PORT_MAX,
    PORT_MIN,
    Parallelism,
    SpecError,
    check_parallelism,
    model_path,
    nodes_needed,
    parse_parallelism,
    validate_argv,
)

__all__ = [
    "Parallelism",
    "ServeSpec",
    "SpecError",
    "build_spec",
    "check_parallelism",
    "nodes_needed",
    "parse_parallelism",
]


class ServeSpec(BaseModel):
    """A validated serve request: sglang arguments plus the launcher's own settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sglang_args: tuple[str, ...]
    port: int = Field(default=30000, ge=PORT_MIN, le=PORT_MAX)
    dist_port: int = Field(default=0, ge=0, le=PORT_MAX)
    health_timeout: int = Field(default=1800, ge=1)
    image: str = ""
    nodes: int | None = Field(default=None, ge=1, le=NODES_MAX)

    @field_validator("sglang_args")
    @classmethod
    def _args(cls, argv: tuple[str, ...]) -> tuple[str, ...]:
        validate_argv(argv)
        parse_parallelism(argv)
        return argv

    @property
    def model_path(self) -> str:
        """The model path or hub id given with --model-path."""
        return model_path(self.sglang_args)

    @property
    def parallelism(self) -> Parallelism:
        """Parallel sizes read from the sglang arguments."""
        return parse_parallelism(self.sglang_args)


def build_spec(sglang_args: Sequence[str], **settings: object) -> ServeSpec:
    """Validate a serve request; raises SpecError with one line per problem."""
    from pydantic import ValidationError

    try:
        return ServeSpec.model_validate({"sglang_args": tuple(sglang_args), **settings})
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"] if part != "sglang_args")
            message = str(error.get("ctx", {}).get("error", error["msg"]))
            prefix = f"--{field.replace('_', '-')}: " if field else ""
            lines.append(f"{prefix}{message}")
        raise SpecError("; ".join(lines)) from None
    except SpecError:
        raise
