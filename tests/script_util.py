"""Loads a file from scripts/ as a module (scripts/ is not a package)."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

# XLA's backend optimisation level 0 for every test process (conftest.py says why).
FAST_COMPILE = "--xla_backend_optimization_level=0"
