"""Start P processes of one command on this machine, joined by jax.distributed.

    python launch/local.py -n 2 -- python -m lstm_jax.train --config configs/dnd.py \\
        --workdir workdirs/dnd_2proc

Each child gets `--coordinator_address=127.0.0.1:PORT --num_processes=P
--process_id=i` appended (PORT: a free loopback port unless --port is given),
so `lstm_jax.train` joins JAX's multi-process runtime exactly as it would on a
cluster. For tests and for a multi-socket or multi-GPU box:

  --cpu_devices_per_process K   each child sees K CPU devices (XLA_FLAGS), so
                                P processes x K devices run on one CPU
  --gpus_per_process K          child i sees GPUs i*K .. i*K+K-1 (CUDA_VISIBLE_DEVICES)

Process 0 writes to this terminal as usual (progress bar included); the other
processes' lines are prefixed with "[i] ". If any child fails, the others are
stopped and the launcher exits with that child's status; SIGINT/SIGTERM are
passed on to every child (lstm_jax.train then saves a checkpoint and exits);
--timeout bounds the whole run (exit status 124).

The children die with the launcher, however it ends: each asks the kernel
(Linux `prctl(PR_SET_PDEATHSIG)`) for SIGTERM when the launcher dies, even by
SIGKILL, so a killed launcher leaves no orphan holding a port or a GPU
(lstm_jax.train's watchdog bounds how long a stuck child takes to go).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time

GRACE_S = 20.0  # how long stopped children get to exit before SIGKILL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(index: int, args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.cpu_devices_per_process:
        flag = f"--xla_force_host_platform_device_count={args.cpu_devices_per_process}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    if args.gpus_per_process:
        k = args.gpus_per_process
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(index * k, index * k + k))
    return env


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGTERM when the launcher dies (Linux only;
    elsewhere a no-op). If the launcher is already gone, exit at once."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux/glibc: no parent-death signal
        return
    if os.getppid() != parent:  # the launcher died before prctl took effect
        os._exit(1)


def _prefix_lines(stream, prefix: str) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.buffer.write(prefix.encode() + line)
        sys.stdout.buffer.flush()


def _stop(procs: list[subprocess.Popen], sig: int = signal.SIGTERM) -> None:
    """Signal the children still running, then SIGKILL those that do not exit."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(args: argparse.Namespace) -> int:
    port = args.port or free_port()
    procs: list[subprocess.Popen] = []
    launcher = os.getpid()
    for i in range(args.num_processes):
        cmd = [
            *args.command,
            f"--coordinator_address=127.0.0.1:{port}",
            f"--num_processes={args.num_processes}",
            f"--process_id={i}",
        ]
        pipe = subprocess.PIPE if i else None  # process 0 keeps the terminal
        procs.append(
            subprocess.Popen(
                cmd,
                env=child_env(i, args),
                stdout=pipe,
                stderr=subprocess.STDOUT if i else None,
                start_new_session=True,  # a terminal Ctrl-C reaches us only; we pass it on
                preexec_fn=lambda: _die_with_parent(launcher),  # before any thread starts
            )
        )
    threads = [
        threading.Thread(target=_prefix_lines, args=(p.stdout, f"[{i}] "), daemon=True)
        for i, p in enumerate(procs)
        if i
    ]
    for t in threads:
        t.start()

    received: list[int] = []

    def forward(signum, frame):
        del frame
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, forward)

    deadline = time.monotonic() + args.timeout if args.timeout else None
    status = 0
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed and not received:
                i, status = failed[0]
                print(f"launch/local.py: process {i} exited with {status}; stopping the others")
                break
            if all(c is not None for c in codes):
                status = next((c for c in codes if c), 0)
                break
            if deadline is not None and time.monotonic() > deadline:
                print(f"launch/local.py: --timeout {args.timeout}s reached; stopping all")
                status = 124
                break
            time.sleep(0.1)
    finally:
        _stop(procs)
        for t in threads:
            t.join(timeout=5)
    return status


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="python launch/local.py -n P [options] -- COMMAND ...",
    )
    parser.add_argument("-n", "--num_processes", type=int, required=True, help="processes (P)")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("--cpu_devices_per_process", type=int, default=0, help="CPU devices each")
    parser.add_argument("--gpus_per_process", type=int, default=0, help="GPUs each")
    parser.add_argument("--timeout", type=float, default=0, help="seconds for all (0: none)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the command to run after --")
    if args.num_processes < 1:
        parser.error("--num_processes must be >= 1")
    return args


if __name__ == "__main__":
    sys.exit(launch(parse_args(sys.argv[1:])))
