"""Data: corpora -> tokenizers -> batches (numpy only; the model side is JAX).

corpus = load_corpus("dnd_spells")                    # corpora.py
tok = build_tokenizer("char", corpus.text)            # tokenizers.py
parts = split_by_fraction(tok.encode(corpus.text))    # batching.py
batches = TrainBatcher(parts["train"], batch_size=64, seq_len=128)
"""

from lstm_jax.data.batching import (
    TRAIN_MODES,
    Batch,
    TrainBatcher,
    count_eval_tokens,
    eval_batches,
    num_eval_batches,
    split_by_fraction,
)
from lstm_jax.data.corpora import (
    CORPORA,
    RECORD_SEPARATOR,
    Corpus,
    DownloadError,
    load_corpus,
)
from lstm_jax.data.tokenizers import (
    TOKENIZERS,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    build_tokenizer,
    load_tokenizer,
    tokenizer_from_json,
)

__all__ = [
    "CORPORA",
    "RECORD_SEPARATOR",
    "TOKENIZERS",
    "TRAIN_MODES",
    "Batch",
    "CharTokenizer",
    "Corpus",
    "DownloadError",
    "Tokenizer",
    "TrainBatcher",
    "WordTokenizer",
    "build_tokenizer",
    "count_eval_tokens",
    "eval_batches",
    "load_corpus",
    "load_tokenizer",
    "num_eval_batches",
    "split_by_fraction",
    "tokenizer_from_json",
]
