"""Real VLM families (docs/design.md §5.1): tiny LLaVA-NeXT, Idefics3, Aya Vision and
PaddleOCR-VL (Qwen2-VL's layout), built from config with byte-level BPE tokenizers, their own
chat templates and their real processors, which cut one image into several and add inputs of
their own. Each saves and loads through the Auto classes, masks exactly its response tokens,
pools image features that train the vision tower, finds its own LoRA targets, and runs every
model stage in smoke size (sft --policy --lora, reward --lora, cost --lora, guard, ppo in both
memory layouts) on a tiny synthetic-world run."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import workbench as wb
from workbench.config import (
    TINY_FAMILIES,
    CostConfig,
    DataConfig,
    GuardConfig,
    PPOConfig,
    RewardConfig,
    SFTConfig,
)
from workbench.models import vlm
from workbench.models.adapters import apply_lora, default_lora_targets, is_adapter_dir, load_policy
from workbench.models.families import FAMILIES, FLAT_IMAGE_FAMILIES, build_tiny_vlm_family
from workbench.models.vlm import TinyVLMSpec, VLMError

#: The families with a byte-level BPE tokenizer (``llava`` and ``gemma3``: tests/test_models.py).
BPE_FAMILIES = ["llava_next", "idefics3", "aya_vision", "paddleocr_vl"]
SMALL = TinyVLMSpec(
    vision_hidden=64, vision_layers=1, text_hidden=64, text_layers=2, text_intermediate=128
)
#: The start of each family's prompt, in the family's own chat style (images are expanded by
#: the processor, not the template).
PROMPT_STYLE = {
    "llava_next": "<s>[INST] <image>\nwhat is this ? [/INST]",
    "idefics3": "<|begin_of_text|>User:<image>what is this ?<end_of_utterance>\nAssistant:",
    "aya_vision": "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|><image>what is this ?"
    "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    "paddleocr_vl": "<|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|>"
    "<|IMAGE_END|>what is this ?\nAssistant:",
}
#: Inputs each family's processor adds beside input_ids, attention_mask and pixel_values.
EXTRA_INPUTS = {
    "llava_next": {"image_sizes"},
    "idefics3": {"pixel_attention_mask"},
    "aya_vision": set(),
    "paddleocr_vl": {"image_grid_thw", "mm_token_type_ids"},
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A data stage of 64 training pairs, 16 eval pairs and 8 test prompts."""
    run = tmp_path_factory.mktemp("families") / "data_run"
    cfg = DataConfig.smoke().replace(n_train=64, n_eval=16, n_test=8)
    wb.run_stage("data", run, cfg, progress=False)
    return run


@pytest.fixture(scope="module")
def examples(tiny_data):
    """Three (image, question, response) triples of different lengths, one question empty."""
    data = wb.load_data(tiny_data)
    records = data.train[:3]
    images = [data.image(r) for r in records]
    questions = [records[0]["question"], "", records[2]["question"]]
    responses = [records[0]["response_1"], "sorry , i cannot help with that .", "the knife"]
    return images, questions, responses


@pytest.fixture(scope="module", params=BPE_FAMILIES)
def saved(request, tmp_path_factory):
    """(family, model, processor, directory) of a small model saved with save_pretrained."""
    model, processor = build_tiny_vlm_family(request.param, seed=0, spec=SMALL)
    model.eval()
    path = vlm.save_vlm(model, processor, tmp_path_factory.mktemp(request.param) / "model")
    return request.param, model, processor, path


def logits(model, batch):
    with torch.no_grad():
        return model(**vlm.model_inputs(batch)).logits


# --- build, tokenizer, save and load -----------------------------------------------------------
def test_every_family_is_a_tiny_family_choice():
    assert set(TINY_FAMILIES) == set(FAMILIES) and set(BPE_FAMILIES) < set(FAMILIES)
    for family in BPE_FAMILIES:
        assert SFTConfig(tiny_family=family).tiny_family == family


@pytest.mark.parametrize("family", BPE_FAMILIES)
def test_builds_tiny_with_a_byte_level_bpe_tokenizer_and_its_chat_style(family):
    model, processor = build_tiny_vlm_family(family)
    assert 1e6 <= vlm.count_parameters(model) <= 5e6
    tok = processor.tokenizer
    backend = tok.backend_tokenizer
    assert type(backend.model).__name__ == "BPE" and len(tok) <= 600
    assert type(backend.pre_tokenizer).__name__ == type(backend.decoder).__name__ == "ByteLevel"
    assert tok.unk_token is None  # every string is bytes
    words = "how can i hack into an account with this ?"
    assert len(tok(words)["input_ids"]) > len(words.split())  # some words are several tokens
    assert tok.decode(tok(words)["input_ids"]) == words
    assert vlm.prompt_texts(processor, ["what is this ?"])[0] == PROMPT_STYLE[family]
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert vlm.image_token_id(model) in vlm.processor_image_token_ids(processor)
    assert type(processor.image_processor).__name__.endswith("Pil")  # no torchvision


def test_save_and_load_with_auto_classes(saved, examples):
    family, model, processor, path = saved
    loaded = AutoModelForImageTextToText.from_pretrained(path).eval()
    loaded_processor = AutoProcessor.from_pretrained(path)
    assert type(loaded) is type(model) and type(loaded_processor) is type(processor)
    assert loaded_processor.chat_template == processor.chat_template
    images, questions, responses = examples
    batch = vlm.encode(processor, images, questions, responses)
    assert EXTRA_INPUTS[family] <= set(batch)
    again = vlm.encode(loaded_processor, images, questions, responses)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    assert torch.equal(logits(model, batch), logits(loaded, again))
    through_loader, loader_processor = vlm.load_vlm(path)
    assert type(through_loader) is type(model) and type(loader_processor) is type(processor)


def test_one_image_becomes_several(saved, examples):
    """More image tokens than one tile or patch grid gives: the processor split the image."""
    family, model, processor, _ = saved
    images, questions, _ = examples
    batch = vlm.encode(processor, images, questions)
    per_sample = (batch["input_ids"] == vlm.image_token_id(model)).sum(1)
    assert len(set(per_sample.tolist())) == 1 and int(per_sample[0]) >= 16
    pixels = batch["pixel_values"]
    if family in FLAT_IMAGE_FAMILIES:
        assert pixels.shape[0] > len(images)  # tiles / patches of the batch in one dimension
    else:
        assert pixels.shape[:2] == (len(images), 5)  # 2 x 2 tiles and the whole image


# --- response masks at the BPE boundary --------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
def test_response_mask_is_the_response_and_end_of_turn(saved, examples, side):
    _, _, processor, _ = saved
    tok = processor.tokenizer
    images, questions, responses = examples
    batch = vlm.encode(processor, images, questions, responses, padding_side=side)
    ids, attention, mask = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    assert len(set(attention.sum(-1).tolist())) > 1  # there is padding
    for i, response in enumerate(responses):
        expected = tok(" " + response + tok.eos_token, add_special_tokens=False)["input_ids"]
        assert ids[i][mask[i].bool()].tolist() == expected
        assert tok.decode(expected) == " " + response + tok.eos_token
        last = int(attention[i].nonzero().flatten()[-1])
        assert mask[i, last - len(expected) + 1 : last + 1].tolist() == [1] * len(expected)
    # the family's own template writes the same conversation (up to what follows the turn)
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": questions[0]}]},
        {"role": "assistant", "content": [{"type": "text", "text": responses[0]}]},
    ]
    rendered = processor.apply_chat_template(conversation, tokenize=False)
    assert rendered.startswith(vlm.prompt_texts(processor, questions[:1], responses[:1])[0])


def test_a_prompt_that_does_not_end_on_a_token_boundary_is_an_error(saved, examples, monkeypatch):
    _, _, processor, _ = saved
    images, questions, responses = examples
    prompt_texts = vlm.prompt_texts

    def shifted(processor, questions, responses=None):  # the prompt alone encodes differently
        texts = prompt_texts(processor, questions, responses)
        return texts if responses is not None else [t + "x" for t in texts]

    monkeypatch.setattr(vlm, "prompt_texts", shifted)
    with pytest.raises(VLMError, match="token boundary"):
        vlm.encode(processor, images, questions, responses)


def test_generation_suppresses_image_and_special_tokens(saved, examples):
    _, model, processor, _ = saved
    tok = processor.tokenizer
    kwargs = vlm.sampling_kwargs(processor, max_new_tokens=8)
    suppressed = set(kwargs["suppress_tokens"])
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    image = vlm.processor_image_token_ids(processor)
    assert vlm.image_token_id(model) in image
    assert (image | special) - {tok.eos_token_id} == suppressed
    images, questions, _ = examples
    batch = vlm.encode(processor, images, questions, padding_side="left")
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**batch, **kwargs)
    assert not suppressed & set(out[:, batch["input_ids"].shape[1] :].flatten().tolist())


def test_fused_log_probabilities_match_the_models_own_logits(saved, examples):
    """PPO's log-probabilities from hidden states and the LM head equal those of the model's
    logits (no family here scales or caps its logits in the VLM's forward)."""
    _, model, processor, _ = saved
    images, questions, responses = examples
    batch = vlm.encode(processor, images, questions, responses)
    with torch.no_grad():
        fused = vlm.sequence_logprobs(model, batch, backend="torch")
        logp = torch.log_softmax(logits(model, batch)[:, :-1].float(), -1)
    torch.testing.assert_close(fused, logp.gather(-1, batch["input_ids"][:, 1:, None])[..., 0])


# --- pooled image features ---------------------------------------------------------------------
def test_pooled_image_features_per_sample_with_gradient_to_the_vision_tower(saved, examples):
    family, _, processor, path = saved
    model, _ = vlm.load_vlm(path)  # a fresh copy: this test writes gradients
    images, questions, responses = examples
    right = vlm.encode(processor, images, questions, responses)
    pooled = vlm.pooled_image_features(model, right)
    assert pooled.shape == (len(images), model.config.get_text_config().hidden_size)
    left = vlm.encode(processor, images, questions, padding_side="left")
    alone = vlm.encode(processor, images[1:2], questions[1:2])
    with torch.no_grad():
        torch.testing.assert_close(vlm.pooled_image_features(model, left), pooled)
        torch.testing.assert_close(vlm.pooled_image_features(model, alone)[0], pooled[1])
    pooled.pow(2).sum().backward()
    vision = [
        name
        for name, p in model.named_parameters()
        if ("vision" in name or "visual" in name) and p.grad is not None and p.grad.abs().sum() > 0
    ]
    assert any("embeddings.patch_embedding" in name for name in vision), family
    decoder = vlm.language_model(model)
    assert all(p.grad is None for p in decoder.layers.parameters())  # the decoder never ran


# --- LoRA targets ------------------------------------------------------------------------------
def test_lora_targets_default_to_the_language_models_attention(saved):
    family, _, _, path = saved
    model, _ = vlm.load_vlm(path)
    assert default_lora_targets(model) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    wrapped = apply_lora(model)
    assert sorted(next(iter(wrapped.peft_config.values())).target_modules) == [
        "k_proj",
        "o_proj",
        "q_proj",
        "v_proj",
    ]
    model, _ = vlm.load_vlm(path)
    # a configured default that does not fit gives way; the user's own choice does not
    fallback = apply_lora(model, ["qkv_proj"], targets_are_default=True)
    assert "q_proj" in next(iter(fallback.peft_config.values())).target_modules
    model, _ = vlm.load_vlm(path)
    with pytest.raises(VLMError, match=r"\['qkv_proj'\] do not exist.*attention projections"):
        apply_lora(model, ["qkv_proj"])


def test_lora_default_targets_of_other_attention_layouts():
    """Fused projections (Phi-3's qkv_proj, GPT-NeoX's query_key_value) are found too."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, Phi3Config, Phi3ForCausalLM

    small = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    phi3 = Phi3ForCausalLM(Phi3Config(**small))
    assert default_lora_targets(phi3) == ["o_proj", "qkv_proj"]
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(**small))
    assert default_lora_targets(neox) == ["dense", "query_key_value"]


# --- every model stage, per family -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("family", BPE_FAMILIES)
def test_model_stages_run_with_the_family(family, tiny_data, tmp_path):
    """sft --policy DIR --lora, reward/cost --lora, guard (from the LoRA cost model: merged,
    and with --lora) and ppo in both memory layouts, each a step or two on the tiny run."""
    model, processor = build_tiny_vlm_family(family, spec=SMALL)
    base = vlm.save_vlm(model, processor, tmp_path / "base")
    run = tmp_path / "run"
    run.mkdir()
    (run / "data").symlink_to(tiny_data / "data")
    lora = {"lora": True, "lora_r": 4, "lora_alpha": 8, "threads": 1, "eval_batch_size": 32}
    sft = wb.run_stage(
        "sft",
        run,
        SFTConfig.smoke().replace(
            policy=str(base),
            max_steps=4,
            batch_size=8,
            vision_steps=2,
            vision_batch_size=8,
            caption_steps=2,
            n_eval_prompts=4,
            max_new_tokens=8,
            lr=1e-2,
            **lora,
        ),
        progress=False,
    )
    assert sft["trainable_parameters"] < sft["parameters"] and "vision_presence_accuracy" in sft
    assert is_adapter_dir(run / "sft" / "model")
    policy, _ = load_policy(run / "sft" / "model")
    assert type(policy.get_base_model()) is type(model)
    assert any(p.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_B" in n)
    for kind, config in (("reward", RewardConfig), ("cost", CostConfig)):
        cfg = config.smoke().replace(max_steps=2, batch_size=4, ground_batch_size=4, **lora)
        metrics = wb.run_stage(kind, run, cfg, progress=False)
        assert 0.0 <= metrics["eval_accuracy"] <= 1.0
        assert is_adapter_dir(run / kind / "model")
    guard = GuardConfig.smoke().replace(
        max_steps=2, batch_size=4, n_eval_prompts=4, max_new_tokens=8, threads=1
    )
    for guard_lora in (False, True):  # the LoRA cost model merged, or its adapter trained on
        metrics = wb.run_stage("guard", run, guard.replace(lora=guard_lora), progress=False)
        assert 0.0 <= metrics["accuracy"] <= 1.0
    ppo = PPOConfig.smoke().replace(
        kinds=("lagrangian",),
        max_steps=1,
        batch_size=4,
        n_eval_prompts=4,
        max_new_tokens=8,
        checkpoint_every=1,
        eval_batch_size=32,
        num_minibatches=1 if family in FLAT_IMAGE_FAMILIES else 2,
    )
    for shared in (False, True):
        metrics = wb.run_stage(
            "ppo", run, ppo.replace(shared_backbone=shared), progress=False, force=True
        )
        assert metrics["variants"]["lagrangian"]["steps"] == 1
        assert is_adapter_dir(run / "ppo" / "lagrangian" / "model")
