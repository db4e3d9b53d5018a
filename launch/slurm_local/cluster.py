"""A one-node SLURM cluster on this machine, for running launch/slurm.sbatch for real.

    sudo python launch/slurm_local/cluster.py up   /tmp/slurm   # munged, slurmctld, slurmd
    export SLURM_CONF=/tmp/slurm/slurm.conf                     # what sbatch/srun/scancel read
    sbatch --wait ... launch/slurm.sbatch configs/dnd.py:smoke /tmp/wd
    sudo python launch/slurm_local/cluster.py down /tmp/slurm   # ends exactly those daemons

Needs root and Debian's packages (`apt-get install --no-install-recommends slurmctld slurmd
slurm-client munge`). Everything lives under the directory given: its own munge key and
socket, slurm.conf, state, spool, logs, and `pids` (one "name pid" line per daemon). The
daemons run in the foreground mode (-D / --foreground) as children detached into their own
session, so no systemd or init is needed (containers have neither); `down` signals only the
PIDs recorded in `pids`, never daemons by name.

The node is this machine under its short host name with CPUs=2, one partition "debug", no
cgroups (proctrack/linuxproc, task/none: containers rarely allow cgroup writes) and short
timeouts, so a broken node is reported in seconds rather than minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

DAEMONS = ("munged", "slurmctld", "slurmd")
CPUS = 2


def missing_requirements() -> str | None:
    """Why this machine cannot run the cluster (None: it can)."""
    if os.geteuid() != 0:
        return "not root: slurmd and munged must run as root"
    absent = [
        b
        for b in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scancel", "sinfo")
        if shutil.which(b, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None
    ]
    if absent:
        return (
            f"SLURM/munge binaries missing: {', '.join(absent)} (apt-get install -y "
            "--no-install-recommends slurmctld slurmd slurm-client munge)"
        )
    return None


def free_port() -> int:
    """A TCP port nothing listens on now (so two clusters, or a system SLURM, can coexist)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def slurm_conf(root: pathlib.Path, host: str, ctld_port: int, slurmd_port: int) -> str:
    # JAX's SLURM detector puts the coordinator on port 61440 + job id mod 4096, so two
    # clusters on one machine (parallel test workers) must not both number jobs from 1.
    first_job_id = 1 + secrets.randbelow(4096)
    return f"""\
ClusterName=lstmjax
FirstJobId={first_job_id}
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldTimeout=10
SlurmdTimeout=10
InactiveLimit=0
MinJobAge=300
KillWait=15
Waittime=0
MessageTimeout=10
NodeName={host} NodeAddr=127.0.0.1 CPUs={CPUS} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _env(root: pathlib.Path) -> dict[str, str]:
    return dict(os.environ, SLURM_CONF=str(root / "slurm.conf"))


def _spawn(root: pathlib.Path, name: str, cmd: list[str]) -> subprocess.Popen:
    log = open(root / "log" / f"{name}.stdout", "ab")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(root),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    with open(root / "pids", "a") as f:
        f.write(f"{name} {proc.pid}\n")
    return proc


def _wait_for(what: str, ok, root: pathlib.Path, procs: list, timeout: float = 30.0) -> None:
    """Poll `ok` until it holds; fail at once (with the logs) if a daemon has exited."""
    deadline = time.monotonic() + timeout
    problem = f"not ready after {timeout:.0f} s"
    while time.monotonic() < deadline:
        if ok():
            return
        dead = [f"{p.args[0]} exited with {p.returncode}" for p in procs if p.poll() is not None]
        if dead:
            problem = "; ".join(dead)
            break
        time.sleep(0.3)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in (root / "log").iterdir())
    raise RuntimeError(f"{what}: {problem}; logs:\n{logs}")


def up(root: pathlib.Path) -> None:
    """Start munged, slurmctld and slurmd under `root`; return once the node is idle."""
    why = missing_requirements()
    if why:
        raise RuntimeError(why)
    if (root / "pids").exists():
        raise RuntimeError(f"{root}/pids exists: run `down {root}` first")
    for d in ("munge", "state", "spool", "log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    os.chmod(key, 0o400)
    host = socket.gethostname().split(".")[0]
    (root / "slurm.conf").write_text(slurm_conf(root, host, free_port(), free_port()))

    sock = root / "munge" / "munge.socket"
    procs = [
        _spawn(
            root,
            "munged",
            [
                "/usr/sbin/munged",
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={sock}",
                f"--pid-file={root}/munge/munged.pid",
                f"--log-file={root}/log/munged.log",
                f"--seed-file={root}/munge/munged.seed",
            ],
        )
    ]
    _wait_for("munged", sock.exists, root, procs)
    conf = str(root / "slurm.conf")
    procs.append(_spawn(root, "slurmctld", ["/usr/sbin/slurmctld", "-D", "-i", "-f", conf]))
    procs.append(_spawn(root, "slurmd", ["/usr/sbin/slurmd", "-D", "-f", conf]))

    def node_idle() -> bool:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%t"], env=_env(root), capture_output=True, text=True
        )
        return out.returncode == 0 and out.stdout.strip() == "idle"

    _wait_for("the SLURM node (sinfo state idle)", node_idle, root, procs, timeout=60.0)


def job_processes(root: pathlib.Path) -> list[int]:
    """Every process that belongs to this cluster's jobs: slurmstepd, srun and
    the tasks, which all inherit SLURM_CONF=<root>/slurm.conf (from slurmd or
    from the submitting environment), except the daemons themselves."""
    marker = f"SLURM_CONF={root / 'slurm.conf'}".encode()
    daemons = set()
    if (root / "pids").exists():
        daemons = {int(line.split()[1]) for line in (root / "pids").read_text().splitlines()}
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in daemons | {os.getpid()}:
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if marker in environ:
            found.append(int(proc.name))
    return found


def cancel_jobs(root: pathlib.Path, timeout: float = 30.0, scancel: bool = True) -> list[int]:
    """scancel every job, then SIGKILL whatever of them still runs (a task stuck
    in a collective ignores SIGTERM) and wait until it is gone; returns the
    processes that had to be killed."""
    if scancel and (root / "slurm.conf").exists():
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(
                ["scancel", "--full", "--signal=KILL", "--user", str(os.getuid())],
                env=_env(root),
                capture_output=True,
                timeout=30,
            )
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while pids := job_processes(root):
        if time.monotonic() > deadline:
            raise RuntimeError(f"job processes {pids} of {root} outlived SIGKILL")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return sorted(set(killed))


def down(root: pathlib.Path, grace: float = 15.0) -> None:
    """Cancel every job and end its processes (`cancel_jobs`), then SIGTERM the
    daemons recorded in `root/pids` (slurmd first) and SIGKILL any left."""
    pids_file = root / "pids"
    if not pids_file.exists():
        return
    cancel_jobs(root)
    pids = [int(line.split()[1]) for line in pids_file.read_text().splitlines() if line.strip()]
    for pid in reversed(pids):  # slurmd, slurmctld, then munged (they authenticate through it)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own children
            except ChildProcessError:  # started by another process: poll for it
                done = 0 if _alive(pid) else pid
            if done:
                break
            time.sleep(0.2)
        else:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    pids_file.unlink()
    cancel_jobs(root, scancel=False)  # a step the daemons' exit orphaned


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("dir", type=pathlib.Path, help="state directory (created by up)")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    if args.action == "up":
        try:
            up(root)
        except RuntimeError as e:
            down(root)
            print(f"slurm_local: {e}", file=sys.stderr)
            return 1
        print(f"export SLURM_CONF={root}/slurm.conf")
    else:
        down(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
