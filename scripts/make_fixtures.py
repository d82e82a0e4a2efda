#!/usr/bin/env python3
"""Generate the small, committed test fixtures under ``tests/fixtures/``.

What it writes (deterministic: fixed seeds, float32):

  tests/fixtures/images/img00..img11.*   12 small images: RGBA / LA PNGs with
                                         transparent regions, RGB, greyscale and
                                         palette PNGs (one palette with tRNS
                                         transparency), JPEG (quality 95) and
                                         lossless WebP, of several sizes
                                         (3x 40x40, 2x 48x48, others non-square).
  tests/fixtures/captions.txt            one caption per line (an empty line is an
                                         empty caption), UTF-8, single trailing "\\n".
  tests/fixtures/hf_tiny/                random ``transformers.CLIPModel`` with
                                         non-default sizes (config.json,
                                         model.safetensors) + preprocessor_config.json
                                         (non-default mean/std). No tokenizer here:
                                         the tests use models/tokenizer.json.
  tests/fixtures/openclip_tiny/          random ``open_clip`` CLIP (nn.GELU):
                                         open_clip_model.safetensors +
                                         open_clip_config.json (open_clip hub format).
  tests/fixtures/expected.safetensors    reference inputs/outputs:
      hf.pixel_values  [12,3,40,40] f32   hf.image_embeds [12,12] f32
      hf.input_ids     [M,20] i64         hf.text_embeds  [M,12] f32
      hf.logit_scale   []  f32
      oc.pixel_values  [12,3,48,48] f32   oc.image_embeds [12,12] f32
      oc.input_ids     [M,16] i64 (open_clip tokenizer, padded with 0)
      oc.hf_input_ids  [M,16] i64 (models/tokenizer.json, padded with 49407)
      oc.text_embeds   [M,12] f32         oc.logit_scale  []  f32
    (M = number of captions; embeddings are NOT L2-normalised.)
  tests/fixtures/VERSIONS.txt            library versions used.

Image preprocessing used for the expected pixel values: each file is opened
with PIL; anything with alpha (RGBA, LA, palette/other with a "transparency"
entry) is converted to RGBA and alpha-composited onto opaque white with
``PIL.Image.alpha_composite``, then converted to RGB (this is exactly what
transformers' ``convert_to_rgb`` does). Then transformers' PIL-backend CLIP
image processor: bicubic (PIL) resize of the shortest edge (the long edge is
``int(shortest * long / short)``, i.e. floored), center crop with offsets
``(size - crop) // 2``, rescale by 1/255, normalise with mean/std.

Run:
    python3 -m venv /tmp/peers
    /tmp/peers/bin/pip install torch transformers open-clip-torch numpy safetensors pillow
    /tmp/peers/bin/python scripts/make_tokenizer.py     # models/tokenizer.json (needed here)
    /tmp/peers/bin/python scripts/make_fixtures.py

Round-trip check of the Rust converter (not run by default):
    /tmp/peers/bin/python scripts/make_fixtures.py roundtrip target/release/clip
  runs ``CLIP_BIN convert --model tests/fixtures/openclip_tiny --out TMP`` and
  ``CLIP_BIN convert --model tests/fixtures/hf_tiny --out TMP2``, loads each
  output with ``transformers.CLIPModel.from_pretrained`` and checks the image /
  text features against expected.safetensors (relative L2 error <= 1e-4 per
  row). Prints PASS/FAIL and exits non-zero on failure.

Generated with the versions recorded in tests/fixtures/VERSIONS.txt
(first produced with torch 2.15.0, transformers 5.24.0, open_clip 3.3.0,
tokenizers 0.23.3, Pillow 13.0.0, numpy 2.4.6, safetensors 0.8.0).
"""

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "tests", "fixtures")
IMG_DIR = os.path.join(FIX, "images")
HF_DIR = os.path.join(FIX, "hf_tiny")
OC_DIR = os.path.join(FIX, "openclip_tiny")
EXPECTED = os.path.join(FIX, "expected.safetensors")
CAPTIONS = os.path.join(FIX, "captions.txt")
TOKENIZER = os.path.join(REPO, "models", "tokenizer.json")

BOS_ID, EOS_ID = 49406, 49407
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

HF_IMAGE, HF_CTX, HF_MEAN, HF_STD = 40, 20, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
OC_IMAGE, OC_CTX = 48, 16
EMBED_DIM = 12

HF_TEXT_CFG = dict(
    vocab_size=49408, hidden_size=16, intermediate_size=40, num_attention_heads=2,
    num_hidden_layers=2, max_position_embeddings=HF_CTX, hidden_act="gelu",
    bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID, projection_dim=EMBED_DIM,
)
HF_VISION_CFG = dict(
    image_size=HF_IMAGE, patch_size=8, hidden_size=32, intermediate_size=64,
    num_attention_heads=4, num_hidden_layers=2, hidden_act="quick_gelu", projection_dim=EMBED_DIM,
)
OC_MODEL_CFG = {
    "embed_dim": EMBED_DIM,
    "vision_cfg": {"image_size": OC_IMAGE, "patch_size": 12, "width": 36, "head_width": 12,
                   "mlp_ratio": 2.0, "layers": 2},
    "text_cfg": {"context_length": OC_CTX, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 2},
    "quick_gelu": False,
}

LONG_CAPTION = (
    "A very long caption that keeps going on and on about a sunny afternoon in a small "
    "harbour town where fishing boats painted red, blue and yellow rock gently against the "
    "wooden pier while seagulls circle overhead, children eat ice cream on the stone steps, "
    "an old man mends a net beside a stack of crates, a black and white cat sleeps on a warm "
    "windowsill above a bakery that smells of fresh bread, tourists take photographs of the "
    "lighthouse at the end of the breakwater, clouds drift slowly across the pale sky, and "
    "somewhere in the distance a church bell rings three times before the wind carries the "
    "sound out over the calm green water toward the islands on the horizon"
)

CAPTIONS_LIST = [
    "a photo of a cat",
    "A PHOTO of a Dog",
    "it's 3:45 p.m., isn't it?",
    "café crème",
    "",
    "日本語のテキスト",
    "🐶 dog emoji",
    LONG_CAPTION,
    "naïve Ünïcödé",
    "  two   spaces  ",
    "a red square on a white background",
    "Hello, World! 1234567890",
]


# --------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------

def smooth_rgb(w, h, rng):
    """A smooth-ish random RGB picture: a two-colour gradient plus blurred shapes."""
    from PIL import Image, ImageDraw, ImageFilter

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    t = (xx - w / 2) * math.cos(theta) + (yy - h / 2) * math.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    base = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img = Image.fromarray(np.clip(base + 0.5, 0, 255).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, x1 = sorted(rng.uniform(-0.2, 1.2, 2) * w)
        y0, y1 = sorted(rng.uniform(-0.2, 1.2, 2) * h)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse([x0, y0, x1 + 1, y1 + 1], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x1 + 1, y1 + 1], fill=colour)
        else:
            pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(3)]
            draw.polygon(pts, fill=colour)
    radius = max(0.6, min(w, h) / 25.0)
    return img.filter(ImageFilter.GaussianBlur(radius))


def alpha_mask(w, h, rng, mode):
    """Alpha channel with fully transparent, fully opaque and partially transparent parts."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if mode == "disc":  # opaque disc, soft edge, transparent corners
        cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
        r = np.hypot((xx - cx) / w, (yy - cy) / h)
        a = np.clip((0.45 - r) / 0.12, 0, 1) * 255
    elif mode == "ramp":  # horizontal ramp 0 -> 255 with a transparent band
        a = xx / max(w - 1, 1) * 255
        a[: max(1, h // 5)] = 0
    else:  # "blocks": checker of alpha levels 0 / 96 / 255
        levels = np.array([0, 96, 255, 255, 0, 180], np.float32)
        cell = max(3, min(w, h) // 4)
        a = levels[((xx // cell) + 2 * (yy // cell)).astype(np.int64) % len(levels)]
    return np.clip(a + 0.5, 0, 255).astype(np.uint8)


def make_images(rng):
    from PIL import Image

    os.makedirs(IMG_DIR, exist_ok=True)
    for f in os.listdir(IMG_DIR):
        if f.startswith("img"):
            os.remove(os.path.join(IMG_DIR, f))

    def rgba(w, h, mode):
        rgb = np.array(smooth_rgb(w, h, rng))
        return Image.fromarray(np.dstack([rgb, alpha_mask(w, h, rng, mode)]), "RGBA")

    specs = []  # (name, description)

    def save(idx, img, ext, desc, **kw):
        name = f"img{idx:02d}.{ext}"
        img.save(os.path.join(IMG_DIR, name), **kw)
        specs.append((name, desc))

    save(0, rgba(40, 40, "disc"), "png", "RGBA PNG 40x40, transparent corners")
    save(1, smooth_rgb(48, 48, rng), "png", "RGB PNG 48x48")
    save(2, smooth_rgb(64, 48, rng).convert("L"), "png", "greyscale (L) PNG 64x48")
    save(3, smooth_rgb(40, 40, rng).quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE),
         "png", "palette (P) PNG 40x40, 16 colours, no transparency")
    save(4, smooth_rgb(100, 80, rng), "jpg", "JPEG q95 4:4:4 100x80", quality=95, subsampling=0)
    save(5, smooth_rgb(48, 48, rng), "webp", "lossless WebP RGB 48x48", lossless=True, quality=100, method=6)
    save(6, rgba(30, 50, "ramp"), "png", "RGBA PNG 30x50, alpha ramp + transparent band")
    save(7, smooth_rgb(17, 23, rng), "png", "RGB PNG 17x23")
    save(8, smooth_rgb(200, 120, rng), "jpg", "JPEG q95 4:2:0 200x120", quality=95, subsampling=2)
    pal = smooth_rgb(40, 40, rng).quantize(colors=8, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    save(9, pal, "png", "palette (P) PNG 40x40 with tRNS (per-index alpha 0/64/160/255...)",
         transparency=bytes([0, 64, 160, 255, 255, 0, 255, 255]))
    save(10, rgba(23, 17, "blocks"), "png", "RGBA PNG 23x17, blocks of alpha 0/96/180/255")
    la = Image.merge("LA", (smooth_rgb(33, 60, rng).convert("L"),
                            Image.fromarray(alpha_mask(33, 60, rng, "disc"), "L")))
    save(11, la, "png", "greyscale+alpha (LA) PNG 33x60")
    return specs


def image_paths():
    return [os.path.join(IMG_DIR, f) for f in sorted(os.listdir(IMG_DIR)) if f.startswith("img")]


def has_alpha(img):
    return "A" in img.getbands() or img.info.get("transparency") is not None


def load_rgb_on_white(path):
    """PIL load; anything with transparency is alpha-composited onto opaque white."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if has_alpha(im):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")


def exact_composite(path):
    """Same compositing with an explicit formula round((c*a + 255*(255-a)) / 255), for the report."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if not has_alpha(im):
            return np.array(im.convert("RGB"))
        a = np.array(im.convert("RGBA")).astype(np.int64)
        c, al = a[..., :3], a[..., 3:4]
        return ((c * al + 255 * (255 - al) + 127) // 255).astype(np.uint8)


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------

def perturb(model, seed):
    """Overwrite every parameter so that no default value (1/0 norms, zero biases) hides a bug."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    done = {}
    with torch.no_grad():
        for mname, mod in model.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                full = f"{mname}.{pname}" if mname else pname
                if isinstance(mod, nn.LayerNorm):
                    new = 1.0 + 0.2 * randn(p.shape) if pname == "weight" else 0.1 * randn(p.shape)
                elif isinstance(mod, nn.Linear):
                    new = randn(p.shape) / math.sqrt(mod.in_features) if pname == "weight" else 0.1 * randn(p.shape)
                elif isinstance(mod, nn.Conv2d):
                    fan_in = p.shape[1] * p.shape[2] * p.shape[3] if pname == "weight" else 1
                    new = randn(p.shape) / math.sqrt(fan_in) if pname == "weight" else 0.1 * randn(p.shape)
                elif isinstance(mod, nn.Embedding):
                    new = 0.5 * randn(p.shape)
                elif isinstance(mod, nn.MultiheadAttention) and pname == "in_proj_weight":
                    new = randn(p.shape) / math.sqrt(p.shape[1])
                elif isinstance(mod, nn.MultiheadAttention) and pname == "in_proj_bias":
                    new = 0.1 * randn(p.shape)
                elif pname == "logit_scale":
                    new = torch.full(p.shape, 2.0)
                elif pname in ("class_embedding", "positional_embedding"):
                    new = 0.5 * randn(p.shape)
                elif pname in ("proj", "text_projection") and p.dim() == 2:  # used as x @ proj
                    new = randn(p.shape) / math.sqrt(p.shape[0])
                else:
                    raise RuntimeError(f"perturb: no rule for parameter {full} {tuple(p.shape)} in {type(mod)}")
                p.copy_(new)
                done[full] = True
    missing = [n for n, _ in model.named_parameters() if n not in done]
    if missing:
        raise RuntimeError(f"perturb: parameters not touched: {missing}")


def first_tensor(out):
    """get_*_features returns a tensor in transformers 4.x, an output object (pooler_output) in 5.x."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if getattr(out, "pooler_output", None) is not None:
        return out.pooler_output
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"unexpected output type {type(out)}")


def build_hf_model():
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=HF_TEXT_CFG, vision_config=HF_VISION_CFG,
                     projection_dim=EMBED_DIM, logit_scale_init_value=2.0)
    model = CLIPModel(cfg).float().eval()
    perturb(model, seed=1234)
    return model


def build_oc_model():
    import torch
    from open_clip.model import CLIP

    torch.manual_seed(0)
    c = OC_MODEL_CFG
    model = CLIP(embed_dim=c["embed_dim"], vision_cfg=dict(c["vision_cfg"]), text_cfg=dict(c["text_cfg"]),
                 quick_gelu=c["quick_gelu"]).float().eval()
    perturb(model, seed=5678)
    return model


def hf_image_processor(pil_backend, size, mean, std):
    import transformers

    cls = transformers.CLIPImageProcessorPil if pil_backend else transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
               image_mean=mean, image_std=std, do_resize=True, do_center_crop=True,
               do_rescale=True, do_normalize=True, do_convert_rgb=True)


def pixel_values(images, size, mean, std):
    import torch

    proc = hf_image_processor(True, size, mean, std)
    pv = proc(images=images, return_tensors="pt")["pixel_values"]
    return torch.as_tensor(pv).float().contiguous()


def hf_tokenizer():
    from transformers import CLIPTokenizerFast

    if not os.path.isfile(TOKENIZER):
        sys.exit(f"{TOKENIZER} missing: run scripts/make_tokenizer.py first")
    return CLIPTokenizerFast(tokenizer_file=TOKENIZER)


def check_hf_rows(ids, mask=None):
    """Each row: bos, tokens, eos, then only eos padding."""
    for r, row in enumerate(ids.tolist()):
        assert row[0] == BOS_ID, (r, row)
        e = row.index(EOS_ID)
        assert all(t == EOS_ID for t in row[e:]), (r, row)
        assert all(t not in (BOS_ID, EOS_ID) for t in row[1:e]), (r, row)
        if mask is not None:
            assert mask[r].tolist() == [1] * (e + 1) + [0] * (len(row) - e - 1), (r, mask[r])


def read_captions():
    with open(CAPTIONS, "r", encoding="utf-8", newline="") as f:
        text = f.read()
    assert text.endswith("\n") and not text.endswith("\n\n")
    return text[:-1].split("\n")


# --------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------

def generate():
    import PIL
    import safetensors
    import tokenizers
    import torch
    import transformers
    import open_clip
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(FIX, exist_ok=True)

    # ---------------- images + captions
    specs = make_images(np.random.default_rng(20240601))
    with open(CAPTIONS, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(CAPTIONS_LIST) + "\n")
    captions = read_captions()
    assert captions == CAPTIONS_LIST
    assert len(LONG_CAPTION.split()) > 100
    paths = image_paths()
    assert len(paths) == 12
    rgb_images = [load_rgb_on_white(p) for p in paths]

    print("images:")
    for (name, desc), p, im in zip(specs, paths, rgb_images):
        from PIL import Image
        with Image.open(p) as raw:
            mode = raw.mode
        diff = np.abs(exact_composite(p).astype(int) - np.array(im).astype(int)).max()
        print(f"  {name:10s} {im.size[0]:3d}x{im.size[1]:<3d} PIL mode {mode:5s} {desc}"
              f"  (|PIL composite - exact formula| max {diff})")

    # ---------------- models
    hf_model = build_hf_model()
    oc_model = build_oc_model()

    # hf_tiny
    if os.path.isdir(HF_DIR):
        shutil.rmtree(HF_DIR)
    try:
        hf_model.save_pretrained(HF_DIR, safe_serialization=True)
    except TypeError:  # transformers >= 5 always writes safetensors
        hf_model.save_pretrained(HF_DIR)
    for f in os.listdir(HF_DIR):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(HF_DIR, f))
    hf_image_processor(False, HF_IMAGE, HF_MEAN, HF_STD).save_pretrained(HF_DIR)
    assert sorted(os.listdir(HF_DIR)) == ["config.json", "model.safetensors", "preprocessor_config.json"], \
        os.listdir(HF_DIR)

    # openclip_tiny
    if os.path.isdir(OC_DIR):
        shutil.rmtree(OC_DIR)
    os.makedirs(OC_DIR)
    param_names = {n for n, _ in oc_model.named_parameters()}
    sd = {k: v.detach().clone().contiguous() for k, v in oc_model.state_dict().items() if k in param_names}
    dropped = sorted(set(oc_model.state_dict()) - param_names)
    save_file(sd, os.path.join(OC_DIR, "open_clip_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(OC_DIR, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": OC_MODEL_CFG,
                   "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}, f, indent=2)
        f.write("\n")

    # Reload both from disk so the expected values come from exactly the saved weights.
    from transformers import CLIPModel
    from safetensors.torch import load_file
    hf_model = CLIPModel.from_pretrained(HF_DIR).float().eval()
    oc_model = build_oc_model()
    oc_model.load_state_dict(load_file(os.path.join(OC_DIR, "open_clip_model.safetensors")), strict=True)
    oc_model.eval()

    # ---------------- expected values
    tok = hf_tokenizer()
    out = {}
    with torch.no_grad():
        # HF side
        pv = pixel_values(rgb_images, HF_IMAGE, HF_MEAN, HF_STD)
        assert pv.shape == (12, 3, HF_IMAGE, HF_IMAGE), pv.shape
        # the processor's own RGB conversion must agree with our compositing
        from PIL import Image
        raw = []
        for p in paths:
            with Image.open(p) as im:
                im.load()
                raw.append(im.copy())
        pv_raw = pixel_values(raw, HF_IMAGE, HF_MEAN, HF_STD)
        assert torch.equal(pv, pv_raw), "processor on raw images differs from white compositing"
        tv = hf_image_processor(False, HF_IMAGE, HF_MEAN, HF_STD)(images=rgb_images, return_tensors="pt")
        tv_diff = (torch.as_tensor(tv["pixel_values"]).float() - pv).abs().max().item()

        out["hf.pixel_values"] = pv
        out["hf.image_embeds"] = first_tensor(hf_model.get_image_features(pixel_values=pv)).float()

        enc = tok(captions, padding="max_length", max_length=HF_CTX, truncation=True, return_tensors="pt")
        ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
        check_hf_rows(ids, mask)
        out["hf.input_ids"] = ids
        te_mask = first_tensor(hf_model.get_text_features(input_ids=ids, attention_mask=mask)).float()
        te_nomask = first_tensor(hf_model.get_text_features(input_ids=ids)).float()
        mask_diff = (te_mask - te_nomask).abs().max().item()
        assert mask_diff <= 1e-5, mask_diff
        out["hf.text_embeds"] = te_mask
        out["hf.logit_scale"] = hf_model.logit_scale.detach().clone().float()

        # open_clip side
        opv = pixel_values(rgb_images, OC_IMAGE, OPENAI_MEAN, OPENAI_STD)
        assert opv.shape == (12, 3, OC_IMAGE, OC_IMAGE)
        out["oc.pixel_values"] = opv
        out["oc.image_embeds"] = oc_model.encode_image(opv).float()
        oc_ids = open_clip.tokenize(captions, context_length=OC_CTX).long()
        out["oc.input_ids"] = oc_ids
        out["oc.text_embeds"] = oc_model.encode_text(oc_ids).float()
        hf16 = tok(captions, padding="max_length", max_length=OC_CTX, truncation=True, return_tensors="pt")
        hf16_ids = hf16["input_ids"].long()
        check_hf_rows(hf16_ids, hf16["attention_mask"])
        out["oc.hf_input_ids"] = hf16_ids
        out["oc.logit_scale"] = oc_model.logit_scale.detach().clone().float()
        pad_diff = (oc_model.encode_text(hf16_ids) - out["oc.text_embeds"]).abs().max().item()

        # open_clip's own preprocessing, for information only
        from open_clip.transform import image_transform
        oc_tf = image_transform(OC_IMAGE, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
        oc_own = torch.stack([oc_tf(im) for im in rgb_images])
        oc_own_diff = (oc_own - opv).abs().amax(dim=(1, 2, 3))

    for k, v in out.items():
        assert torch.isfinite(v.float()).all(), k
        out[k] = v.detach().contiguous()
    save_file(out, EXPECTED, metadata={"format": "pt"})

    # ---------------- versions
    with open(os.path.join(FIX, "VERSIONS.txt"), "w") as f:
        f.write("Generated by scripts/make_fixtures.py with:\n")
        f.write(f"python {platform.python_version()}\n")
        f.write(f"torch {torch.__version__}\n")
        f.write(f"transformers {transformers.__version__}\n")
        f.write(f"open_clip {open_clip.__version__}\n")
        f.write(f"tokenizers {tokenizers.__version__}\n")
        f.write(f"safetensors {safetensors.__version__}\n")
        f.write(f"numpy {np.__version__}\n")
        f.write(f"Pillow {PIL.__version__}\n")

    # ---------------- report
    print("\nexpected.safetensors:")
    for k, v in out.items():
        extra = f" = {v.item():.6f}" if v.numel() == 1 else \
            f" absmax {v.float().abs().max().item():.3f} std {v.float().std().item():.3f}" if v.is_floating_point() else ""
        print(f"  {k:18s} {str(list(v.shape)):16s} {str(v.dtype):14s}{extra}")
    print(f"\nhf text embeds with vs without attention_mask: max |diff| = {mask_diff:.3g}")
    print(f"open_clip encode_text with eos padding (HF ids) vs 0 padding: max |diff| = {pad_diff:.3g}")
    print(f"transformers torchvision-backend CLIPImageProcessor vs PIL backend (hf): max |diff| = {tv_diff:.4f}")
    print("open_clip's own image_transform vs oc.pixel_values, per image max |diff|:",
          " ".join(f"{x:.3f}" for x in oc_own_diff.tolist()))

    print("\ntoken ids, open_clip vs HF tokenizer (up to and including the first eos):")
    same_all = True
    for i, cap in enumerate(captions):
        a = oc_ids[i].tolist()
        b = hf16_ids[i].tolist()
        a = a[: a.index(EOS_ID) + 1]
        b = b[: b.index(EOS_ID) + 1]
        same = a == b
        same_all &= same
        print(f"  [{i:2d}] {'same' if same else 'DIFF'} len {len(a):2d}  {cap[:40]!r}" + ("" if same else f"\n     oc {a}\n     hf {b}"))
    print("open_clip ids == HF ids for every caption:", same_all)
    print("hf  ids:", out["hf.input_ids"].tolist())
    print("oc  ids:", oc_ids.tolist())

    print(f"\nopen_clip state_dict (dropped non-parameter entries: {dropped}):")
    for k, v in sd.items():
        print(f"  {k:55s} {list(v.shape)}")

    from safetensors import safe_open
    with safe_open(os.path.join(HF_DIR, "model.safetensors"), "pt") as f:
        hf_keys = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    print(f"\nhf_tiny model.safetensors: {len(hf_keys)} tensors")
    for k, s in sorted(hf_keys.items()):
        print(f"  {k:70s} {s}")

    print("\nfiles:")
    total = 0
    for root, _, files in sorted(os.walk(FIX)):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            total += os.path.getsize(p)
            print(f"  {os.path.relpath(p, REPO):55s} {os.path.getsize(p):9d}")
    print(f"  total {total} bytes")


# --------------------------------------------------------------------------------------
# roundtrip
# --------------------------------------------------------------------------------------

def roundtrip(clip_bin):
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPModel

    torch.set_num_threads(1)
    exp = load_file(EXPECTED)
    ok = True

    def rel_err(a, b):
        a, b = a.double(), b.double()
        return ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).max().item()

    def convert_and_load(src, base):
        out_dir = os.path.join(base, "out")
        cmd = [clip_bin, "convert", "--model", src, "--out", out_dir]
        print("$", " ".join(cmd))
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout)
            print(r.stderr)
            raise RuntimeError(f"convert exited with {r.returncode}")
        print("  wrote:", sorted(os.listdir(out_dir)))
        model, info = CLIPModel.from_pretrained(out_dir, output_loading_info=True)
        problems = []
        for key in ("missing_keys", "mismatched_keys", "error_msgs"):
            if info.get(key):
                problems.append(f"{key}: {info[key]}")
        unexpected = [k for k in info.get("unexpected_keys", []) if not k.endswith("position_ids")]
        if unexpected:
            problems.append(f"unexpected_keys: {unexpected}")
        if problems:
            raise RuntimeError("from_pretrained reported: " + "; ".join(problems))
        return model.float().eval()

    checks = [
        ("openclip_tiny", OC_DIR, "oc.pixel_values", "oc.input_ids", "oc.image_embeds", "oc.text_embeds",
         "oc.logit_scale"),
        ("hf_tiny", HF_DIR, "hf.pixel_values", "hf.input_ids", "hf.image_embeds", "hf.text_embeds",
         "hf.logit_scale"),
    ]
    for name, src, pv_k, ids_k, img_k, txt_k, ls_k in checks:
        base = tempfile.mkdtemp(prefix=f"clip_roundtrip_{name}_")
        try:
            model = convert_and_load(src, base)
            with torch.no_grad():
                img = first_tensor(model.get_image_features(pixel_values=exp[pv_k]))
                txt = first_tensor(model.get_text_features(input_ids=exp[ids_k]))
            e_img, e_txt = rel_err(img, exp[img_k]), rel_err(txt, exp[txt_k])
            e_ls = abs(model.logit_scale.detach().double().reshape(()).item() - exp[ls_k].double().reshape(()).item())
            good = e_img <= 1e-4 and e_txt <= 1e-4 and e_ls <= 1e-6
            ok &= good
            print(f"  {name}: image rel-L2 max {e_img:.2e}, text rel-L2 max {e_txt:.2e}, "
                  f"|logit_scale diff| {e_ls:.2e} -> {'PASS' if good else 'FAIL'}")
        except Exception as e:  # report and continue with the next check
            ok = False
            print(f"  {name}: FAIL ({type(e).__name__}: {e})")
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    rt = sub.add_parser("roundtrip", help="check `CLIP_BIN convert` against expected.safetensors")
    rt.add_argument("clip_bin")
    args = ap.parse_args()
    if args.cmd == "roundtrip":
        sys.exit(roundtrip(os.path.abspath(args.clip_bin) if os.path.exists(args.clip_bin) else args.clip_bin))
    generate()


if __name__ == "__main__":
    main()
