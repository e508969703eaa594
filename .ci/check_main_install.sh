#!/usr/bin/env bash
# The README's main command (the line after the "ci:main" marker) in a fresh virtual environment: it must run,
# and leave no torch, transformers or sentence-transformers behind. Prints the environment's size and fails
# above the budget (400 MB: numpy, safetensors, tokenizers, tqdm, the model package and pyattn fit well under it).
set -euo pipefail
cd "$(dirname "$0")/.."
budget_mb=${PYATTN_MAIN_INSTALL_BUDGET_MB:-400}

main_cmd=$(awk '/<!-- ci:main -->/{getline; getline; print; exit}' README.md)
case "$main_cmd" in
  *"pip install"*pyattn*) ;;
  *) echo "README.md has no main command after the ci:main marker (found: '$main_cmd')" >&2; exit 1 ;;
esac

venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT  # removed however the check ends
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
echo "+ $main_cmd"
bash -c "$main_cmd"

heavy=$(python - <<'PY'
import importlib.util
print(" ".join(m for m in ("torch", "transformers", "sentence_transformers", "nvidia", "triton")
               if importlib.util.find_spec(m) is not None))
PY
)
size_mb=$(du -sm "$venv" | cut -f1)
echo "main install: $size_mb MB in the fresh virtual environment (budget $budget_mb MB); packages:"
python -m pip list --format=freeze | tr '\n' ' '
echo
if [ -n "$heavy" ]; then
  echo "the main command installed $heavy: it must not install a framework" >&2
  exit 1
fi
if [ "$size_mb" -gt "$budget_mb" ]; then
  echo "the main install takes $size_mb MB, more than the $budget_mb MB budget" >&2
  exit 1
fi
deactivate
rm -rf "$(dirname "$venv")"
