"""Give the old default `weat_c10_small` the metadata checkpoints are saved with now (issue 18): its recipe names the
data folder only (not the training machine's path) and records what ran (device cpu, precision fp32: autocast is
CUDA only, so the `amp: bf16` setting trained in fp32); its start fit names the folder only and records the new
file's sha256. Only the JSON headers change: every tensor byte stays as shipped (checked), so the model, its start
fit and every sample drawn from them are the same.

    python experiments/c10-cpu/portable_metadata.py checkpoints/weat_c10_small.safetensors
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from robgen.data import portable_name
from robgen.utils import atomic_path, sha256_file


def rewrite_header(path: Path, edit) -> None:
    """Replace a safetensors file's __metadata__ with edit(metadata), keeping the tensor bytes as they are."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = edit(dict(header["__metadata__"]))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data[8 + n:])
    assert path.read_bytes()[8 + len(text):] == data[8 + n:]


def portable_recipe(metadata: dict) -> dict:
    meta = json.loads(metadata["robgen"])
    recipe = meta["recipe"]
    meta["recipe"] = {**recipe, "data": portable_name(recipe["data"]), "device": "cpu", "precision": "fp32"}
    return {**metadata, "robgen": json.dumps(meta, sort_keys=True)}


def main(ckpt: Path) -> None:
    starts = ckpt.with_name(ckpt.name.replace(".safetensors", ".starts.safetensors"))
    rewrite_header(ckpt, portable_recipe)
    sha = sha256_file(ckpt)

    def portable_fit(metadata: dict) -> dict:
        info = json.loads(metadata["info"])
        info.update(dataset=portable_name(info["dataset"]), checkpoint_sha256=sha)
        return {**metadata, "info": json.dumps(info, sort_keys=True)}

    rewrite_header(starts, portable_fit)
    print(f"{ckpt}: sha256 {sha}; {starts} records it")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
