"""Runs on a non-local filesystem: a gs:// workdir end to end, offline.

`fake_gcs` serves gs://<bucket>/<path> from a local directory through
fsspec, the backend etils.epath uses for gs:// when TensorFlow's is off
(EPATH_USE_TF=false), so every byte moejax writes to a gs:// path goes
through the same epath calls as on a real bucket, and the test can read the
result back locally. Orbax is the exception: it writes array data with
TensorStore, whose gs:// driver talks to the real GCS service and cannot be
pointed at an fsspec filesystem, so the trainer test keeps its checkpoints
in a local directory (saved, then resumed from) and everything else in the
bucket.
"""
import json
import os

import fsspec
import numpy as np
import pytest
from etils import epath
from fsspec.implementations.local import LocalFileSystem
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from train_config import small

from moejax.files import AppendLog, write_atomic
from moejax.train import trainer
from moejax.train.checkpoint import Checkpoints
from moejax.train.init import checkpoint_step_dir, tokenizer_of
from moejax.train.metrics import read_metrics


class FakeGCS(LocalFileSystem):
    """gs://bucket/path <-> ROOT/bucket/path; paths it returns look like
    gcsfs's ('bucket/path'), which epath prefixes with 'gs://'."""
    protocol = ("gs", "gcs")
    root = ""

    def __init__(self, *args, finalize_on_close=None, **kwargs):
        del finalize_on_close  # gcsfs's option, passed by epath
        super().__init__(*args, auto_mkdir=True, **kwargs)  # GCS has no directories

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        for prefix in ("gs://", "gcs://"):
            if path.startswith(prefix):
                path = os.path.join(cls.root, path[len(prefix):])
        return super()._strip_protocol(path)

    def glob(self, path, **kwargs):
        return [os.path.relpath(p, self.root) for p in super().glob(path, **kwargs)]


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    from etils.epath import backend, gpath

    root = tmp_path / "gcs"
    root.mkdir()
    monkeypatch.setattr(FakeGCS, "root", str(root))
    monkeypatch.setenv("EPATH_USE_TF", "false")
    gpath._is_tf_installed.cache_clear()
    fsspec.register_implementation("gcs", FakeGCS, clobber=True)
    fsspec.register_implementation("gs", FakeGCS, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()
    yield root
    gpath._is_tf_installed.cache_clear()
    backend.fsspec_backend._get_filesystem.cache_clear()


def test_the_fake_bucket_is_reached_through_epaths_fsspec_backend(fake_gcs):
    path = epath.Path("gs://bucket/a/b.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("hi")
    assert (fake_gcs / "bucket" / "a" / "b.txt").read_text() == "hi"
    assert [os.fspath(p) for p in path.parent.glob("*.txt")] == ["gs://bucket/a/b.txt"]
    assert type(path._backend).__name__ == "_FileSystemSpecBackend"


def test_append_log_on_an_object_store_rewrites_what_was_there(fake_gcs):
    write_atomic("gs://bucket/log/metrics.jsonl", b"old\n")
    log = AppendLog("gs://bucket/log/metrics.jsonl", min_interval_s=3600)
    log.write("new\n")
    log.flush()  # throttled: nothing rewritten yet
    assert (fake_gcs / "bucket/log/metrics.jsonl").read_text() == "old\n"
    log.close()
    assert (fake_gcs / "bucket/log/metrics.jsonl").read_text() == "old\nnew\n"


def test_training_and_resuming_with_a_gs_workdir(fake_gcs, tmp_path, monkeypatch):
    """Everything but orbax's arrays lives in the bucket: config.json, the
    tokenizer cache, metrics.jsonl (appended to on resume), TensorBoard."""
    local_checkpoints = str(tmp_path / "checkpoints")
    monkeypatch.setattr(trainer, "_checkpoints",
                        lambda cfg, workdir: Checkpoints(local_checkpoints, cfg.checkpoint))
    workdir, mirror = "gs://bucket/run", fake_gcs / "bucket" / "run"
    cfg = small(steps=4, eval_every_steps=4)
    trainer.train(cfg, workdir)
    assert sorted(os.listdir(local_checkpoints)) == ["4"]
    assert json.loads((mirror / "config.json").read_text())["steps"] == 4
    tokenizer = (mirror / "tokenizer" / "spm.model").read_bytes()
    last = trainer.train(small(steps=8, eval_every_steps=4), workdir)  # resumes from step 4
    assert (mirror / "tokenizer" / "spm.model").read_bytes() == tokenizer  # loaded, not retrained
    rows, evals = read_metrics(workdir)
    assert sorted(rows) == list(range(1, 9)) and sorted(evals) == [4, 8]
    assert last["eval_loss"] == evals[8]["eval_loss"]
    events = EventAccumulator(str(mirror / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("loss")}
    assert logged == pytest.approx({s: rows[s]["loss"] for s in rows}, rel=1e-6)
    assert np.isfinite(rows[8]["moe/dropped_fraction"])


def test_init_checkpoint_and_its_tokenizer_are_found_in_a_bucket(fake_gcs):
    for step in (5, 10):
        (fake_gcs / "bucket" / "run" / "checkpoints" / str(step) / "state").mkdir(parents=True)
    write_atomic("gs://bucket/run/tokenizer/spm.model", b"model")
    assert checkpoint_step_dir("gs://bucket/run") == "gs://bucket/run/checkpoints/10"
    assert tokenizer_of("gs://bucket/run") == "gs://bucket/run/tokenizer/spm.model"
    with pytest.raises(FileNotFoundError, match="neither a moejax workdir"):
        checkpoint_step_dir("gs://bucket/nothing")


def test_a_gs_workdir_that_is_a_file_is_refused_before_anything_is_written(fake_gcs):
    write_atomic("gs://bucket/taken", b"")
    with pytest.raises(NotADirectoryError, match="workdir 'gs://bucket/taken' is a file"):
        trainer.train(small(), "gs://bucket/taken")
