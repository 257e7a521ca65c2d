"""Bundled data of the reference model: the BPE tokenizer file and a small English corpus."""
