"""Tiny random encoders of each supported family, saved into a temporary Hugging Face hub cache.

The cache is laid out as `huggingface_hub` writes it (`HF_HOME/hub/models--ORG--NAME/refs/main` naming a commit,
`snapshots/COMMIT/` holding the files), so `backbone=hf backbone.name=ORG/NAME` finds it offline exactly as it
would find a model downloaded with `hf download`. Each family gets its own tokenizer kind: WordPiece (BERT,
DistilBERT, ELECTRA), byte-level BPE with <s>/</s> (RoBERTa) and a SentencePiece-style Unigram (DeBERTa-v2/v3).
"""

from __future__ import annotations

import csv
import hashlib
import re
import warnings
from pathlib import Path

from emotrain.data.sample import SAMPLE_DIR

ORG = "emotrain-test"
FAMILIES = ("bert", "roberta", "distilbert", "deberta-v2", "electra")
HIDDEN, LAYERS, HEADS, FFN = 32, 2, 2, 64


def _sample_texts() -> list[str]:
    with open(SAMPLE_DIR / "train.csv", newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


def _words(texts) -> list[str]:
    seen: dict[str, None] = {}
    for text in texts:
        for w in re.findall(r"\w+|[^\w\s]", text.lower()):
            seen.setdefault(w, None)
    return list(seen)


def _wordpiece_vocab(texts) -> dict[str, int]:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for w in _words(texts) for c in w})
    tokens += chars + [f"##{c}" for c in chars] + [w for w in _words(texts) if len(w) > 1]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def _tokenizer(family: str, texts):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BertTokenizer, DebertaV2Tokenizer, DistilBertTokenizer, ElectraTokenizer, RobertaTokenizer

    if family in ("bert", "distilbert", "electra"):
        cls = {"bert": BertTokenizer, "distilbert": DistilBertTokenizer, "electra": ElectraTokenizer}[family]
        return cls(vocab=_wordpiece_vocab(texts), do_lower_case=True)
    if family == "roberta":
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(texts, trainer)
        return RobertaTokenizer(vocab=bpe.get_vocab(), merges=_bpe_merges(bpe))
    if family == "deberta-v2":
        pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        words = _words(texts)
        chars = sorted({c for w in words for c in w})
        vocab = [(p, 0.0) for p in pieces] + [("▁", -2.0)]
        vocab += [(f"▁{w}", -1.0 - 0.01 * len(w)) for w in words] + [(c, -5.0) for c in chars]
        vocab += [(f"▁{c}", -4.0) for c in chars]
        return DebertaV2Tokenizer(vocab=list(dict((p, (p, s)) for p, s in vocab).values()), do_lower_case=True)
    raise ValueError(family)


def _bpe_merges(bpe) -> list[tuple[str, str]]:
    import json

    model = json.loads(bpe.to_str())["model"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def _model(family: str, vocab_size: int, pad_id: int):
    from transformers import (
        BertConfig,
        BertModel,
        DebertaV2Config,
        DebertaV2Model,
        DistilBertConfig,
        DistilBertModel,
        ElectraConfig,
        ElectraModel,
        RobertaConfig,
        RobertaModel,
    )

    common = dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        pad_token_id=pad_id,
    )
    if family == "bert":
        return BertModel(BertConfig(max_position_embeddings=128, **common))
    if family == "roberta":
        # Position ids start after the padding index: 130 positions give 128 usable ones.
        return RobertaModel(RobertaConfig(max_position_embeddings=130, type_vocab_size=1, **common))
    if family == "electra":
        return ElectraModel(ElectraConfig(embedding_size=16, max_position_embeddings=128, **common))
    if family == "deberta-v2":
        # v3-style: relative attention only, no token types.
        config = DebertaV2Config(
            relative_attention=True,
            position_biased_input=False,
            pos_att_type=["p2c", "c2p"],
            max_relative_positions=-1,
            position_buckets=32,
            type_vocab_size=0,
            max_position_embeddings=128,
            **common,
        )
        return DebertaV2Model(config)
    if family == "distilbert":
        config = DistilBertConfig(
            vocab_size=vocab_size, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN, pad_token_id=pad_id
        )
        return DistilBertModel(config)
    raise ValueError(family)


def repo_id(family: str) -> str:
    return f"{ORG}/tiny-{family}"


def cache_family(family: str, hf_home: Path, *, seed: int = 0) -> str:
    """Save a tiny random `family` encoder and its tokenizer into the hub cache under `hf_home`; its repo id."""
    import torch

    rid = repo_id(family)
    repo = Path(hf_home) / "hub" / ("models--" + rid.replace("/", "--"))
    if (repo / "refs" / "main").is_file():
        return rid
    texts = _sample_texts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = _tokenizer(family, texts)
        torch.manual_seed(seed)
        model = _model(family, len(tokenizer), tokenizer.pad_token_id)
    commit = hashlib.sha1(rid.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(snapshot))
    tokenizer.save_pretrained(str(snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return rid
