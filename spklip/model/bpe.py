"""CLIP's byte-level BPE tokenizer, re-implemented (49408 tokens, ``<|startoftext|>`` ... ``<|endoftext|>``).

The merges file ``bpe_simple_vocab_16e6.txt.gz`` ships inside the open-clip-torch wheel (installed --no-deps); it is
located through the import machinery without importing open_clip (which needs torchvision).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from functools import lru_cache
from pathlib import Path

import regex
import torch

VOCAB_SIZE = 49408
_PATTERN = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                         regex.IGNORECASE)


def default_bpe_path() -> Path:
    """Path of CLIP's merges file inside the installed open-clip-torch package, or a clear error."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("text.kind=clip-text needs CLIP's BPE file from open-clip-torch; install it with "
                                "`pip install --no-deps open-clip-torch==3.3.0` (make install does)")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise FileNotFoundError(f"CLIP BPE file missing: {path}")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """Reversible byte -> printable unicode character map (GPT-2/CLIP), so BPE never sees whitespace/control bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


class ClipBPE:
    """Tokenise text to CLIP ids: lower-cased, whitespace-normalised, byte-level BPE, sot/eot added."""

    def __init__(self, path: str | Path | None = None):
        lines = gzip.open(path or default_bpe_path(), "rt", encoding="utf-8").read().split("\n")
        merges = [tuple(line.split()) for line in lines[1: 49152 - 256 - 2 + 1]]  # 48894 merges
        self.byte_encoder = bytes_to_unicode()
        base = list(self.byte_encoder.values())
        vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges] + ["<|startoftext|>",
                                                                                   "<|endoftext|>"]
        if len(vocab) != VOCAB_SIZE:
            raise ValueError(f"CLIP BPE vocabulary has {len(vocab)} tokens, expected {VOCAB_SIZE}")
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        self._cache: dict[str, str] = {}

    def _bpe(self, token: str) -> list[str]:
        if token in self._cache:
            return self._cache[token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Text -> BPE ids without sot/eot."""
        text = " ".join(html.unescape(html.unescape(text)).split()).lower()
        ids = []
        for token in regex.findall(_PATTERN, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(token))
        return ids

    def __call__(self, texts: list[str], context_length: int = 77) -> torch.Tensor:
        """``[len(texts), context_length]`` int64: sot, ids, eot, zero padding; too long -> truncated, eot kept last."""
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot] + self.encode(text)[: context_length - 2] + [self.eot]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


@lru_cache(maxsize=2)
def load_bpe(path: str | None = None) -> ClipBPE:
    """The tokenizer, built once per process."""
    return ClipBPE(path)
