"""ServeSpec: what the user asked to serve, validated by the launcher's rules.

The sglang arguments stay a list of strings from the command line to the rank's argv. The rules
(reserved and secret flags, parallel sizes, placement) live in launch_plan, which the script
runs too; this module wraps them in the pydantic model the API passes around.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SkipValidation, model_validator

from slurm_sglang.launch_plan import (
    NODES_MAX,
    PORT_MAX,
    PORT_MIN,
    Parallelism,
    SglangArgv,
    SpecError,
    check_argv,
    check_parallelism,
    nodes_needed,
    parallelism_of,
    read_argv,
)
from slurm_sglang.sglang_flags import parse_parallelism

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
    """A validated serve request: sglang's argv read once (launch_plan.read_argv) plus the
    launcher's own settings. Give sglang_args (a list, or an SglangArgv already read)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    argv: SkipValidation[SglangArgv] = Field(exclude=True, repr=False)
    parallelism: SkipValidation[Parallelism]
    port: int = Field(default=30000, ge=PORT_MIN, le=PORT_MAX)
    dist_port: int = Field(default=0, ge=0, le=PORT_MAX)
    health_timeout: int = Field(default=1800, ge=1)
    image: str = ""
    nodes: int | None = Field(default=None, ge=1, le=NODES_MAX)

    @model_validator(mode="before")
    @classmethod
    def _read(cls, data: Any) -> Any:
        """Read sglang_args once and apply launch_plan's rules to that one reading."""
        if isinstance(data, dict) and "sglang_args" in data:
            data = dict(data)
            given = data.pop("sglang_args")
            read = given if isinstance(given, SglangArgv) else read_argv(tuple(given))
            check_argv(read)
            data["argv"], data["parallelism"] = read, parallelism_of(read)
        return data

    @property
    def sglang_args(self) -> tuple[str, ...]:
        """sglang's arguments, old spellings rewritten for the target version."""
        return self.argv.argv

    @property
    def model_path(self) -> str:
        """The model path or hub id given with --model-path."""
        return self.argv.model_path


def build_spec(sglang_args: Sequence[str] | SglangArgv, **settings: object) -> ServeSpec:
    """Validate a serve request; raises SpecError with one line per problem. sglang_args is
    read for the newest known sglang unless given already read (read_argv for a version)."""
    from pydantic import ValidationError

    read = sglang_args if isinstance(sglang_args, SglangArgv) else read_argv(sglang_args)
    try:
        return ServeSpec.model_validate({"sglang_args": read, **settings})
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
