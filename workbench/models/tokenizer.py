"""A word-level tokenizer trained locally with ``tokenizers`` on the world's vocabulary.

The world speaks a closed language (``workbench.data.language``), so one token per word is
both the smallest and the most readable tokenizer: a decoded sequence is the words the
gold oracle parses. It is wrapped as a ``PreTrainedTokenizerFast`` with the special tokens a
VLM needs (padding, unknown, begin/end of sequence, the image placeholder, the assistant
turn marker) and a chat template, so the same prompt code path serves the tiny model and any
real HF VLM (whose processor brings its own template).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..data.language import vocabulary

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
