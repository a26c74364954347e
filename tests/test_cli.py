"""Bad input through the real command lines: one line, exit status 2, no
traceback, and nothing written (moejax.cli)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = "--config=configs/default.py"

# (module, arguments; {tmp} is a fresh directory, {file} an existing file,
#  {bad_model} a file that is not a SentencePiece model, {noget} a config
#  file without get_config), a fragment the one-line message must contain.
CASES = [
    ("moejax.train", [DEFAULT, "--config.model.num_expertz=4"],
     "unknown config field 'model.num_expertz'"),
    ("moejax.train", [DEFAULT, "--config.model.encoder_moe.router.nam=4"],
     "did you mean 'name'?"),
    ("moejax.train", [DEFAULT, "--config.steps=abc"], "--config.steps=abc: invalid literal"),
    ("moejax.train", ["--config=configs/nosuch.py"],
     "config file 'configs/nosuch.py' does not exist"),
    ("moejax.train", ["--config={noget}"], "defines no get_config()"),
    ("moejax.train", ["--config=configs/switch_base_c4.py:nosuch"],
     "router must be one of ('switch', 'top2', 'expert_choice'), got 'nosuch'"),
    ("moejax.train", [DEFAULT, "--config.model.encoder_moe.router.name=nosuch"],
     "unknown router name 'nosuch'; known routers:"),
    ("moejax.train", [DEFAULT, "--config.tokenizer.path={bad_model}"],
     "is not a SentencePiece model"),
    ("moejax.train", [DEFAULT, "--config.tokenizer.path={tmp}/none.model"], "does not exist"),
    ("moejax.train", [DEFAULT, "stray"], "unexpected arguments: ['stray']"),
    ("moejax.train", [DEFAULT, "--upcycle"], "upcycle=True needs init_checkpoint"),
    ("moejax.train", [DEFAULT, "--config.model.decoder_moe.router.balance_scope=global"],
     "balance_scope must be one of ('group', 'sequence', 'batch'), got 'global'"),
    ("moejax.train", [DEFAULT, "--config.model.encoder_moe.router.balance_scope=batch"],
     "router 'expert_choice' has no Switch load-balance loss to scope"),
    # keep=0 used to delete every checkpoint, the final one included.
    ("moejax.train", [DEFAULT, "--config.checkpoint.keep=0"],
     "checkpoint.keep must be >= 1 (the latest checkpoints kept), got 0"),
    ("moejax.train", [DEFAULT, "--config.checkpoint.keep=-1"], "checkpoint.keep must be >= 1"),
    ("moejax.train", [DEFAULT, "--config.checkpoint.every_steps=-5"],
     "checkpoint.every_steps must be >= 0 (0 = only at the end and on SIGTERM), got -5"),
    ("moejax.train", [DEFAULT, "--config.eval_every_steps=-1"],
     "eval_every_steps must be >= 0 (0 = no evaluation), got -1"),
    ("moejax.train", [DEFAULT, "--config.eval_batches=0"],
     "eval_batches must be >= 1 when evaluating (eval_every_steps=200), got 0"),
    ("moejax.train", [DEFAULT, "--config.model.attention=cudnn"],
     "model.attention 'cudnn' needs an NVIDIA GPU; this is cpu"),
    ("moejax.train", [DEFAULT, "--config.model.attention=flash"],
     "model.attention must be one of ('auto', 'einsum', 'xla', 'cudnn'), got 'flash'"),
    ("moejax.train", [DEFAULT, "--config.model.decoder_moe.grouped_matmul=mosaic_gpu"],
     "model.decoder_moe.grouped_matmul 'mosaic_gpu' needs an NVIDIA Hopper GPU"),
    ("moejax.train", [DEFAULT, "--config.model.encoder_moe.grouped_matmul=cutlass"],
     "grouped_matmul must be one of ('blocks', 'ragged_dot', 'megablox', 'mosaic_gpu', "),
    ("moejax.train", [DEFAULT, "--config.data.source=tfds", "--config.data.tfds_name=c4/en:3.1.0",
                      "--config.data.tfds_data_dir={tmp}/tfds"],
     "tfds dataset 'c4/en:3.1.0' (split 'train') is not prepared in"),
    ("moejax.finetune", ["--config=configs/finetune/default.py", "--config.data.task=glue_rte",
                         "--config.data.tfds_data_dir={tmp}/tfds"],
     "Prepare it once with `tfds build glue/rte --data_dir=DIR`"),
    ("moejax.finetune", ["--config=configs/finetune/switch_base.py:nosuchtask"],
     "unknown task or mixture 'nosuchtask'"),
    ("moejax.finetune", ["--config=configs/finetune/default.py", "--init_checkpoint={tmp}/none"],
     "is neither a moejax workdir with checkpoints"),
    # Each of these used to print a traceback, or fail after the workdir was
    # made (and leave it behind), or both.
    ("moejax.train", [DEFAULT, "--config.data.source=text", "--config.data.train_files={tmp}"],
     "data.train_files '{tmp}' names the directory '{tmp}'; give files or a glob such as"),
    ("moejax.train", [DEFAULT, "--config.data.source=text", "--config.data.train_files={empty}",
                      "--config.eval_every_steps=0"],
     "data.train_files '{empty}' has no documents"),
    ("moejax.train", [DEFAULT, "--config.data.source=text", "--config.data.train_files={latin1}",
                      "--config.eval_every_steps=0"],
     "data.train_files: '{latin1}' is not UTF-8 text (invalid continuation byte at byte 3)"),
    ("moejax.train", [DEFAULT, "--config.tokenizer.vocab_size=5"],
     "tokenizer (vocab_size=5, train_documents=5000): SentencePiece cannot train a 5-piece "
     "model: the training text needs at least"),
    ("moejax.train", [DEFAULT, "--config.tokenizer.train_documents=0"],
     "tokenizer.train_documents must be >= 1, got 0"),
    ("moejax.train", [DEFAULT, "--config.data.embedded_eval_documents=0"],
     "data.embedded_eval_documents must be >= 1, got 0"),
    ("moejax.train", [DEFAULT, "--config.model.decoder_moe.group_size=7"],
     "group_size=7 of decoder/layers_1/mlp must divide its batch*length=1024 tokens"),
]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    (tmp_path / "noget.py").write_text("x = 1\n")
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
    return {"tmp": str(tmp_path), "file": str(tmp_path / "a_file"),
            "bad_model": str(tmp_path / "bad.model"), "noget": str(tmp_path / "noget.py"),
            "empty": str(tmp_path / "empty.txt"), "latin1": str(tmp_path / "latin1.txt")}


def _run(module, args, env_extra=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module,args,fragment", CASES,
                         ids=[f"{m.split('.')[1]}:{' '.join(a)[-40:]}" for m, a, _ in CASES])
def test_bad_input_prints_one_line_and_writes_nothing(module, args, fragment, files, tmp_path):
    workdir = tmp_path / "run"
    out = _run(module, [a.format(**files) for a in args] + [f"--workdir={workdir}"])
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and fragment.format(**files) in lines[0], out.stderr[-2000:]
    assert not workdir.exists()


def test_a_workdir_that_is_a_file_or_cannot_be_written_is_refused(files):
    out = _run("moejax.train", [DEFAULT, f"--workdir={files['file']}"])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"workdir {files['file']!r} is a file" in out.stderr
    assert open(files["file"]).read() == "x"
    inside = os.path.join(files["file"], "run")
    out = _run("moejax.train", [DEFAULT, f"--workdir={inside}"])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"error: workdir {inside!r} cannot be written" in out.stderr


def test_a_workdir_held_by_a_live_trainer_is_refused(tmp_path):
    """lock.json naming a live process on this host (this test's): the
    second trainer stops at once, names the holder, and changes nothing."""
    import socket

    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": "2026-12-06T01:02:03Z",
              "start_ticks": None, "heartbeat_unix": 0.0}
    (workdir / "lock.json").write_text(json.dumps(holder))
    out = _run("moejax.train", [DEFAULT, f"--workdir={workdir}"])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: workdir '{workdir}' is in use by the trainer with pid {os.getpid()} on host "
        f"{socket.gethostname()!r} since 2026-12-06T01:02:03Z (lock.json); stop it first, or "
        "use another --workdir")
    assert os.listdir(workdir) == ["lock.json"]
    assert json.loads((workdir / "lock.json").read_text()) == holder


def test_keep_0_on_a_run_with_checkpoints_deletes_nothing(tmp_path):
    """keep=0 used to delete every checkpoint of the run, the final one
    included; now it is refused before the workdir is touched."""
    step = tmp_path / "run" / "checkpoints" / "200"
    step.mkdir(parents=True)
    (step / "commit_success.txt").write_text("ok")
    out = _run("moejax.train", [DEFAULT, "--config.checkpoint.keep=0",
                                f"--workdir={tmp_path / 'run'}"])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "checkpoint.keep must be >= 1" in out.stderr
    assert (step / "commit_success.txt").read_text() == "ok"
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoints"]


def test_moejax_debug_shows_the_traceback(files, tmp_path):
    out = _run("moejax.train", [DEFAULT, "--config.model.num_expertz=4",
                                f"--workdir={tmp_path / 'run'}"], {"MOEJAX_DEBUG": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr


SCRIPT_CASES = [
    (["scripts/param_counts.py", "configs/models/nosuch.py"],
     "config file 'configs/models/nosuch.py' does not exist"),
    (["scripts/convert_hf.py", "export", "{tmp}/nosuch", "{tmp}/out"],
     "export source '{tmp}/nosuch' is not a directory written by `convert_hf.py import`"),
]


@pytest.mark.parametrize("args,fragment", SCRIPT_CASES, ids=[a[0] for a, _ in SCRIPT_CASES])
def test_scripts_fail_in_one_line(args, fragment, files):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, *[a.format(**files) for a in args]], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment.format(**files) in last, out.stderr[-2000:]
    assert not os.path.exists(files["tmp"] + "/out")


EXPERIMENT_CASES = [
    (["experiments.testbed", "--seeds", "2"], "--seeds must be >= 3 to report a spread, got 2"),
    (["experiments.testbed", "--seeds", "0"], "--seeds must be >= 3 to report a spread, got 0"),
    (["experiments.moesart", "--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["experiments.expert_choice", "--out", "{file}"], "is a file; give a directory"),
    (["experiments.learning_to_route", "--out", "{file}/sub"], "cannot be created"),
    (["experiments.leaderboard", "--router", "nomodule"], "must be module:router_name"),
    (["experiments.leaderboard", "--router", "nosuchmodule:r"], "cannot import 'nosuchmodule'"),
    (["experiments.leaderboard", "--only", "nosuch"], "--only names unknown routers ['nosuch']"),
    (["experiments.leaderboard", "--router", "json:testbed_top2"],
     "'testbed_top2' is the name of a built-in arm"),
    (["experiments.leaderboard", "--router", "json:switch"],
     "'switch' is one of moejax's own routers, not one 'json' registered"),
]


@pytest.mark.parametrize("args,fragment", EXPERIMENT_CASES,
                         ids=[" ".join(a)[-40:] for a, _ in EXPERIMENT_CASES])
def test_experiments_fail_in_one_line_before_writing(args, fragment, files, tmp_path):
    out_dir = tmp_path / "results"
    argv = [a.format(**files) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(out_dir)]
    out = _run(argv[0], argv[1:])
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment.format(**files) in last, out.stderr[-2000:]
    assert not out_dir.exists()


def test_readme_router_snippet_passes_the_linter_and_registers(tmp_path):
    """The README's "Add a router" snippet, saved as the README says
    (`my_routers.py`, in the repository root, so under the project's ruff
    config): `ruff check` passes, and importing it registers `my_top1`."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Add a router, rank it"):]
    start = section.index("```python\n") + len("```python\n")
    snippet = section[start:section.index("\n```", start)]
    assert "register_router(" in snippet
    (tmp_path / "my_routers.py").write_text(snippet + "\n")
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--config",
                           os.path.join(ROOT, "pyproject.toml"), "my_routers.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    code = ("import my_routers\nfrom moejax.routing import RouterConfig\n"
            "print(RouterConfig(name='my_top1', num_experts=4).name)")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "my_top1", out.stderr[-2000:]


def test_a_user_router_module_that_raises_is_one_line(tmp_path):
    (tmp_path / "broken_routers.py").write_text("raise RuntimeError('no GPU here')\n")
    out = _run("experiments.leaderboard", ["--router", "broken_routers:mine", "--out",
                                           str(tmp_path / "results")],
               {"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "error: --router 'broken_routers:mine': importing 'broken_routers' failed "
        "(RuntimeError: no GPU here)")
    assert not (tmp_path / "results").exists()


def test_help_exits_0_and_print_config_lists_the_fields(tmp_path):
    for module in ("moejax.train", "moejax.finetune"):
        out = _run(module, ["--help"])
        assert out.returncode == 0, out.stderr[-2000:]
        assert "--config=FILE --print_config prints every field" in out.stdout
    out = _run("moejax.train", [DEFAULT, "--print_config", "--config.model.scan_layers=true",
                                "--config.steps=7"])
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "--config.model.scan_layers=True" in lines and "--config.steps=7" in lines
    assert "--config.model.encoder_moe.router.name=expert_choice" in lines
    assert all(line.startswith("--config.") for line in lines)


def test_readme_links_stay_inside_the_repository():
    """A fresh clone has every file the README links to, and nothing
    outside it (the router background used to live in ../shared/)."""
    import re

    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert "../" not in readme
    links = [link for link in re.findall(r"\]\(([^)#\s]+)\)", readme) if "://" not in link]
    assert "docs/routers.md" in links
    for link in links:
        assert os.path.exists(os.path.join(ROOT, link)), link


def test_readme_figures_are_the_measured_ones():
    """Every figure the README and the config docstrings quote about the
    default run and the fine-tuning demo is the one scripts/readme_figures.py
    measured (results/readme/figures.json): a stale figure fails here."""
    from script_util import load_script

    figures_script = load_script("readme_figures")
    with open(figures_script.OUT) as f:
        figures = json.load(f)
    for file, sentences in figures_script.sentences(figures).items():
        with open(os.path.join(ROOT, file)) as f:
            text = " ".join(f.read().split())
        for sentence in sentences:
            assert sentence in text, f"{file} does not say {sentence!r}"
