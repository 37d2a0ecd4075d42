"""The model layer (docs/design.md §5): the world tokenizer, two tiny VLM families built from config
(LLaVA: CLIP + Llama; Gemma-3: SigLIP + Gemma-3), save/load through the Auto classes,
generation, response masks, LoRA adapters, and clear errors for bad inputs."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from workbench.data import language as L
from workbench.data.render import render_scene
from workbench.data.world import _sample_template, compose_response, make_prompt, sample_scene
from workbench.models import vlm
from workbench.models.adapters import apply_lora, load_policy, save_policy
from workbench.models.families import FAMILIES, build_tiny_vlm_family
from workbench.models.tokenizer import CHAT_TEMPLATE, train_tokenizer, world_tokenizer
from workbench.models.vlm import TinyVLMSpec, VLMError

SMALL = TinyVLMSpec(
    image_size=32,
    patch_size=16,
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    text_hidden=32,
    text_layers=2,
    text_heads=2,
    text_intermediate=64,
    max_positions=128,
)
FAMILY_NAMES = ["llava", "gemma3"]
WORDS = set(L.vocabulary())


def world_examples(n: int, seed: int = 0, size: int = 32):
    """``n`` (image, question, response) triples of the synthetic world."""
    rng = np.random.default_rng(seed)
    images, questions, responses = [], [], []
    for _ in range(n):
        scene = sample_scene(rng, size)
        template = _sample_template(rng, scene)
        prompt = make_prompt(scene, template)
        action = "comply" if template.intent == "harmful" else "answer"
        images.append(render_scene([o["kind"] for o in scene["objects"]], scene["layout"], size))
        questions.append(prompt["question"])
        responses.append(compose_response(action, prompt, rng))
    return images, questions, responses


@pytest.fixture(scope="module")
def examples():
    images, questions, responses = world_examples(3)
    responses[1] = "sorry , i cannot help with that ."  # lengths differ: real padding on both sides
    return images, questions, responses


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def saved(request, tmp_path_factory):
    """(family, model, processor, directory) of a small tiny VLM saved with save_pretrained."""
    model, processor = build_tiny_vlm_family(request.param, seed=0, spec=SMALL)
    model.eval()
    path = vlm.save_vlm(model, processor, tmp_path_factory.mktemp(request.param) / "model")
    return request.param, model, processor, path


def logits(model, batch):
    with torch.no_grad():
        return model(**vlm.model_inputs(batch)).logits


# --- tokenizer ------------------------------------------------------------------------------
def test_tokenizer_round_trip(examples):
    tok = world_tokenizer()
    _, questions, responses = examples
    for text in questions + responses:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert len(ids) == len(text.split())  # one token per word
        assert tok.decode(ids) == text
    assert (
        tok.decode(
            tok("<s> the image shows </s>", add_special_tokens=False)["input_ids"],
            skip_special_tokens=True,
        )
        == "the image shows"
    )
    # the chat template: image placeholder + question, then the assistant turn
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": questions[0]}]}
    answer = {"role": "assistant", "content": [{"type": "text", "text": responses[0]}]}
    assert (
        tok.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
        == f"<s><image> {questions[0]} <assistant>"
    )
    assert (
        tok.apply_chat_template([user, answer], tokenize=False)
        == f"<s><image> {questions[0]} <assistant> {responses[0]}</s>"
    )


def test_tokenizer_extra_special_tokens_keep_ids():
    base = world_tokenizer()
    extra = world_tokenizer({"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"})
    assert len(extra) == len(base) + 2
    assert extra.boi_token == "<start_of_image>" and extra.boi_token_id == len(base)
    assert extra.eoi_token_id == len(base) + 1
    vocab = extra.get_vocab()
    assert all(vocab[w] == i for w, i in base.get_vocab().items())
    assert extra.tokenize("<s><start_of_image><image><end_of_image> what is") == [
        "<s>",
        "<start_of_image>",
        "<image>",
        "<end_of_image>",
        "what",
        "is",
    ]


# --- families: build, save, load, generate ----------------------------------------------------
def test_families_are_different_architectures():
    assert set(FAMILY_NAMES) < set(FAMILIES)  # the BPE families: tests/test_families.py
    llava, _ = build_tiny_vlm_family("llava", spec=SMALL)
    gemma, processor = build_tiny_vlm_family("gemma3", spec=SMALL)
    assert llava.config.model_type == "llava" and gemma.config.model_type == "gemma3"
    assert llava.config.vision_config.model_type == "clip_vision_model"
    assert llava.config.text_config.model_type == "llama"
    assert gemma.config.vision_config.model_type == "siglip_vision_model"
    assert gemma.config.text_config.model_type == "gemma3_text"
    assert processor.tokenizer.image_token_id == gemma.config.image_token_id
    with pytest.raises(VLMError, match=r"unknown tiny VLM family 'qwen'.*gemma3.*llava"):
        build_tiny_vlm_family("qwen")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_default_size_is_tiny(family):
    model, _ = build_tiny_vlm_family(family)
    assert 3e5 <= vlm.count_parameters(model) <= 5e6


def test_save_and_load_with_auto_classes(saved, examples):
    family, model, processor, path = saved
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
    loaded = AutoModelForImageTextToText.from_pretrained(path).eval()
    loaded_processor = AutoProcessor.from_pretrained(path)
    assert type(loaded) is type(model) and type(loaded_processor) is type(processor)
    images, questions, responses = examples
    before = logits(model, vlm.encode(processor, images, questions, responses))
    after = logits(loaded, vlm.encode(loaded_processor, images, questions, responses))
    assert torch.equal(before, after)
    # and through the workbench loader (checks included)
    again, again_processor = vlm.load_vlm(path)
    assert torch.equal(
        before, logits(again.eval(), vlm.encode(again_processor, images, questions, responses))
    )


def test_generate_returns_known_words(saved, examples):
    family, model, processor, _ = saved
    images, questions, _ = examples
    torch.manual_seed(0)
    sampled = vlm.generate(model, processor, images, questions, max_new_tokens=6)
    greedy = vlm.generate(model, processor, images, questions, max_new_tokens=6, do_sample=False)
    for texts in (sampled, greedy):
        assert len(texts) == len(questions)
        assert all(isinstance(t, str) for t in texts)
        assert set(w for t in texts for w in t.split()) <= WORDS, texts
        assert all(len(t.split()) <= 6 for t in texts)
    # an untrained model may greedily repeat a special token (decoded as nothing); sampling
    # from its near-uniform distribution gives words
    assert sum(len(t.split()) for t in sampled) >= 6, sampled
    # greedy decoding of one prompt does not depend on the others in its (left-padded) batch
    alone = vlm.generate(
        model, processor, images[:1], questions[:1], max_new_tokens=6, do_sample=False
    )
    assert alone == greedy[:1]


@pytest.mark.parametrize("side", ["left", "right"])
def test_response_mask_covers_response_and_eos(saved, examples, side):
    _, _, processor, _ = saved
    tok = processor.tokenizer
    images, questions, responses = examples
    batch = vlm.encode(processor, images, questions, responses, padding_side=side)
    ids, attention, mask = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    assert mask.shape == ids.shape
    assert len(set(attention.sum(-1).tolist())) > 1  # there is padding
    for i, response in enumerate(responses):
        expected = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids[i][mask[i].bool()].tolist() == expected
        real = attention[i].nonzero().flatten()
        first, last = int(real[0]), int(real[-1])
        # the response is the end of the real tokens; padding is on the asked side
        assert mask[i, last - len(expected) + 1 : last + 1].tolist() == [1] * len(expected)
        assert (mask[i] <= attention[i]).all()
        if side == "left":
            assert last == ids.shape[1] - 1
        else:
            assert first == 0
    # the model sees the same sequence on both sides (same logits on real tokens)
    other = vlm.encode(
        processor, images, questions, responses, padding_side="left" if side == "right" else "right"
    )
    for i in range(len(responses)):
        assert (
            ids[i][attention[i].bool()].tolist()
            == other["input_ids"][i][other["attention_mask"][i].bool()].tolist()
        )


def test_padding_does_not_change_logits(saved, examples):
    _, model, processor, _ = saved
    images, questions, responses = examples
    left = vlm.encode(processor, images, questions, responses, padding_side="left")
    right = vlm.encode(processor, images, questions, responses, padding_side="right")
    out_left, out_right = logits(model, left), logits(model, right)
    for i in range(len(responses)):
        a = out_left[i][left["attention_mask"][i].bool()]
        b = out_right[i][right["attention_mask"][i].bool()]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_pooled_image_features_are_the_mean_projected_features(saved, examples):
    """Read from the decoder's input at the image tokens, the pooled features are exactly the
    mean of what ``get_image_features`` projects (the meaning the SFT presence head, the
    reward model's presence head and the guard's image head were tuned with)."""
    _, model, processor, _ = saved
    images, questions, responses = examples
    with torch.no_grad():
        pooled = vlm.pooled_image_features(
            model, vlm.encode(processor, images, questions, responses)
        )
        out = model.get_image_features(
            pixel_values=processor.image_processor(images, return_tensors="pt")["pixel_values"]
        )
    features = getattr(out, "pooler_output", out)
    if isinstance(features, list | tuple):
        features = torch.stack([f.reshape(-1, f.shape[-1]) for f in features])
    torch.testing.assert_close(pooled, features.mean(1), rtol=1e-6, atol=1e-7)


# --- LoRA ---------------------------------------------------------------------------------------
def _perturb_lora(model):
    """Fresh LoRA B matrices are zero (adapter == base); make the adapter change the outputs."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


def test_lora_adapter_save_and_load(saved, examples, tmp_path):
    family, _, _, base_dir = saved
    images, questions, responses = examples
    base, processor = vlm.load_vlm(base_dir)  # the base has its directory: the adapter points at it
    base.eval()
    batch = vlm.encode(processor, images, questions, responses)
    base_out = logits(base, batch)
    total = vlm.count_parameters(base)

    model = apply_lora(base, ["q_proj", "v_proj"], r=4, alpha=8)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("v_proj" in n for n in trainable)
    assert 0 < vlm.count_parameters(model, trainable_only=True) < 0.2 * total
    _perturb_lora(model)
    model.eval()
    adapted = logits(model, batch)
    assert not torch.allclose(adapted, base_out)
    with model.disable_adapter():
        assert torch.equal(logits(model, batch), base_out)  # the reference model, exactly

    out = save_policy(model, processor, tmp_path / "policy")
    names = {p.name for p in out.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "processor_config.json",
    } <= names
    assert "model.safetensors" not in names and "base" not in names
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir.resolve())

    loaded, loaded_processor = load_policy(out)
    loaded.eval()
    assert hasattr(loaded, "peft_config")
    assert not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(
        logits(loaded, vlm.encode(loaded_processor, images, questions, responses)), adapted
    )
    with loaded.disable_adapter():
        assert torch.equal(logits(loaded, batch), base_out)
    trainable_again, _ = load_policy(out, trainable=True)
    assert any(p.requires_grad for p in trainable_again.parameters())


def test_lora_over_unsaved_base_saves_the_base(examples, tmp_path):
    images, questions, responses = examples
    base, processor = build_tiny_vlm_family("gemma3", seed=3, spec=SMALL)
    base.eval()
    batch = vlm.encode(processor, images, questions, responses)
    base_out = logits(base, batch)
    model = apply_lora(base, ["q_proj", "v_proj"], r=2)
    _perturb_lora(model)
    model.eval()
    adapted = logits(model, batch)
    out = save_policy(model, processor, tmp_path / "policy")
    assert (out / "base" / "model.safetensors").is_file()
    assert torch.equal(logits(model, batch), adapted)  # saving the base left the adapter in place
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "base").resolve())
    base_again, _ = vlm.load_vlm(out / "base")
    assert not any("lora" in n for n, _ in base_again.named_parameters())
    assert torch.equal(logits(base_again.eval(), batch), base_out)
    loaded, _ = load_policy(out)
    assert torch.equal(logits(loaded.eval(), batch), adapted)
    # the run directory moved: the adapter still finds the base next to it
    moved = out.rename(tmp_path / "moved")
    loaded, _ = load_policy(moved)
    assert torch.equal(logits(loaded.eval(), batch), adapted)


# --- bad input: clear errors --------------------------------------------------------------------
def test_missing_directory_and_file(tmp_path):
    with pytest.raises(VLMError, match="model directory not found: .*nowhere"):
        vlm.load_vlm(tmp_path / "nowhere")
    file = tmp_path / "weights.bin"
    file.write_bytes(b"\0")
    with pytest.raises(VLMError, match=r"weights.bin is a file, not a model directory"):
        vlm.load_vlm(file)
    with pytest.raises(VLMError, match="model directory not found"):
        load_policy(tmp_path / "nowhere")


def test_data_directory_is_not_a_model(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "train.jsonl").write_text('{"question": "what is in the image ?"}\n')
    with pytest.raises(VLMError) as err:
        vlm.load_vlm(data)
    message = str(err.value)
    assert str(data) in message and "no config.json" in message
    assert "train.jsonl" in message and "images/" in message
    bad_json = tmp_path / "broken"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(VLMError, match="config.json is not valid JSON"):
        vlm.load_vlm(bad_json)


def test_text_only_model_is_not_a_vlm(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = world_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    path = tmp_path / "llama"
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    with pytest.raises(VLMError) as err:
        vlm.load_vlm(path)
    message = str(err.value)
    assert str(path) in message and "'llama'" in message
    assert "not a vision-language" in message


def _tokenizer_without_image_token():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(
        special_tokens=["<pad>", "<unk>", "<s>", "</s>", "<assistant>"]
    )
    tok.train_from_iterator([" ".join(L.vocabulary())], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def test_processor_without_image_token(tmp_path):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    tok = _tokenizer_without_image_token()
    assert tok.convert_tokens_to_ids("<image>") == tok.unk_token_id
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(),
        tokenizer=tok,
        patch_size=16,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
    )
    with pytest.raises(VLMError, match=r"my processor: the tokenizer has no image token '<image>'"):
        vlm.check_processor(processor, where="my processor")
    # saved next to a model: load_vlm names the directory and the missing token
    model, _ = build_tiny_vlm_family("llava", spec=SMALL)
    path = tmp_path / "no_image_token"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    with pytest.raises(
        VLMError, match=r"no_image_token: the tokenizer has no image token '<image>'"
    ):
        vlm.load_vlm(path)
    # a tokenizer alone is not a vision-language processor
    with pytest.raises(VLMError, match="not a vision-language processor"):
        vlm.check_processor(tok)
    # the tokenizer trainer itself always has the image token
    assert train_tokenizer(["a b"]).convert_tokens_to_ids("<image>") != tok.unk_token_id


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_missing_lora_target(family):
    model, _ = build_tiny_vlm_family(family, spec=SMALL)
    with pytest.raises(VLMError) as err:
        apply_lora(model, ["q_proj", "query_key_value"])
    message = str(err.value)
    assert "['query_key_value']" in message and "do not exist" in message
    assert type(model).__name__ in message
    assert "'v_proj'" in message and "'o_proj'" in message  # what exists instead
    assert not hasattr(model, "peft_config")  # nothing was wrapped


def test_adapter_with_missing_base(tmp_path, saved):
    _, _, _, base_dir = saved
    base, processor = vlm.load_vlm(base_dir)
    out = save_policy(apply_lora(base, ["q_proj"], r=2), processor, tmp_path / "policy")
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "deleted_base")
    (out / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(
        VLMError, match=r"names base model '.*deleted_base', which is not a local directory"
    ):
        load_policy(out)
    with pytest.raises(VLMError, match="holds no saved model"):
        save_policy(
            apply_lora(vlm.load_vlm(base_dir)[0], ["q_proj"]),
            processor,
            tmp_path / "p2",
            base_path=tmp_path,
        )
