"""On-disk caches under paths.cache_dir: token ids per split, and pooled encoder outputs per text.

Both are content-addressed (the key hashes everything the value depends on), written
atomically (temporary file + rename), and safe with concurrent readers and writers:
a writer only ever adds complete files, a reader ignores anything unfinished.

    <cache_dir>/tokens/<key>.npz                 one file per (tokenizer, max_length, texts)
    <cache_dir>/features/<model key>/<uuid>.npz  chunks of {sha1(text): pooled vector}

Size: token ids ~ 4 bytes x tokens; features 4 x hidden size bytes per text (MiniLM:
1.5 kB a text, ~67 MB for all GoEmotions splits). Delete the folder to clear it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import uuid
import zipfile
from pathlib import Path

import numpy as np
import torch

from emotrain.io import atomic_write

log = logging.getLogger(__name__)
_FINGERPRINTS: dict[int, str] = {}


def content_key(*parts) -> str:
    """sha256 over the parts' string forms (bytes as they are)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def texts_digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the tokenizer's full definition (vocab, normaliser, special tokens)."""
    key = id(tokenizer)
    if key not in _FINGERPRINTS:
        backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
        definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
        _FINGERPRINTS[key] = content_key(type(tokenizer).__name__, definition)
    return _FINGERPRINTS[key]


def _save_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()), binary=True)


def _load_npz(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        KeyError,
    ) as e:  # a damaged cache file is recomputed, never trusted
        log.warning("ignoring unreadable cache file %s (%s)", path, type(e).__name__)
        return None


class TokenCache:
    def __init__(self, cache_dir: str | Path | None):
        self.dir = Path(cache_dir) / "tokens" if cache_dir else None

    def encode(self, tokenizer, texts: list[str], max_length: int, encode_fn) -> list[np.ndarray]:
        """Token ids per text, from the cache when the same tokenizer saw the same texts before."""
        if self.dir is None:
            return encode_fn(tokenizer, texts, max_length)
        key = content_key("tokens-v1", tokenizer_fingerprint(tokenizer), max_length, texts_digest(texts))
        path = self.dir / f"{key}.npz"
        if path.exists():
            z = _load_npz(path)
            if z is not None and len(z["offsets"]) == len(texts) + 1:
                ids, off = z["ids"], z["offsets"]
                return [ids[off[i] : off[i + 1]] for i in range(len(texts))]
        seqs = encode_fn(tokenizer, texts, max_length)
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in seqs], out=offsets[1:])
        ids = np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, dtype=np.int32)
        try:
            _save_npz(path, ids=ids, offsets=offsets)
        except OSError as e:  # a read-only or full cache must not stop training
            log.warning("could not write token cache %s (%s); continuing without it", path, e)
        return seqs


def encoder_fingerprint(model) -> str:
    """Hash of the encoder's weights: identifies the backbone exactly (incl. a seeded random init)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def digest_matrix(digests: list[bytes]) -> np.ndarray:
    # uint8 rows, not numpy "S20" strings: those drop trailing NUL bytes of a digest.
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 20)


class FeatureCache:
    """Pooled encoder outputs of a frozen encoder, keyed by model key + text."""

    def __init__(self, cache_dir: str | Path | None, model_key: str):
        self.model_key = model_key
        self.dir = Path(cache_dir) / "features" / model_key[:32] if cache_dir else None

    def _load_all(self) -> dict[bytes, np.ndarray]:
        table: dict[bytes, np.ndarray] = {}
        if self.dir is None or not self.dir.is_dir():
            return table
        for path in sorted(self.dir.glob("*.npz")):  # unfinished writes are hidden temp files
            z = _load_npz(path)
            if z is None:
                continue
            for k, v in zip(z["keys"], z["features"]):
                table[k.tobytes()] = v
        return table

    def lookup(self, texts: list[str], compute) -> tuple[np.ndarray, int]:
        """Features for `texts`; `compute(missing_indices)` fills the gaps. Returns (features, #computed)."""
        keys = [
            hashlib.sha1(self.model_key.encode() + b"\0" + t.encode("utf-8", "surrogatepass")).digest() for t in texts
        ]
        table = self._load_all()
        missing = sorted({i for i, k in enumerate(keys) if k not in table})
        if missing:
            new = compute(missing)
            for i, row in zip(missing, new):
                table[keys[i]] = row
            if self.dir is not None:
                try:
                    _save_npz(
                        self.dir / f"{uuid.uuid4().hex}.npz",
                        keys=digest_matrix([keys[i] for i in missing]),
                        features=np.asarray(new, dtype=np.float32),
                    )
                except OSError as e:
                    log.warning("could not write feature cache in %s (%s); continuing without it", self.dir, e)
        return np.stack([table[k] for k in keys]).astype(np.float32), len(missing)


def frozen_features(
    model,
    encoded: dict,
    texts: dict,
    cache: FeatureCache,
    *,
    pad_id: int,
    batch_size: int,
    mp,
    device,
    show_progress: bool,
) -> dict:
    """Pooled outputs of the frozen encoder for every split ({name: EncodedSplit}), computed once and cached on disk."""
    from emotrain.console import FILE_ONLY, progress
    from emotrain.training.batching import EncodedSplit, make_loader

    out = {}
    model.eval()
    for name, data in encoded.items():

        @torch.no_grad()
        def compute(indices, data=data, name=name):
            subset = EncodedSplit([data.input_ids[i] for i in indices], {})
            loader = make_loader(subset, pad_id, batch_size, shuffle=False, group_by_length=True, seed=0)
            feats = np.zeros((len(indices), model.encoder.config.hidden_size), dtype=np.float32)
            for batch in progress(
                loader, desc=f"encoding {name} (frozen encoder)", unit="batches", enabled=show_progress
            ):
                with mp.autocast():
                    pooled = model.encode(batch["input_ids"].to(device), batch["attention_mask"].to(device))
                feats[batch["indices"].numpy()] = pooled.float().cpu().numpy()
            return feats

        out[name], computed = cache.lookup(texts[name], compute)
        log.info(
            "frozen-encoder features for %s: %d from cache, %d computed",
            name,
            len(texts[name]) - computed,
            computed,
            extra=FILE_ONLY,
        )
    model.train()
    return out
