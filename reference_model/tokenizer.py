"""The bundled byte-level BPE tokenizer (``data/tokenizer.json``) and how to rebuild it.

Trained offline with the Hugging Face ``tokenizers`` library on the bundled corpus
(:mod:`reference_model.data.corpus`), with exactly ``VOCAB_SIZE = 2048`` ids to match
``examples/models/tiny.yaml``. Special tokens come first and mirror the DeepSeek-V3 layout,
so raw id 2 is the pad token, which is ENGRAM.md's default ``pad_id = 2``:

    0 ``<s>`` (begin of sequence), 1 ``</s>`` (end of sequence), 2 ``<pad>``.

Byte-level pre-tokenisation covers every input (no unknown token is needed); ids 3..258 are
the 256 byte symbols and the rest are learned merges. Training is deterministic for a given
``tokenizers`` version (checked by rebuilding and comparing in the tests).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

DATA_DIR = Path(__file__).resolve().parent / "data"
TOKENIZER_PATH = DATA_DIR / "tokenizer.json"
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2


def train_tokenizer(texts: list[str] | None = None, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train the byte-level BPE on ``texts`` (default: the bundled corpus)."""
    from reference_model.data.corpus import corpus_documents

    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(
            f"vocab_size = {vocab_size} cannot hold the {len(SPECIAL_TOKENS)} special tokens "
            "and the 256 byte symbols"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts if texts is not None else corpus_documents(), trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(
            f"training produced {tok.get_vocab_size()} ids, not {vocab_size}: the corpus has too "
            "few distinct merges for that size"
        )
    return tok


def build_tokenizer_file(path: str | Path = TOKENIZER_PATH) -> Path:
    """Rebuild the bundled tokenizer file (``python -m reference_model.tokenizer``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    train_tokenizer().save(str(path))
    return path


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """A ``tokenizers`` JSON file: the bundled one by default, or any local file."""
    path = Path(path) if path is not None else TOKENIZER_PATH
    if not path.is_file():
        raise ValueError(f"{path}: no such tokenizer file (a tokenizers JSON file is expected)")
    return Tokenizer.from_file(str(path))


if __name__ == "__main__":
    print(build_tokenizer_file())
