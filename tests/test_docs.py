"""The README and docs/ against the code: every link resolves inside the
repository, and every command they show names a module or script that
exists, flags it defines, config files that exist and config fields that
TrainConfig has. (The commands that train are run by their own tests:
the first-hour figures, the experiments end to end, the leaderboard.)"""
import dataclasses
import glob
import os
import re
import shlex
import typing

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", *sorted(os.path.relpath(p, ROOT)
                              for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
# Words in a command that stand for a value the reader picks.
PLACEHOLDERS = {"DIR", "FILE", "HF_DIR", "TPU", "ZONE", "CONFIG", "WORKDIR", "..."}
# Modules a page tells the reader to write (test_experiments runs the one
# docs/experiments.md shows).
USER_MODULES = {"my_question"}


def _read(page: str) -> str:
    with open(os.path.join(ROOT, page)) as f:
        return f.read()


def commands(page: str) -> list[str]:
    """The shell commands of a page: each line of its bash blocks (with
    backslash continuations joined, comments dropped) and each inline code
    span that starts like a command, split at && ; |."""
    text = _read(page)
    lines = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        lines += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    lines += [span if span.startswith(("python", "bash", "moejax-")) or "=" in span.split()[0]
              else "python " + span for span in spans
              if re.match(r"(\w+=\S+ )*(python |bash |moejax-|scripts/\w+\.py)", span)]
    out = []
    for line in lines:
        line = re.sub(r"\s#.*$", "", line).strip()
        line = re.sub(r"\[([^\]]*)\]", r"\1", line)  # optional parts: [--flag=x ...]
        out += [part.strip() for part in re.split(r"&&|;|\|", line) if part.strip()]
    return out


def _sources(paths: list[str]) -> str:
    text = ""
    for path in paths:
        for file in ([path] if path.endswith(".py") else
                     glob.glob(os.path.join(path, "**", "*.py"), recursive=True)):
            with open(os.path.join(ROOT, file)) as f:
                text += f.read()
    return text


def _config_field(path: str) -> bool:
    """Whether --config.<path> names a TrainConfig field (nested dataclasses)."""
    from moejax.train.config import TrainConfig

    cls = TrainConfig
    for name in path.split("."):
        if not dataclasses.is_dataclass(cls):
            return False
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if name not in fields:
            return False
        hints = typing.get_type_hints(cls)
        cls = hints[name]
        cls = next((a for a in typing.get_args(cls) if dataclasses.is_dataclass(a)), cls)
    return True


def check_command(command: str) -> list[str]:
    """What is wrong with one documented command ([] when nothing)."""
    words = shlex.split(command)
    while words and re.match(r"\w+=", words[0]):  # SECTIONS=train bash ...
        words = words[1:]
    if not words:
        return []
    prog, args = words[0], words[1:]
    problems = []
    if prog in ("python", "python3", "python3.11") and args[:1] == ["-m"]:
        module, args = args[1], args[2:]
        if module in ("venv", "pip", "pytest") or module in USER_MODULES:
            return []
        sources = [module.replace(".", "/") + ".py"]
        if os.path.isdir(os.path.join(ROOT, module.replace(".", "/"))):
            sources = [module.replace(".", "/")]
        if not os.path.exists(os.path.join(ROOT, sources[0])):
            return [f"no module {module}"]
        if module.startswith("experiments."):
            sources.append("experiments/harness/args.py")
        if module in ("moejax.train", "moejax.finetune"):
            sources.append("moejax/train/entry.py")
    elif prog in ("python", "python3", "bash"):
        script, args = args[0], args[1:]
        if not os.path.exists(os.path.join(ROOT, script)):
            return [f"no script {script}"]
        sources = [script]
        if script.endswith(".py"):  # the sibling modules a script imports
            sources += [f"scripts/{m}.py" for m in re.findall(r"^from (\w+) import|^import (\w+)",
                                                               _sources([script]), re.M)
                        for m in m if m and os.path.exists(os.path.join(ROOT, "scripts",
                                                                        f"{m}.py"))]
    elif prog.startswith("moejax-"):
        sources = ["moejax/train/entry.py", "moejax/finetune/__main__.py"]
    else:  # venv, pip, ruff, cat, ...: not ours
        return []
    text = _sources(sources)
    for arg in args:
        if not arg.startswith("--"):
            continue
        flag, _, value = arg[2:].partition("=")
        if flag.startswith("config."):
            if not _config_field(flag[len("config."):]):
                problems.append(f"{arg}: no such TrainConfig field")
        elif not re.search(rf"[\"']{re.escape(flag)}[\"']|[\"']--{re.escape(flag)}[\"']", text):
            problems.append(f"{arg}: flag not defined in {', '.join(sources)}")
        if flag == "config" and value not in PLACEHOLDERS:
            file = value.split(":")[0]
            if not os.path.exists(os.path.join(ROOT, file)):
                problems.append(f"{arg}: no config file {file}")
    return problems


@pytest.mark.parametrize("page", PAGES)
def test_documented_commands_name_what_exists(page):
    found = commands(page)
    problems = [f"{page}: `{c}`: {p}" for c in found for p in check_command(c)]
    assert not problems, "\n".join(problems)


def test_the_docs_check_catches_what_it_checks():
    """The checker finds the pages' commands and fails on a missing script,
    module, flag, field and file."""
    found = {page: commands(page) for page in PAGES}
    assert "python -m experiments.leaderboard --router my_routers:my_top1 --only my_top1" in \
        found["README.md"]
    assert "bash scripts/gpu_check.sh" in found["docs/dispatch.md"]  # an inline span
    assert sum(map(len, found.values())) > 20
    assert check_command("python scripts/no_such.py") == ["no script scripts/no_such.py"]
    assert check_command("python -m experiments.nope --quick") == ["no module experiments.nope"]
    assert check_command("python -m experiments.testbed --quick --fast")[0].startswith(
        "--fast: flag not defined")
    assert check_command("python -m moejax.train --config=configs/default.py "
                         "--config.model.encoder_moe.router.nme=x") == [
        "--config.model.encoder_moe.router.nme=x: no such TrainConfig field"]
    assert check_command("python -m moejax.train --config=configs/none.py") == [
        "--config=configs/none.py: no config file configs/none.py"]
    assert check_command("python -m moejax.train --config=configs/default.py --workdir=DIR "
                         "--config.model.encoder_moe.router.name=top_k") == []


@pytest.mark.parametrize("page", PAGES)
def test_links_stay_inside_the_repository(page):
    """Every relative link of a page names a file of a fresh clone, and an
    anchor a heading of the page it points to."""
    text = _read(page)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path \
            else os.path.join(ROOT, page)
        assert file.startswith(ROOT + os.sep) and os.path.exists(file), f"{page}: {target}"
        if anchor and file.endswith(".md"):
            with open(file) as f:
                slugs = {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-")
                         for h in re.findall(r"^#+ (.+)$", f.read(), re.M)}
            assert anchor in slugs, f"{page}: {target}: no heading #{anchor}"


def test_benchmark_figures_are_the_committed_ones():
    """The training-throughput and scanned-layer figures the docs quote are
    the ones results/bench/train_cpu_2cores.json (scripts/bench_train.py)
    holds: a rerun that changes the file without the docs fails here."""
    import json

    with open(os.path.join(ROOT, "results", "bench", "train_cpu_2cores.json")) as f:
        runs = {r["config"]: r for r in json.load(f)["results"]}
    default, switch = runs["default"], runs["switch-reduced"]
    scanned = switch["variants"]["scan_layers=True,remat=none"]
    unscanned = switch["variants"]["scan_layers=False,remat=none"]
    quoted = {
        "docs/benchmarks.md": [
            f"the default runs {default['loop_step_s'] * 1e3:.1f} ms/step "
            f"({default['tokens_per_s'] / 1e3:.1f}k tokens/s, "
            f"{default['outside_fraction'] * 100:.1f}% of the step outside",
            f"batch 16 runs {switch['loop_step_s'] * 1e3:.1f} ms/step "
            f"({switch['tokens_per_s'] / 1e3:.1f}k tokens/s, "
            f"{switch['outside_fraction'] * 100:.1f}% outside)"],
        "docs/model.md": [
            f"compile {scanned['compile_s']:.1f} s scanned vs {unscanned['compile_s']:.1f} s, "
            f"step {scanned['jitted_step_s'] * 1e3:.0f} vs "
            f"{unscanned['jitted_step_s'] * 1e3:.0f} ms"],
    }
    for page, sentences in quoted.items():
        text = " ".join(_read(page).split())
        for sentence in sentences:
            assert sentence in text, f"{page} does not say {sentence!r}"


def test_the_moe_layer_table_is_the_committed_run():
    """docs/benchmarks.md's MoE-layer table is what scripts/bench_moe_layer.py
    --report --markdown renders from results/bench/moe_layer_cpu_2cores.json."""
    import json

    from script_util import load_script

    bench = load_script("bench_moe_layer")
    with open(os.path.join(ROOT, "results", "bench", "moe_layer_cpu_2cores.json")) as f:
        want = bench.markdown(json.load(f))
    text = _read("docs/benchmarks.md")
    start, end = "<!-- bench_moe_layer:start -->\n", "\n<!-- bench_moe_layer:end -->"
    assert text[text.index(start) + len(start):text.index(end)] == want
    with open(os.path.join(ROOT, "results", "bench", "fine_grained_cpu_2cores.json")) as f:
        ratio = {(r["experts"], r["router"]): r["ratio"] for r in json.load(f)["rows"]}
    fine = ("fine4_top8_shared1", "top2")
    sentence = (f"{ratio[(32, fine[0])]:.2f}x dense at 32 experts (top-2 of 8 experts in the same "
                f"run: {ratio[(8, fine[1])]:.2f}x) and {ratio[(128, fine[0])]:.2f}x at 128 "
                f"(top-2 of 32: {ratio[(32, fine[1])]:.2f}x)")
    assert sentence in " ".join(text.split()), sentence


def test_the_h100_dispatch_figures_are_the_measured_rows():
    """docs/dispatch.md's H100 row quotes results/bench/h100_2026-12-05.jsonl:
    the layer's ratio to dense per mode, or the failure where it failed."""
    import json

    with open(os.path.join(ROOT, "results", "bench", "h100_2026-12-05.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    layer = {(r["experts"], r["mode"]): r for r in rows
             if r["section"] == "layer" and r.get("router") == "top2"}
    text = _read("docs/dispatch.md")
    for experts in (8, 64):
        cells = []
        for mode in ("dropless", "scatter", "einsum"):
            r = layer[(experts, mode)]
            cells.append(f"{r['ratio']:.2f}" if "ratio" in r else
                         "out of memory" if "RESOURCE_EXHAUSTED" in r["error"] else r["error"])
        assert f"| {experts} | {' | '.join(cells)} | pending |" in text, (experts, cells)


def test_the_hf_comparison_is_the_committed_run():
    """docs/benchmarks.md's moejax-vs-HF figures are results/bench/vs_hf_cpu_2cores.json's."""
    import json

    with open(os.path.join(ROOT, "results", "bench", "vs_hf_cpu_2cores.json")) as f:
        run = json.load(f)
    train, decode, flops = run["train"], run["decode"], run["train_matmul_flops"]
    text = " ".join(_read("docs/benchmarks.md").split())
    for sentence in [
            f"(forward+backward) {train['ratio']:.2f}x HF's time (rounds "
            f"{min(train['round_ratios']):.2f}-{max(train['round_ratios']):.2f}; "
            f"{train['moejax_tokens_per_s'] / 1e3:.1f}k against "
            f"{train['hf_tokens_per_s'] / 1e3:.1f}k tokens/s)",
            f"greedy decoding of 32 tokens {decode['ratio']:.2f}x (rounds "
            f"{min(decode['round_ratios']):.2f}-{max(decode['round_ratios']):.2f})",
            f"{flops['moejax'] / 1e9:.1f} GFLOP of matmuls per moejax step against HF's "
            f"{flops['hf'] / 1e9:.1f}",
            f"moejax's step time is {train['ratio_per_flop']:.2f}x HF's"]:
        assert sentence in text, sentence


def test_the_readme_leaderboard_figures_are_the_committed_ones():
    """The README's leaderboard sentence quotes results/leaderboard/results.json."""
    import json

    from experiments.harness import stats

    with open(os.path.join(ROOT, "results", "leaderboard", "results.json")) as f:
        board = json.load(f)
    pre = board["precondition"]
    loss = {a: [r["eval_loss"] for r in v["seeds"]] for a, v in board["arms"].items()}
    behind = stats.fmt_ci(stats.paired(loss["top_k"], loss["testbed_top2"]), sign=False)
    text = " ".join(_read("README.md").split())
    assert f"The reference beats dense by {-pre['diff'] / pre['se']:.1f} SE" in text
    assert f"is {behind} behind it, level with dense" in text
    lo, hi = stats.paired(loss["top_k"], loss["dense"])["ci95"]
    assert lo < 0 < hi  # "level with dense"
