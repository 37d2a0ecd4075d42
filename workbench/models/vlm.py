"""Vision-language models: the tiny HF-native VLM built from config, and any local HF VLM.

The tiny model is a real ``transformers`` LLaVA (CLIP vision tower + Llama decoder) built
from constructor arguments with the world's tokenizer -- nothing is downloaded. It is saved
with ``save_pretrained`` (safetensors) together with its processor, and loads back with
``AutoModelForImageTextToText`` / ``AutoProcessor``. Any other local HF image-text-to-text
directory can take its place (``load_vlm``), with a LoRA adapter from ``peft``
(``workbench.models.adapters``).

Prompts go through the processor's chat template (the tiny tokenizer ships one), so the tiny
model and a real VLM share one code path: ``prompt_texts`` -> ``encode`` -> ``generate``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from ..kernels import token_logprobs
from .tokenizer import IMAGE_TOKEN, world_tokenizer


class VLMError(ValueError):
    """A model directory or tokenizer that the workbench cannot use, with the reason."""


@dataclass(frozen=True)
class TinyVLMSpec:
    """Sizes of the tiny LLaVA (a few million parameters; trains on a laptop CPU)."""

    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 192
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 512
    max_positions: int = 256

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise VLMError(
                f"TinyVLMSpec: image_size {self.image_size} is not a multiple of "
                f"patch_size {self.patch_size}"
            )


def build_tiny_vlm(spec: TinyVLMSpec | None = None, tokenizer=None, seed: int = 0):
    """The tiny LLaVA and its processor, built from config with the world's tokenizer."""

    spec = spec or TinyVLMSpec()
    tokenizer = tokenizer if tokenizer is not None else world_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=2 * spec.vision_hidden,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        do_center_crop=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
        image_token=IMAGE_TOKEN,
    )
    return model, processor


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def save_vlm(model, processor, path: str | Path) -> Path:
    """``save_pretrained`` for both (safetensors), into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


def _check_vlm_dir(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise VLMError(f"model directory not found: {path}")
    if not path.is_dir():
        raise VLMError(
            f"{path} is a file, not a model directory (expected a save_pretrained directory)"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        held = sorted(e.name + ("/" if e.is_dir() else "") for e in path.iterdir())
        listing = ", ".join(held[:8]) + (", ..." if len(held) > 8 else "") if held else "nothing"
        raise VLMError(
            f"{path} is not a Hugging Face model directory: no config.json (it holds {listing})"
        )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise VLMError(f"{config_file} is not valid JSON: {exc}") from None
    return config


def load_vlm(path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """Load any local HF image-text-to-text model and its processor.

    Checks, each with a clear :class:`VLMError`: the directory exists and holds a config;
    the architecture is an image-text-to-text model ``transformers`` knows; the processor
    loads and has an image token that its tokenizer knows. ``trust_remote_code`` stays off
    unless asked for.

    The weights load in ``dtype``, fp32 by default whatever the checkpoint was saved in: the
    trainers keep fp32 weights and optimiser state and get bf16/fp16 from autocast
    (docs/design.md §5.7); AdamW steps of 1e-6 on fp16 weights would mostly round away.
    """

    path = Path(path)
    raw = _check_vlm_dir(path)
    model_type = raw.get("model_type")
    if model_type is None:
        raise VLMError(
            f"{path} is not a Hugging Face model directory: its config.json has no model_type"
        )
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise VLMError(
            f"{path} holds a '{model_type}' model, which is not a vision-language "
            "(image-text-to-text) model; expected one of e.g. llava, qwen2_vl, paligemma, idefics3"
        )
    try:
        AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VLMError(f"cannot load the processor of {path}: {exc}") from exc
    check_processor(processor, where=str(path))
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise VLMError(f"cannot load the model weights of {path}: {exc}") from exc
    return model, processor


def check_processor(processor, where: str = "processor") -> None:
    """The processor must have an image processor and a tokenizer that knows its image token."""
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or getattr(processor, "image_processor", None) is None:
        raise VLMError(
            f"{where}: not a vision-language processor (needs an image processor and a tokenizer)"
        )
    image_token = getattr(processor, "image_token", None) or getattr(tokenizer, "image_token", None)
    if not image_token:
        raise VLMError(f"{where}: the processor names no image token")
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise VLMError(
            f"{where}: the tokenizer has no image token {image_token!r} in its vocabulary"
        )
    if (
        getattr(processor, "chat_template", None) is None
        and getattr(tokenizer, "chat_template", None) is None
    ):
        raise VLMError(f"{where}: no chat template (the workbench formats prompts with it)")


# --- prompts, encoding, generation ---------------------------------------------------------
def prompt_texts(processor, questions: list[str], responses: list[str] | None = None) -> list[str]:
    """Chat-formatted prompts (ending with the assistant turn marker); with ``responses``,
    the full conversations: prompt, a space, the response and the end-of-turn token.

    The space starts the response's first word (a byte-level BPE token carries its leading
    space, ``Ġword``), so the prompt ends on a token boundary and a generated answer decodes
    to the same words; nothing stands between the last word and the end-of-turn token (a
    lone space would be a token of its own). An empty response is the prompt and the
    end-of-turn token (the guard's query screening). Word-level tokenizers ignore spaces."""
    eos = processor.tokenizer.eos_token
    out = []
    for i, q in enumerate(questions):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if responses is not None:
            text = text + (" " + responses[i] if responses[i] else "") + eos
        out.append(text)
    return out


def encode(
    processor,
    images: list[Image.Image],
    questions: list[str],
    responses: list[str] | None = None,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """A model batch: every output of the processor (``pixel_values`` and whatever else the
    family needs: ``image_sizes``, ``pixel_attention_mask``, ``image_grid_thw``,
    ``token_type_ids`` ...). With ``responses`` it also has ``response_mask``: 1 on the
    response tokens (and the closing end-of-turn token), 0 on prompt and padding.

    The prompt's length is that of the prompt encoded alone (same images, so the same image
    tokens); :class:`VLMError` if the conversation does not start with exactly those tokens
    (a tokenizer that merged across the end of the prompt would make the mask wrong)."""
    tokenizer = processor.tokenizer
    # one image per sample (some processors need the nesting)
    nested = [[image] for image in images]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        texts = prompt_texts(processor, questions, responses)
        batch = processor(
            images=nested, text=texts, return_tensors="pt", padding=True, add_special_tokens=False
        )
        if responses is not None:
            prompts = processor(
                images=nested,
                text=prompt_texts(processor, questions),
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            batch["response_mask"] = _response_mask(batch, prompts, texts)
    finally:
        tokenizer.padding_side = old_side
    return dict(batch)


def _response_mask(batch, prompts, texts: list[str]) -> torch.Tensor:
    """1 after each row's prompt tokens (``prompts``: the prompts encoded alone) on its real
    tokens; checks that the conversation starts with exactly those tokens."""
    mask = batch["attention_mask"].clone()
    for i in range(mask.shape[0]):
        start = int(mask[i].nonzero().flatten()[0])
        prompt = prompts["input_ids"][i][prompts["attention_mask"][i].bool()]
        n = prompt.numel()
        if not torch.equal(batch["input_ids"][i, start : start + n], prompt):
            raise VLMError(
                "the tokenizer encodes the prompt differently inside the conversation (the "
                "prompt does not end on a token boundary), so the response cannot be masked: "
                f"{texts[i]!r}"
            )
        mask[i, start : start + n] = 0
    return mask


def image_token_id(model) -> int:
    """The id of the token whose input embeddings the model replaces by image features
    (``image_token_id`` or ``image_token_index`` of its config, inside any ``peft`` wrapper)."""
    config = _inner(model).config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise VLMError(f"{type(_inner(model)).__name__}: its config names no image token id")


def vlm_body(model) -> torch.nn.Module:
    """The vision-language model without its language-model head, inside any ``peft``
    wrapper: ``LlavaForConditionalGeneration.model`` and its kin (what
    :class:`workbench.models.score.ScoreModel` reads hidden states from)."""
    base = _inner(model)
    body = getattr(base, "model", None)
    return body if isinstance(body, torch.nn.Module) else base


def language_model(model) -> torch.nn.Module:
    """The decoder of a vision-language model: ``get_decoder()`` of :func:`vlm_body`
    (``language_model`` or ``text_model``); the body itself for a text-only model."""
    body = vlm_body(model)
    get_decoder = getattr(body, "get_decoder", None)
    return get_decoder() if callable(get_decoder) else body


class _DecoderInput(Exception):
    """Raised by the hook of :func:`language_model_inputs` once it holds the decoder's input,
    so that the decoder does not run."""


def language_model_inputs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, T, H]``: the input embeddings the language model receives for ``batch`` (an
    :func:`encode` batch) -- text embeddings with the projected image features written at
    the image tokens, however the family got them there (tiles, newline tokens, pixel
    shuffles, variable sizes, flattened patches).

    Runs :func:`vlm_body` on the batch; a forward pre-hook on :func:`language_model` takes
    the decoder's ``inputs_embeds`` and stops the forward there, so the decoder never runs.
    The graph is kept: gradients reach the vision tower and the projector."""
    inner, decoder = vlm_body(model), language_model(model)
    if decoder is inner:
        raise VLMError(f"{type(_inner(model)).__name__}: cannot find its language model")
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None:
            captured["embeds"] = embeds
        raise _DecoderInput

    handle = decoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        inner(**model_inputs(batch), return_dict=True)
    except _DecoderInput:
        pass
    finally:
        handle.remove()
    if "embeds" not in captured:
        raise VLMError(
            f"{type(_inner(model)).__name__}: its decoder is not called with inputs_embeds"
        )
    return captured["embeds"]


def pooled_image_features(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, hidden]``: per sample, the mean of :func:`language_model_inputs` over its image
    tokens -- the mean of the projected image features the language model reads, whatever
    the family does with an image (LLaVA: one block of patches; LLaVA-NeXT: tiles, the whole
    image and a newline token per row; Idefics3 and Aya Vision: tiles through a pixel
    shuffle; Qwen2-VL and PaddleOCR-VL: flattened patches and ``image_grid_thw``). For the
    tiny LLaVA this is the mean of its projected patch features, as ``get_image_features``
    gives them. Auxiliary image heads read it (the SFT stage's object-presence head, the
    reward model's presence head, the guard's image-severity head); gradients reach the
    vision tower and the projector.

    ``batch`` is an :func:`encode` batch of the model's processor; its text does not change
    the result for families whose image features do not read the text. :class:`VLMError`
    when a sample has no image token, or when the image tokens still hold the token's own
    embedding (a model that reads images by cross-attention, e.g. Mllama)."""
    token = image_token_id(model)
    embeds = language_model_inputs(model, batch)
    is_image = (batch["input_ids"] == token).to(embeds.device)
    counts = is_image.sum(1)
    if bool((counts == 0).any()):
        raise VLMError("pooled_image_features: a sample of the batch has no image token")
    with torch.no_grad():
        own = _inner(model).get_input_embeddings()(torch.tensor([token], device=embeds.device))
        if torch.equal(embeds[is_image][:1].to(own.dtype), own):
            raise VLMError(
                f"{type(_inner(model)).__name__} does not put image features into its language "
                "model's input (it reads images by cross-attention?): no image head can read them"
            )
    weights = is_image.to(embeds.dtype)[..., None]
    return (embeds * weights).sum(1) / counts[:, None].to(embeds.dtype)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a model's forward takes from an :func:`encode` batch: every processor output
    (some families need more than ``input_ids``/``attention_mask``/``pixel_values``, e.g.
    Gemma-3's ``token_type_ids`` for attention within an image), without ``response_mask``."""
    return {k: v for k, v in batch.items() if k != "response_mask"}


def processor_image_token_ids(processor) -> set[int]:
    """Ids of the tokens a processor writes for an image: its ``image_token_id``, the
    ``image_token_ids`` some processors list (Pixtral, Aya Vision, InternVL) and every
    ``*_token`` string it names that the tokenizer has as one token (``boi_token``,
    ``fake_image_token``, ``start_of_img_token`` ...)."""
    tok = processor.tokenizer
    ids = {getattr(processor, "image_token_id", None)}
    ids |= set(getattr(processor, "image_token_ids", None) or ())
    vocab = tok.get_vocab()
    for name, value in vars(processor).items():
        if name.endswith("_token") and isinstance(value, str) and value in vocab:
            ids.add(vocab[value])
    return {int(i) for i in ids if isinstance(i, int) and i >= 0}


def sampling_kwargs(
    processor, max_new_tokens: int, temperature: float = 1.0, do_sample: bool = True
) -> dict[str, Any]:
    """``generate`` arguments: plain sampling at ``temperature`` (no top-k/top-p), padding with
    the pad token, and special tokens other than end-of-sequence suppressed -- a sampled
    image token would not match any image features in the next forward pass.

    Suppressed: the tokenizer's special tokens, every added token marked special (a
    processor may register its own, e.g. Idefics3 replaces the list of additional special
    tokens, which leaves its ``<row_i_col_j>`` tags registered only as added tokens) and the
    processor's image tokens (:func:`processor_image_token_ids`)."""
    tok = processor.tokenizer
    special = {int(i) for i in tok.all_special_ids}
    special |= {int(i) for i, t in tok.added_tokens_decoder.items() if t.special}
    special |= processor_image_token_ids(processor)
    suppress = sorted(special - {int(tok.eos_token_id)})
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": tok.pad_token_id,
        "suppress_tokens": suppress,
    }
    if do_sample:
        kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
    return kwargs


@torch.no_grad()
def generate(
    model,
    processor,
    images: list[Image.Image],
    questions: list[str],
    max_new_tokens: int = 40,
    temperature: float = 1.0,
    do_sample: bool = True,
) -> list[str]:
    """Sample one answer per (image, question) with left padding; returns decoded texts."""
    batch = encode(processor, images, questions, padding_side="left")
    batch = {k: v.to(model.device) for k, v in batch.items()}
    out = model.generate(
        **batch, **sampling_kwargs(processor, max_new_tokens, temperature, do_sample)
    )
    new = out[:, batch["input_ids"].shape[1] :]
    return [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]


def _inner(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def sequence_logprobs(
    policy, batch: dict[str, torch.Tensor], backend: str = "auto", temperature: float = 1.0
) -> torch.Tensor:
    """``log π(s[t+1] | s[:t+1])`` for t = 0..L-2, [B, L-1] fp32.

    Uses the fused op from hidden states and the LM head (``workbench.kernels``) when the
    head is a plain linear layer; models with logit soft-capping go through their logits."""
    inputs = model_inputs(batch)
    base = _inner(policy)
    text_cfg = (
        base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    )
    head = base.get_output_embeddings()
    inner = getattr(base, "model", None)
    targets = batch["input_ids"][:, 1:]
    if (
        inner is not None
        and getattr(text_cfg, "final_logit_softcapping", None) is None
        and head.bias is None
    ):
        hidden = inner(**inputs, return_dict=True).last_hidden_state[:, :-1]
        return token_logprobs(
            hidden, head.weight, targets, temperature=temperature, backend=backend
        )
    logits = policy(**inputs).logits[:, :-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
