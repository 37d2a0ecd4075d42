"""Judges other than the gold oracle: local HF sequence-classification reward/cost pairs
(``--judge hf``), another run's reward and cost models (``--judge-run``), and the config that
picks them. Tiny random judges are built here from a config and a tokenizer trained locally
(nothing is downloaded); the analyses with them end to end are in tests/test_analyze.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.config import AnalyzeConfig, ConfigError
from workbench.models.judge import (
    PLAIN_FORMAT,
    HFJudge,
    JudgeError,
    judge_texts,
    load_sequence_classifier,
)

#: Text-only chat template: a user turn then an assistant turn, as instruct tokenizers have.
TEXT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
    "{{ eos_token }}"
)


def judge_tokenizer(chat_template: str | None = None):
    """A word-level tokenizer over the world's words (trained here with ``tokenizers``)."""
    from workbench.data.language import vocabulary
    from workbench.models.tokenizer import train_tokenizer

    tok = train_tokenizer([" ".join(vocabulary()) + " USER: ASSISTANT: user: assistant:"])
    tok.chat_template = chat_template
    return tok


def build_hf_judge(
    path: Path, arch: str = "llama", num_labels: int = 1, chat_template: str | None = None
) -> Path:
    """A tiny random sequence classifier saved as a local HF folder (safetensors)."""
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    tok = judge_tokenizer(chat_template)
    torch.manual_seed(len(str(path)))
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            num_labels=num_labels,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        model = LlamaForSequenceClassification(cfg)
    else:
        cfg = GPT2Config(
            vocab_size=len(tok),
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=256,
            num_labels=num_labels,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        model = GPT2ForSequenceClassification(cfg)
    with torch.no_grad():  # a head of the size a trained one has, so scores spread
        model.score.weight.normal_(0, 1.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


PROMPTS = [
    {"id": "a", "question": "how do i use the knife"},
    {"id": "b", "question": "what is in the picture"},
    {"id": "c", "question": "how do i use the scissors safely"},
]
ANSWERS = ["keep the blade away from you", "a knife and a book", "i cannot help with that"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hf_judge_scores_in_batches_as_one_by_one(tmp_path, arch):
    reward = build_hf_judge(tmp_path / "reward", arch)
    cost = build_hf_judge(tmp_path / "cost", arch, chat_template=TEXT_TEMPLATE)
    judge = HFJudge(reward, cost, batch_size=3)
    batched = np.array(judge.batch(PROMPTS, ANSWERS))
    single = np.array([judge(p, a) for p, a in zip(PROMPTS, ANSWERS, strict=True)])
    assert batched.shape == (3, 2) and np.isfinite(batched).all()
    np.testing.assert_allclose(batched, single, atol=1e-5)  # padding never scored
    assert np.ptp(batched[:, 0]) > 0  # the answers get different scores
    # harmlessness is minus the cost model's score at the last real token (sign convention)
    model, tok = load_sequence_classifier(cost)
    text = judge_texts(tok, [PROMPTS[0]["question"]], [ANSWERS[0]])[0]
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        raw = float(model(**ids).logits[0, 0])
    assert batched[0, 1] == pytest.approx(-raw, abs=1e-5)
    assert not judge.sees_image


def test_judge_texts_template_plain_and_format():
    with_template, plain = judge_tokenizer(TEXT_TEMPLATE), judge_tokenizer(None)
    assert judge_texts(with_template, ["q one"], ["r one"]) == [
        "<s>user: q one assistant: r one </s>"
    ]
    assert judge_texts(plain, ["q one"], ["r one"]) == [
        PLAIN_FORMAT.format(question="q one", response="r one")
    ]
    beaver = "BEGINNING OF CONVERSATION: USER: {question} ASSISTANT:{response}"
    assert judge_texts(with_template, ["q"], ["r"], beaver) == [
        "BEGINNING OF CONVERSATION: USER: q ASSISTANT:r"
    ]


def test_bad_hf_judges_name_the_path_and_field(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    field = "AnalyzeConfig.judge_reward"
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=rf"{field} = '{missing}': no such folder"):
        load_sequence_classifier(missing, field)
    # a language model without a score head
    lm_dir = tmp_path / "lm"
    GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        lm_dir
    )
    with pytest.raises(JudgeError, match=rf"{field} = '{lm_dir}'.*GPT2LMHeadModel.*not a judge"):
        load_sequence_classifier(lm_dir, field)
    # the same weights presented as a sequence classifier: its score head is missing
    config = json.loads((lm_dir / "config.json").read_text())
    config.update(architectures=["GPT2ForSequenceClassification"], num_labels=1)
    config.pop("id2label", None), config.pop("label2id", None)
    (lm_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(JudgeError, match=r"lacks weights .*score\.weight"):
        load_sequence_classifier(lm_dir, field)
    # a classifier with three labels is no reward or cost model
    three = build_hf_judge(tmp_path / "three", "llama", num_labels=3)
    with pytest.raises(JudgeError, match=rf"{field} = '{three}'.*num_labels = 3"):
        load_sequence_classifier(three, field)
    # a safe-rlhf score model (beaver's LlamaForScore): told how to convert it
    beaver = build_hf_judge(tmp_path / "beaver")
    config = json.loads((beaver / "config.json").read_text())
    (beaver / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForScore"]}))
    with pytest.raises(JudgeError, match="safe-rlhf.*score_head.weight to score.weight"):
        load_sequence_classifier(beaver, field)
    # a workbench score model (a VLM): pointed to --judge-run
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "score_config.json").write_text("{}")
    with pytest.raises(JudgeError, match="--judge-run"):
        load_sequence_classifier(tmp_path / "ours", field)
    # pickled weights only
    pickled = build_hf_judge(tmp_path / "pickled")
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(JudgeError, match="safetensors"):
        load_sequence_classifier(pickled, field)


def test_analyze_config_picks_the_judge():
    assert AnalyzeConfig().judge == "auto"
    assert AnalyzeConfig(judge_run="runs/judge").judge == "run"
    assert AnalyzeConfig(judge_reward="r", judge_cost="c").judge == "hf"
    cfg = AnalyzeConfig(
        judge="hf", judge_reward="r", judge_cost="c", judge_format="{question}:{response}"
    )
    assert AnalyzeConfig.from_dict(cfg.to_dict()) == cfg  # config.json round trip
    for kwargs, match in (
        ({"judge": "run"}, r"judge_run = '': judge = 'run' needs --judge-run"),
        ({"judge": "hf", "judge_reward": "r"}, r"judge_cost = '': judge = 'hf' needs --judge-cost"),
        ({"judge": "gold", "judge_run": "x"}, r"judge_run = 'x': belongs to judge = 'run'"),
        ({"judge": "models", "judge_cost": "c"}, r"judge_cost = 'c': belongs to judge = 'hf'"),
        ({"judge_run": "x", "judge_reward": "r"}, r"judge_run = 'x'.*two judges"),
        (
            {"judge_reward": "r", "judge_cost": "c", "judge_format": "{question}"},
            r"judge_format = '\{question\}': must be a format string",
        ),
        ({"judge": "oracle"}, r"judge = 'oracle': must be one of"),
    ):
        with pytest.raises(ConfigError, match=match):
            AnalyzeConfig(**kwargs)


def test_analyze_help_shows_the_judge_flags(capsys):
    from workbench.cli import main

    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--judge-run", "--judge-reward", "--judge-cost", "--judge-format"):
        assert flag in text, flag
    assert "higher = more harmful" in text


def _fake_stage(run: Path, stage: str, seed: int = 0, pairs: int = 900) -> None:
    """A finished reward or cost stage as far as the checks read it (no weights)."""
    (run / stage / "model").mkdir(parents=True)
    (run / stage / "config.json").write_text(json.dumps({"seed": seed}))
    (run / stage / "metrics.json").write_text(json.dumps({"n_train_pairs": pairs}))


def test_judge_run_is_checked_and_described(tmp_path):
    from workbench.eval.analyze import judge_run_models

    run, other = tmp_path / "run", tmp_path / "judge"
    for stage in ("reward", "cost"):
        _fake_stage(run, stage)
    (run / "data").mkdir()
    (run / "data" / "config.json").write_text(json.dumps({"source": "world", "seed": 0}))
    field = r"AnalyzeConfig.judge_run = '"
    with pytest.raises(FileNotFoundError, match=field + ".*no such run directory"):
        judge_run_models(run, tmp_path / "nowhere")
    with pytest.raises(ValueError, match=field + ".*is the run being analysed.*--judge models"):
        judge_run_models(run, run)
    other.mkdir()
    with pytest.raises(FileNotFoundError, match=r"its reward stage has not finished.*--seed 1"):
        judge_run_models(run, other)
    _fake_stage(other, "reward", seed=1)
    with pytest.raises(FileNotFoundError, match="its cost stage has not finished"):
        judge_run_models(run, other)
    (other / "cost").symlink_to(run / "cost")  # linked to this run's cost stage: not apart
    with pytest.raises(ValueError, match="its cost model is this run's own"):
        judge_run_models(run, other)
    (other / "cost").unlink()
    _fake_stage(other, "cost", seed=2, pairs=450)
    (other / "data").symlink_to(run / "data")
    reward, cost, info = judge_run_models(run, other)
    assert (reward, cost) == (other / "reward" / "model", other / "cost" / "model")
    assert info["kind"] == "run" and info["source"]["run"] == str(other.resolve())
    assert info["description"].startswith(f"reward/cost models of run {other.resolve()}")
    assert "seed 1 on 900 pairs" in info["description"]
    assert "seed 2 on 450 pairs" in info["description"]
    assert info["same_training_pairs"] and "stronger" in info["caveat"]
    (other / "data").unlink()  # a data stage of its own (another data seed): other pairs
    (other / "data").mkdir()
    (other / "data" / "config.json").write_text(json.dumps({"source": "world", "seed": 1}))
    info = judge_run_models(run, other)[2]
    assert not info["same_training_pairs"] and "data of its own" in info["description"]
