"""seqbert: BERT-style models for sequences of words and of user behaviour."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from seqbert import Recommender, TextModel` without importing torch for `import seqbert`
    if name == "Recommender":
        from seqbert.recommender import Recommender

        return Recommender
    if name == "TextModel":
        from seqbert.text_model import TextModel

        return TextModel
    raise AttributeError(f"module 'seqbert' has no attribute {name!r}")
