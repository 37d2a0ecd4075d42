"""Tiny VLMs of more than one ``transformers`` family, each built from config.

The workbench must not depend on one architecture: everything downstream (SFT, reward and
cost models, PPO) talks to a model through ``AutoModelForImageTextToText`` /
``AutoProcessor`` and the generic ``prompt_texts -> encode -> generate`` path of
:mod:`workbench.models.vlm`. Two families are built here from constructor arguments with the
world's word-level tokenizer -- nothing is downloaded:

``llava``
    CLIP vision tower + Llama decoder (:func:`workbench.models.vlm.build_tiny_vlm`).
``gemma3``
    SigLIP vision tower + Gemma-3 decoder (RMS-normed q/k, GQA, sliding-window and full
    attention layers, embedding scaling, bidirectional attention inside an image) and
    ``Gemma3Processor``, which wraps each image in ``<start_of_image> ... <end_of_image>``.

Why Gemma-3 as the second family (checked with transformers 5.24, no torchvision):
Qwen2-VL's processor cannot be constructed without torchvision (its required video
processor is type-checked against a mapping that is only a placeholder then), and PaliGemma's
processor adds 1,152 ``<locNNNN>``/``<segNNN>`` tokens to the tokenizer (which the model then
generates) and inserts a second ``<s>`` after the image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    SiglipVisionConfig,
)

from .tokenizer import CHAT_TEMPLATE, IMAGE_TOKEN, world_tokenizer
from .vlm import TinyVLMSpec, VLMError, build_tiny_vlm

BOI_TOKEN = "<start_of_image>"
EOI_TOKEN = "<end_of_image>"

#: The world's chat template with Gemma-3's image placeholder (the begin-of-image token,
#: which the processor expands to ``<start_of_image> <image>*n <end_of_image>``).
GEMMA3_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(
    f"{{{{ '{IMAGE_TOKEN} ' }}}}", f"{{{{ '{BOI_TOKEN} ' }}}}"
)
assert GEMMA3_CHAT_TEMPLATE != CHAT_TEMPLATE


def gemma3_tokenizer():
    """The world's tokenizer plus the begin/end-of-image tokens ``Gemma3Processor`` needs
    (appended to the vocabulary: every other id is the same as in the default tokenizer)."""
    tokenizer = world_tokenizer({"boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN})
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    return tokenizer


def build_tiny_gemma3(spec: TinyVLMSpec | None = None, tokenizer=None, seed: int = 0):
    """A tiny Gemma-3 VLM (SigLIP + Gemma-3 text) and its processor, from config.

    Same sizes as the tiny LLaVA (:class:`TinyVLMSpec`); one image token per patch (the
    projector's average pooling has kernel 1); layers alternate sliding-window and full
    attention, the last one full.
    """

    spec = spec or TinyVLMSpec()
    tokenizer = tokenizer if tokenizer is not None else gemma3_tokenizer()
    for name in ("image_token", "boi_token", "eoi_token"):
        token = getattr(tokenizer, name, None)
        if token is None or tokenizer.convert_tokens_to_ids(token) in (
            None,
            tokenizer.unk_token_id,
        ):
            raise VLMError(
                f"gemma3: the tokenizer has no {name} "
                "(use workbench.models.families.gemma3_tokenizer)"
            )
    if spec.text_hidden % spec.text_heads:
        raise VLMError(
            f"gemma3: text_hidden {spec.text_hidden} is not a multiple of "
            f"text_heads {spec.text_heads}"
        )
    head_dim = spec.text_hidden // spec.text_heads
    kv_heads = spec.text_heads // 2 if spec.text_heads % 2 == 0 else spec.text_heads
    layer_types = [
        "full_attention" if (spec.text_layers - 1 - i) % 2 == 0 else "sliding_attention"
        for i in range(spec.text_layers)
    ]
    vision = SiglipVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=2 * spec.vision_hidden,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        vision_use_head=False,
    )
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        max_position_embeddings=spec.max_positions,
        sliding_window=max(1, spec.max_positions // 2),
        layer_types=layer_types,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    image_tokens = (spec.image_size // spec.patch_size) ** 2
    config = Gemma3Config(
        vision_config=vision,
        text_config=text,
        mm_tokens_per_image=image_tokens,
        image_token_index=tokenizer.image_token_id,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        tie_word_embeddings=True,
    )
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    image_processor = Gemma3ImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pan_and_scan=False,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        image_seq_length=image_tokens,
    )
    return model, processor


def _llava(spec: TinyVLMSpec | None, seed: int):
    return build_tiny_vlm(spec, seed=seed)


def _gemma3(spec: TinyVLMSpec | None, seed: int):
    return build_tiny_gemma3(spec, seed=seed)


#: family name -> builder ``(spec, seed) -> (model, processor)``.
FAMILIES: dict[str, Callable[[TinyVLMSpec | None, int], tuple]] = {
    "llava": _llava,
    "gemma3": _gemma3,
}


def build_tiny_vlm_family(family: str, seed: int = 0, spec: TinyVLMSpec | None = None):
    """The tiny VLM of ``family`` (a key of :data:`FAMILIES`) and its processor."""
    if family not in FAMILIES:
        raise VLMError(f"unknown tiny VLM family {family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[family](spec, seed)
