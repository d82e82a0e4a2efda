#!/usr/bin/env python3
"""Copies a Hugging Face CLIP model folder with its two projections redrawn at another width.

For benchmarks that need vectors of a real model's size (512 floats, as ViT-B/32) from towers
that stay tiny: `config.json` gets the new `projection_dim`, `visual_projection.weight` and
`text_projection.weight` get that many rows of N(0, 0.1²) values (seed 0); every other tensor
is copied as it is. Python's standard library only (safetensors is simple enough to rewrite).

usage: scripts/widen_projection.py SRC DST [DIM]    (DIM: 512)
e.g.   scripts/widen_projection.py tests/fixtures/hf_tiny /tmp/tiny512
"""
import json
import os
import random
import shutil
import struct
import sys

PROJECTIONS = ("visual_projection.weight", "text_projection.weight")


def main(src, dst, dim):
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name not in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(src, name), dst)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg["projection_dim"] = dim
    for tower in ("text_config", "vision_config"):
        if tower in cfg:
            cfg[tower]["projection_dim"] = dim
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)

    with open(os.path.join(src, "model.safetensors"), "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    meta = header.pop("__metadata__", None)
    rng = random.Random(0)
    out, blobs, at = {}, [], 0
    for key, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = t["data_offsets"]
        blob, shape = data[begin:end], t["shape"]
        if key in PROJECTIONS:
            if t["dtype"] != "F32":
                sys.exit(f"{key} is {t['dtype']}; only F32 projections are redrawn")
            shape = [dim, shape[1]]
            values = [rng.gauss(0.0, 0.1) for _ in range(dim * shape[1])]
            blob = struct.pack(f"<{len(values)}f", *values)
        out[key] = {"dtype": t["dtype"], "shape": shape, "data_offsets": [at, at + len(blob)]}
        blobs.append(blob)
        at += len(blob)
    missing = [k for k in PROJECTIONS if k not in out]
    if missing:
        sys.exit(f"{src}/model.safetensors has no {', '.join(missing)}")
    if meta is not None:
        out["__metadata__"] = meta
    head = json.dumps(out).encode()
    head += b" " * (-len(head) % 8)
    with open(os.path.join(dst, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    print(f"{dst}: projections {dim} wide")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 512)
