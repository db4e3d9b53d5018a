"""The command line of `python -m lstm_jax.train`: its flags, process setup
(allocator, devices, `jax.distributed`, the compilation cache), the watchdog and
the exit codes. The training itself is `lstm_jax.train.train_and_evaluate`.

Exit codes: 0 finished; 2 a user error (one line on stderr; --verbose for the
traceback); 3 the loss became non-finite (the last good checkpoint is kept);
4 the run hung: no progress for train.watchdog_s seconds (every thread's stack
on stderr; the newest finished checkpoint is kept); 128+N stopped by signal N
after saving (SIGINT 130, SIGTERM 143): the run is not finished, rerun the same
command to resume.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from lstm_jax import cli, host, parallel, train, watchdog
from lstm_jax import config as config_lib
from lstm_jax import workdir as workdir_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
# Multi-process runs (lstm_jax/parallel.py). Under SLURM's srun or on a Cloud TPU
# VM, JAX finds the other processes itself and none of these is needed.
flags.DEFINE_enum(
    "distributed",
    "auto",
    list(parallel.DISTRIBUTED_MODES),
    "auto: join a multi-process run when the flags below are given or JAX detects a "
    "cluster (SLURM, Open MPI, TPU VM); on: always call jax.distributed.initialize; off: never.",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Number of processes in the run.")
flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes-1.")
flags.DEFINE_bool(
    "retain_freed_memory",
    True,
    "Keep freed host memory in the process between train steps (glibc mallopt, "
    "lstm_jax/host.py), so each step's fresh buffers cause no page faults. "
    "--noretain_freed_memory: glibc's defaults.",
)

# Exit codes (module docstring; README "Exit codes").
EXIT_NON_FINITE = 3


def main(argv: list[str]) -> None:
    del argv
    startup = host.seconds_since_process_start()
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    config = FLAGS.config
    notes = []
    if FLAGS.retain_freed_memory and host.retain_freed_memory():  # before JAX starts threads
        notes.append("glibc keeps freed memory between steps (--noretain_freed_memory: off)")
    full = config_lib.complete(config)
    parallel.use_cpu_devices(full.parallel.cpu_devices)
    parallel.initialize(
        FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    _, cache_note = host.enable_compile_cache(jax.process_count())  # after initialize
    notes.insert(0, cache_note)
    config_file = config_flags.get_config_filename(FLAGS["config"])
    workdir = FLAGS.workdir or f"workdirs/{pathlib.Path(config_file.split(':')[0]).stem}"
    if jax.process_index() == 0:
        print(
            f"lstm_jax.train: {jax.default_backend()}, {host.versions()}; " + "; ".join(notes),
            flush=True,
        )
    newest = lambda: workdir_lib.newest_checkpoint(pathlib.Path(workdir) / "checkpoints")
    try:
        t = full.train
        with watchdog.Watchdog(t.watchdog_s, newest, grace_s=t.watchdog_grace_s) as dog:
            summary = train.train_and_evaluate(
                config, workdir, startup_seconds=startup, heartbeat=dog.beat
            )
    except train.NonFiniteLossError as e:
        cli.fail(str(e), EXIT_NON_FINITE)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2))
    if summary.get("signal"):
        # Saved, but not finished: exit as a shell reports a process killed by
        # that signal (SIGTERM 143, SIGINT 130), so `train && sample`, a SLURM
        # dependency or a Kubernetes Job does not take a preempted run as done.
        sys.exit(128 + summary["signal"])


def run() -> None:
    cli.run(main, required=["config"], program="lstm_jax.train")


if __name__ == "__main__":
    run()
