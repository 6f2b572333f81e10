"""Each runtime and fabric against the rules their tools' documentation sets.

The rendered script's functions run in bash with the node's world stubbed: a fake RDMA sysfs
tree (the only edit to the script is where RDMA_SYSFS points), commands recorded instead of
run. The options each command accepts are written down here, with the document they come from.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slurm_sglang.errors import UserInputError
from slurm_sglang.profile import ClusterProfile, load_profile
from slurm_sglang.render import PACKAGE_DIR, render_script

# pyxis adds these to srun (NVIDIA/pyxis wiki, "Usage", `srun --help`); nothing else of ours
# may reach the rank step's srun for runtime enroot.
PYXIS_OPTIONS = {
    "--container-image", "--container-mounts", "--container-workdir", "--container-name",
    "--container-save", "--container-mount-home", "--no-container-mount-home",
    "--container-remap-root", "--no-container-remap-root", "--container-entrypoint",
    "--no-container-entrypoint", "--container-writable", "--container-readonly",
    "--container-env",
}
# apptainer exec options we use (apptainer-exec(1), Apptainer 1.x): --nv binds the NVIDIA
# driver, --cleanenv drops the host's environment, --bind src[:dest[:opts]].
APPTAINER_EXEC_OPTIONS = {"--nv", "--cleanenv", "--bind", "-B", "--contain", "--env", "--pwd"}
# aws-ofi-nccl doc/efa-env-var.md: "Do not use" / "Do not set" / "Not needed anymore" /
# "leave it out" for current libfabric (>= 1.18) and plugin (>= 1.7).
EFA_FORBIDDEN = ("RDMAV_FORK_SAFE", "FI_EFA_USE_DEVICE_RDMA", "FI_EFA_FORK_SAFE",
                 "NCCL_BUFFSIZE", "FI_PROVIDER")


def _script(tmp_path: Path, runtime: str, fabric: str, **extra: object) -> Path:
    data: dict[str, object] = {"container": {"runtime": runtime}, "fabric": {"kind": fabric}}
    for key, value in extra.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value  # type: ignore[index]
    text = render_script(ClusterProfile.model_validate(data))
    text = text.replace("declare -rx RDMA_SYSFS=/sys/class/infiniband",
                        f"declare -rx RDMA_SYSFS={tmp_path}/sys")
    assert text.endswith('main "$@"\n')
    path = tmp_path / "functions.sh"
    path.write_text(text[: -len('main "$@"\n')])
    return path


def _bash(script: Path, body: str) -> subprocess.CompletedProcess[str]:
    program = (f"set +e; source {script}\nset +eu\n"
               f"NODE_NAME=n1 NODE_IFACE=eth1 NODE_IP=10.0.0.5\n{body}")
    return subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=False)


def _rdma(tmp_path: Path, name: str, driver: str, states: tuple[str, ...] = ()) -> None:
    device = tmp_path / "sys" / name
    (device / "device").mkdir(parents=True)
    (tmp_path / "drivers" / driver).mkdir(parents=True, exist_ok=True)
    (device / "device" / "driver").symlink_to(tmp_path / "drivers" / driver)
    for index, state in enumerate(states, start=1):
        (device / "ports" / str(index)).mkdir(parents=True)
        (device / "ports" / str(index) / "state").write_text(f"{state}\n")


@pytest.mark.parametrize(("devices", "expected"), [
    ([], "tcp"),
    ([("rdmap16s27", "efa", ("4: ACTIVE",))], "efa"),
    ([("mlx5_0", "mlx5_core", ("4: ACTIVE",))], "infiniband"),
    ([("mlx5_0", "mlx5_core", ("1: DOWN",))], "tcp"),
])
def test_auto_detects_the_fabric_from_the_node_devices(
        tmp_path: Path, devices: list[tuple[str, str, tuple[str, ...]]], expected: str) -> None:
    for name, driver, states in devices:
        _rdma(tmp_path, name, driver, states)
    script = _script(tmp_path, "none", "auto")
    result = _bash(script, "fabric_detect; echo; CONTAINER_ENV=(); fabric_setup; "
                   "echo \"$SLURM_SGLANG_FABRIC|${NCCL_NET:-}|${NCCL_IB_HCA:-}|$NCCL_IB_DISABLE\"")
    lines = result.stdout.splitlines()
    assert lines[0] == expected, result.stderr
    kind, net, hca, ib_disable = lines[1].split("|")
    assert kind == expected
    assert (net == "AWS Libfabric") == (expected == "efa")
    assert hca == ("=mlx5_0" if expected == "infiniband" else "")
    assert ib_disable == ("0" if expected == "infiniband" else "1" if expected == "tcp" else "")


def test_infiniband_lists_active_hcas_exactly_and_sets_no_gid_index(tmp_path: Path) -> None:
    _rdma(tmp_path, "mlx5_0", "mlx5_core", ("4: ACTIVE",))
    _rdma(tmp_path, "mlx5_1", "mlx5_core", ("1: DOWN", "4: ACTIVE"))
    _rdma(tmp_path, "mlx5_2", "mlx5_core", ("1: DOWN",))
    script = _script(tmp_path, "none", "infiniband")
    out = _bash(script, 'CONTAINER_ENV=(); fabric_setup; echo "$NCCL_IB_HCA|'
                '${NCCL_IB_GID_INDEX-unset}|$NCCL_SOCKET_IFNAME|$GLOO_SOCKET_IFNAME"')
    # NCCL env docs: NCCL_IB_HCA and NCCL_SOCKET_IFNAME take a leading = for exact names;
    # Gloo takes the plain name.
    assert out.stdout.strip() == "=mlx5_0,mlx5_1|unset|=eth1|eth1", out.stderr
    pinned = _script(tmp_path, "none", "infiniband", fabric__ib_gid_index=3)
    out = _bash(pinned, 'CONTAINER_ENV=(); fabric_setup; echo "$NCCL_IB_GID_INDEX"')
    assert out.stdout.strip() == "3"


def test_efa_follows_aws_ofi_nccl_guidance_and_reaches_nccl(tmp_path: Path) -> None:
    plugin = tmp_path / "ofi-nccl" / "lib"
    plugin.mkdir(parents=True)
    script = _script(tmp_path, "none", "efa", fabric__efa_plugin_path=f"{plugin}:/nonexistent")
    out = _bash(script, 'LD_LIBRARY_PATH=/img/lib; CONTAINER_ENV=(); fabric_setup; '
                'library_path_prepend; env; echo "ENV=${CONTAINER_ENV[*]}"')
    env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert env["NCCL_NET"] == "AWS Libfabric"
    assert env["NCCL_NET_PLUGIN"] == "ofi"
    assert env["LD_LIBRARY_PATH"] == f"{plugin}:/img/lib"
    assert "NCCL_NET" in env["ENV"].split()
    for name in EFA_FORBIDDEN:
        assert name not in env, name
    check = _bash(script, "fabric_check")
    assert check.returncode == 1 and "no EFA device" in check.stdout
    text = render_script(load_profile("aws-p5-efa"))
    assert "declare -rx EFA_PLUGIN_PATH=/opt/amazon/ofi-nccl/lib:/opt/amazon/efa/lib" in text
    assert load_profile("aws-p5-efa").preflight.nccl
    assert load_profile("aws-p5-efa").preflight.nccl_min_busbw_gbps > 15


def test_docker_gets_memlock_and_the_host_plugin_for_rdma(tmp_path: Path) -> None:
    plugin = tmp_path / "ofi"
    plugin.mkdir()
    script = _script(tmp_path, "docker", "efa", fabric__efa_plugin_path=str(plugin))
    stub = ('docker() { if [[ $1 == image ]]; then echo PATH=/usr/bin; '
            'echo LD_LIBRARY_PATH=/usr/local/cuda/lib64; '
            'else printf "%s\\n" "$@" >"$OUT"; fi; }\n')
    out = _bash(script, stub + f'OUT={tmp_path}/argv; CONTAINER_CLI=docker IMAGE_REF=img:1 '
                'SLURM_JOB_ID=7 '
                'JOB_UID=1000 SLURM_NODEID=0 RANK_LOG=/dev/null WORKSPACE=/w GPUS_MODE=none; '
                'SGLANG_ENTRY=(-m sglang.launch_server); RANK_MOUNTS=(); CONTAINER_ENV=(); '
                'fabric_setup; FABRIC_RDMA=1; rank_launch --x; wait')
    argv = (tmp_path / "argv").read_text().splitlines()
    assert out.returncode == 0, out.stderr
    assert argv[argv.index("--ulimit") + 1] == "memlock=-1:-1"
    assert f"{plugin}:{plugin}:ro" in argv
    assert f"LD_LIBRARY_PATH={plugin}:/usr/local/cuda/lib64" in argv


def test_apptainer_cleanenv_passes_every_variable_by_prefix(tmp_path: Path) -> None:
    script = _script(tmp_path, "apptainer", "tcp")
    out = _bash(script, 'CONTAINER_CLI=apptainer IMAGE=lmsysorg/sglang:v1; identify_image; '
                'CONTAINER_ENV=(); fabric_setup; export SECRET_HOST_VAR=1; RANK_MOUNTS=(/w /m); '
                'RANK_COMMAND=(); rank_command_prefix; printf "%s\\n" "${RANK_COMMAND[@]}"; '
                'env | grep ^APPTAINERENV_ | sort')
    lines = out.stdout.splitlines()
    command = lines[: lines.index("python3") + 1]
    assert command[:4] == ["apptainer", "exec", "--nv", "--cleanenv"]
    # apptainer-exec(1): docker:// for a registry image; a bare reference is made one.
    assert command[-2] == "docker://lmsysorg/sglang:v1"
    for word in command[2:-2]:
        assert not word.startswith("-") or word in APPTAINER_EXEC_OPTIONS, word
    env = lines[lines.index("python3") + 1:]
    assert "APPTAINERENV_NCCL_SOCKET_IFNAME==eth1" in env
    assert "APPTAINERENV_PYTHONNOUSERSITE=1" in env
    assert not any("SECRET_HOST_VAR" in line for line in env)


@pytest.mark.parametrize("runtime", ["apptainer", "enroot"])
def test_a_docker_tarball_is_refused_with_the_conversion(tmp_path: Path, runtime: str) -> None:
    script = _script(tmp_path, runtime, "tcp")
    # The plan refuses it before anything starts, in one line, as any bad flag.
    out = _bash(script, f"SUPPORT_DIR={PACKAGE_DIR}; plan_launch --image /s.d/sglang.tar.gz "
                "--model-path m; echo not reached")
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    expected = {"apptainer": "apptainer build /s.d/sglang.sif docker-archive:///s.d/sglang.tar.gz",
                "enroot": "enroot import -o /s.d/sglang.sqsh dockerd://"}
    assert expected[runtime] in out.stderr and "not reached" not in out.stdout


def test_enroot_step_takes_only_pyxis_options_and_mounts_what_ranks_read(tmp_path: Path) -> None:
    for name in ("ws", "model", "prof", "fsx"):
        (tmp_path / name).mkdir()
    script = _script(tmp_path, "enroot", "tcp", container__run_args=["--container-remap-root"])
    out = _bash(script, f'IMAGE=nvcr.io/nvidia/sglang:1; identify_image; SLURM_JOB_ID=9; '
                f'CONTAINER_MOUNT={tmp_path}/fsx WORKSPACE={tmp_path}/ws '
                f'TORCH_PROFILE_DIR={tmp_path}/prof MODEL_PATH={tmp_path}/model; STEP_OPTIONS=(); '
                'runtime_step_options; printf "%s\\n" "${STEP_OPTIONS[@]}"')
    options = out.stdout.splitlines()
    for option in options:
        assert option.split("=", 1)[0] in PYXIS_OPTIONS, option
    # pyxis: [USER@][REGISTRY#]IMAGE[:TAG]
    assert "--container-image=nvcr.io#nvidia/sglang:1" in options
    mounts = next(o for o in options if o.startswith("--container-mounts="))
    for name in ("ws", "model", "prof", "fsx"):
        assert f"{tmp_path}/{name}:{tmp_path}/{name}" in mounts


def test_enroot_removes_its_named_container_at_job_end(tmp_path: Path) -> None:
    script = _script(tmp_path, "enroot", "tcp")
    out = _bash(script, 'enroot() { if [[ $1 == list ]]; then printf "%s\\n" '
                'pyxis_9_slurm-sglang-9 pyxis_8_slurm-sglang-8 mine; '
                f'else echo "$*" >>{tmp_path}/removed; fi; }}; SLURM_JOB_ID=9; '
                'echo "outlive=$RUNTIME_CONTAINERS_OUTLIVE_STEP"; job_containers_remove')
    assert out.stdout.splitlines() == ["outlive=1"]
    removed = (tmp_path / "removed").read_text().splitlines()
    assert removed == ["remove -f -- pyxis_9_slurm-sglang-9"]


def test_process_runtimes_number_gpus_as_cuda_does(tmp_path: Path) -> None:
    script = _script(tmp_path, "none", "tcp")
    # gres.shtml: with device cgroups SLURM_STEP_GPUS holds global ids (2,3) while the step's
    # CUDA_VISIBLE_DEVICES numbers the granted GPUs from 0.
    out = _bash(script, "NODE_GPUS=2,3; export CUDA_VISIBLE_DEVICES=0,1; "
                "SLURM_CUDA_VISIBLE_DEVICES=0,1; cuda_devices 3; echo; cuda_devices 2,3")
    assert out.stdout.splitlines() == ["1", "0,1"]


# A node of 4 GPUs shared with another job: SLURM granted global ids 2,3; with device cgroups
# the step's CUDA_VISIBLE_DEVICES is 0,1 and nvidia-smi in the step lists only those two.
SHARED_NODE = ("NODE_GPUS=2,3; export CUDA_VISIBLE_DEVICES=0,1; GPUS_MODE={mode}; "
               "nvidia-smi() {{ [[ $* == '--query-gpu=index,uuid --format=csv,noheader' ]] "
               "&& printf '0, GPU-aaa\\n1, GPU-bbb\\n'; }}; ")
DOCKER_RANK = ('docker() {{ printf "%s\\n" "$@" >"{out}"; }}; CONTAINER_CLI=docker IMAGE_REF=i '
               "SLURM_JOB_ID=7 JOB_UID=1000 SLURM_NODEID=0 RANK_LOG=/dev/null WORKSPACE=/w; "
               "SGLANG_ENTRY=(-m sglang.launch_server); RANK_MOUNTS=(); CONTAINER_ENV=(); "
               "FABRIC_DEVICES=(); RANK_GPUS={gpus} rank_launch --x; wait")


@pytest.mark.parametrize(("mode", "gpus", "expected"), [
    # docker run --gpus '"device=UUID,UUID"' (docker run reference, "Access an NVIDIA GPU").
    ("docker", "2,3", ["--gpus", '"device=GPU-aaa,GPU-bbb"']),
    ("docker", "3", ["--gpus", '"device=GPU-bbb"']),
    # CDI names (NVIDIA Container Toolkit, "Support for Container Device Interface").
    ("cdi", "3", ["--device", "nvidia.com/gpu=GPU-bbb"]),
    ("env", "2,3", ["--env", "CUDA_VISIBLE_DEVICES", "--env", "CUDA_DEVICE_ORDER"]),
])
def test_docker_gets_the_granted_gpus_by_uuid_on_a_shared_node(
        tmp_path: Path, mode: str, gpus: str, expected: list[str]) -> None:
    script = _script(tmp_path, "docker", "tcp")
    out = _bash(script, SHARED_NODE.format(mode=mode)
                + DOCKER_RANK.format(out=tmp_path / "argv", gpus=gpus)
                + '; echo "$CUDA_VISIBLE_DEVICES|$CUDA_DEVICE_ORDER"')
    assert out.returncode == 0, out.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    at = argv.index(expected[0])
    assert argv[at: at + len(expected)] == expected, argv
    assert not any(word.startswith("nvidia.com/gpu=") and "GPU-" not in word for word in argv)
    if mode == "env":
        assert out.stdout.splitlines()[-1] == "GPU-aaa,GPU-bbb|PCI_BUS_ID"


def test_docker_falls_back_to_slurm_ids_without_nvidia_smi_and_says_so(tmp_path: Path) -> None:
    script = _script(tmp_path, "docker", "tcp")
    # nvidia-smi that lists nothing (the sandbox's pretend GPUs have no driver behind them).
    out = _bash(script, "NODE_GPUS=2,3; export CUDA_VISIBLE_DEVICES=2,3; GPUS_MODE=docker; "
                "nvidia-smi() { return 9; }; "
                + DOCKER_RANK.format(out=tmp_path / "argv", gpus="3"))
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[argv.index("--gpus") + 1] == '"device=3"'
    assert "no GPU UUIDs from nvidia-smi on n1" in out.stderr


def test_process_runtime_rank_sees_the_step_ordinals_in_pci_order(tmp_path: Path) -> None:
    script = _script(tmp_path, "none", "tcp")
    out = _bash(script, SHARED_NODE.format(mode="env") + "RANK_LOG=/dev/null WORKSPACE=/; "
                "CONTAINER_ENV=(); FABRIC_DEVICES=(); SGLANG_ENTRY=(-c 'import os; "
                "print(os.environ[\"CUDA_VISIBLE_DEVICES\"], os.environ[\"CUDA_DEVICE_ORDER\"])'); "
                "RANK_LOG=" + str(tmp_path / "rank.log") + " RANK_GPUS=3 rank_launch; wait")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "rank.log").read_text().split() == ["1", "PCI_BUS_ID"]


@pytest.mark.parametrize(("runtime", "key"), [
    ("enroot", "container.run_args: --ulimit"),
    ("apptainer", "container.run_args: --ulimit"),
    ("none", "container.run_args"),
])
def test_options_written_for_docker_are_refused_for_other_runtimes(
        tmp_path: Path, runtime: str, key: str) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(f"extends: aws-p5-efa\ncontainer:\n  runtime: {runtime}\n"
                    "  gpus: docker\n")
    with pytest.raises(UserInputError, match=key):
        load_profile(str(site))
    cli = subprocess.run([sys.executable, "-m", "slurm_sglang", "render", "--cluster",
                          str(site)], capture_output=True, text=True, check=False,
                         cwd=Path(__file__).resolve().parents[2])
    assert cli.returncode == 2
    assert key in cli.stderr
