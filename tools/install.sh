#!/usr/bin/env bash
# Build .venv for spklip. Called by `make install`; idempotent (the Makefile only calls it when
# pyproject.toml or this script changed).
#  1. torch first: the local CPU wheel (torch==2.13.0) on a machine without a GPU; on a GPU machine
#     an already-installed CUDA torch is kept, otherwise the default (CUDA) wheel is installed.
#  2. every other dependency from pyproject.toml, constrained to the installed torch, so pip fails
#     instead of silently swapping torch for a multi-GB CUDA build.
#  3. spikingjelly and open-clip-torch with --no-deps (see pyproject.toml), then spklip itself.
set -euo pipefail
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
torch_version() { "$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true; }

if has_gpu; then
    if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
        "${PIP[@]}" install "torch>=2.6"
    fi
else
    [ "$(torch_version)" = "2.13.0" ] || "${PIP[@]}" install "torch==${SPKLIP_CPU_TORCH:-2.13.0}"
fi
constraints="$VENV/torch-constraint.txt"
echo "torch==$(torch_version)" > "$constraints"

reqs="$VENV/spklip-requirements.txt"
"$VENV/bin/python" - "$reqs" <<'PY'
import sys, tomllib
proj = tomllib.load(open("pyproject.toml", "rb"))["project"]
no_deps = {"spikingjelly"}
deps = [d for d in proj["dependencies"] if d.split("=")[0].split(">")[0].split("[")[0] not in no_deps]
deps += proj["optional-dependencies"]["video"]
open(sys.argv[1], "w").write("\n".join(deps) + "\n")
PY
"${PIP[@]}" install -c "$constraints" -r "$reqs"
"${PIP[@]}" install --no-deps "spikingjelly==2.0.0" "open-clip-torch==3.3.0"
"${PIP[@]}" install --no-deps --no-build-isolation -e .
echo "spklip: .venv ready (torch $(torch_version))"
