"""Small real inputs for the collection tests: a tiny Gemma 2 and a word-level tokenizer."""

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from sae_lens_jumprelu.data.models import tiny_gemma2

BOS, EOS, PAD = 2, 1, 0


def tiny_model(seed: int = 0):
    return tiny_gemma2(seed=seed)


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A real Hugging Face fast tokenizer over ``words`` (ids from 4; 0-3 special as in Gemma)."""
    vocab = {"<pad>": PAD, "<eos>": EOS, "<bos>": BOS, "<unk>": 3}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def random_contexts(n: int, context: int = 16, seed: int = 0, vocab: int = 1000) -> torch.Tensor:
    """Contexts starting with BOS, as the corpus packs them; a few EOS/PAD inside."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, vocab, (n, context), generator=generator)
    tokens[:, 0] = BOS
    tokens[0, 5] = EOS
    tokens[1, 7] = PAD
    return tokens
