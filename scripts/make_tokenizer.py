#!/usr/bin/env python3
"""Build ``models/tokenizer.json`` (the CLIP BPE tokenizer, 49408 tokens).

The vocabulary is OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz`` as shipped
inside the ``open_clip`` Python package (MIT licence, Copyright (c) 2021 OpenAI).

Steps:
  1. read the gzipped merges file; keep lines 1 .. 49152-256-2 (line 0 is a
     header), exactly the slice CLIP itself uses (48894 merges);
  2. vocab = 256 byte-level unicode symbols, the same 256 with ``</w>``, one
     entry per merge (the two halves joined), then ``<|startoftext|>`` and
     ``<|endoftext|>``  -> 49408 entries, bos = 49406, eos = 49407;
  3. write ``vocab.json`` + ``merges.txt`` into a temporary directory and load
     them with ``transformers.CLIPTokenizerFast`` (the tokenizers-backed
     tokenizer, which adds CLIP's normaliser / pre-tokeniser / post-processor);
  4. check it against two references on a list of captions: a small pure-Python
     BPE written here from CLIP's definition, and open_clip's ``SimpleTokenizer``;
  5. save only ``tokenizer.json`` into ``models/``.

Run:
    python3 -m venv /tmp/peers
    /tmp/peers/bin/pip install torch transformers open-clip-torch numpy safetensors pillow
    /tmp/peers/bin/python scripts/make_tokenizer.py

Note: from transformers 5 on there is no separate "slow" (pure-Python)
CLIPTokenizer any more -- ``CLIPTokenizer`` and ``CLIPTokenizerFast`` are the
same tokenizers-backed class. The pure-Python reference below takes the place
of the old slow tokenizer in the equivalence check.
"""

import gzip
import json
import os
import shutil
import sys
import tempfile
import unicodedata

import regex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "models")

VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BOS_ID, EOS_ID = 49406, 49407
N_MERGES = 49152 - 256 - 2  # 48894: the slice CLIP uses

# Captions used to cross-check the tokenizers (superset of the test captions).
TEST_CAPTIONS = [
    "a photo of a cat",
    "A PHOTO of a Dog",
    "",
    "  two   spaces  ",
    "it's 3:45 p.m., isn't it?",
    "café crème",
    "日本語のテキスト",
    "🐶 dog emoji",
    "naïve Ünïcödé",
    "Hello, World! 1234567890",
    "they'll say we've done it; I'm sure you'd agree they're right",
    "tabs\tand\nnewlines\r\nmixed",
    "hyphen-ated words & symbols #hashtag @user $100 50% 3.14",
    "a diagram of the quick brown fox jumping over the lazy dog " * 6,
]


def byte_symbols():
    """The 256 byte -> printable-unicode-char table of GPT-2/CLIP byte-level BPE.

    Printable Latin-1 bytes map to themselves; the remaining 68 bytes map, in
    increasing byte order, to code points 256, 257, ...
    Returns a list of (byte, char) in vocabulary order (printable ones first).
    """
    printable = [b for b in range(256)
                 if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    others = [b for b in range(256) if b not in set(printable)]
    table = [(b, chr(b)) for b in printable]
    table += [(b, chr(256 + k)) for k, b in enumerate(others)]
    return table


def bpe_file():
    import open_clip
    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.isfile(path):
        sys.exit(f"CLIP vocabulary not found at {path}")
    return path


def load_merges(path):
    with gzip.open(path, "rb") as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + N_MERGES]]
    assert len(merges) == N_MERGES and all(len(m) == 2 for m in merges)
    return merges


def build_vocab(merges):
    symbols = [c for _, c in byte_symbols()]
    tokens = symbols + [c + "</w>" for c in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    assert len(set(tokens)) == VOCAB_SIZE, "duplicate tokens"
    return {t: i for i, t in enumerate(tokens)}


class ReferenceBPE:
    """Plain-Python CLIP BPE, written from the algorithm's definition.

    Text cleaning: NFC, collapse whitespace, strip, lowercase (no ftfy/html
    unescaping -- those are open_clip extras, reported separately).
    """

    PATTERN = regex.compile(
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+")

    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.rank = {m: r for r, m in enumerate(merges)}
        self.byte_char = dict(byte_symbols())

    def _merge_word(self, word):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = self.rank.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = (parts[i], parts[i + 1]), r
            if best is None:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def encode(self, text):
        text = unicodedata.normalize("NFC", text)
        text = " ".join(text.split()).lower()
        ids = [BOS_ID]
        for piece in self.PATTERN.findall(text):
            if piece in (BOS, EOS):
                ids.append(self.vocab[piece])
                continue
            word = "".join(self.byte_char[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab[p] for p in self._merge_word(word))
        ids.append(EOS_ID)
        return ids


def main():
    import transformers
    from transformers import CLIPTokenizerFast

    path = bpe_file()
    merges = load_merges(path)
    vocab = build_vocab(merges)

    tmp = tempfile.mkdtemp(prefix="clip_tok_")
    try:
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            for a, b in merges:
                f.write(f"{a} {b}\n")

        tok = CLIPTokenizerFast.from_pretrained(tmp)
        # Round-trip through tokenizer.json, so the saved file is what we check.
        save_dir = os.path.join(tmp, "saved")
        tok.save_pretrained(save_dir)
        tok_json = os.path.join(save_dir, "tokenizer.json")
        tok = CLIPTokenizerFast(tokenizer_file=tok_json)

        # Basic invariants.
        assert len(tok) == VOCAB_SIZE, len(tok)
        assert tok.bos_token_id == BOS_ID and tok.eos_token_id == EOS_ID, (tok.bos_token_id, tok.eos_token_id)
        assert tok.pad_token_id == EOS_ID, tok.pad_token_id
        assert tok.convert_tokens_to_ids(BOS) == BOS_ID and tok.convert_tokens_to_ids(EOS) == EOS_ID
        assert tok.get_vocab() == vocab, "tokenizer vocabulary differs from the CLIP vocabulary"

        # Cross-check with the open_clip SimpleTokenizer's table (same file, same recipe).
        from open_clip.tokenizer import SimpleTokenizer
        simple = SimpleTokenizer()
        oc_vocab = dict(simple.encoder)
        assert [t for t, _ in sorted(oc_vocab.items(), key=lambda kv: kv[1])][:BOS_ID] == \
               [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:BOS_ID], \
            "vocab differs from open_clip's SimpleTokenizer vocab"

        ref = ReferenceBPE(vocab, merges)
        bad = 0
        for cap in TEST_CAPTIONS:
            hf_ids = tok(cap)["input_ids"]
            ref_ids = ref.encode(cap)
            oc_ids = [BOS_ID] + simple.encode(cap) + [EOS_ID]
            if hf_ids != ref_ids:
                bad += 1
                print(f"MISMATCH hf vs reference for {cap!r}:\n  hf  {hf_ids}\n  ref {ref_ids}")
            if hf_ids != oc_ids:
                bad += 1
                print(f"MISMATCH hf vs open_clip for {cap!r}:\n  hf  {hf_ids}\n  oc  {oc_ids}")
        if bad:
            sys.exit(f"{bad} tokenizer mismatches")
        print(f"hf tokenizer == reference BPE == open_clip SimpleTokenizer on {len(TEST_CAPTIONS)} captions")

        # Padding / truncation behaviour expected by the Rust side.
        enc = tok(["a dog", TEST_CAPTIONS[-1]], padding="max_length", max_length=8, truncation=True)
        assert enc["input_ids"][0] == [BOS_ID, ref.encode("a dog")[1], ref.encode("a dog")[2], EOS_ID] + [EOS_ID] * 4
        assert len(enc["input_ids"][1]) == 8 and enc["input_ids"][1][-1] == EOS_ID
        print("example:", tok("a photo of a cat")["input_ids"])

        os.makedirs(OUT_DIR, exist_ok=True)
        shutil.copyfile(tok_json, os.path.join(OUT_DIR, "tokenizer.json"))
        print(f"wrote {os.path.join(OUT_DIR, 'tokenizer.json')} "
              f"({os.path.getsize(os.path.join(OUT_DIR, 'tokenizer.json'))} bytes, "
              f"transformers {transformers.__version__})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
