"""The experiments' shared harness (experiments/harness/): curve and task
helpers against hand-computed values, short runs, and every experiment
end to end at a tiny size."""
import dataclasses
import math
import os
import re
import subprocess

import numpy as np
import pytest

from experiments.harness import stats
from experiments.harness.report import numeric_table, slug, steps_to_reach
from experiments.harness.synthetic import ClusterTask, routing_counts, train_synthetic
from experiments.harness.testbed import (
    t5_config,
    testbed_config,
    testbed_moe,
    testbed_router,
    with_moe,
)
from moejax.routing import RouterConfig


def test_steps_to_reach_interpolates_between_evaluations():
    curve = [(10, 5.0), (20, 3.0), (30, 2.0)]
    assert steps_to_reach(curve, 2.5) == pytest.approx(25.0)
    assert steps_to_reach(curve, 3.0) == pytest.approx(20.0)
    assert steps_to_reach(curve, 9.0) == 10
    assert steps_to_reach(curve, 1.0) is None
    assert slug("top-1 (Switch)") == "top_1_switch"
    assert numeric_table("arm", ["a", "b"], {"x": [1.0, 0.25], "y": [2, 3]}, 2) == (
        "| arm | a | b |\n|---|---|---|\n| x | 1.00 | 0.25 |\n| y | 2.00 | 3.00 |")


def test_cluster_task_is_seeded_and_clusters_are_separable():
    task = ClusterTask(widths=(4, 4, 4), separation=6.0, noise=0.5)
    x, c, y = task.sample(600, seed=3)
    x2, c2, y2 = task.sample(600, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert x.shape == (600, 16) and y.shape == (600, 4) and set(c.tolist()) == {0, 1, 2}
    centres = np.stack([x[c == k].mean(0) for k in range(3)])
    nearest = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == c).mean() > 0.99


def test_routing_counts_follow_the_top_p_threshold():
    probs = np.array([[[0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]])
    router = RouterConfig("top_p", num_experts=4, threshold=0.6, eval_capacity_factor=None)
    # Cumulative sorted probabilities first reach 0.6 after 1, 2 and 3 experts.
    np.testing.assert_array_equal(routing_counts(router, np.log(probs).astype(np.float32)),
                                  [[1, 2, 3]])


def test_with_moe_changes_only_the_named_stack():
    cfg = t5_config("quick", seed=1, steps=40, evals=4)
    assert (cfg.steps, cfg.eval_every_steps, cfg.seed) == (40, 10, 1)
    switch = RouterConfig("switch", num_experts=4)
    out = with_moe(cfg, encoder={"router": switch, "d_ff": 32}, decoder={"interval": 0})
    assert out.model.encoder_moe.router == switch and out.model.encoder_moe.d_ff == 32
    assert out.model.encoder_moe.interval == cfg.model.encoder_moe.interval
    assert out.model.decoder_moe.interval == 0
    assert out.model.decoder_moe.router == cfg.model.decoder_moe.router


def test_synthetic_run_learns_and_reports_routing():
    task = ClusterTask(widths=(8, 8), separation=3.0)
    router = RouterConfig("top_k", num_experts=4, k=2, capacity_factor=None,
                          eval_capacity_factor=None)
    run = train_synthetic(task, router, steps=60, seed=0, group=32, batch_groups=4, snapshots=3)
    assert [s for s, _ in run.loss_curve] == [0, 30, 60]
    assert run.loss_curve[-1][1] < 0.7 * run.loss_curve[0][1]
    assert run.test_loss == pytest.approx(run.loss_curve[-1][1], rel=1e-5)
    # Uncapped top-2: every point gets exactly 2 experts, none dropped.
    assert run.experts_per_token == [2.0] and run.dropped_fraction == [0.0]
    assert np.allclose(run.experts_per_token_per_cluster, 2.0)
    assert len(run.confusion[-1][1]) == 2 and all(
        math.isclose(sum(row), 1.0, rel_tol=1e-6) for row in run.confusion[-1][1])


def test_testbed_arms_differ_only_in_their_ffns_at_equal_active_flops():
    dense = testbed_config("quick", seed=2)
    moe = testbed_moe(dense)
    assert dense.data.source == "markov" and dense.data.seed == dense.seed == 2
    assert dense.model.encoder_moe.interval == dense.model.decoder_moe.interval == 0
    for stack in (moe.model.encoder_moe, moe.model.decoder_moe):
        assert stack.interval == 1 and stack.router == testbed_router()
        assert stack.d_ff * stack.router.k == dense.model.d_ff  # active hidden units per token
    router = testbed_router()
    assert router.capacity_factor is None and router.load_balance_weight == 0
    assert dataclasses.replace(moe, model=dense.model) == dense


def test_digits_task_keeps_test_images_out_of_training():
    from experiments.moesart.fixed import digits_task

    task = digits_task(seed=3, n_train=300, n_val=100, n_test=200)
    assert task.train.x.shape == (300, 128) and task.test.y.shape == (200, 2)
    assert task.train.y.min() >= 0 and task.train.y.max() <= 9

    def images(split):  # the distinct 8x8 images (one shared affine normalisation)
        return {tuple(np.round(half, 4)) for half in split.x.reshape(-1, 64)}

    # load_digits has no duplicate images, so disjoint rows = disjoint images.
    assert not images(task.train) & images(task.test)
    assert not images(task.train) & images(task.val)
    np.testing.assert_array_equal(digits_task(seed=3, n_train=300, n_val=100, n_test=200).test.x,
                                  task.test.x)
    assert not np.array_equal(digits_task(seed=4, n_train=300).train.x, task.train.x)


def test_train_fixed_early_stops_at_the_best_validation_point():
    from experiments.moesart.fixed import train_fixed

    router = RouterConfig("top_k", num_experts=4, k=2, capacity_factor=None,
                          eval_capacity_factor=None)
    runs = train_fixed("clusters", 2, router, lr=1e-2, steps=40, evals=4)
    assert len(runs) == 2 and runs[0]["test"] != runs[1]["test"]  # seeds differ
    for r in runs:
        vals = dict(r["val"])
        assert [s for s, _ in r["val"]] == [0, 10, 20, 30, 40]
        assert r["best_val"] == min(vals.values()) and vals[r["best_step"]] == r["best_val"]
        assert r["test_loss"] == dict(r["test"])[r["best_step"]]
        assert r["test"][-1][1] < r["test"][0][1]  # it learns


def _run_module(args, tmp_path, env_extra=None):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), root]),
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"), **(env_extra or {})}
    out = subprocess.run([sys.executable, "-m", *args], cwd=root, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_leaderboard_ranks_a_user_router_from_its_own_module(tmp_path):
    """A router registered in the user's module, with top_k's kernel and k,
    trains in the worker processes and ties top_k exactly (same init, data
    and routing); every arm is paired with the reference; a rerun reuses the
    stored arms."""
    import json

    (tmp_path / "my_routers.py").write_text(
        "from moejax.routing import register_router, top_k_route\n"
        "register_router('my_top2', top_k_route, default_k=2)\n")
    out_dir = tmp_path / "lb"
    args = ["experiments.leaderboard", "--smoke", "--jobs", "2", "--only", "my_top2,top_k",
            "--router", "my_routers:my_top2", "--out", str(out_dir)]
    _run_module(args, tmp_path)
    results = json.loads((out_dir / "results.json").read_text())
    assert set(results["arms"]) == {"dense", "testbed_top2", "top_k", "my_top2"}
    mine, base = ([s["eval_loss"] for s in results["arms"][a]["seeds"]]
                  for a in ("my_top2", "top_k"))
    assert mine == base and len(mine) == 2
    assert (out_dir / "leaderboard.png").exists()
    table = (out_dir / "table.md").read_text()
    assert "| my_top2 |" in table and "- testbed_top2 (paired" in table
    assert "- dense (paired, 95% CI) | standing |" in table and "(4 arms trained, 0 reused" in table
    row = next(line for line in table.splitlines() if line.startswith("| ") and "my_top2" in line)
    assert re.search(r"\| (ahead of|level with|behind) testbed_top2, (ahead of|level with|behind) "
                     r"dense", row), row
    assert "not reproduced" not in table and "| claim |" not in table
    assert sorted(c["claim"] for c in results["claims"]) == [
        "my_top2 beats testbed_top2 (eval loss)", "top_k beats testbed_top2 (eval loss)"]
    # --only shows just the named router with dense and the reference; the
    # other stored arm stays in results.json for the next run.
    args[args.index("my_top2,top_k")] = "my_top2"
    again = _run_module(args, tmp_path)
    assert "reusing stored results of 3 arms" in again.stdout
    rows = [line.split("|")[2].strip() for line in (out_dir / "table.md").read_text().splitlines()
            if re.match(r"\| \d+ \|", line)]
    assert sorted(rows) == ["dense", "my_top2", "testbed_top2"]
    assert set(json.loads((out_dir / "results.json").read_text())["arms"]) == {
        "dense", "testbed_top2", "top_k", "my_top2"}


def test_a_user_routers_leaderboard_never_writes_over_the_committed_one():
    from experiments.leaderboard.__main__ import COMMITTED, default_out

    user = os.path.join(COMMITTED, "user")
    assert default_out(["my_routers:my_top1"]) == user
    assert default_out([]) is None  # the shipped routers: the committed table
    assert default_out([], "top_k") == user  # a selection is the user's too

    ignored = subprocess.run(["git", "check-ignore", "-q", os.path.join(user, "results.json")],
                             cwd=COMMITTED, capture_output=True)
    assert ignored.returncode in (0, 128)  # ignored (128: not a git checkout)


def test_leaderboard_standing_words():
    from experiments.leaderboard.__main__ import standing

    assert standing({"ci95": [-0.3, -0.1]}) == "ahead of"
    assert standing({"ci95": [0.1, 0.3]}) == "behind"
    assert standing({"ci95": [-0.1, 0.2]}) == "level with"


def test_run_t5_never_resumes_a_run_of_another_config(tmp_path):
    """A run directory left by an earlier config (the experiment changed
    since) is trained again from scratch, not resumed or reused."""
    import json

    from experiments.harness.runs import run_t5

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"steps": 999}))
    (workdir / "stale").write_text("x")
    run = run_t5(testbed_config("smoke", 0, steps=4, evals=2), str(workdir))
    assert not (workdir / "stale").exists() and [s for s, _ in run["eval"]] == [2, 4]
    again = run_t5(testbed_config("smoke", 0, steps=4, evals=2), str(workdir))  # reused
    assert again["eval"] == run["eval"]


def test_run_t5_copies_a_finished_run_of_the_same_config(tmp_path, monkeypatch):
    """Another experiment's finished run of the same config is copied, not
    trained again; a run of another config, or one stopped early, is not."""
    from experiments.harness import runs
    from experiments.harness.runs import run_t5

    monkeypatch.setattr(runs, "SHARED_RUNS", str(tmp_path / "*" / "runs" / "*"))
    cfg = testbed_config("smoke", 0, steps=4, evals=2)
    first = run_t5(cfg, str(tmp_path / "a" / "runs" / "dense_0"))
    (tmp_path / "a" / "runs" / "dense_0" / "marker").write_text("trained in a")
    twin = tmp_path / "b" / "runs" / "dense_0"
    assert run_t5(cfg, str(twin))["eval"] == first["eval"] and (twin / "marker").exists()

    other = tmp_path / "c" / "runs" / "dense_0"
    run_t5(testbed_config("smoke", 1, steps=4, evals=2), str(other))  # another seed
    assert not (other / "marker").exists()
    metrics = tmp_path / "a" / "runs" / "dense_0" / "metrics.jsonl"
    metrics.write_text("".join(line for line in metrics.read_text().splitlines(True)
                               if '"step": 4' not in line))  # as if stopped at step 2
    assert runs.finished_twin(cfg, str(tmp_path / "d" / "runs" / "x")) == str(twin)
    assert runs.finished_twin(cfg, str(twin)) is None


def test_leaderboard_fingerprint_ignores_fields_at_their_defaults():
    """Stored arms stay valid when a config field is added at its default,
    and become stale when any field changes."""
    from experiments.harness.runs import fingerprint, non_default
    from experiments.leaderboard.__main__ import arm_config

    cfg = arm_config("smoke", 0, "top_k")
    router = non_default(cfg)["model"]["encoder_moe"]["router"]
    assert router == {"name": "top_k", "num_experts": 16, "k": 2}  # the rest at defaults
    moe = dataclasses.replace(cfg.model.encoder_moe, num_shared_experts=1)
    changed = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder_moe=moe))
    assert fingerprint(changed) != fingerprint(cfg) == fingerprint(arm_config("smoke", 0, "top_k"))


def test_fingerprint_survives_the_saved_config_json(tmp_path):
    """run_t5 tells a finished run of the same config from its config.json:
    the fingerprint of the saved mapping, read back, is the config's own, for
    every leaderboard arm and the experiments' other kinds of arm; any
    changed field tells them apart."""
    import json

    from experiments.balancing.__main__ import balance_config, upcycle_config
    from experiments.dynamic_top_p.__main__ import lang_config
    from experiments.harness.runs import fingerprint, saved_fingerprint
    from experiments.leaderboard.__main__ import arm_config
    from moejax.routing import ROUTERS
    from moejax.structured import to_mapping

    configs = [arm_config("smoke", 1, arm) for arm in ["dense", *sorted(ROUTERS)]]
    configs += [balance_config("smoke", 0, "aux-loss-free bias"),
                lang_config("smoke", 0, "top-p 0.4"),
                upcycle_config("smoke", 0, "MoE, upcycled", "/some/dense/run")]
    prints = set()
    for i, cfg in enumerate(configs):
        workdir = tmp_path / str(i)
        workdir.mkdir()
        (workdir / "config.json").write_text(json.dumps(to_mapping(cfg), indent=2))
        assert saved_fingerprint(str(workdir)) == fingerprint(cfg)
        prints.add(fingerprint(cfg))
    assert len(prints) == len(configs)
    assert saved_fingerprint(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("name", ["testbed", "learning_to_route", "expert_choice", "moesart",
                                  "dynamic_top_p", "balancing"])
def test_experiment_runs_end_to_end(name, tmp_path):
    """Each experiment's command, a few steps per arm in worker processes:
    its results follow the schema and its plots exist."""
    import json

    out_dir = tmp_path / name
    _run_module([f"experiments.{name}", "--smoke", "--jobs", "2", "--out", str(out_dir)], tmp_path)
    results = json.loads((out_dir / "results.json").read_text())
    stats.check_schema(results)
    plots = 1 if name == "testbed" else 2
    assert results["size"] == "smoke" and len(list(out_dir.glob("*.png"))) >= plots
    assert "| claim | verdict | evidence |" in (out_dir / "table.md").read_text()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if head.returncode == 0:  # a git checkout: the results name the commit that made them
        assert head.stdout.strip() in results["code"]
        assert f"`{results['code']}`" in (out_dir / "table.md").read_text()
    if name == "testbed":
        recall = results["fact_recall"]
        assert len(recall) == 3 and all(len(v) == 2 and all(0 <= a <= 1 for a in v)
                                        for v in recall.values())
    if name == "learning_to_route":
        assert set(results["precondition"]) == {"synthetic", "language"}
        nmi = results["language"]["learned"][0]["nmi"]
        assert len(nmi) == 1 and all(0.0 <= v <= 1.0 for v in nmi)  # one per encoder layer
    if name == "balancing":
        assert set(results["precondition"]) == {"balancing", "upcycling"}
        assert all(v >= -1e-6 for vs in results["eval_max_violation"].values() for v in vs)


def test_experiments_readme_summary_matches_the_committed_results():
    from experiments import summary

    assert summary.main(["--check"]) == 0


def test_code_version_marks_changed_code_but_not_rewritten_results(tmp_path):
    """The stamp is the commit, "-dirty" only for changed code: an
    experiment rewrites its committed plots before its results.json."""
    from experiments.harness.report import code_version

    git = lambda *args: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t",
                                        *args], cwd=tmp_path, check=True, capture_output=True,
                                       text=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "plot.png").write_text("old")
    (tmp_path / "router.py").write_text("k = 2")
    git("add", ".")
    git("commit", "-qm", "first")
    head = git("rev-parse", "--short", "HEAD")
    assert code_version(str(tmp_path)) == head
    (tmp_path / "results" / "plot.png").write_text("rerun")
    (tmp_path / "results" / "new.json").write_text("{}")
    assert code_version(str(tmp_path / "results")) == head
    (tmp_path / "router.py").write_text("k = 1")
    assert code_version(str(tmp_path)) == head + "-dirty"


@pytest.mark.parametrize("jobs", [1, 2])
def test_run_arms_starts_a_run_only_after_the_run_it_needs(jobs, tmp_path):
    """`after`: seed s of "read" starts once seed s of "write" has finished
    (the writer takes a second, so a reader started with it would find no
    file), and in the same pool as the independent runs."""
    import functools
    import pathlib

    from experiments.harness.runs import run_arms

    arms = {
        "write": lambda seed: functools.partial(
            subprocess.check_call, ["sh", "-c", f"sleep 1; echo {seed} > {tmp_path}/{seed}"]),
        "read": lambda seed: functools.partial(pathlib.Path.read_text, tmp_path / str(seed)),
        "other": lambda seed: functools.partial(math.sqrt, seed),
    }
    out = run_arms(arms, 2, "after", jobs, str(tmp_path / "logs"), after={"read": "write"})
    assert out == {"write": [0, 0], "read": ["0\n", "1\n"], "other": [0.0, 1.0]}
    with pytest.raises(ValueError, match="'pretrain'"):
        run_arms(arms, 1, "after", jobs, after={"read": "pretrain"})
    with pytest.raises(ValueError, match="cycle read -> write -> read"):
        run_arms(arms, 1, "after", jobs, after={"read": "write", "write": "read"})


def test_workers_die_with_their_parent(tmp_path):
    """A killed experiment leaves no worker training on (experiments.harness.worker)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from experiments.harness import worker\n"
        "if __name__ == '__main__':\n"
        "    ctx = multiprocessing.get_context('spawn')\n"
        f"    with ProcessPoolExecutor(1, mp_context=ctx, initializer=worker.init,\n"
        f"                             initargs=({str(tmp_path / 'logs')!r},)) as pool:\n"
        "        pool.submit(time.sleep, 120)\n"
        "        time.sleep(2)\n"
        "        print([p.pid for p in multiprocessing.active_children()], flush=True)\n"
        "        time.sleep(120)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=root, env={**os.environ, "PYTHONPATH": root})
    children = eval(parent.stdout.readline())
    assert children
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_running(pid) for pid in children):
        time.sleep(0.2)
    assert not any(_running(pid) for pid in children)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read()
    except FileNotFoundError:
        return False


def test_cloze_batch_masks_exactly_the_answer(tmp_path):
    from experiments.harness.probes import cloze_batch
    from moejax.data import knowledge, tokenizer

    docs = [knowledge.knowledge_document(0, 16, 1, i) for i in range(6)]
    vocab = tokenizer.train([d.text for d in docs] * 20, 120, 8, str(tmp_path / "spm.model"))
    enc, dec, tgt, weights = cloze_batch(vocab, docs, 64, 16)
    clozes = [c for d in docs for c in d.cloze() if len(vocab.encode(c[0])) + 1 < 64]
    assert len(enc) == len(clozes) > 0
    for r, (_before, answer, _after) in enumerate(clozes):
        assert vocab.decode(tgt[r]) == f"<extra_id_0> {answer} <extra_id_1>"
        assert vocab.decode(tgt[r][weights[r] > 0]) == answer
        assert answer not in vocab.decode(enc[r]).split("<extra_id_0>")[0].split()[-1:]
        assert list(dec[r, 1:]) == list(tgt[r, :-1]) and dec[r, 0] == 0
        assert (enc[r] == vocab.sentinel(0)).sum() == 1


def test_live_runs_shows_the_latest_step_of_the_newest_runs(tmp_path):
    import json
    import time

    from experiments.harness.runs import live_runs

    assert live_runs(str(tmp_path), 2) == "compiling"
    for i, name in enumerate(["old_0", "mid_0", "new_0"]):
        (tmp_path / name).mkdir()
        # Rows as long as a many-layer model's (per-layer load vectors).
        rows = [{"step": s, "loss": 5.0 - s / 100, "load": [0.1] * 2000}
                for s in range(1, 40 + i)]
        rows.append({"step": 39 + i, "eval_loss": 1.0})
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
        os.utime(tmp_path / name / "metrics.jsonl", (time.time() + i, time.time() + i))
    assert live_runs(str(tmp_path), 2) == "new_0 step 41 loss 4.590, mid_0 step 40 loss 4.600"


def test_the_documented_experiment_runs_on_the_harness(tmp_path):
    """docs/experiments.md's example experiment, as a user would save it:
    under 40 lines, and it runs (arms, analysis, plots) at a tiny size; then
    --replot redraws its plot from results.json alone."""
    import json

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "experiments.md")) as f:
        code = re.findall(r"```python\n(.*?)```", f.read(), re.S)[0]
    assert len(code.splitlines()) <= 40
    (tmp_path / "my_question").mkdir()
    (tmp_path / "my_question" / "__main__.py").write_text(code)
    out_dir = tmp_path / "out"
    _run_module(["my_question", "--smoke", "--jobs", "2", "--out", str(out_dir)], tmp_path)
    results = json.loads((out_dir / "results.json").read_text())
    stats.check_schema(results)
    assert set(results["final_eval_loss"]) == {"dense", "top-2", "top-4"}
    assert results["claims"][0]["claim"] == "top-4 beats top-2 (eval loss)"
    (out_dir / "eval_loss.png").unlink()
    _run_module(["my_question", "--replot", "--out", str(out_dir)], tmp_path)
    assert (out_dir / "eval_loss.png").stat().st_size > 0


def test_frontier_arms_share_runs_and_its_analysis_gives_verdicts(tmp_path):
    """The frontier's shared arms are the other experiments' configs (so
    their runs are copied, not retrained), and its analysis turns per-seed
    numbers into the claims the README states: fake runs in which quantile
    balancing balances best and null experts save experts at a higher loss."""
    import types

    from experiments.balancing.__main__ import balance_config
    from experiments.dynamic_top_p.__main__ import lang_config
    from experiments.frontier import __main__ as frontier
    from experiments.harness.runs import fingerprint
    from experiments.harness.testbed import testbed_config, testbed_moe

    same = {frontier.DENSE: testbed_config("smoke", 2),
            frontier.TOP2: testbed_moe(testbed_config("smoke", 2)),
            frontier.LOSS: balance_config("smoke", 2, "load-balance loss"),
            frontier.BIAS: balance_config("smoke", 2, "aux-loss-free bias"),
            frontier.TOPP: lang_config("smoke", 2, "top-p 0.4")}
    for arm, cfg in same.items():
        assert fingerprint(frontier.arm_config("smoke", 2, arm)) == fingerprint(cfg), arm

    rng = np.random.default_rng(0)
    loss = {frontier.DENSE: 2.0, frontier.LOSS: 1.9, frontier.BIAS: 1.85,
            frontier.QUANTILE: 1.82, frontier.TOP2: 1.8, frontier.NULL: 1.83,
            frontier.TOPP: 1.78, frontier.REMOE: 1.83}
    maxvio = {frontier.LOSS: 0.3, frontier.BIAS: 0.3, frontier.QUANTILE: 0.05}
    per_token = {frontier.NULL: 1.6, frontier.TOPP: 2.9, frontier.REMOE: 2.1}

    def run(arm, seed):
        noise = 0.002 * rng.normal()
        return {"eval": [(400, loss[arm] + 0.3), (800, loss[arm] + 0.01 * seed + noise)],
                "last_eval": {"eval_moe/max_violation": maxvio.get(arm, 0.5) + noise,
                              "eval_moe/experts_per_token": per_token.get(arm, 2.0) + noise,
                              "eval_moe/null_expert_share": 0.2}}
    runs = {arm: [run(arm, s) for s in range(3)] for arm in loss}
    report = frontier.analyse(types.SimpleNamespace(size="quick"), runs)
    verdicts = {c["claim"]: c["verdict"] for c in report.claims}
    assert report.precondition["balancing"]["passed"]
    assert report.precondition["adaptive compute"]["passed"]
    assert list(verdicts.values()) == ["reproduced", "reproduced", "reproduced",
                                       "not reproduced", "reproduced", "not reproduced"]
    frontier.plots(report.results, str(tmp_path))
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "adaptive_eval_loss.png", "balancing_eval_loss.png", "loss_vs_experts_per_token.png"]
