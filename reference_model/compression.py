"""Tokenizer compression P: V -> V' (ENGRAM.md section 2.1), the public demo's
``CompressedTokenizer`` on any local ``tokenizers`` tokenizer.

Every raw id is decoded alone and keyed:

* if the decoded text holds U+FFFD (a partial UTF-8 sequence of a byte-level token), the key
  is the raw token string (``id_to_token``), so distinct byte fragments never merge;
* otherwise the key is the normalised text (NFKC, NFD, strip accents, lower-case, collapse
  space/tab/CR/LF runs to one space, strip, but a whitespace-only token stays one space);
* or the decoded text itself when normalisation leaves nothing.

Raw ids with equal keys share a compressed id; compressed ids are handed out in first-seen
order of raw id. Negative ids (padding markers) pass through unchanged.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Regex, Tokenizer, normalizers

# Marks a token that is exactly one space so Strip() keeps it (the demo's trick).
SENTINEL = "\uE000"
REPLACEMENT_CHAR = "\ufffd"


def engram_normalizer() -> normalizers.Normalizer:
    """The demo's normaliser, verbatim."""
    return normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.NFD(),
        normalizers.StripAccents(),
        normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[ \t\r\n]+"), " "),
        normalizers.Replace(Regex(r"^ $"), SENTINEL),
        normalizers.Strip(),
        normalizers.Replace(SENTINEL, " "),
    ])


def compression_key(decoded: str, raw_token: str | None, normalizer: normalizers.Normalizer) -> str:
    """The key a raw id is grouped by (see the module docstring)."""
    if REPLACEMENT_CHAR in decoded:
        if raw_token is None:
            raise ValueError(f"token decoding to {decoded!r} has no raw token string to key on")
        return raw_token
    norm = normalizer.normalize_str(decoded)
    return norm if norm else decoded


class Compressor:
    """The compression map of one tokenizer: ``lookup[raw_id] -> compressed id``.

    Models ENGRAM.md 2.1 exactly (the demo's rules). ``__call__`` maps an integer array of raw
    ids (any shape, numpy or torch) to compressed ids; negative ids pass through.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.normalizer = engram_normalizer()
        self.raw_vocab_size = tokenizer.get_vocab_size()
        key_to_new: dict[str, int] = {}
        lookup = np.empty(self.raw_vocab_size, dtype=np.int64)
        for tid in range(self.raw_vocab_size):
            decoded = tokenizer.decode([tid], skip_special_tokens=False)
            key = compression_key(decoded, tokenizer.id_to_token(tid), self.normalizer)
            lookup[tid] = key_to_new.setdefault(key, len(key_to_new))
        self.lookup_table = lookup
        self.compressed_vocab_size = len(key_to_new)

    @classmethod
    def from_file(cls, path=None) -> "Compressor":
        """The compressor of a local tokenizers JSON file (default: the bundled tokenizer)."""
        from reference_model.tokenizer import load_tokenizer

        return cls(load_tokenizer(path))

    @property
    def ratio(self) -> float:
        """Compressed / raw vocabulary size (the paper reports 0.77 for its 128k tokenizer)."""
        return self.compressed_vocab_size / self.raw_vocab_size

    def report(self) -> dict:
        """The measured compression as plain values."""
        return {
            "raw_vocab_size": self.raw_vocab_size,
            "compressed_vocab_size": self.compressed_vocab_size,
            "ratio": self.ratio,
            "reduction": 1.0 - self.ratio,
        }

    def __len__(self) -> int:
        return self.compressed_vocab_size

    def __call__(self, ids):
        import torch

        if isinstance(ids, torch.Tensor):
            return torch.from_numpy(self(ids.detach().cpu().numpy())).to(ids.device)
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.size and arr.max() >= self.raw_vocab_size:
            raise ValueError(
                f"token id {int(arr.max())} is outside the tokenizer's vocabulary of "
                f"{self.raw_vocab_size} ids"
            )
        out = arr.copy()
        valid = arr >= 0
        out[valid] = self.lookup_table[arr[valid]]
        return out
