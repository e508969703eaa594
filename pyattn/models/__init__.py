"""Model families on pretrained weights."""

from pathlib import Path

from .bart import BartModel, Seq2SeqModel
from .bert import BertModel
from .gpt2 import GPT2Model
from .gru_seq2seq import GRUSeq2Seq, Seq2Seq, Translation
from .llama import MODEL_TYPES as LLAMA_TYPES
from .llama import LlamaModel
from .pretrained import read_config
from .sentence import SentenceEncoder
from .transformer import Seq2SeqTransformer
from .whisper import Whisper

FAMILIES = {
    "bert": BertModel,
    "gpt2": GPT2Model,
    "bart": BartModel,
    "marian": BartModel,
    **{kind: LlamaModel for kind in LLAMA_TYPES},
}


def from_pretrained(path, dtype=None):
    """A Hugging Face model folder (config.json + model.safetensors) as the pyattn model of its model_type.
    dtype: the weight type of its matrices ("float32", "float16", "bfloat16", "int8", "auto"; None: float32)."""
    folder = Path(path)
    cfg = read_config(folder)
    kind = cfg.get("model_type")
    if not isinstance(kind, str) or kind not in FAMILIES:
        raise ValueError(f"{folder}: unsupported model_type {kind!r}; pyattn supports {sorted(FAMILIES)}")
    return FAMILIES[kind].from_pretrained(folder, dtype)


__all__ = [
    "BartModel",
    "BertModel",
    "GRUSeq2Seq",
    "FAMILIES",
    "GPT2Model",
    "LlamaModel",
    "Seq2SeqModel",
    "Seq2SeqTransformer",
    "Seq2Seq",
    "SentenceEncoder",
    "Translation",
    "Whisper",
    "from_pretrained",
]
