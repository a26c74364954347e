"""One error path for the command-line entry points (`moejax.train`, `moejax.finetune`).

A bad input ends in one line on stderr, `error: <what is wrong, the value,
what is allowed>`, and exit status 2, without a traceback; set
MOEJAX_DEBUG=1 to see the traceback. Genuine failures (a bug, an
out-of-memory) are not input errors and keep their traceback.
"""
from __future__ import annotations

import contextlib
import difflib
import os
import re
import runpy
import sys
from collections.abc import Callable
from typing import NoReturn

DEBUG_ENV = "MOEJAX_DEBUG"
EXIT_INPUT_ERROR = 2


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def fail(message: str) -> NoReturn:
    """Prints `error: message` (one line) and exits with EXIT_INPUT_ERROR."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(EXIT_INPUT_ERROR)


def _last_exception_line(text: str) -> str:
    """'ValueError: router must be ...' from a traceback quoted inside a message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line):
            return line
    return lines[-1] if lines else text


def _config_flag(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _suggest(argv: list[str], missing: str) -> str:
    """Names the override that holds the unknown field `missing`, the
    closest allowed field and every field allowed at its depth."""
    override = next((a for a in argv if a.startswith("--config.") and
                     missing in a.split("=", 1)[0].split(".")), None)
    if override is None:
        return f"unknown config field {missing!r}"
    path = override.split("=", 1)[0][len("--config."):].split(".")
    where = f"unknown config field {'.'.join(path)!r} in {override!r}"
    spec = _config_flag(argv)
    if not spec:
        return where
    file, _, variant = spec.partition(":")
    try:
        node = runpy.run_path(file)["get_config"](*([variant] if variant else []))
        for key in path[:path.index(missing)]:
            node = node[key]
        known = sorted(node.keys())
    except Exception:  # the suggestion is a courtesy; the error stands without it
        return where
    close = difflib.get_close_matches(missing, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{where}; {hint}fields there: {', '.join(known)}"


def explain_flag_error(e: BaseException, argv: list[str]) -> str:
    """A one-line account of an exception raised while parsing flags."""
    if isinstance(e, AttributeError) and "get_config" in str(e):
        return f"--config={_config_flag(argv)}: the config file defines no get_config()"
    if isinstance(e, (AttributeError, KeyError)):
        key = e.args[0] if e.args else e
        if isinstance(key, KeyError):  # ml_collections wraps the KeyError
            key = key.args[0] if key.args else key
        missing = str(key).splitlines()[0].strip("'\"")
        return _suggest(argv, missing)
    text = str(e)
    if "Traceback" in text:  # the config file raised: keep what it said
        flag = (f"--config={_config_flag(argv)}" if text.startswith("flag --config=")
                else text.split(":", 1)[0].removeprefix("flag "))
        return f"{flag}: the config file failed: {_last_exception_line(text)}"
    if "earlier failure to load" in text or "Failed loading config file" in text:
        return config_load_error(argv)
    return text.splitlines()[0] if text else type(e).__name__


def config_load_error(argv: list[str]) -> str:
    """ml_collections defers a config file's load error to the first read of
    the flag's value: say which file and why."""
    spec = _config_flag(argv) or ""
    file = spec.partition(":")[0]
    if not os.path.exists(file):
        return f"--config={spec}: config file {file!r} does not exist"
    return f"--config={spec}: cannot load the config file (does it define get_config()?)"


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")
CONFIG_HELP = ("Config fields: --config=FILE --print_config prints every field with its value "
               "(override any with --config.a.b=VALUE); moejax/train/config.py and "
               "moejax/models/config.py say what each means.")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with one-line errors for bad flags and configs.
    --help exits 0 (absl's exits 1) and says where the config fields are."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except SystemExit as e:
        if e.code == 1 and any(a in HELP_FLAGS for a in argv[1:]):
            print(CONFIG_HELP)
            sys.exit(0)
        raise
    except BaseException as e:  # ml_collections raises several types while parsing
        if debug() or isinstance(e, KeyboardInterrupt):
            raise
        fail(explain_flag_error(e, argv))


@contextlib.contextmanager
def input_errors(*types: type[BaseException], explain: Callable[[BaseException], str] = str):
    """Exceptions of `types` raised inside are bad input: `fail` with
    explain(exception), one line and exit status 2 (MOEJAX_DEBUG=1 re-raises,
    traceback and all). Other exceptions pass untouched: they are bugs."""
    try:
        yield
    except types as e:
        if debug():
            raise
        fail(explain(e))


def run(main: Callable[[list[str]], None]) -> None:
    """app.run(main) with `parse_flags`. After an input error's one line,
    what the interpreter's shutdown prints is dropped: background I/O threads
    (orbax, TensorStore) that outlive the failure print tracebacks there."""
    from absl import app

    try:
        app.run(main, flags_parser=parse_flags)
    except SystemExit as e:
        if e.code == EXIT_INPUT_ERROR and not debug():
            sys.stderr.flush()
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        raise
