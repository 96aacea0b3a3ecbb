"""Text in, tensors and embeddings out: the checkpoint's tokenizer and sentence embeddings in one call.

Needs the ``tokenizers`` library (``pip install 'tandem[text]'``).
"""

from .encode import encode
from .tokenizer import Encoding, Tokenizer

__all__ = ["Encoding", "Tokenizer", "encode"]
