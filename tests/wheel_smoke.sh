#!/usr/bin/env bash
# docreader as a user installs it: build the wheel from this checkout, install it into a fresh venv and
# answer one question with its `docreader` from a directory outside the repository, so that the wheel's
# own files run (package data included), never the editable checkout.
#
# Nothing is downloaded: the wheel is built with the project venv's setuptools (torch pulls in a recent
# one), installed with --no-deps --no-index, and its dependencies (torch, transformers, ...) come from the
# project venv through a .pth line, which Python appends after the new venv's own site-packages (the
# wheel's docreader and dsa come first). The default model is the one converted once in the user's home
# ($DOCREADER_HOME, default ~/.cache/docreader; converted here if missing), linked into a throwaway home,
# so the log and the document cache are never touched.
#
# Usage: tests/wheel_smoke.sh [PYTHON]   PYTHON: the project venv's python (default .venv/bin/python).
# Exit status 0 when the installed CLI answered; tests/test_packaging.py runs it in `make test`.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/docreader-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH

step() { echo "wheel_smoke: $*" >&2; }

step "building the wheel from a copy of $ROOT"
mkdir "$WORK/src"
tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude=./.carry --exclude=./.whl --exclude=./build \
    --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.pytest_cache \
    --exclude=./.hypothesis --exclude=./.benchmarks --exclude=./bench/results -cf - . | tar -C "$WORK/src" -xf -
isolation=--no-build-isolation  # no network; needs setuptools >= 77 (SPDX license) in the project venv
"$PY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null || isolation=
"$PY" -m pip wheel -q --no-deps $isolation -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/docreader-*.whl)"
"$PY" - "$WHEEL" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
missing = [n for n in ("docreader/prompts/system.txt", "docreader/prompts/ask.txt",
                       "docreader/prompts/followup.txt", "docreader/cli.py", "dsa/csrc/select_attend.cpp")
           if n not in names]
if missing:
    sys.exit(f"wheel_smoke: the wheel lacks {', '.join(missing)}")
EOF

step "installing $(basename "$WHEEL") into a fresh venv"
"$PY" -m venv --without-pip "$WORK/venv"
"$PY" -m pip --python "$WORK/venv/bin/python" install -q --no-deps --no-index "$WHEEL"
site() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
NEW_SITE="$(site "$WORK/venv/bin/python")"
site "$PY" > "$NEW_SITE/zz_docreader_deps.pth"  # a path line: appended after NEW_SITE, its .pth files not run

step "the default model (converted once in the user's home)"
MODEL="$("$PY" -c 'from docreader import models
print(models.install_default(progress=lambda m: None, allow_download=True))')"
export DOCREADER_HOME="$WORK/home"
mkdir -p "$DOCREADER_HOME/models"
ln -s "$MODEL" "$DOCREADER_HOME/models/$(basename "$MODEL")"

cd "$WORK"  # outside the repository: nothing of the checkout is importable from here
"$WORK/venv/bin/python" - "$NEW_SITE" <<'EOF'
import sys
import docreader.cli, docreader.prompt, dsa
for mod in (docreader.cli, docreader.prompt, dsa):
    if not mod.__file__.startswith(sys.argv[1]):
        sys.exit(f"wheel_smoke: {mod.__name__} comes from {mod.__file__}, not from the installed wheel")
EOF
step "$("$WORK/venv/bin/docreader" --version)"

step "docreader ask, from the installed wheel"
head -n 20 "$ROOT/sample_docs/ubuntu_irc_2005-07-06_14.raw.txt" > "$WORK/irc.txt"
"$WORK/venv/bin/docreader" ask "$WORK/irc.txt" -q "Who has a sound problem?" -n 4 --no-cache --no-log \
    --threads 1 --json > "$WORK/answer.json"
"$PY" - "$WORK/answer.json" <<'EOF'
import json, sys
out = json.load(open(sys.argv[1], encoding="utf-8"))
assert out["answer"] and out["tokens"]["new"] >= 1 and out["spans"], out
EOF
step "ok"
