#!/usr/bin/env python3
"""ort_quality.py MODEL_DIR DATA_DIR [--ours F32_JSON] [--work DIR] [--batch N] [--processor pil|torchvision]

What ONNX Runtime's dynamic int8 quantization (quantize_dynamic, QInt8 weights: what immich and
fastembed ship) costs in retrieval quality, measured the way `clip eval` measures our own int8:

1. PyTorch fp32 (transformers CLIPModel) embeds DATA_DIR exactly as `clip eval --labels
   DATA_DIR/labels.tsv` does: images sorted by path, alpha composited on white, the model's
   preprocessor_config.json; each image's `.txt` caption, deduplicated; tokenizer.json padded
   and truncated to max_position_embeddings; zero-shot over the sorted label names with
   "a photo of {}.". Metrics follow crates/retrieval (eval.rs, zeroshot.rs), ties included.
   With --ours (our `clip eval --precision f32 --json`), the largest gap to it is printed.
2. Exports the vision and text towers to ONNX (opset 17, legacy exporter, as
   /work/shared/bench/ort_embed.py), quantizes both with quantize_dynamic(QInt8) and scores
   ORT fp32 and ORT int8 (2 intra-op threads) on the same inputs. quantize_dynamic quantizes
   activations per tensor per run, so int8 results depend a little on --batch (default 128, as
   clip eval's; immich embeds one image at a time).
3. Prints a markdown table, and how close ORT int8 embeddings stay to ORT fp32 (cosine).
"""
import argparse, json, logging, os, sys, tempfile, time, warnings

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import CLIPModel
from transformers.utils import logging as hf_logging
from onnxruntime.quantization import QuantType, quantize_dynamic

TEMPLATE = "a photo of {}."  # clip eval's default template
THREADS = 2

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("model_dir")
ap.add_argument("data_dir")
ap.add_argument("--ours", help="JSON of `clip eval --precision f32 --json --labels …` to check against")
ap.add_argument("--work", help="where the .onnx files go (default: a temporary folder)")
ap.add_argument("--batch", type=int, default=128, help="items per forward pass (clip eval's default)")
ap.add_argument("--processor", choices=["pil", "torchvision"], default="pil",
                help="transformers image backend: CLIPImageProcessorPil (Pillow bicubic, as ours) "
                     "or CLIPImageProcessor (torchvision, transformers 5's default)")
args = ap.parse_args()
BATCH = args.batch
torch.set_num_threads(THREADS)
warnings.filterwarnings("ignore")                  # exporter tracer/deprecation chatter
logging.getLogger().setLevel(logging.ERROR)        # quantize_dynamic's "consider pre-processing"
hf_logging.disable_progress_bar()
t_start = time.time()


def log(msg):
    print(f"[{time.time() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---- data, as clip-data's folder scan reads it ----
data = args.data_dir
files = sorted(f for f in os.listdir(data) if f.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))
               and os.path.exists(os.path.join(data, os.path.splitext(f)[0] + ".txt")))
captions = [open(os.path.join(data, os.path.splitext(f)[0] + ".txt"), encoding="utf-8").read().strip()
            for f in files]
distinct, image_caption = [], []          # retrieval::group_captions: first appearance order
index = {}
for c in captions:
    image_caption.append(index.setdefault(c, len(distinct)))
    if len(distinct) < len(index):
        distinct.append(c)
image_caption = np.array(image_caption)
label_of = {}
with open(os.path.join(data, "labels.tsv"), encoding="utf-8") as fh:
    head = fh.readline().rstrip("\n").split("\t")
    for line in fh:
        row = dict(zip(head, line.rstrip("\n").split("\t")))
        label_of[row["filepath"]] = row["label"]
classes = sorted(set(label_of.values()))
zs_rows = np.array([i for i, f in enumerate(files) if f in label_of])
zs_labels = np.array([classes.index(label_of[files[i]]) for i in zs_rows])
prompts = [TEMPLATE.format(c) for c in classes]


def load_rgb(path):
    """vision_encoder::decode_image: RGBA (palettes expanded) composited on white, integer-rounded."""
    a = np.asarray(Image.open(path).convert("RGBA"), dtype=np.uint32)
    rgb, alpha = a[..., :3], a[..., 3:]
    return Image.fromarray(((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8))


if args.processor == "pil":
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Proc
else:
    from transformers import CLIPImageProcessor as Proc
proc = Proc.from_pretrained(args.model_dir)
pixels = np.concatenate([proc(images=[load_rgb(os.path.join(data, f)) for f in files[i:i + BATCH]],
                              return_tensors="np")["pixel_values"] for i in range(0, len(files), BATCH)]
                        ).astype(np.float32)

cfg = json.load(open(os.path.join(args.model_dir, "config.json")))
ctx = cfg["text_config"].get("max_position_embeddings", 77)
tok = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
eot = tok.token_to_id("<|endoftext|>")
tok.enable_padding(length=ctx, pad_id=eot, pad_token="<|endoftext|>")  # as text_encoder::ClipTokenizer
tok.enable_truncation(max_length=ctx)


def encode(texts):
    enc = tok.encode_batch(texts)
    return (np.array([e.ids for e in enc], dtype=np.int64),
            np.array([e.attention_mask for e in enc], dtype=np.int64))


cap_ids, cap_mask = encode(distinct)
cls_ids, cls_mask = encode(prompts)
log(f"{len(files)} images, {len(distinct)} distinct captions, {len(classes)} classes, "
    f"context {ctx}, processor {Proc.__name__}")


# ---- metrics, as crates/retrieval ----
def unit(x):
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1), 0).astype(np.float32)


def rank0(s, best):
    """Stable descending order: strictly higher scores, plus equal ones at lower indices."""
    return int((s > s[best]).sum() + (s[:best] == s[best]).sum())


def metrics(img, cap, cls):
    img, cap, cls = unit(img), unit(cap), unit(cls)   # one template: class embedding = unit prompt
    sim = img @ cap.T
    i2t = np.array([rank0(sim[i], image_caption[i]) + 1 for i in range(len(img))])
    t2i = []
    for c in range(len(cap)):
        imgs = np.flatnonzero(image_caption == c)
        if len(imgs):
            col = sim[:, c]
            t2i.append(rank0(col, imgs[np.argmax(col[imgs])]) + 1)   # first best correct image
    t2i = np.array(t2i)
    zs = img[zs_rows] @ cls.T
    r = np.array([rank0(zs[k], zs_labels[k]) for k in range(len(zs_rows))])
    return {"image_to_text_R@1": np.mean(i2t <= 1), "image_to_text_R@10": np.mean(i2t <= 10),
            "text_to_image_R@1": np.mean(t2i <= 1), "text_to_image_R@10": np.mean(t2i <= 10),
            "zero_shot_top1": np.mean(np.argmax(zs, axis=1) == zs_labels), "zero_shot_top5": np.mean(r < 5)}


# ---- PyTorch fp32 ----
model = CLIPModel.from_pretrained(args.model_dir).eval()


class Vision(torch.nn.Module):
    def __init__(s, m): super().__init__(); s.m = m
    # transformers 5 returns an output object; .pooler_output is the projected embedding
    def forward(s, pixel_values):
        return s.m.visual_projection(s.m.vision_model(pixel_values=pixel_values).pooler_output)


class Text(torch.nn.Module):
    def __init__(s, m): super().__init__(); s.m = m
    def forward(s, input_ids, attention_mask):
        out = s.m.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return s.m.text_projection(out.pooler_output)


vision, text = Vision(model).eval(), Text(model).eval()


def batched(fn, *arrays):
    return np.concatenate([fn(*(a[i:i + BATCH] for a in arrays)) for i in range(0, len(arrays[0]), BATCH)])


with torch.no_grad():
    pt_v = lambda p: vision(torch.from_numpy(p)).numpy()
    pt_t = lambda i, m: text(torch.from_numpy(i), torch.from_numpy(m)).numpy()
    emb = {"PyTorch fp32": (batched(pt_v, pixels), batched(pt_t, cap_ids, cap_mask), batched(pt_t, cls_ids, cls_mask))}
log("PyTorch fp32 embedded")

# ---- ONNX export, dynamic int8, ORT sessions ----
work = args.work or tempfile.mkdtemp(prefix="ort_quality.")
os.makedirs(work, exist_ok=True)
paths = {}
for name, mod, inputs, in_names, out_name in [
        ("vision", vision, (torch.from_numpy(pixels[:2]),), ["pixel_values"], "image_embeds"),
        ("text", text, (torch.from_numpy(cap_ids[:2]), torch.from_numpy(cap_mask[:2])),
         ["input_ids", "attention_mask"], "text_embeds")]:
    fp32, int8 = os.path.join(work, f"{name}.onnx"), os.path.join(work, f"{name}-int8.onnx")
    axes = {n: {0: "batch"} for n in in_names + [out_name]}
    torch.onnx.export(mod, inputs, fp32, input_names=in_names, output_names=[out_name],
                      dynamic_axes=axes, opset_version=17, dynamo=False)
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    paths[name] = (fp32, int8)
log(f"exported and quantized to {work}")

so = ort.SessionOptions()
so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
for k, label in enumerate(["ORT fp32", "ORT int8"]):
    sv = ort.InferenceSession(paths["vision"][k], so, providers=["CPUExecutionProvider"])
    st = ort.InferenceSession(paths["text"][k], so, providers=["CPUExecutionProvider"])
    ov = lambda p: sv.run(None, {"pixel_values": p})[0]
    ot = lambda i, m: st.run(None, {"input_ids": i, "attention_mask": m})[0]
    emb[label] = (batched(ov, pixels), batched(ot, cap_ids, cap_mask), batched(ot, cls_ids, cls_mask))
    log(f"{label} embedded")

# ---- report ----
res = {k: metrics(*v) for k, v in emb.items()}
names = {"image_to_text_R@1": "image→text R@1", "image_to_text_R@10": "image→text R@10",
         "text_to_image_R@1": "text→image R@1", "text_to_image_R@10": "text→image R@10",
         "zero_shot_top1": f"zero-shot top-1 ({len(classes)} classes)", "zero_shot_top5": "zero-shot top-5"}
print(f"\nONNX Runtime {ort.__version__}, quantize_dynamic(weight_type=QInt8), {len(files)} images "
      f"({os.path.basename(os.path.normpath(data))}), batch {BATCH}, {Proc.__name__}; values in %\n")
print("| metric | PyTorch fp32 | ORT fp32 | ORT int8 | ORT int8 − ORT fp32 (points) |")
print("|---|---:|---:|---:|---:|")
for k, n in names.items():
    a, b, c = (100 * res[m][k] for m in ["PyTorch fp32", "ORT fp32", "ORT int8"])
    print(f"| {n} | {a:.2f} | {b:.2f} | {c:.2f} | {c - b:+.2f} |")
for what, j in [("image", 0), ("caption", 1)]:
    cos = (unit(emb["ORT int8"][j]) * unit(emb["ORT fp32"][j])).sum(1)
    print(f"\ncosine(ORT int8, ORT fp32) per {what} embedding: min {cos.min():.4f}, mean {cos.mean():.4f}", end="")
cos = (unit(emb["ORT fp32"][0]) * unit(emb["PyTorch fp32"][0])).sum(1)
print(f"\ncosine(ORT fp32, PyTorch fp32) per image embedding: min {cos.min():.6f}")
if args.ours:
    ours = json.load(open(args.ours))
    gaps = {k: abs(res["PyTorch fp32"][k] - ours[k]) for k in names if k in ours}
    worst = max(gaps, key=gaps.get)
    print(f"PyTorch fp32 vs our clip eval f32: largest gap {100 * gaps[worst]:.4f} points ({worst}); "
          f"{'agree' if gaps[worst] <= 1e-3 else 'DISAGREE'} to 1e-3")
log("done")
