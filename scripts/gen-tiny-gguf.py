#!/usr/bin/env python3
"""Generates tiny Llama models as GGUF files, for running a real llama.cpp server on CPU.

The models have random weights (deterministic from a seed) and a small SentencePiece-style
vocabulary in their metadata: control tokens, all 256 byte tokens (so any text tokenizes,
through byte fallback), the printable ASCII characters and common English words with a
leading space marker, so the load generator's random prompts of common words come out at
one token per word and hit exact lengths. A ChatML template lets /v1/chat/completions work.

Output, in --out:
    tiny-llama-<size>-f16.gguf   2-D weights in F16 (norms in F32)
    tiny-llama-<size>-q8_0.gguf  2-D weights in Q8_0 (norms in F32)

The output is deterministic: the same gguf package version and this file give the same bytes.
A stamp file records what was generated; a second run with nothing changed does nothing.

Run with the Python that scripts/setup-llamacpp.sh prepares (it has the pinned `gguf`):
    $EVALCTL_CACHE/venv/bin/python scripts/gen-tiny-gguf.py --out $EVALCTL_CACHE/models
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import gguf
    import numpy as np
except ImportError as err:
    sys.exit(
        f"gen-tiny-gguf: error: {err}; run it with the Python that scripts/setup-llamacpp.sh "
        "prepares: $EVALCTL_CACHE/venv/bin/python (default ~/.cache/evalctl/venv/bin/python)"
    )

# Bump when the generated files change in any way (vocabulary, metadata, layout).
FORMAT_VERSION = 1
SEED = 20261123
CONTEXT_LENGTH = 2048


@dataclass(frozen=True)
class Size:
    """Hyperparameters of one model size."""

    name: str
    embedding: int
    layers: int
    heads: int
    kv_heads: int
    feed_forward: int


# The names state the parameter count (checked in `main`).
SIZES = [
    Size("tiny-llama-0.5m", embedding=128, layers=2, heads=4, kv_heads=2, feed_forward=384),
    Size("tiny-llama-3.4m", embedding=256, layers=4, heads=8, kv_heads=4, feed_forward=768),
]

QUANTS = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

# The space marker of SentencePiece vocabularies (U+2581).
SPACE = "\u2581"

# Common English words, each one token (with its leading space marker).
from tiny_words import WORDS  # noqa: E402  (scripts/ is on sys.path: this file runs from it)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of the shared vocabulary."""
    tokens: list[str] = []
    types: list[int] = []
    T = gguf.TokenType
    for tok, kind in [
        ("<unk>", T.UNKNOWN),
        ("<s>", T.CONTROL),
        ("</s>", T.CONTROL),
        ("<|im_start|>", T.CONTROL),
        ("<|im_end|>", T.CONTROL),
    ]:
        tokens.append(tok)
        types.append(kind)
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(T.BYTE)
    pieces = [SPACE] + [chr(c) for c in range(0x21, 0x7F)]
    # Every prefix of each word, so SentencePiece's pairwise merges can build the word.
    for word in WORDS:
        marked = SPACE + word
        pieces.extend(marked[:i] for i in range(2, len(marked) + 1))
    seen = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(T.NORMAL)
    # Longer pieces score higher, so merges prefer whole words.
    scores = [0.0 if t != T.NORMAL else float(len(tok)) - 100.0 for tok, t in zip(tokens, types)]
    return tokens, scores, [int(t) for t in types]


def tensors(size: Size, vocab: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """The model's tensors in float32, numpy shape (rows, columns) as llama.cpp expects."""
    d, ff = size.embedding, size.feed_forward
    head_dim = d // size.heads
    kv = size.kv_heads * head_dim

    def weight(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0.0, 0.02, size=(rows, cols)).astype(np.float32)

    def norm() -> np.ndarray:
        return np.ones(d, dtype=np.float32)

    out = [("token_embd.weight", weight(vocab, d))]
    for i in range(size.layers):
        out += [
            (f"blk.{i}.attn_norm.weight", norm()),
            (f"blk.{i}.attn_q.weight", weight(d, d)),
            (f"blk.{i}.attn_k.weight", weight(kv, d)),
            (f"blk.{i}.attn_v.weight", weight(kv, d)),
            (f"blk.{i}.attn_output.weight", weight(d, d)),
            (f"blk.{i}.ffn_norm.weight", norm()),
            (f"blk.{i}.ffn_gate.weight", weight(ff, d)),
            (f"blk.{i}.ffn_up.weight", weight(ff, d)),
            (f"blk.{i}.ffn_down.weight", weight(d, ff)),
        ]
    # No output.weight: llama.cpp ties the output projection to token_embd.
    out.append(("output_norm.weight", norm()))
    return out


def write_model(path: Path, size: Size, quant: str, vocab) -> int:
    """Writes one GGUF file; returns its parameter count."""
    qtype, ftype = QUANTS[quant]
    tokens, scores, types = vocab
    # The same seed for every quantization of a size: q8_0 is f16's weights, quantized.
    rng = np.random.default_rng([SEED, SIZES.index(size)])
    weights = tensors(size, len(tokens), rng)

    tmp = path.with_suffix(".gguf.tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_name(f"{size.name} (random weights, evalctl test model)")
    writer.add_file_type(int(ftype))
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(size.embedding)
    writer.add_block_count(size.layers)
    writer.add_feed_forward_length(size.feed_forward)
    writer.add_head_count(size.heads)
    writer.add_head_count_kv(size.kv_heads)
    writer.add_rope_dimension_count(size.embedding // size.heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)
    writer.add_chat_template(CHATML)

    params = 0
    for name, data in weights:
        params += data.size
        if data.ndim == 1:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return params


def label(params: int) -> str:
    """A parameter count as the size part of a model name: 0.5m, 3.4m, 16m."""
    millions = params / 1e6
    return f"{millions:.1f}m" if millions < 10 else f"{millions:.0f}m"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the .gguf files")
    parser.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    vocab = vocabulary()
    spec = repr(
        (FORMAT_VERSION, SEED, gguf.__name__, _gguf_version(), [asdict(s) for s in SIZES],
         sorted(QUANTS), vocab)
    )
    digest = hashlib.sha256(spec.encode()).hexdigest()
    stamp = args.out / ".tiny-llama-stamp"
    files = [args.out / f"{s.name}-{q}.gguf" for s in SIZES for q in QUANTS]
    if not args.force and all(f.exists() for f in files):
        if stamp.exists() and stamp.read_text().strip() == digest:
            print(f"gen-tiny-gguf: models are up to date in {args.out}", file=sys.stderr)
            return 0

    for size in SIZES:
        for quant in QUANTS:
            path = args.out / f"{size.name}-{quant}.gguf"
            params = write_model(path, size, quant, vocab)
            if not size.name.endswith("-" + label(params)):
                print(
                    f"gen-tiny-gguf: error: {size.name} has {params} parameters; "
                    f"rename it to end in -{label(params)}",
                    file=sys.stderr,
                )
                return 1
            print(
                f"gen-tiny-gguf: wrote {path.name}: {params} parameters, "
                f"{len(vocab[0])} tokens, {path.stat().st_size} bytes",
                file=sys.stderr,
            )
    stamp.write_text(digest + "\n")
    return 0


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


if __name__ == "__main__":
    sys.exit(main())
