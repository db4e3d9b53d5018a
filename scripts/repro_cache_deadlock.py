"""The smallest reproduction of a multi-process deadlock in JAX's persistent
compilation cache (docs/scaling.md, "The compilation cache and several
processes"). Runs two processes of one jitted sum over a 2-device mesh, twice,
sharing a new cache directory:

    .venv/bin/python scripts/repro_cache_deadlock.py

Run 1 (cold cache) finishes. In run 2, process 0 loads the program from the
cache and process 1 compiles it (its cache key differs), the two executables'
fingerprints differ, and the collective never completes: the script reports
the hang after 30 s. jax/jaxlib 0.12.1 on CPU (gloo collectives).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile

CHILD = r"""
import sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
pid, port, cache = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_compilation_cache_dir", cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
mesh = Mesh(np.array(jax.devices()), ("d",))
x = jax.make_array_from_process_local_data(
    NamedSharding(mesh, P("d")), np.full((1, 4), pid + 1.0, np.float32), (2, 4))
step = jax.jit(lambda x: (x * 2).sum(0), out_shardings=NamedSharding(mesh, P()))
compiled = step.lower(x).compile()
print(f"process {pid}: executable fingerprint {compiled._executable.xla_executable.fingerprint}",
      flush=True)
print(f"process {pid}: result {np.asarray(compiled(x).addressable_data(0))}", flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cache: str, timeout: float = 30.0) -> bool:
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(i), port, cache],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    finished = True
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            finished = False
        print(out.strip())
    return finished


def main() -> int:
    import jax

    print(f"jax {jax.__version__}")
    with tempfile.TemporaryDirectory() as cache:
        for attempt in (1, 2):
            ok = run(cache)
            print(f"run {attempt}: {'finished' if ok else 'HUNG (killed after 30 s)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
