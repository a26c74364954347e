"""8 fake CPU devices for the whole session, so meshes with data, model and
expert axes really shard, and a persistent compilation cache. Must run
before jax is imported."""
import os

from script_util import ROOT

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's persistent compilation cache (inherited by the trainer subprocesses):
# identical programs, such as the kill -9 test's three runs of one config,
# compile once per suite run, and re-runs on a developer's machine reuse them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax"))


import contextlib  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def mock_tfds():
    """`with mock_tfds(n):` serves n generated examples per tfds split. Task
    splits are cached per process (moejax.tasks.source.load_split), so the
    cache is emptied on entry and exit: otherwise a test would see another
    test's mock examples."""
    import tensorflow_datasets as tfds

    from moejax.tasks.source import load_split

    @contextlib.contextmanager
    def mock(num_examples):
        load_split.cache_clear()
        try:
            with tfds.testing.mock_data(num_examples=num_examples):
                yield
        finally:
            load_split.cache_clear()
    return mock
