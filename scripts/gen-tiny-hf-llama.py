#!/usr/bin/env python3
"""Generates a tiny Llama model in Hugging Face format, for running a real vLLM server on CPU.

The model has random weights (deterministic from a seed) and a small byte-level BPE
vocabulary: special tokens, the 256 byte-level symbols (so any text tokenizes, one token per
byte at worst) and common English words, each both as a word of its own and with a leading
space. The BPE model has `ignore_merges` set and no merges: a pre-tokenized word that is in
the vocabulary is one token, any other word falls back to its bytes. So the load generator's
random prompts of common words (agent/loadgen/src/dataset.rs) come out at one token per word
and hit exact lengths, as with the GGUF models of scripts/gen-tiny-gguf.py (same word list).
A ChatML template in tokenizer_config.json lets /v1/chat/completions work.

Output, a directory in --out (the name states the parameter count):
    tiny-llama-hf-0.6m/config.json             LlamaForCausalLM, head_dim 64
    tiny-llama-hf-0.6m/model.safetensors       weights in float32 (serve with --dtype float32)
    tiny-llama-hf-0.6m/tokenizer.json          fast tokenizer (the `tokenizers` package)
    tiny-llama-hf-0.6m/tokenizer_config.json   special tokens and the ChatML chat_template
    tiny-llama-hf-0.6m/generation_config.json

Shape constraints: vLLM's CPU attention supports head sizes 32, 64, 80, ... (not 16), so the
model uses head_dim 64 (hidden 128, 2 query heads, 1 key/value head).

The output is deterministic: the same torch/safetensors/tokenizers versions and this file give
the same bytes. A stamp file records what was generated; a second run with nothing changed
does nothing.

Run with the Python of the vLLM environment that scripts/setup-vllm.sh prepares (it has
torch, safetensors and tokenizers):
    $EVALCTL_CACHE/vllm-venv/bin/python scripts/gen-tiny-hf-llama.py --out $EVALCTL_CACHE/models
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# Bump when the generated files change in any way (vocabulary, config, layout).
FORMAT_VERSION = 1
SEED = 20261207
CONTEXT_LENGTH = 2048
# float32: on CPUs without AVX-512 BF16 (such as the project's AVX2 machines) vLLM runs
# float32 several times faster than bfloat16 or float16, whose matmuls fall back to slow
# code. Note that vLLM's --dtype auto turns a float32 checkpoint into bfloat16: serve it
# with --dtype float32.
DTYPE_NAME = "float32"
LIBRARIES = ("torch", "numpy", "safetensors", "tokenizers")


@dataclass(frozen=True)
class Size:
    """Hyperparameters of one model size."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


# The name states the parameter count (checked in `main`). head_dim = hidden / heads = 64.
SIZE = Size("tiny-llama-hf-0.6m", hidden=128, layers=2, heads=2, kv_heads=1, intermediate=384)

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<pad>"]
UNK, BOS, EOS, IM_START, IM_END, PAD = range(len(SPECIALS))

# Common English words, each one token both alone and with a leading space: the list
# scripts/gen-tiny-gguf.py uses too.
from tiny_words import WORDS  # noqa: E402  (scripts/ is on sys.path: this file runs from it)

# The ChatML role names, so a chat's template text costs a few tokens, not one per byte.
ROLES = ["system", "user", "assistant"]

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_symbols() -> list[str]:
    """The 256 symbols of byte-level BPE (GPT-2's bytes_to_unicode), in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    symbols = {}
    extra = 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def vocabulary() -> list[str]:
    """Tokens in id order: specials, byte symbols, then each word alone and with a space."""
    space = byte_symbols()[ord(" ")]  # "Ġ"
    tokens = list(SPECIALS) + byte_symbols()
    seen = set(tokens)
    for word in dict.fromkeys(WORDS + ROLES):  # unique, in order
        for piece in (word, space + word):
            if piece not in seen:
                seen.add(piece)
                tokens.append(piece)
    return tokens


def tokenizer(tokens: list[str]):
    """The fast tokenizer (a `tokenizers.Tokenizer`)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=True, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # Like Llama: a BOS token before each prompt (when special tokens are added).
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
    )
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tok


def generable(tokens: list[str]) -> list[bool]:
    """Which tokens the model generates: the words with a leading space, nothing else."""
    space = byte_symbols()[ord(" ")]
    return [tok.startswith(space) and len(tok) > 1 for tok in tokens]


def tensors(size: Size, tokens: list[str]) -> dict:
    """The model's tensors (torch), with Hugging Face Llama names and [out, in] shapes.

    Random, except for one channel that steers the output: hidden dimension 0 of every
    token's embedding is 1 and no layer writes to it (row 0 of o_proj and down_proj is 0),
    so after the final norm it is about sqrt(hidden) for every position; the output
    projection (lm_head, not tied to the embeddings) has +1 in column 0 for the generable
    words and -1 for all other tokens. The other tokens' logits are then about 2 * sqrt(128)
    lower (at least 16 lower, measured on random inputs), so the model practically never
    generates them (their probability together stays under 1e-7 per token): no
    special tokens, no EOS (a generation always runs to max_tokens), no lone bytes (no
    partial UTF-8 held back by a streaming detokenizer). Every generated token is one
    " word" of text: a streamed chat has one content delta per token, and the text
    retokenizes to the same count.
    """
    import numpy as np
    import torch

    dtype = getattr(torch, DTYPE_NAME)
    rng = np.random.default_rng(SEED)
    vocab = len(tokens)
    d, ff = size.hidden, size.intermediate
    head_dim = d // size.heads
    kv = size.kv_heads * head_dim

    def random(rows: int, cols: int):
        return rng.normal(0.0, 0.02, size=(rows, cols)).astype(np.float32)

    def tensor(data):
        return torch.from_numpy(data).to(dtype).contiguous()

    def norm():
        return torch.ones(d, dtype=dtype)

    def keep_channel(data):  # no writes into the steering channel
        data[0, :] = 0.0
        return tensor(data)

    embed = random(vocab, d)
    embed[:, 0] = 1.0
    out = {"model.embed_tokens.weight": tensor(embed)}
    for i in range(size.layers):
        p = f"model.layers.{i}"
        out[f"{p}.input_layernorm.weight"] = norm()
        out[f"{p}.self_attn.q_proj.weight"] = tensor(random(d, d))
        out[f"{p}.self_attn.k_proj.weight"] = tensor(random(kv, d))
        out[f"{p}.self_attn.v_proj.weight"] = tensor(random(kv, d))
        out[f"{p}.self_attn.o_proj.weight"] = keep_channel(random(d, d))
        out[f"{p}.post_attention_layernorm.weight"] = norm()
        out[f"{p}.mlp.gate_proj.weight"] = tensor(random(ff, d))
        out[f"{p}.mlp.up_proj.weight"] = tensor(random(ff, d))
        out[f"{p}.mlp.down_proj.weight"] = keep_channel(random(d, ff))
    out["model.norm.weight"] = norm()
    head = random(vocab, d)
    head[:, 0] = np.where(generable(tokens), 1.0, -1.0)
    out["lm_head.weight"] = tensor(head)
    return out


def config(size: Size, vocab: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": size.hidden,
        "intermediate_size": size.intermediate,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "head_dim": size.hidden // size.heads,
        "hidden_act": "silu",
        "max_position_embeddings": CONTEXT_LENGTH,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "dtype": DTYPE_NAME,
        "torch_dtype": DTYPE_NAME,
    }


def tokenizer_config() -> dict:
    return {
        # The generic fast tokenizer: transformers uses tokenizer.json as it is.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIALS[BOS],
        "eos_token": SPECIALS[EOS],
        "unk_token": SPECIALS[UNK],
        "pad_token": SPECIALS[PAD],
        "additional_special_tokens": [SPECIALS[IM_START], SPECIALS[IM_END]],
        "model_max_length": CONTEXT_LENGTH,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHATML,
    }


def generation_config() -> dict:
    return {
        "bos_token_id": BOS,
        # </s> and, for chats, <|im_end|> end a generation (unless ignore_eos).
        "eos_token_id": [EOS, IM_END],
        "pad_token_id": PAD,
        "do_sample": False,
        "max_length": CONTEXT_LENGTH,
    }


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_model(dest: Path, size: Size, tokens: list[str]) -> int:
    """Writes the model directory (atomically replacing an old one); returns its parameters."""
    from safetensors.torch import save_file

    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = tensors(size, tokens)
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(tmp / "model.safetensors", 0o644)  # safetensors creates it 0600
    tokenizer(tokens).save(str(tmp / "tokenizer.json"), pretty=True)
    write_json(tmp / "config.json", config(size, len(tokens)))
    write_json(tmp / "tokenizer_config.json", tokenizer_config())
    write_json(tmp / "special_tokens_map.json", {
        "bos_token": SPECIALS[BOS],
        "eos_token": SPECIALS[EOS],
        "unk_token": SPECIALS[UNK],
        "pad_token": SPECIALS[PAD],
    })
    write_json(tmp / "generation_config.json", generation_config())
    # Models of earlier versions of this script (other sizes), so they do not pile up.
    for stale in dest.parent.glob("tiny-llama-hf-*"):
        if stale.name != dest.name and (stale / ".evalctl-stamp").exists():
            shutil.rmtree(stale)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return sum(t.numel() for t in weights.values())


def check_tokenizer(dest: Path) -> None:
    """Every word is one token, alone and after a space."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(dest / "tokenizer.json"))
    text = " ".join(WORDS)
    n = len(tok.encode(text, add_special_tokens=False).ids)
    if n != len(WORDS):
        raise SystemExit(
            f"gen-tiny-hf-llama: error: {len(WORDS)} words tokenize to {n} tokens, not one each"
        )


def label(params: int) -> str:
    """A parameter count as the size part of a model name: 0.5m, 3.4m, 16m."""
    millions = params / 1e6
    return f"{millions:.1f}m" if millions < 10 else f"{millions:.0f}m"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the model dir")
    parser.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    # The libraries are imported only when writing, so that an up-to-date run is quick.
    try:
        versions = [(lib, version(lib)) for lib in LIBRARIES]
    except PackageNotFoundError as err:
        print(
            f"gen-tiny-hf-llama: error: {err.name} is not installed; run this with the Python "
            "that scripts/setup-vllm.sh prepares: $EVALCTL_CACHE/vllm-venv/bin/python "
            "(default ~/.cache/evalctl/vllm-venv/bin/python)",
            file=sys.stderr,
        )
        return 1
    tokens = vocabulary()
    spec = repr((
        FORMAT_VERSION, SEED, CONTEXT_LENGTH, DTYPE_NAME, asdict(SIZE), tokens, CHATML, versions,
    ))
    digest = hashlib.sha256(spec.encode()).hexdigest()
    dest = args.out / SIZE.name
    stamp = dest / ".evalctl-stamp"
    if not args.force and stamp.exists() and stamp.read_text().strip() == digest:
        print(f"gen-tiny-hf-llama: {dest} is up to date", file=sys.stderr)
        return 0

    params = write_model(dest, SIZE, tokens)
    if not SIZE.name.endswith("-" + label(params)):
        print(
            f"gen-tiny-hf-llama: error: {SIZE.name} has {params} parameters; "
            f"rename it to end in -{label(params)}",
            file=sys.stderr,
        )
        return 1
    check_tokenizer(dest)
    stamp.write_text(digest + "\n")
    size = sum(f.stat().st_size for f in dest.iterdir())
    print(
        f"gen-tiny-hf-llama: wrote {dest}: {params} parameters, {len(tokens)} tokens, "
        f"{size} bytes",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
