#!/usr/bin/env bash
# Copies the comparison toolkits (pure Python: pytorch-grad-cam with ttach, torchcam, captum) from the
# local .venv (`pip install -e '.[bench]'`) into benchmarks/vendor/ (git-ignored, ~5 MB), for a machine
# that cannot install them, such as the lent GPU machine: carry benchmarks/vendor there and
# benchmarks/gpu_session.sh puts it on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf benchmarks/vendor
mkdir -p benchmarks/vendor
for package in pytorch_grad_cam ttach torchcam captum; do
    [ -d "$SITE/$package" ] || { echo "$package is not installed in $SITE: pip install -e '.[bench]'" >&2; exit 1; }
    cp -r "$SITE/$package" benchmarks/vendor/
done
find benchmarks/vendor -name __pycache__ -type d -prune -exec rm -rf {} +
"$PY" - <<'PY' > benchmarks/vendor/VERSIONS.txt
from importlib import metadata
for dist in ("grad-cam", "ttach", "torchcam", "captum"):
    print(dist, metadata.version(dist))
PY
du -sh benchmarks/vendor
cat benchmarks/vendor/VERSIONS.txt
