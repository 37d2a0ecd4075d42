"""Tokenizers trained locally with ``tokenizers`` on the world's language.

The world speaks a closed language (``workbench.data.language``), so one token per word is
both the smallest and the most readable tokenizer: a decoded sequence is the words the
gold oracle parses. The default one (:func:`world_tokenizer`) is word-level, wrapped as a
``PreTrainedTokenizerFast`` with the special tokens a VLM needs (padding, unknown, begin/end
of sequence, the image placeholder, the assistant turn marker) and a chat template, so the
same prompt code path serves the tiny model and any real HF VLM (whose processor brings its
own template).

Real checkpoints do not tokenize like that: they use byte-level BPE, where a word may be
several tokens, a leading space belongs to the next word's token, and merges can differ at the
joint of two strings. :func:`bpe_tokenizer` trains such a tokenizer (GPT-2's byte-level
pre-tokenizer and decoder, a few hundred merges) on questions and responses sampled from the
world, with a family's own special tokens and chat template (:class:`ChatStyle`), so the
tiny models of :mod:`workbench.models.families` exercise what a real VLM's tokenizer does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..data.language import TEMPLATES, vocabulary
from ..data.world import make_prompt, sample_response, sample_scene

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
IMAGE_TOKEN = "<image>"
ASSISTANT = "<assistant>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE_TOKEN, ASSISTANT)

#: User turn = image placeholder + question; the assistant turn starts after ``<assistant>``
#: and ends with ``</s>``. Same message format as HF chat templates of real VLMs.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image> ' }}{% else %}{{ part['text'] }} {% endif %}"
    "{% endfor %}"
    "{% else %}{{ '<assistant> ' }}"
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str], extra_special_tokens: dict[str, str] | None = None
) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over every whitespace-separated word of ``texts``.

    ``extra_special_tokens`` (attribute name -> token, e.g. ``{"boi_token": "<start_of_image>"}``)
    adds named special tokens that some processors need, at the end of the vocabulary so the
    ids of the default tokens and of every word stay the same.
    """

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tok.train_from_iterator(texts, trainer=trainer)
    named = {"image_token": IMAGE_TOKEN, **(extra_special_tokens or {})}
    new = [t for t in dict.fromkeys(named.values()) if tok.token_to_id(t) is None]
    if new:
        tok.add_special_tokens(new)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens=named,
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def world_tokenizer(extra_special_tokens: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer of the synthetic world: every word its questions and responses use
    (plus ``extra_special_tokens``, see :func:`train_tokenizer`)."""

    return train_tokenizer([" ".join(vocabulary())], extra_special_tokens)


# --- byte-level BPE -------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatStyle:
    """A model family's special tokens and chat template, for :func:`bpe_tokenizer`.

    ``eos`` is the token that ends an assistant turn (``<end_of_utterance>``, ``<|im_end|>``
    ...): generation stops on it and :func:`workbench.models.vlm.prompt_texts` closes each
    response with it. ``named`` are special tokens a processor looks up by attribute
    (``{"image_token": "<image>"}`` gives ``tokenizer.image_token`` and
    ``tokenizer.image_token_id``); ``special`` are further special tokens (role markers,
    sub-image tags) that are never split and never sampled."""

    bos: str
    eos: str
    pad: str
    chat_template: str
    named: dict[str, str] = field(default_factory=dict)
    special: tuple[str, ...] = ()


@lru_cache(maxsize=1)
def world_texts(n: int = 300, seed: int = 0) -> tuple[str, ...]:
    """``n`` questions and ``n`` precursor responses sampled from the world, and one line with
    every word of its vocabulary (so that every word is in the training text): the text the
    BPE merges are learnt from, with the world's own word frequencies."""

    rng = np.random.default_rng([seed, 16])
    templates = list(TEMPLATES.values())
    texts: list[str] = []
    for _ in range(n):
        prompt = make_prompt(sample_scene(rng, 64), templates[int(rng.integers(len(templates)))])
        texts += [prompt["question"], sample_response(prompt, rng)[1]]
    return (*texts, " ".join(vocabulary()))


def bpe_tokenizer(style: ChatStyle, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on :func:`world_texts`, with ``style``'s tokens.

    512 entries are the 256 bytes, the special tokens and about 250 merges: frequent words
    ("the", "can") become one token, rarer ones ("account" -> "a c c ou nt") stay split, as
    in a real tokenizer whose vocabulary was not made for this language. No unknown token:
    every string is bytes. Deterministic for a given world.
    """

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = list(
        dict.fromkeys([style.pad, style.bos, style.eos, *style.named.values(), *style.special])
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(world_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=style.pad,
        bos_token=style.bos,
        eos_token=style.eos,
        extra_special_tokens=dict(style.named),
        padding_side="right",
    )
    unnamed = [t for t in style.special if t not in style.named.values()]
    if unnamed:
        fast.add_special_tokens({"additional_special_tokens": unnamed})
    fast.chat_template = style.chat_template
    return fast


def unknown_words(processor, text: str) -> list[str]:
    """The words of ``text`` the processor's tokenizer maps to its unknown token (none for a
    tokenizer without one, e.g. a byte-level BPE)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    unk = tokenizer.unk_token
    if unk is None:
        return []
    return [w for w in text.split() if tokenizer.tokenize(w) == [unk]]
