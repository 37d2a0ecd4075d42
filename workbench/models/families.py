"""Tiny VLMs of several ``transformers`` families, each built from config.

The workbench must not depend on one architecture: everything downstream (SFT, reward and
cost models, guard, PPO) talks to a model through ``AutoModelForImageTextToText`` /
``AutoProcessor`` and the generic ``prompt_texts -> encode -> generate`` path of
:mod:`workbench.models.vlm`. Every family here is built from constructor arguments with
random weights, a few million parameters -- nothing is downloaded.

With the world's word-level tokenizer (:func:`workbench.models.tokenizer.world_tokenizer`):

``llava``
    CLIP vision tower + Llama decoder (:func:`workbench.models.vlm.build_tiny_vlm`); the
    default, whose numbers the pipeline's results are.
``gemma3``
    SigLIP vision tower + Gemma-3 decoder (RMS-normed q/k, GQA, sliding-window and full
    attention layers, embedding scaling, bidirectional attention inside an image) and
    ``Gemma3Processor``, which wraps each image in ``<start_of_image> ... <end_of_image>``.

With a byte-level BPE tokenizer trained on the world's text, the family's own special tokens
and a chat template in the family's own style (:func:`workbench.models.tokenizer.bpe_tokenizer`),
and the family's real processor, which turns one image into several and adds inputs of its
own -- what a real checkpoint does:

``llava_next``
    LLaVA-NeXT: CLIP + Mistral decoder. "Anyres": a grid of tiles plus the whole image,
    unpadded features with a newline token per row; ``image_sizes``. Mistral's
    ``[INST] <image>\\n... [/INST]``.
``idefics3``
    Idefics3 (SmolVLM's architecture): SigLIP-like encoder, pixel-shuffle connector, Llama
    decoder. Image splitting into tiles with ``<row_i_col_j>`` tags plus a global image;
    ``pixel_attention_mask``. ``User:<image>...<end_of_utterance>\\nAssistant:``.
``aya_vision``
    Aya Vision: SigLIP, pixel-shuffle projector, Cohere-2 decoder. GOT-OCR2 crops with
    ``TILE_k`` tags, ``pixel_values`` flattened over the batch. Cohere's
    ``<|START_OF_TURN_TOKEN|><|USER_TOKEN|>`` turns.
``paddleocr_vl``
    PaddleOCR-VL: NaViT-style encoder at the image's own size, Ernie-4.5 decoder with 3-D
    rotary positions. Its model and processor are Qwen2-VL's (transformers' modular copies):
    flattened patches, ``image_grid_thw``, ``mm_token_type_ids``. ``User: ... Assistant:``.

The splitting families use tiles of half the tiny LLaVA's image and patches of half its
patch (32 px and 8 px by default), so a 64 px world image gives a 2 x 2 grid (plus the whole
image) and every tile has as many patches as the tiny LLaVA's image.

Not built here (checked with transformers 5.24, without torchvision, which the workbench
does not install: docs/design.md §11):

- **Qwen2-VL** (and Qwen2.5-VL): its processor needs its video processor, and that needs
  torchvision. Where torchvision is installed (``pip install torchvision``, the build that
  matches the installed torch), a local Qwen2-VL folder runs through the same generic path
  as every family here, e.g. ``python -m workbench sft --policy /models/Qwen2-VL-2B-Instruct
  --lora``, then ``reward --lora``, ``cost --lora``, ``guard`` and ``ppo``. Its extra inputs
  need nothing of their own: ``encode`` keeps every processor output (``image_grid_thw``,
  ``mm_token_type_ids``) and ``model_inputs`` passes them to every forward;
  ``pooled_image_features`` reads the decoder's input at ``config.image_token_id``
  (``<|image_pad|>``); PPO's rollouts extend ``mm_token_type_ids`` with zeros (text) for the
  generated tokens; the default LoRA targets ``q_proj v_proj`` exist in its decoder. One
  limit: ``pixel_values`` holds the patches of the whole batch in one dimension, which PPO
  cannot cut into minibatches by episode, so ``ppo`` needs ``--num-minibatches 1`` (it says
  so), as do ``aya_vision`` and ``paddleocr_vl``. ``paddleocr_vl`` runs this code path
  (Qwen2-VL's forward, position ids and processor layout) in tests/test_families.py.
- **Mistral-3 / Pixtral**: ``PixtralProcessor`` is marked as needing torchvision.
- **SmolVLM**, InternVL, LLaVA-OneVision: their processors need a video processor, which
  needs torchvision (``idefics3`` is SmolVLM's architecture and image splitting).
- **PaliGemma**: its processor adds 1,152 ``<locNNNN>``/``<segNNN>`` tokens to the
  tokenizer (which the model then generates) and inserts a second ``<s>`` after the image.
- **Mllama** (Llama-3.2-Vision) reads images by cross-attention, so there are no image
  features in the decoder's input for the auxiliary image heads
  (:func:`workbench.models.vlm.pooled_image_features` says so).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    AyaVisionConfig,
    AyaVisionForConditionalGeneration,
    AyaVisionProcessor,
    CLIPVisionConfig,
    Cohere2Config,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    GotOcr2ImageProcessorPil,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    MistralConfig,
    PaddleOCRTextConfig,
    PaddleOCRVisionConfig,
    PaddleOCRVLConfig,
    PaddleOCRVLForConditionalGeneration,
    PaddleOCRVLImageProcessorPil,
    PaddleOCRVLProcessor,
    SiglipVisionConfig,
)

from .tokenizer import CHAT_TEMPLATE, IMAGE_TOKEN, ChatStyle, bpe_tokenizer, world_tokenizer
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


# --- families with byte-level BPE tokenizers and image splitting -------------------------------
def _tiles(spec: TinyVLMSpec) -> tuple[int, int]:
    """(tile size, patch size) of the splitting families: half the tiny LLaVA's image and
    patch, so a 64 px world image becomes a 2 x 2 grid of tiles (plus the whole image, where
    the family adds one) and every tile has as many patches as the tiny LLaVA's image."""
    tile, patch = spec.image_size // 2, spec.patch_size // 2
    if tile % patch or patch < 1:
        raise VLMError(
            f"TinyVLMSpec: image_size {spec.image_size} and patch_size {spec.patch_size} do "
            "not halve into whole tiles of whole patches"
        )
    return tile, patch


def _text_kwargs(spec: TinyVLMSpec, tokenizer) -> dict:
    """Constructor arguments every decoder config here shares (Llama, Mistral, Cohere-2)."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.text_hidden,
        "intermediate_size": spec.text_intermediate,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.text_heads,
        "num_key_value_heads": spec.text_heads,
        "max_position_embeddings": spec.max_positions,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": True,
    }


def _vision_kwargs(spec: TinyVLMSpec, image_size: int, patch_size: int) -> dict:
    return {
        "hidden_size": spec.vision_hidden,
        "intermediate_size": 2 * spec.vision_hidden,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "image_size": image_size,
        "patch_size": patch_size,
    }


def _generation_tokens(model, tokenizer) -> None:
    """Generation pads with the pad token and stops at the tokenizer's end of turn."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id


def _token_id(tokenizer, token: str) -> int:
    """The id of one token the tokenizer must have (a config field takes an int)."""
    value = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(value, int) or value == tokenizer.unk_token_id:
        raise VLMError(f"the tokenizer has no token {token!r}")
    return value


_HALF: dict[str, Any] = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def _user_parts(image: str) -> str:
    """Jinja for a user turn's parts: the image placeholder ``image``, then the text."""
    return (
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
        f"{{{{ '{image}' }}}}"
        "{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    )


#: An assistant turn as :func:`workbench.models.vlm.prompt_texts` writes it: a space, the
#: text, the end-of-turn token.
_ASSISTANT_PARTS = "{% for part in message['content'] %}{{ ' ' + part['text'] }}{% endfor %}"


LLAVA_NEXT_STYLE = ChatStyle(
    bos="<s>",
    eos="</s>",
    pad="<pad>",
    named={"image_token": "<image>"},
    special=("[INST]", "[/INST]"),
    # LLaVA-NeXT (Mistral-7B): <s>[INST] <image>\nWhat is shown? [/INST] answer</s>
    chat_template=(
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' }}" + _user_parts("<image>\\n") + "{{ ' [/INST]' }}"
        "{% else %}" + _ASSISTANT_PARTS + "{{ eos_token }}{% endif %}{% endfor %}"
    ),
)


def build_tiny_llava_next(spec: TinyVLMSpec | None = None, seed: int = 0):
    """LLaVA-NeXT: CLIP + Mistral decoder; "anyres": the image is cut into a grid of tiles
    chosen from ``image_grid_pinpoints`` plus one resized whole image, their features
    unpadded back to the image's aspect ratio with a learnt newline token per row. The
    processor gives ``image_sizes`` [B, 2] and ``pixel_values`` [B, tiles, 3, h, w]."""
    spec = spec or TinyVLMSpec()
    tile, patch = _tiles(spec)
    tokenizer = bpe_tokenizer(LLAVA_NEXT_STYLE)
    pinpoints = [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            **_vision_kwargs(spec, tile, patch), projection_dim=spec.vision_hidden
        ),
        text_config=MistralConfig(**_text_kwargs(spec, tokenizer), sliding_window=None),
        image_token_index=tokenizer.image_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    _generation_tokens(model, tokenizer)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile},
        crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=pinpoints,
        **_HALF,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    return model, processor


#: Idefics3's sub-image tags: one per tile position of its grid (at most 6 x 6 in the
#: processor) and one before the whole image.
IDEFICS3_TAGS = (
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
    "<global-img>",
)

IDEFICS3_STYLE = ChatStyle(
    bos="<|begin_of_text|>",
    eos="<end_of_utterance>",
    pad="<|finetune_right_pad_id|>",
    named={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>"},
    special=IDEFICS3_TAGS,
    # Idefics3 / SmolVLM: User:<image>What is shown?<end_of_utterance>\nAssistant: answer...
    chat_template=(
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ 'User:' }}" + _user_parts("<image>") + "{{ '<end_of_utterance>\\n' }}"
        "{% else %}{{ 'Assistant:' }}" + _ASSISTANT_PARTS + "{{ eos_token + '\\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    ),
)


def build_tiny_idefics3(spec: TinyVLMSpec | None = None, seed: int = 0):
    """Idefics3 (the SmolVLM architecture): SigLIP-like encoder + pixel-shuffle connector
    (``scale_factor`` 2: four patches per token) + Llama decoder. The processor splits the
    image into a grid of tiles plus the whole image, each wrapped in
    ``<fake_token_around_image><row_i_col_j>`` tags, and gives ``pixel_values``
    [B, images, 3, h, w] with a ``pixel_attention_mask`` over the real (unpadded) pixels."""
    spec = spec or TinyVLMSpec()
    tile, patch = _tiles(spec)
    tokenizer = bpe_tokenizer(IDEFICS3_STYLE)
    scale = 2
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**_vision_kwargs(spec, tile, patch)),
        text_config=LlamaConfig(**_text_kwargs(spec, tokenizer)),
        image_token_id=tokenizer.image_token_id,
        scale_factor=scale,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    _generation_tokens(model, tokenizer)
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * tile},
        max_image_size={"longest_edge": tile},
        do_image_splitting=True,
        **_HALF,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(tile // patch) ** 2 // scale**2,
        chat_template=tokenizer.chat_template,
    )
    return model, processor


AYA_VISION_STYLE = ChatStyle(
    bos="<BOS_TOKEN>",
    eos="<|END_OF_TURN_TOKEN|>",
    pad="<PAD>",
    named={"image_token": "<image>", "img_patch_token": "<|IMG_PATCH|>"},
    special=(
        "<|START_OF_TURN_TOKEN|>",
        "<|USER_TOKEN|>",
        "<|CHATBOT_TOKEN|>",
        "<|START_OF_IMG|>",
        "<|END_OF_IMG|>",
        "<|IMG_LINE_BREAK|>",
        "TILE_GLOBAL",
        *(f"TILE_{i}" for i in range(1, 5)),
    ),
    # Aya Vision (Cohere-2): <BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|><image>What is
    # shown?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|> answer...
    chat_template=(
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' }}"
        + _user_parts("<image>")
        + "{{ '<|END_OF_TURN_TOKEN|>' }}"
        "{% else %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}"
        + _ASSISTANT_PARTS
        + "{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}"
    ),
)


def build_tiny_aya_vision(spec: TinyVLMSpec | None = None, seed: int = 0):
    """Aya Vision: SigLIP + pixel-shuffle projector (``downsample_factor`` 2) + Cohere-2
    decoder (parallel attention and MLP, layer norm with no bias). Its GOT-OCR2
    image processor crops the image into up to four tiles plus a thumbnail, flattened over
    the batch: ``pixel_values`` [tiles in the batch, 3, h, w], one ``TILE_k`` tag each."""
    spec = spec or TinyVLMSpec()
    tile, patch = _tiles(spec)
    tokenizer = bpe_tokenizer(AYA_VISION_STYLE)
    downsample = 2
    config = AyaVisionConfig(
        vision_config=SiglipVisionConfig(
            **_vision_kwargs(spec, tile, patch), vision_use_head=False
        ),
        text_config=Cohere2Config(
            **_text_kwargs(spec, tokenizer),
            sliding_window=max(1, spec.max_positions // 2),
            layer_types=["full_attention"] * spec.text_layers,
        ),
        image_token_index=tokenizer.img_patch_token_id,
        downsample_factor=downsample,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = AyaVisionForConditionalGeneration(config)
    _generation_tokens(model, tokenizer)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": tile, "width": tile},
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
        **_HALF,
    )
    processor = AyaVisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        img_size=tile,
        downsample_factor=downsample,
        chat_template=tokenizer.chat_template,
    )
    return model, processor


PADDLEOCR_VL_STYLE = ChatStyle(
    bos="<|begin_of_sentence|>",
    eos="</s>",
    pad="<unk>",
    named={"image_token": "<|IMAGE_PLACEHOLDER|>"},
    special=("<|IMAGE_START|>", "<|IMAGE_END|>"),
    # PaddleOCR-VL: <|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>
    # What is shown?\nAssistant: answer</s> (the real template's generation prompt ends with a
    # space; here the space is the answer's, as :func:`workbench.models.vlm.prompt_texts` writes it:
    # a prompt ending in a space would make the answer's first token a lone space)
    chat_template=(
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ 'User: ' }}"
        + _user_parts("<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>")
        + "{{ '\\n' }}"
        "{% else %}{{ 'Assistant:' }}" + _ASSISTANT_PARTS + "{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    ),
)


def build_tiny_paddleocr_vl(spec: TinyVLMSpec | None = None, seed: int = 0):
    """PaddleOCR-VL, the Qwen2-VL layout: a NaViT-style encoder that reads the image at its
    own size (resized to a multiple of 2 x 2 patches), a 2 x 2 patch merger and an Ernie-4.5
    decoder with 3-D rotary positions (time, height, width; ``mrope_section`` splits the
    rotary frequencies between them). The processor gives the patches of all images
    flattened, ``pixel_values`` [patches in the batch, 3, p, p], with ``image_grid_thw``
    [images, 3] and ``mm_token_type_ids`` [B, T] (1 on image tokens) for the positions."""
    spec = spec or TinyVLMSpec()
    _, patch = _tiles(spec)
    tokenizer = bpe_tokenizer(PADDLEOCR_VL_STYLE)
    merge = 2
    head_dim = spec.text_hidden // spec.text_heads
    half = head_dim // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    config = PaddleOCRVLConfig(
        vision_config=PaddleOCRVisionConfig(
            **_vision_kwargs(spec, spec.image_size, patch), spatial_merge_size=merge
        ),
        text_config=PaddleOCRTextConfig(
            **_text_kwargs(spec, tokenizer),
            head_dim=head_dim,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": section,
            },
        ),
        image_token_id=tokenizer.image_token_id,
        vision_start_token_id=_token_id(tokenizer, "<|IMAGE_START|>"),
        vision_end_token_id=_token_id(tokenizer, "<|IMAGE_END|>"),
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = PaddleOCRVLForConditionalGeneration(config)
    _generation_tokens(model, tokenizer)
    pixels = spec.image_size * spec.image_size
    image_processor = PaddleOCRVLImageProcessorPil(
        size={"shortest_edge": pixels // 4, "longest_edge": pixels},
        patch_size=patch,
        merge_size=merge,
        **_HALF,
    )
    processor = PaddleOCRVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    return model, processor


def _llava(spec: TinyVLMSpec | None, seed: int):
    return build_tiny_vlm(spec, seed=seed)


def _gemma3(spec: TinyVLMSpec | None, seed: int):
    return build_tiny_gemma3(spec, seed=seed)


#: Families whose processor puts the image inputs of a whole batch in one dimension (tiles or
#: patches of every sample together): PPO cannot cut those into minibatches by episode, so they
#: train with ``--num-minibatches 1`` (PPO says so otherwise).
FLAT_IMAGE_FAMILIES = frozenset({"aya_vision", "paddleocr_vl"})

#: family name -> builder ``(spec, seed) -> (model, processor)``.
FAMILIES: dict[str, Callable[[TinyVLMSpec | None, int], tuple]] = {
    "llava": _llava,
    "gemma3": _gemma3,
    "llava_next": build_tiny_llava_next,
    "idefics3": build_tiny_idefics3,
    "aya_vision": build_tiny_aya_vision,
    "paddleocr_vl": build_tiny_paddleocr_vl,
}


def build_tiny_vlm_family(family: str, seed: int = 0, spec: TinyVLMSpec | None = None):
    """The tiny VLM of ``family`` (a key of :data:`FAMILIES`) and its processor."""
    if family not in FAMILIES:
        raise VLMError(f"unknown tiny VLM family {family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[family](spec, seed)
