#!/usr/bin/env python3
"""Peers of `clip serve` for the load test in scripts/bench_serve_peer.sh (issue 12).

Three subcommands:

  convert HF_DIR OUT.safetensors
      An open_clip `ViT-B-32-quickgelu` state dict whose text tower holds the weights of the
      Hugging Face CLIP checkpoint in HF_DIR (the model `clip serve` runs), so that both servers
      compute the same text embeddings. The vision tower stays randomly initialised: no query
      here uses it.

  clip-back-index VECTORS OUT_DIR
      A folder that clip-retrieval's `clip back` loads: `image.index` (faiss IndexFlatIP over the
      `embeddings` tensor of VECTORS, the safetensors file bench_serve.sh writes),
      `metadata/0.parquet` (one `caption` per row, the row number) and `indices_paths.json`.

  serve VECTORS CHECKPOINT [--threads 2]
      A minimal FastAPI + open_clip + faiss server answering `POST /search` with the request
      and answer shapes of `clip serve` (`{"text": …, "k": 10}` → `{"index", "results": [{"id",
      "score"}]}`). Each request is tokenised, encoded, normalised and searched on its own: a
      plain (sync) FastAPI route, run on FastAPI's thread pool, no batching across requests.
      Prints `listening on http://127.0.0.1:PORT` once the socket is bound.
"""

import argparse
import json
import os
import socket
import sys


def read_vectors(path):
    """The `embeddings` tensor of a safetensors file, as a contiguous f32 numpy array."""
    import numpy as np
    from safetensors.numpy import load_file

    tensors = load_file(path)
    if "embeddings" not in tensors:
        sys.exit(f"{path}: no `embeddings` tensor (found {sorted(tensors)})")
    v = np.ascontiguousarray(tensors["embeddings"], dtype=np.float32)
    if v.ndim != 2:
        sys.exit(f"{path}: `embeddings` has shape {v.shape}, expected [N, DIM]")
    return v


def flat_ip_index(vectors):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def convert(hf_dir, out):
    """HF CLIPModel text tower → open_clip CLIP state dict (names and layouts mapped)."""
    import open_clip
    import torch
    from safetensors.torch import load_file, save_file

    hf = load_file(os.path.join(hf_dir, "model.safetensors"))
    model = open_clip.create_model("ViT-B-32-quickgelu")
    sd = model.state_dict()
    t = "text_model."
    new = {
        "token_embedding.weight": hf[t + "embeddings.token_embedding.weight"],
        "positional_embedding": hf[t + "embeddings.position_embedding.weight"],
        "ln_final.weight": hf[t + "final_layer_norm.weight"],
        "ln_final.bias": hf[t + "final_layer_norm.bias"],
        # HF: y = W x (nn.Linear, no bias); open_clip: y = x @ P.
        "text_projection": hf["text_projection.weight"].T.contiguous(),
        "logit_scale": hf["logit_scale"],
    }
    layers = sum(1 for k in sd if k.endswith(".attn.in_proj_weight") and not k.startswith("visual"))
    for i in range(layers):
        h = f"{t}encoder.layers.{i}."
        o = f"transformer.resblocks.{i}."
        new[o + "attn.in_proj_weight"] = torch.cat(
            [hf[h + f"self_attn.{p}_proj.weight"] for p in "qkv"]
        )
        new[o + "attn.in_proj_bias"] = torch.cat([hf[h + f"self_attn.{p}_proj.bias"] for p in "qkv"])
        pairs = {
            "ln_1": "layer_norm1",
            "ln_2": "layer_norm2",
            "attn.out_proj": "self_attn.out_proj",
            "mlp.c_fc": "mlp.fc1",
            "mlp.c_proj": "mlp.fc2",
        }
        for oc, hn in pairs.items():
            for w in ("weight", "bias"):
                new[f"{o}{oc}.{w}"] = hf[f"{h}{hn}.{w}"]
    for k, v in new.items():
        if k not in sd or sd[k].shape != v.shape:
            sys.exit(f"convert: {k} has shape {tuple(v.shape)}, open_clip expects "
                     f"{tuple(sd[k].shape) if k in sd else 'no such key'}")
        sd[k] = v
    save_file({k: v.contiguous() for k, v in sd.items()}, out)
    print(f"wrote {out}: {len(new)} text-tower tensors from {hf_dir}, {layers} layers")


def clip_back_index(vectors_path, out_dir):
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    v = read_vectors(vectors_path)
    os.makedirs(os.path.join(out_dir, "metadata"), exist_ok=True)
    faiss.write_index(flat_ip_index(v), os.path.join(out_dir, "image.index"))
    captions = pa.array([str(i) for i in range(v.shape[0])])
    pq.write_table(pa.table({"caption": captions}), os.path.join(out_dir, "metadata", "0.parquet"))
    with open(os.path.join(out_dir, "indices_paths.json"), "w", encoding="utf-8") as f:
        json.dump({"bench": out_dir}, f)
    print(f"wrote {out_dir}: {v.shape[0]} x {v.shape[1]} IndexFlatIP and metadata")


def serve(vectors_path, checkpoint, threads):
    import numpy as np
    import open_clip
    import torch
    import uvicorn
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel

    torch.set_num_threads(threads)
    vectors = read_vectors(vectors_path)
    index = flat_ip_index(vectors)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=checkpoint).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32-quickgelu")
    name = os.path.basename(vectors_path)

    class SearchRequest(BaseModel):
        text: str
        k: int = 10

    app = FastAPI()

    @app.post("/search")
    def search(req: SearchRequest):
        if not 1 <= req.k <= 10_000:
            raise HTTPException(400, f"k = {req.k}: give 1 to 10000")
        with torch.inference_mode():
            feats = model.encode_text(tokenizer([req.text]))
            feats = feats / feats.norm(dim=-1, keepdim=True)
        scores, ids = index.search(feats.numpy().astype(np.float32), req.k)
        results = [{"id": int(i), "score": float(s), "name": str(int(i))} for i, s in zip(ids[0], scores[0]) if i >= 0]
        return {"index": name, "results": results}

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, workers=1)
    uvicorn.Server(config).run(sockets=[sock])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("hf_dir")
    c.add_argument("out")
    b = sub.add_parser("clip-back-index")
    b.add_argument("vectors")
    b.add_argument("out_dir")
    s = sub.add_parser("serve")
    s.add_argument("vectors")
    s.add_argument("checkpoint")
    s.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.cmd == "convert":
        convert(a.hf_dir, a.out)
    elif a.cmd == "clip-back-index":
        clip_back_index(a.vectors, a.out_dir)
    else:
        serve(a.vectors, a.checkpoint, a.threads)


if __name__ == "__main__":
    main()
