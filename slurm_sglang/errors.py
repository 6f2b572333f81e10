"""One error family: ``SlurmSglangError`` and its four kinds, each with one exit code.

| kind | class | exit code |
| --- | --- | --- |
| the user's input (a flag, a profile, a job id) | ``UserInputError`` | 2 |
| the cluster (SLURM refused, or did not answer) | ``ClusterError`` | 3 |
| the way to the cluster (SSH, a command, a file) | ``TransportError`` | 4 |
| the work itself (a job failed or is not ready, an image save, a sandbox step) | ``JobError`` | 1 |

The base and the user-input kind are defined in launch_plan, which the script also runs outside
the package (stdlib only), so its rules raise the same classes everywhere; this module adds the
other kinds. The CLI prints any of them as one line and exits with its code.
"""

from slurm_sglang.launch_plan import PlanError, SlurmSglangError, SpecError, UserInputError

__all__ = [
    "EXIT_CODES",
    "ClusterError",
    "JobError",
    "PlanError",
    "SlurmSglangError",
    "SpecError",
    "TransportError",
    "UserInputError",
]


class ClusterError(SlurmSglangError):
    """SLURM refused a request or did not answer (squeue, sacct, sbatch failing)."""

    exit_code = 3
    kind = "cluster"


class TransportError(SlurmSglangError):
    """The way to the cluster failed: SSH, a command that could not run, a file not reached."""

    exit_code = 4
    kind = "transport"


class JobError(SlurmSglangError):
    """The work asked for failed: a job (failed, not ready, not ended when cancelled), an
    image save, a sandbox step."""

    exit_code = 1
    kind = "job"


# The exit status of each kind, for documentation and scripts that test $?.
EXIT_CODES = {cls.kind: cls.exit_code for cls in (UserInputError, ClusterError, TransportError,
                                                   JobError)}
