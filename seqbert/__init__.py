"""seqbert: BERT-style models for sequences of words and of user behaviour."""

__version__ = "0.1.0"
