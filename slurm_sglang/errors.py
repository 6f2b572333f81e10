"""The one error family the CLI turns into a one-line message and exit code 2.

Defined in launch_plan, which the script also runs outside the package, so its rules raise the
same class everywhere.
"""

from slurm_sglang.launch_plan import UserInputError

__all__ = ["UserInputError"]
