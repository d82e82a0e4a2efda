#!/usr/bin/env python3
"""Reads a `clip export` folder with numpy and pyarrow alone (no clip code) and checks it.

    python scripts/check_export.py OUT [--rows N] [--dim D]

Checks that the shards are numbered 0..n-1 with one width, that each embedding shard has
as many rows as its metadata (npy layout) or carries its own metadata column (parquet
layout), that every row is finite and unit-length, and, if given, the total rows and the
dimension. Prints one summary line; exits non-zero on the first failure.
Needs: pip install numpy pyarrow
"""

import argparse
import pathlib
import re
import sys

import numpy as np
import pyarrow.parquet as pq

EMB_DIRS = ("img_emb", "text_emb", "emb")
COLUMNS = {"img_emb": "image_path", "text_emb": "caption", "emb": "id"}


def fail(msg):
    sys.exit(f"check_export: {msg}")


def shards(folder, stem, ext):
    files = sorted(folder.glob(f"{stem}_*.{ext}"))
    nums = [re.fullmatch(rf"{stem}_(\d+)\.{ext}", f.name).group(1) for f in files]
    if [int(n) for n in nums] != list(range(len(nums))) or len({len(n) for n in nums}) > 1:
        fail(f"{folder}: shards not numbered 0..n-1 with one width: {nums}")
    return files


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--rows", type=int)
    ap.add_argument("--dim", type=int)
    a = ap.parse_args()

    found = [d for d in EMB_DIRS if (a.out / d).is_dir()]
    if len(found) != 1:
        fail(f"expected one of {EMB_DIRS} in {a.out}, found {found}")
    stem, column = found[0], COLUMNS[found[0]]
    npy = shards(a.out / stem, stem, "npy")
    layout = "npy" if npy else "parquet"
    blocks, labels, dtypes = [], [], set()
    if npy:
        meta = shards(a.out / "metadata", "metadata", "parquet")
        if len(meta) != len(npy):
            fail(f"{len(npy)} .npy shards but {len(meta)} metadata shards")
        for e, m in zip(npy, meta):
            x = np.load(e)
            t = pq.read_table(m)
            if x.ndim != 2 or x.shape[0] != t.num_rows:
                fail(f"{e.name} has shape {x.shape}, {m.name} has {t.num_rows} rows")
            if t.column_names != [column]:
                fail(f"{m.name} has columns {t.column_names}, want [{column!r}]")
            dtypes.add(str(x.dtype))
            blocks.append(x.astype(np.float32))
            labels += t.column(column).to_pylist()
    else:
        for f in shards(a.out / stem, stem, "parquet"):
            t = pq.read_table(f)
            if t.column_names != ["embedding", column]:
                fail(f"{f.name} has columns {t.column_names}, want ['embedding', {column!r}]")
            # How embedding-reader and pandas users turn the column into a matrix.
            x = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
            dtypes.add(f"{t.schema.field('embedding').type}")
            blocks.append(x.reshape(t.num_rows, -1))
            labels += t.column(column).to_pylist()
    x = np.concatenate(blocks)
    if not np.isfinite(x).all():
        fail("non-finite values")
    norms = np.linalg.norm(x, axis=1)
    if not np.allclose(norms, 1, atol=2e-3):
        fail(f"rows are not unit-length: norms {norms.min():.4f}..{norms.max():.4f}")
    if a.rows is not None and x.shape[0] != a.rows:
        fail(f"{x.shape[0]} rows, want {a.rows}")
    if a.dim is not None and x.shape[1] != a.dim:
        fail(f"dimension {x.shape[1]}, want {a.dim}")
    if any(not isinstance(s, str) for s in labels):
        fail(f"{column} holds non-strings")
    print(
        f"ok: {layout} layout, {stem}/ in {len(blocks)} shard(s), {x.shape[0]} rows x "
        f"{x.shape[1]} ({', '.join(sorted(dtypes))}), column {column!r}, "
        f"first {labels[0]!r}"
    )


if __name__ == "__main__":
    main()
