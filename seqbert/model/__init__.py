from seqbert.model.bert import Bert, BertConfig
from seqbert.model.heads import (
    IGNORE_INDEX,
    BertForPreTraining,
    BertForSequenceClassification,
    BertForTokenClassification,
    ClassifierOutput,
    MLMHead,
    Pooler,
    PreTrainingOutput,
)
from seqbert.model.hf import load_hf_model, save_hf_model

__all__ = [
    "IGNORE_INDEX",
    "Bert",
    "BertConfig",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "ClassifierOutput",
    "MLMHead",
    "Pooler",
    "PreTrainingOutput",
    "load_hf_model",
    "save_hf_model",
]
