"""Text towers: CLIP BPE ids, end-of-text pooling, MiniLM offline + freezing, any local HF model, class prompts."""

import pytest
import torch
import torch.nn.functional as F

from spklip.config import TextCfg
from spklip.model import create_model
from spklip.model.bpe import VOCAB_SIZE, load_bpe
from spklip.model.text import ClipTextTower, HFTextTower, _load_hf, minilm_path


def test_clip_bpe_matches_clip_token_ids():
    tok = load_bpe()
    assert len(tok.encoder) == VOCAB_SIZE
    ids = tok(["a photo of a cat"], context_length=10)[0].tolist()
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407, 0, 0, 0]  # open_clip's SimpleTokenizer ids
    long = tok(["word " * 100], context_length=8)[0]
    assert long[0] == tok.sot and long[-1] == tok.eot  # truncated, but still ends with end-of-text


def test_clip_text_pools_at_the_end_token():
    torch.manual_seed(0)
    tower = ClipTextTower(TextCfg(kind="clip-text", width=32, layers=2, heads=2, context_length=16), 8).eval()
    texts = ["a spike video of diving", "run"]
    with torch.no_grad():
        out = tower(texts)
        tokens = tower.tokenizer(texts, 16)
        x = tower.transformer(tower.token_embedding(tokens) + tower.pos, tower.causal_mask)
        ends = [len(tower.tokenizer.encode(t)) + 1 for t in texts]  # sot + words -> eot index
        want = tower.proj(tower.ln_final(x[torch.arange(2), torch.tensor(ends)]))
    torch.testing.assert_close(out, want)
    with torch.no_grad():  # the last word matters (the authors' argmax-of-id pooling could ignore it)
        assert not torch.allclose(tower(["a spike video of diving"]), tower(["a spike video of running"]))


def test_minilm_is_loaded_once_frozen_by_default_and_384_wide():
    before = _load_hf.cache_info().misses
    a = HFTextTower(TextCfg(), 16)
    b = HFTextTower(TextCfg(finetune="last-n", finetune_layers=1), 16)
    assert _load_hf.cache_info().misses - before <= 1  # two towers, at most one load from disk
    assert a.encoder.config.hidden_size == 384
    assert not any(p.requires_grad for p in a.encoder.parameters()) and a.proj.weight.requires_grad
    trainable = {n.split(".")[2] for n, p in b.encoder.named_parameters() if p.requires_grad}
    assert trainable == {"5"}  # only the last of MiniLM's 6 layers
    a.train()
    assert not a.encoder.training  # frozen encoder stays in eval (no dropout)
    assert a.encoder is not b.encoder  # each tower owns its copy


def test_any_local_hf_model_and_clear_error_for_unknown_names(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel
    tok = AutoTokenizer.from_pretrained(minilm_path())
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tower = HFTextTower(TextCfg(kind="hf", pretrained=str(tmp_path), finetune="full"), 8)
    out = tower(["hello", "a much longer sentence here"])
    assert out.shape == (2, 8) and tower.encoder.config.hidden_size == 32
    assert all(p.requires_grad for p in tower.encoder.parameters())
    with pytest.raises(ValueError, match="not a local folder and not in the Hugging Face cache"):
        HFTextTower(TextCfg(kind="hf", pretrained="no-such-org/no-such-model"), 8)
    with pytest.raises(ValueError, match="needs model.text.pretrained"):
        HFTextTower(TextCfg(kind="hf"), 8)


def test_class_embeddings_average_templates_and_are_cached_until_training():
    torch.manual_seed(0)
    model = create_model("spklip-tiny", text={"templates": ["a spike video of {}.", "{} seen by a spike camera"]})
    model.eval()
    names = ["digit 3", "digit 7", "digit 9"]
    with torch.no_grad():
        emb = model.class_embeddings(names)
        prompts = [t.format(n) for n in names for t in model.cfg.text.templates]
        want = F.normalize(model.encode_text(prompts).view(3, 2, -1).mean(1), dim=-1)
    torch.testing.assert_close(emb, want)
    assert model.class_embeddings(names) is emb  # cached
    model.train()
    model.eval()
    assert model.class_embeddings(names) is not emb  # train() invalidated the cache


def test_frozen_tower_encodes_each_distinct_string_once_and_gives_the_same_embeddings():
    torch.manual_seed(0)
    tower = HFTextTower(TextCfg(), 16).train()
    calls = []
    tower.encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    texts = ["the digit one moves left", "the digit two moves up", "the digit one moves left"]
    first = tower(texts)
    second = tower(texts[::-1] + ["a new caption"])
    assert len(calls) == 2  # the second call encoded only the new string
    with torch.no_grad():
        torch.testing.assert_close(tower.proj(tower.pooled(texts)), first)  # the cache changes no value
    torch.testing.assert_close(second[:3], first.flip(0))
    first.sum().backward()
    assert tower.proj.weight.grad is not None  # the projection still trains through cached features
    tuned = HFTextTower(TextCfg(finetune="last-n", finetune_layers=1), 16)
    calls.clear()
    tuned.encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    tuned(texts)
    tuned(texts)
    assert len(calls) == 2 and not tuned._cache  # a training encoder is never cached


def test_text_adapters_follow_every_block_and_need_clip_text():
    """``text.adapter_dim``: the authors' TextAdapter ``x + fc2(GELU(fc1(x)))`` after each CLIP text block."""
    torch.manual_seed(0)
    cfg = TextCfg(kind="clip-text", width=32, layers=2, heads=2, context_length=16, adapter_dim=16)
    tower = ClipTextTower(cfg, 8).eval()
    assert len(tower.adapters) == 2 and tower.adapters[0].fc1.out_features == 16
    assert all(not a.fc1.bias.any() and not a.fc2.bias.any() for a in tower.adapters)
    texts = ["diving", "golf swing"]
    with torch.no_grad():
        tokens = tower.tokenizer(texts, 16)
        x = tower.token_embedding(tokens) + tower.pos  # [B, L, width]
        for block, adapter in zip(tower.transformer.blocks, tower.adapters):
            h = block(x, tower.causal_mask)
            x = h + adapter.fc2(F.gelu(adapter.fc1(h)))
        eot = (tokens == tower.tokenizer.eot).int().argmax(dim=1)
        want = tower.proj(tower.ln_final(x[torch.arange(2), eot]))
        torch.testing.assert_close(tower(texts), want)
        plain = ClipTextTower(TextCfg(kind="clip-text", width=32, layers=2, heads=2, context_length=16), 8)
    assert plain.adapters is None and not any("adapters" in k for k in plain.state_dict())  # old checkpoints load
    out = tower.train()(texts)
    out.sum().backward()
    assert all(p.grad is not None for a in tower.adapters for p in a.parameters())
    with pytest.raises(ValueError, match="model.text.adapter_dim applies to kind=clip-text only"):
        TextCfg(kind="minilm", adapter_dim=8)
    with pytest.raises(ValueError, match=r"model.text.templates\[1\] must contain"):
        TextCfg(templates=("a {}", "no placeholder"))
