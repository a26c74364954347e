#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the pinned pure-Python wheels that the GPU
# machines' image (Python 3.12, jax 0.11.2) lacks: tokamax and what it needs
# (its optional grouped matmul), ml_collections and tensorboardX (the
# trainer). Run it on a machine that reaches PyPI; scripts/gpu_check.sh
# installs them with --no-index where they are present. The versions are
# those the dispatch tests passed with under Python 3.12 + jax 0.11.2.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
  tokamax==0.0.17 einshape==1.0 immutabledict==4.3.1 jaxtyping==0.3.11 wadler-lindig==0.1.8 \
  qwix==0.1.8 xprof==2.24.2 pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 \
  annotated-types==0.8.0 ml-collections==1.1.0 tensorboardX==2.6.5
du -sh .whl
