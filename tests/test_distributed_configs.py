"""The shipped launch configs (configs/accelerate/*.yaml) and the official hyper-parameters
(configs/official.json, configs/README.md); FSDP2 on CPU with two gloo ranks."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from workbench.pipeline import config_class, pipeline_sections
from workbench.stages import get_stage
from workbench.train.distributed import Distributed, ShardingNotWired

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ACCELERATE = CONFIGS / "accelerate"
README = CONFIGS / "README.md"
OFFICIAL = CONFIGS / "official.json"


def _accelerate_config(name: str):
    """The file read by accelerate's own loader, the one ``accelerate launch`` uses."""
    return load_config_from_file(str(ACCELERATE / name))


@pytest.mark.parametrize(
    "name, kind",
    [
        ("ddp.yaml", DistributedType.MULTI_GPU),
        ("cpu_gloo.yaml", DistributedType.MULTI_GPU),
        ("fsdp.yaml", DistributedType.FSDP),
        ("zero3.yaml", DistributedType.DEEPSPEED),
    ],
)
def test_accelerate_configs_load_with_accelerates_loader(name, kind):
    cfg = _accelerate_config(name)
    assert cfg.distributed_type == kind and cfg.num_machines == 1 and cfg.num_processes >= 2


def test_fsdp_config_is_fsdp2_full_shard_by_transformer_block_in_bf16():
    cfg = _accelerate_config("fsdp.yaml")
    fsdp = cfg.fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # save_pretrained-ready
    assert cfg.mixed_precision == "bf16"


def test_zero3_config_names_stage_3_in_bf16():
    cfg = _accelerate_config("zero3.yaml")
    assert cfg.deepspeed_config["zero_stage"] == 3
    assert cfg.deepspeed_config["zero3_save_16bit_model"] is True
    assert cfg.mixed_precision == "bf16"


@pytest.mark.parametrize(
    "variable, kind", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")]
)
def test_a_sharded_launch_is_refused_not_silently_replicated(monkeypatch, variable, kind):
    # what accelerate launch sets in each rank for distributed_type FSDP / DEEPSPEED
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ShardingNotWired, match=f"distributed_type {kind}.*configs/README.md"):
        Distributed()


def test_readme_documents_every_config_with_a_command_the_code_supports():
    text = README.read_text()
    used = set(re.findall(r"--config_file configs/accelerate/([\w.]+)", text))
    shipped = {p.name for p in ACCELERATE.glob("*.yaml")}
    assert used == shipped, f"documented {sorted(used)}, shipped {sorted(shipped)}"
    # every `accelerate launch ... -m workbench <stage>` names a stage declared distributed
    stages = re.findall(r"accelerate launch[^\n]*?-m workbench (\w+)", text)
    assert stages and all(get_stage(s).distributed for s in stages), stages


def test_official_json_loads_through_the_run_config_reader():
    sections = pipeline_sections(OFFICIAL)  # run --config's reader: stage names only
    assert set(sections) == {"sft", "reward", "cost", "ppo"}
    for stage, values in sections.items():
        cls = config_class(stage)
        assert set(values) <= set(cls.field_names()), set(values) - set(cls.field_names())
        cfg = cls.from_dict(values)  # validated: every value is legal
        built = cfg.to_dict()
        assert {key: built[key] for key in values} == values  # nothing normalised away


def _readme_values() -> dict[tuple[str, str], object]:
    """The rows ``| `stage` | `field` | value | ...`` of configs/README.md's table."""
    rows = re.findall(
        r"^\|\s*`(\w+)`\s*\|\s*`(\w+)`\s*\|\s*`([^`]*)`\s*\|", README.read_text(), re.M
    )
    return {(stage, field): json.loads(value) for stage, field, value in rows}


def test_readme_table_matches_official_json():
    documented = _readme_values()
    in_file = {
        (stage, key): value
        for stage, values in json.loads(OFFICIAL.read_text()).items()
        for key, value in values.items()
    }
    assert documented == in_file


@pytest.mark.slow
def test_fsdp2_on_cpu_two_ranks_train_like_one_process(tmp_path):
    """``accelerate launch --config_file configs/accelerate/cpu_gloo.yaml``: two gloo ranks shard
    the tiny VLM with :meth:`Distributed.fully_shard` (FSDP2) and take three AdamW steps of the
    SFT loss, each on half the batch. Each rank holds half the weights; both gather the same
    weights, and they equal an unsharded copy trained on the whole batch in one process."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    assert accelerate, "accelerate's launcher is installed with the project"
    script, out = tmp_path / "fsdp_sft.py", tmp_path / "result.json"
    script.write_text(FSDP_SFT_SCRIPT)
    cmd = [
        accelerate,
        "launch",
        "--config_file",
        str(ACCELERATE / "cpu_gloo.yaml"),
        str(script),
        str(out),
    ]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and len(set(result["digests"])) == 1
    assert 0.45 < result["local_fraction"] < 0.55  # each rank holds half the parameters
    assert result["sharded_losses"] == pytest.approx(result["whole_losses"], rel=1e-5)
    assert result["keys_match"] and result["max_moved"] > 1e-3  # training moved the weights
    assert result["max_abs_diff"] < 1e-4  # ... exactly as one process on the whole batch


FSDP_SFT_SCRIPT = """
import copy, hashlib, json, sys

import numpy as np
import torch

from workbench.config import SFTConfig
from workbench.data import language as L
from workbench.data.render import render_scene
from workbench.data.world import make_prompt, sample_response, sample_scene
from workbench.models.vlm import build_tiny_vlm, encode
from workbench.train.common import optimizer_and_schedule, optimizer_step
from workbench.train.distributed import distributed
from workbench.train.sft import sft_loss

STEPS, N_DEMOS = 3, 4
torch.set_num_threads(1)
dist = distributed()
rng = np.random.default_rng(0)
demos = []
for i in range(N_DEMOS):
    scene = sample_scene(rng, 64)
    prompt = make_prompt(scene, L.BASE_TEMPLATES[i % len(L.BASE_TEMPLATES)])
    image = render_scene([o["kind"] for o in scene["objects"]], scene["layout"], 64)
    demos.append((image, prompt["question"], sample_response(prompt, rng)[1]))
model, processor = build_tiny_vlm(seed=0)
start = {k: v.clone() for k, v in model.state_dict().items()}
whole = copy.deepcopy(model)


def batch_of(items):
    return encode(processor, [d[0] for d in items], [d[1] for d in items], [d[2] for d in items])


full_batch = batch_of(demos)
# every token weighs the same on every rank, so the mean of the rank losses is the whole
# batch's loss and FSDP's averaged gradient the whole batch's gradient
per_token = float(full_batch["response_mask"][:, 1:].sum()) / N_DEMOS
cfg = SFTConfig(lr=1e-3, warmup_steps=0, max_steps=STEPS)


def train(net, batch, on_ranks):
    opt, sched = optimizer_and_schedule(net, cfg)
    losses = []
    for _ in range(STEPS):
        loss = sft_loss(net, batch, per_token=per_token)
        loss.backward()
        if on_ranks:
            dist.average_gradients(net.parameters())  # what PPO calls: a no-op on shards
            losses.append(float(np.mean(dist.gather([loss.item()]))))
        else:
            losses.append(loss.item())
        optimizer_step(net.parameters(), opt, sched)  # clips the DTensor gradients too
    return losses


dist.fully_shard(model)
local = sum(p.to_local().numel() for p in model.parameters())
total = sum(p.numel() for p in model.parameters())
sharded_losses = train(model, batch_of(dist.shard(demos)), on_ranks=True)
state = dist.full_state_dict(model)
digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
digests = dist.gather_objects(digest)
if dist.is_main:
    whole_losses = train(whole, full_batch, on_ranks=False)
    ref = whole.state_dict()
    result = {
        "world_size": dist.world_size,
        "digests": digests,
        "local_fraction": local / total,
        "sharded_losses": sharded_losses,
        "whole_losses": whole_losses,
        "keys_match": sorted(state) == sorted(ref),
        "max_abs_diff": max(float((state[k] - ref[k]).abs().max()) for k in ref),
        "max_moved": max(float((state[k] - start[k]).abs().max()) for k in start),
    }
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)
dist.barrier()
"""
