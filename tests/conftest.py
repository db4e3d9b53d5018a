import os
import pathlib
import subprocess

import pytest

from lstm_jax import host

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fast_tier_runs_no_subprocess(request, monkeypatch):
    """`make test-fast` (LSTM_JAX_TEST_TIER=fast, `-m "not slow"`) is the inner
    loop: a test that starts a subprocess there fails, naming the fix."""
    if os.environ.get("LSTM_JAX_TEST_TIER") != "fast" or request.node.get_closest_marker("slow"):
        return

    def refuse(self, *args, **kwargs):
        raise RuntimeError(
            f"{request.node.nodeid} starts a subprocess; mark it @pytest.mark.slow "
            "(the fast tier runs none)"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
    """Downloads and token caches go to a directory of the test session's own
    (the CLIs in subprocesses inherit it), not into the user's ~/.cache."""
    path = tmp_path_factory.mktemp("lstm_jax_data")
    os.environ["LSTM_JAX_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def compile_cache():
    """The persistent compilation cache, as the CLIs use it: the many tests
    that train the same smoke models compile each program once (subprocess
    runs of the CLIs find the same directory: $LSTM_JAX_COMPILE_CACHE or the
    user cache dir)."""
    return host.enable_compile_cache()


@pytest.fixture
def story(tmp_path) -> pathlib.Path:
    """A small English text (no network, no ../shared)."""
    text = (
        "The old wizard climbed the tower. He opened the book, and the pages glowed.\n"
        "A spell of fire leapt from his hands; the goblins fled into the dark forest.\n"
    ) * 40
    path = tmp_path / "story.txt"
    path.write_text(text)
    return path


@pytest.fixture
def ptb_dir(tmp_path) -> pathlib.Path:
    d = tmp_path / "ptb"
    d.mkdir()
    line = " the cat sat on the <unk> mat . n years ago the dog ran \n"
    for split, n in (("train", 200), ("valid", 30), ("test", 30)):
        (d / f"ptb.{split}.txt").write_text(line * n)
    return d


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip, saying why, unless JAX's default backend is a GPU."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import jax  # only when a gpu test was collected

    backend = jax.default_backend()
    if backend == "gpu":
        return
    skip = pytest.mark.skip(reason=f"needs a GPU; JAX's default backend is {backend}")
    for item in gpu_items:
        item.add_marker(skip)
