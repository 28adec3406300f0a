#!/usr/bin/env bash
# Build .venv for spklip. Called by `make install`; idempotent (the Makefile only calls it when
# pyproject.toml or this script changed).
#  1. torch first: the local CPU wheel (torch==2.13.0) on a machine without a GPU. On a GPU machine (nvidia-smi -L
#     works) a CUDA torch: the venv's own if it has one; else, for a new venv, the CUDA torch of the interpreter
#     that builds it (GPU images ship one: no multi-GB download, works without a package index), seen through a
#     .pth file; else a CPU torch in the venv is replaced by a CUDA build from the index (SPKLIP_CUDA_TORCH,
#     default "torch>=2.6"; SPKLIP_TORCH_INDEX, e.g. https://download.pytorch.org/whl/cu128, if the index's
#     default build has no CUDA), and the script fails if it still has none.
#  2. every other dependency from pyproject.toml, constrained to the installed torch, so pip fails
#     instead of silently swapping torch for a multi-GB CUDA build.
#  3. spikingjelly and open-clip-torch with --no-deps (see pyproject.toml), then spklip itself.
set -euo pipefail
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
cuda_torch() { "$1" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; }
torch_version() { "$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true; }

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    if has_gpu && cuda_torch "$PY"; then  # reuse the builder's CUDA torch (and what sits beside it)
        site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        "$PY" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' > "$site/_spklip_cuda_torch.pth"
    fi
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if has_gpu; then
    if ! cuda_torch "$VENV/bin/python"; then
        # a CPU build on a GPU machine: pip would keep it, since 2.13.0+cpu satisfies a bare "torch>=2.6"
        if "$VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.__file__.startswith(sys.prefix) else 1)' \
                2>/dev/null; then
            "${PIP[@]}" uninstall -y torch
        fi
        "${PIP[@]}" install ${SPKLIP_TORCH_INDEX:+--index-url "$SPKLIP_TORCH_INDEX"} "${SPKLIP_CUDA_TORCH:-torch>=2.6}"
        cuda_torch "$VENV/bin/python" || { echo "install: a GPU is present but the torch pip found has no CUDA;" \
            "set SPKLIP_TORCH_INDEX (e.g. https://download.pytorch.org/whl/cu128)" >&2; exit 1; }
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
