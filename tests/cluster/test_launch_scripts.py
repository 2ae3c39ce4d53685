"""cluster/launch/: the SLURM and SSH multi-machine launchers, run with stand-ins for `ssh`,
`srun`, `scontrol` and `accelerate` that record what each machine would run."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SSH_SCRIPT = ROOT / "cluster" / "launch" / "ssh.sh"
SLURM_SCRIPT = ROOT / "cluster" / "launch" / "slurm.sbatch"

# Records its working directory, a variable the fake ssh sets, and its arguments (one per line);
# fails when asked to for one machine rank.
FAKE_ACCELERATE = r"""#!/usr/bin/env bash
rank=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [[ "${args[$i]}" == --machine_rank ]] && rank=${args[$((i + 1))]}
done
{ echo "cwd=$PWD"; echo "host=${FAKE_HOST:-}"; printf '%s\n' "$@"; } > "$RECORD_DIR/rank-$rank.txt"
if [[ "$rank" == "${FAIL_RANK:-none}" ]]; then
    # Fail once the other machine is running, so that there is something to stop.
    for _ in $(seq 100); do [[ -f "$RECORD_DIR/running-1" ]] && break; sleep 0.1; done
    exit 3
fi
if [[ -n "${SLOW_OTHERS:-}" ]]; then
    sleep 30 & echo $! > "$RECORD_DIR/running-$rank"
    wait
fi
exit 0
"""

# `ssh [options] HOST COMMAND`: runs COMMAND here, as the remote shell would.
FAKE_SSH = r"""#!/usr/bin/env bash
while [[ "$1" == -* ]]; do [[ "$1" == -o ]] && shift; shift; done
host=$1; shift
FAKE_HOST=$host exec bash -c "$*"
"""

# `srun [options] COMMAND...`: one task per node, in sequence, with SLURM_NODEID set.
FAKE_SRUN = r"""#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do
    SLURM_NODEID=$node "$@" || exit $?
done
"""

FAKE_SCONTROL = r"""#!/usr/bin/env bash
[[ "$1 $2" == "show hostnames" ]] && printf 'node-a\nnode-b\nnode-c\n' | head -n "$SLURM_JOB_NUM_NODES"
"""


@pytest.fixture
def fake_bin(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"accelerate": FAKE_ACCELERATE, "ssh": FAKE_SSH, "srun": FAKE_SRUN,
                       "scontrol": FAKE_SCONTROL}.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    records = tmp_path / "records"
    records.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GPUS_PER", "MAIN_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", RECORD_DIR=str(records))
    return env, records


def launches(records: Path) -> dict[int, list[str]]:
    return {int(p.stem.split("-")[1]): p.read_text().splitlines() for p in sorted(records.glob("rank-*.txt"))}


def option(lines: list[str], name: str) -> str:
    return lines[lines.index(name) + 1]


@pytest.mark.parametrize("script", [SSH_SCRIPT, SLURM_SCRIPT])
def test_scripts_are_executable_bash(script):
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_ssh_launch_starts_one_machine_rank_per_host(fake_bin, tmp_path):
    env, records = fake_bin
    remote_dir = tmp_path / "remote checkout"
    remote_dir.mkdir()
    env.update(GPUS_PER_HOST="4", MAIN_PORT="29611", REMOTE_DIR=str(remote_dir), REMOTE_SETUP="true")
    out = subprocess.run(
        [str(SSH_SCRIPT), "gpu1,gpu2,gpu3", "--config", "edsr_x2", "--run-name", "a b's run", "--set", "x=1"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    runs = launches(records)
    assert sorted(runs) == [0, 1, 2]
    for rank, lines in runs.items():
        assert lines[0] == f"cwd={remote_dir}" and lines[1] == f"host=gpu{rank + 1}"
        assert lines[2:4] == ["launch", "--config_file"]
        assert option(lines, "--config_file") == "cluster/accelerate/multi_node.yaml"
        assert option(lines, "--num_machines") == "3" and option(lines, "--num_processes") == "12"
        assert option(lines, "--main_process_ip") == "gpu1" and option(lines, "--main_process_port") == "29611"
        # The training options arrive intact through the remote shell.
        script = lines.index("ntire/train.py")
        assert lines[script + 1:] == ["--config", "edsr_x2", "--run-name", "a b's run", "--set", "x=1"]


def test_ssh_launch_stops_the_others_when_one_host_fails(fake_bin, tmp_path):
    env, records = fake_bin
    env.update(REMOTE_DIR=str(tmp_path), REMOTE_SETUP="true", FAIL_RANK="0", SLOW_OTHERS="1")
    out = subprocess.run([str(SSH_SCRIPT), "h1,h2", "--config", "demo"], env=env, capture_output=True,
                         text=True, timeout=25)  # the other host would sleep 30 s
    assert out.returncode == 3
    assert "a host failed" in out.stderr
    assert sorted(launches(records)) == [0, 1]
    # The other machine's launch was stopped, not left running.
    sleeper = int((records / "running-1").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{sleeper}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{sleeper}").exists()


def test_slurm_launch_starts_one_machine_rank_per_node(fake_bin, tmp_path):
    env, records = fake_bin
    env.update(SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="node-[a-b]", SLURM_GPUS_ON_NODE="8",
               SLURM_SUBMIT_DIR=str(ROOT))
    out = subprocess.run([str(SLURM_SCRIPT), "--config", "edsr_x2", "--output-dir", "/shared/runs/x 2"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "2 node(s) x 8 process(es), rendezvous node-a:29500" in out.stdout
    runs = launches(records)
    assert sorted(runs) == [0, 1]
    for rank, lines in runs.items():
        assert lines[0] == f"cwd={ROOT}"
        assert option(lines, "--machine_rank") == str(rank)
        assert option(lines, "--num_machines") == "2" and option(lines, "--num_processes") == "16"
        assert option(lines, "--main_process_ip") == "node-a"
        script = lines.index("ntire/train.py")
        assert lines[script + 1:] == ["--config", "edsr_x2", "--output-dir", "/shared/runs/x 2"]


def test_slurm_launch_reads_gpus_per_node_and_refuses_outside_a_job(fake_bin):
    env, records = fake_bin
    env.update(SLURM_JOB_NUM_NODES="3", SLURM_JOB_NODELIST="node-[a-c]", SLURM_GPUS_PER_NODE="a100:4",
               SLURM_SUBMIT_DIR=str(ROOT), ACCELERATE_CONFIG="cluster/accelerate/deepspeed_zero2.yaml")
    out = subprocess.run([str(SLURM_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    runs = launches(records)
    assert sorted(runs) == [0, 1, 2]
    assert {option(r, "--num_processes") for r in runs.values()} == {"12"}
    assert {option(r, "--config_file") for r in runs.values()} == {"cluster/accelerate/deepspeed_zero2.yaml"}

    del env["SLURM_JOB_NUM_NODES"]
    out = subprocess.run([str(SLURM_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "sbatch" in out.stderr


def test_slurm_header_requests_one_task_per_node():
    header = [line for line in SLURM_SCRIPT.read_text().splitlines() if line.startswith("#SBATCH")]
    options = dict(shlex.split(line)[1].lstrip("-").split("=", 1) for line in header)
    assert options["ntasks-per-node"] == "1" and int(options["nodes"]) >= 2
    # sbatch reads directives only before the first command.
    lines = SLURM_SCRIPT.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(lines.index(h) < first_command for h in header)
