"""8 fake CPU devices for the whole session, so meshes with data, model and
expert axes really shard, and a persistent compilation cache. Must run
before jax is imported."""
import os

from script_util import FAST_COMPILE, ROOT

# XLA's backend optimisation level 0: the tests' models are tiny, so compiling
# them costs more than running them; level 0 compiles about a quarter faster
# (tests/test_scan.py: 174 -> 130 s of CPU) and changes no result a test checks (every
# comparison is between programs compiled alike, or within tolerances).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count=8 {FAST_COMPILE}").strip()
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


# The longest tests, scheduled first: with `-n 2` the two workers then end
# together instead of one running a long test alone at the end.
SLOW_FIRST = ("test_experiment_runs_end_to_end", "test_leaderboard_ranks_a_user_router",
              "test_resume_after_kill_9_is_exact", "test_two_processes_match_one",
              "test_training_a_scanned_model", "test_run_t5_never_resumes",
              "test_upcycle_switch_trains", "test_finetune_on_mock_sst2")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not any(name in item.nodeid for name in SLOW_FIRST))


@pytest.fixture
def logits(request):
    """Router logits [G, T, E] (the test module's G, T, E), scale 2."""
    import numpy as np

    m = request.module
    return np.random.default_rng(0).normal(size=(m.G, m.T, m.E)).astype(np.float32) * 2


@pytest.fixture
def mask(request):
    """bool [G, T]: group 1 has a padded tail, group 2 every fourth token padded."""
    import numpy as np

    m = np.ones((request.module.G, request.module.T), bool)
    m[1, -5:] = False
    m[2, ::4] = False
    return m
