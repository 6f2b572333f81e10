"""Commands in a running job's image on its head node, inside the job's own allocation.

`srun --overlap --jobid J --nodelist HEAD` adds a step to the job's allocation (no new
allocation, no GPUs asked for), and the command runs there the way the profile's runtime
runs the job's ranks: in a docker/podman container of the job's image on the host network,
under pyxis (--container-image) for enroot, `apptainer exec` for apptainer, or after the
profile's activate lines for none. The rendered script keeps the ranks' own runtime code; this
module is the one place in Python that knows how each runtime starts a command.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from slurm_sglang.profile import ContainerSettings

# The driver's first line names the image it runs ("slurm-sglang: job J: N node(s) [...],
# profile P, image REF[, yours: ...]", templates' driver).
_IMAGE_LINE = re.compile(r"(?:^|: )job \S+: \d+ node\(s\) \[[^\]]*\], profile \S+, "
                         r"image ([^,\s]+)", re.M)


@dataclass(frozen=True)
class JobPlace:
    """Where and how a job runs: its id, head node, image and the profile's container."""

    job_id: str
    head: str
    image: str
    container: ContainerSettings
    uid: str = ""

    @property
    def python(self) -> str:
        """The python with sglang: the image's python3, or the profile's after activate."""
        return self.container.python if self.container.runtime == "none" else "python3"


def image_from_driver_log(text: str) -> str:
    """The image reference the job's driver said it runs (empty when the line is missing)."""
    match = _IMAGE_LINE.search(text)
    return match.group(1) if match else ""


def step_argv(job_id: str, node: str, options: Sequence[str] = ()) -> list[str]:
    """srun adding one task to the job's allocation on node, sharing its resources."""
    return ["srun", "--overlap", f"--jobid={job_id}", f"--nodelist={node}", "--nodes=1",
            "--ntasks=1", "--export=ALL", "--job-name=slurm-sglang-bench", "--quiet",
            *options]


def _bind(mount: str) -> str:
    return mount if ":" in mount else f"{mount}:{mount}"


def in_image_argv(place: JobPlace, command: Sequence[str], *, mounts: Sequence[str] = (),
                  env_names: Sequence[str] = (), workdir: str = "") -> list[str]:
    """The argv that runs command in the job's image on its head node.

    mounts (SRC[:DST[:OPTIONS]]) join the profile's; env_names pass from the step's
    environment into the command by name, so that their values never reach a command line.
    """
    container = place.container
    binds = [_bind(mount) for mount in (*mounts, *container.mounts)]
    runtime = container.runtime
    if runtime in ("docker", "podman"):
        run = [runtime, "run", "--rm", "--net=host", "--label",
               f"slurm-sglang.job={place.job_id}", "--label", "slurm-sglang.role=bench"]
        if place.uid:
            # The job's sweep of stale containers (a bench cut off mid-run) goes by this label.
            run += ["--label", f"slurm-sglang.uid={place.uid}"]
        seen: set[str] = set()
        for bind in binds:
            destination = bind.split(":")[1]
            if destination not in seen:  # podman refuses a destination twice
                seen.add(destination)
                run += ["-v", bind]
        for name in env_names:
            run += ["--env", name]
        if workdir:
            run += ["--workdir", workdir]
        return [*step_argv(place.job_id, place.head), *run, place.image, *command]
    if runtime == "enroot":
        options = [f"--container-image={place.image}"]
        if binds:
            options.append("--container-mounts=" + ",".join(binds))
        if workdir:
            options.append(f"--container-workdir={workdir}")
        # pyxis passes the step's environment into the container: env_names need nothing.
        return [*step_argv(place.job_id, place.head, options), *command]
    if runtime == "apptainer":
        run = ["apptainer", "exec"]
        if binds:
            run += ["--bind", ",".join(binds)]
        if workdir:
            run += ["--pwd", workdir]
        return [*step_argv(place.job_id, place.head), *run, place.image, *command]
    # none: sglang is installed on the nodes, usable after the profile's activate lines.
    script = "\n".join([*container.activate, 'exec "$@"'])
    return [*step_argv(place.job_id, place.head), "bash", "-c", script, "bash", *command]


def image_id_argv(place: JobPlace) -> list[str] | None:
    """The argv that prints the image's ID on the head node (docker/podman; None otherwise)."""
    if place.container.runtime not in ("docker", "podman"):
        return None
    return [*step_argv(place.job_id, place.head), place.container.runtime, "image", "inspect",
            "--format", "{{.Id}}", place.image]
