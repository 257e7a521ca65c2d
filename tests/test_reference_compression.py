"""Tokenizer compression (ENGRAM.md 2.1): rules checked on hand-built tokenizers whose expected
maps are derived by hand, plus golden figures of the bundled tokenizer."""

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models

from reference_model.compression import Compressor
from reference_model.tokenizer import PAD_ID, VOCAB_SIZE, load_tokenizer, train_tokenizer


def word_tokenizer(tokens, byte_level=False):
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[0]))
    if byte_level:
        tok.decoder = decoders.ByteLevel()
    return tok


def test_normalisation_rules_by_hand():
    tokens = [
        "Hello", "hello", "HELLO", "héllo",  # case and accents -> "hello": 0
        " ", "\t", "  \n",                   # whitespace-only -> one space: 1
        "\ufb01", "fi",                      # NFKC ligature -> "fi": 2
        "x ", " x", "X",                     # strip and lower -> "x": 3
        "\u0301", "\u0300",                  # lone accents normalise to "": keyed on the text, 4 and 5
    ]
    comp = Compressor(word_tokenizer(tokens))
    assert comp.lookup_table.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 5]
    assert comp.compressed_vocab_size == 6
    assert comp.report()["ratio"] == pytest.approx(6 / 14)


def test_replacement_char_tokens_key_on_raw_string():
    # Byte-level symbols: "Ã" is byte 0xC3 and "Ä" 0xC4, each an incomplete UTF-8 sequence
    # (decodes to U+FFFD) -> keyed on the raw token, so they stay apart; "Ã©" is "é" -> "e".
    comp = Compressor(word_tokenizer(["Ã", "Ä", "Ã©", "e"], byte_level=True))
    assert comp.lookup_table.tolist() == [0, 1, 2, 2]


def test_negative_ids_pass_through_and_shapes_kept():
    comp = Compressor(word_tokenizer(["A", "a", "b"]))
    ids = np.array([[-1, 0, 1], [2, -5, 0]])
    assert comp(ids).tolist() == [[-1, 0, 0], [1, -5, 0]]
    assert comp(torch.tensor([[1, -1]])).tolist() == [[0, -1]]


def test_bad_ids_raise():
    comp = Compressor(word_tokenizer(["A", "a"]))
    with pytest.raises(ValueError, match="outside"):
        comp([2])
    with pytest.raises(ValueError, match="integers"):
        comp(np.array([0.5]))


def test_bundled_tokenizer():
    tok = load_tokenizer()
    assert tok.get_vocab_size() == VOCAB_SIZE == 2048
    assert tok.id_to_token(PAD_ID) == "<pad>"
    comp = Compressor(tok)
    # Golden: 2048 -> 1621 ids (20.8% fewer; the paper reports 23% for its 128k tokenizer).
    assert comp.compressed_vocab_size == 1621
    lut = comp.lookup_table
    assert lut[PAD_ID] == PAD_ID  # the specials are distinct and first
    assert set(lut.tolist()) == set(range(1621))
    assert all(lut[i] <= lut[:i].max() + 1 for i in range(1, len(lut)))  # first-seen order


def test_tokenizer_training_is_deterministic():
    a = train_tokenizer().to_str()
    assert a == train_tokenizer().to_str() == load_tokenizer().to_str()
