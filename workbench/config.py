"""One dataclass config per stage (docs/design.md §2).

Each config documents its fields where they are declared, validates itself in
``__post_init__`` (an invalid value fails at construction with a message naming the field),
has a ``smoke()`` preset for tests and notebooks, and round-trips through JSON: the resolved
config is saved as ``config.json`` next to a stage's results, so a result can be reproduced
from it. The CLI turns every field into a ``--flag`` (see ``workbench.cli``).

A field's docstring is its ``--help`` text: what the field does and its default. The
measurements behind the defaults are in docs/tuning.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from .data.schema import SEVERITY_LEVELS


class ConfigError(ValueError):
    """An invalid config value; the message names the config class and the field."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's JSON object; a missing file, invalid JSON or anything but an object is
    a :class:`ConfigError` that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return values


@dataclass
class StageConfig:
    """Base class: seed, JSON round trip and the validation helpers."""

    seed: int = 0
    """Seed for every random choice of the stage."""

    @classmethod
    def smoke(cls) -> Self:
        """A small preset that finishes in seconds (tests, notebooks in smoke mode)."""
        return cls()

    def __post_init__(self) -> None:
        self._check(
            isinstance(self.seed, int) and self.seed >= 0, "seed", "must be an integer >= 0"
        )

    # -- validation helpers -------------------------------------------------------------
    def _check(self, ok: bool, name: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{type(self).__name__}.{name} = {getattr(self, name)!r}: {why}")

    def _positive(self, *names: str) -> None:
        for name in names:
            v = getattr(self, name)
            self._check(
                isinstance(v, int) and not isinstance(v, bool) and v > 0,
                name,
                "must be a positive integer",
            )

    def _fraction(self, *names: str, open_right: bool = True) -> None:
        for name in names:
            v = getattr(self, name)
            in_range = (0.0 <= v < 1.0) if open_right else (0.0 <= v <= 1.0)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and in_range
            self._check(
                ok,
                name,
                "must be a fraction in [0, 1)" if open_right else "must be a fraction in [0, 1]",
            )

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values (tuples become lists, nested configs dicts), so a config
        compares equal to its own ``config.json``."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: StageConfig | None = None) -> Self:
        """Build a config from ``values`` over ``base`` (default: the class defaults).
        Unknown keys are an error that names them; the names fields had in older
        ``config.json`` files (:data:`RENAMED`) are read under their new names."""
        values = _renamed(cls.__name__, values)
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown field(s) {unknown}; known: {cls.field_names()}"
            )
        start = base.to_dict() if base is not None else {}
        merged = {**start, **values}
        for f in dataclasses.fields(cls):  # nested settings (e.g. the guard's blocking policy)
            nested = _NESTED.get(f"{cls.__name__}.{f.name}") or _NESTED.get(f.name)
            if nested is not None and isinstance(merged.get(f.name), dict):
                merged[f.name] = nested.from_dict(merged[f.name])
        return cls(**merged)

    def _tuple(self, name: str, item: type) -> None:
        """Normalise a list-valued field to a tuple of ``item``: a JSON list, a tuple, or a
        comma-separated string (``config.json`` files written before the fields were tuples)."""
        value = getattr(self, name)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        try:
            items = tuple(item(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{type(self).__name__}.{name} = {value!r}: "
                f"must be a list of {item.__name__} values"
            ) from None
        object.__setattr__(self, name, items)

    @classmethod
    def from_json(cls, path: str | Path, base: StageConfig | None = None) -> Self:
        return cls.from_dict(read_config_file(path), base)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


@dataclass
class DataConfig(StageConfig):
    """The data stage: the synthetic safety world (default) or real BeaverTails-V files.

    The world's sizes, rendering and annotator noise are all here, so the generated dataset
    is a pure function of this config.
    """

    source: str = "world"
    """``world`` (the embedded synthetic world, the default) or a path to real BeaverTails-V
    files: a parquet or jsonl file, a folder of them, or a ``datasets`` save_to_disk folder."""
    n_train: int = 20_000
    """Training preference pairs (world only). Default 20,000."""
    n_eval: int = 1_200
    """Held-out eval pairs from the training object-template combinations (world only).
    Default 1,200."""
    n_test: int = 600
    """Test prompts (no responses) from held-out object-template combinations (world only).
    Default 600."""
    image_size: int = 64
    """Side of the square scene images, in pixels. Default 64."""
    heldout_fraction: float = 0.15
    """Share of (object kind, question template) combinations kept for the test split only.
    Default 0.15."""
    questions_per_scene: int = 2
    """Questions that share one rendered scene (fewer images to draw and store). Default 2."""
    helpful_temperature: float = 0.5
    """Annotator noise of the more-helpful label: P(1 preferred) = σ((h1 - h2) / T). Default 0.5."""
    rate_noise: float = 0.45
    """Std of the Gaussian noise added to gold scores before rounding to annotator rates.
    Default 0.45."""
    safer_tie_temperature: float = 0.5
    """When the two harmless rates tie, P(1 safer) = σ((s1 - s2) / T) on the gold scores.
    Default 0.5."""
    safe_helpful_score: float = 2.5
    """Gold helpfulness of the full safe-and-helpful answer to a risky prompt (docs/design.md §4.6).
    Default 2.5 (world v2); 1.5 is the first world. History: docs/tuning.md"""
    eval_fraction: float = 0.05
    """Real data without an eval split: share of records held out for eval. Default 0.05."""
    strict: bool = False
    """Real data: stop at the first invalid record instead of listing it in rejects.jsonl."""

    @classmethod
    def smoke(cls) -> Self:
        return cls(n_train=900, n_eval=120, n_test=120)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(
            isinstance(self.source, str) and bool(self.source),
            "source",
            "must be 'world' or a path",
        )
        self._positive("n_train", "n_eval", "n_test", "questions_per_scene")
        self._check(
            isinstance(self.image_size, int) and 32 <= self.image_size <= 512,
            "image_size",
            "must be an integer in [32, 512]",
        )
        self._fraction("heldout_fraction", "eval_fraction")
        self._check(
            self.heldout_fraction > 0,
            "heldout_fraction",
            "must be > 0 (the test split needs held-out combinations)",
        )
        for name in ("helpful_temperature", "safer_tie_temperature"):
            self._check(
                isinstance(getattr(self, name), int | float) and getattr(self, name) > 0,
                name,
                "must be > 0",
            )
        self._check(
            isinstance(self.rate_noise, int | float) and self.rate_noise >= 0,
            "rate_noise",
            "must be >= 0",
        )
        self._check(
            isinstance(self.safe_helpful_score, int | float)
            and not isinstance(self.safe_helpful_score, bool)
            and 0.5 <= self.safe_helpful_score <= 3,
            "safe_helpful_score",
            "must be in [0.5, 3] (1.5: the first world, no safe and helpful answer)",
        )
        self._check(isinstance(self.strict, bool), "strict", "must be true or false")

    @property
    def is_world(self) -> bool:
        return self.source == "world"


@dataclass
class ModelStageConfig(StageConfig):
    """Fields shared by the stages that train a model (SFT, reward, cost, ...)."""

    policy: str = ""
    """A local HF vision-language model folder to start from instead of the default
    (SFT: the tiny VLM built from config; reward/cost: the SFT model of this run)."""
    lora: bool = False
    """Train a ``peft`` LoRA adapter instead of all weights (the way to train a real VLM)."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    """Names of the modules that get adapters (checked against the model). When left at the
    default and a name does not exist in the model, the model's own attention projections are
    used instead (``models.adapters.default_lora_targets``)."""
    batch_size: int = 32
    """Sequences (SFT) or pairs (reward, cost) per optimiser step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, linear warm-up then cosine decay to 10%)."""
    weight_decay: float = 0.0
    """AdamW weight decay. Default 0."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    max_steps: int = 600
    """Optimiser steps."""
    eval_batch_size: int = 64
    """Batch size for evaluation. Default 64."""
    threads: int = 0
    """torch CPU threads; 0 (the default) keeps torch's default. Smoke presets use 1.
    History: docs/tuning.md"""
    mixed_precision: str = "no"
    """``no`` (fp32, the default), ``bf16`` or ``fp16``: the stage's forward passes run under
    autocast in that type (weights and optimiser state stay fp32); fp16 scales the loss
    (dynamic loss scaling). bf16 needs no scaler and is the choice on GPUs that have it."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them (less memory, more
    time). Default false."""
    device: str = "auto"
    """Where the stage's models run: ``auto`` (the default: accelerate's device, this
    process's GPU when CUDA is present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(
            self.mixed_precision in MIXED_PRECISION,
            "mixed_precision",
            f"must be one of {MIXED_PRECISION}",
        )
        self._check(
            isinstance(self.gradient_checkpointing, bool),
            "gradient_checkpointing",
            "must be true or false",
        )
        problem = device_problem(self.device)
        self._check(problem is None, "device", problem or "")
        self._positive("lora_r", "lora_alpha", "batch_size", "max_steps", "eval_batch_size")
        self._check(isinstance(self.lr, int | float) and self.lr > 0, "lr", "must be > 0")
        self._check(
            isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
            "warmup_steps",
            "must be >= 0",
        )
        self._check(isinstance(self.threads, int) and self.threads >= 0, "threads", "must be >= 0")
        self._check(
            isinstance(self.weight_decay, int | float) and self.weight_decay >= 0,
            "weight_decay",
            "must be >= 0",
        )
        self._tuple("lora_targets", str)
        self._check(bool(self.lora_targets), "lora_targets", "needs at least one module name")


@dataclass
class SFTConfig(ModelStageConfig):
    """The SFT stage: the base ("precursor") policy imitates the world's demonstrations."""

    batch_size: int = 24
    """Demonstrations per step, batched by similar length. Default 24. History: docs/tuning.md"""
    max_steps: int = 700
    vision_steps: int = 800
    """Object-presence pretraining steps of the vision tower and projector before image alignment
    (world data only; 0: off). Default 800. History: docs/tuning.md"""
    vision_batch_size: int = 64
    """Scenes per vision pretraining step. Default 64."""
    vision_lr: float = 4e-3
    """Learning rate of vision pretraining. Default 4e-3."""
    caption_steps: int = 300
    """Image-alignment steps before SFT: empty question -> the scene's description (world data
    only). Default 300."""
    n_eval_prompts: int = 600
    """Test prompts the base policy answers (gold helpfulness and safety rate). Default 600."""
    max_new_tokens: int = 40
    """Generation length limit when evaluating the policy. Default 40."""
    tiny_family: str = "llava"
    """Architecture of the tiny VLM built when no ``policy`` is given: ``llava`` (CLIP + Llama,
    the default), ``gemma3`` (SigLIP + Gemma-3), or one with a byte-level BPE tokenizer and its
    own chat template: ``llava_next``, ``idefics3``, ``aya_vision``, ``paddleocr_vl``
    (``workbench.models.families``)."""

    @classmethod
    def smoke(cls) -> Self:
        return cls(
            max_steps=150,
            vision_steps=20,
            caption_steps=10,
            n_eval_prompts=48,
            batch_size=16,
            threads=1,
        )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("n_eval_prompts", "max_new_tokens", "vision_batch_size")
        self._check(
            isinstance(self.vision_steps, int) and self.vision_steps >= 0,
            "vision_steps",
            "must be >= 0",
        )
        self._check(
            isinstance(self.vision_lr, int | float) and self.vision_lr > 0,
            "vision_lr",
            "must be > 0",
        )
        self._check(
            self.tiny_family in TINY_FAMILIES, "tiny_family", f"must be one of {TINY_FAMILIES}"
        )


@dataclass
class RewardConfig(ModelStageConfig):
    """The reward model: ``-log σ(R_w - R_l) + η·mean(R²)`` on the more-helpful pairs."""

    lora: bool = False
    """Train the score model as a LoRA adapter over the SFT model (adapter + score head);
    ``ppo --shared-backbone`` needs it. Default false."""
    batch_size: int = 16
    lr: float = 5e-4
    max_steps: int = 420
    eta: float = 1e-3
    """Weight η of the score regulariser η·mean(R²) that keeps scores near 0. Default 1e-3."""
    head_lr_multiplier: float = 20.0
    """Learning rate of the linear score head = ``lr`` times this. Default 20.
    History: docs/tuning.md"""

    ground_weight: float = 1.0
    """Weight of the grounding loss on contrast pairs (world only; 0: off; docs/design.md §5.4).
    Default 1.0. History: docs/tuning.md"""
    ground_batch_size: int = 8
    """Contrast pairs per step, beside ``batch_size`` preference pairs. Default 8."""
    ground_mention_weight: float = 1.0
    """Weight of the mention BCE on contrast pairs (0: off): is the object named at this word the
    target? (head dropped after training). Default 1.0."""
    ground_vision_weight: float = 1.0
    """Weight of the object-presence BCE on the contrast pairs' images (0: off; head dropped after
    training). Default 1.0."""

    @classmethod
    def smoke(cls) -> Self:
        return cls(max_steps=30, batch_size=8, threads=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(isinstance(self.eta, int | float) and self.eta >= 0, "eta", "must be >= 0")
        for name in ("ground_weight", "ground_mention_weight", "ground_vision_weight"):
            self._check(
                isinstance(getattr(self, name), int | float) and getattr(self, name) >= 0,
                name,
                "must be >= 0",
            )
        self._positive("ground_batch_size")
        self._check(
            isinstance(self.head_lr_multiplier, int | float) and self.head_lr_multiplier > 0,
            "head_lr_multiplier",
            "must be > 0",
        )


@dataclass
class CostConfig(RewardConfig):
    """The cost model: ``-log σ(C_u - C_s) - log σ(s_u·C_u) - log σ(s_s·C_s) + η·mean(C²)``."""

    sign_mode: str = "graded"
    """``graded``: sign weight s = -harmless_rate (multi-level; the default); ``binary``: s = ±1
    from is_safe."""
    ground_weight: float = 0.0
    """Grounding contrast pairs: off (0) for the cost model, because the gold harmlessness of a
    safe answer does not depend on the object it names."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(
            self.sign_mode in ("graded", "binary"), "sign_mode", "must be 'graded' or 'binary'"
        )


@dataclass
class GuardConfig(ModelStageConfig):
    """Beaver-Guard-V: severity (ordinal) and harm-category heads on a score-model backbone,
    and the five-round filter-and-regenerate loop evaluated on the base policy."""

    batch_size: int = 32
    """Guard examples per step; each training pair gives three (its query and its two answers).
    Default 32."""
    lr: float = 5e-4
    max_steps: int = 600
    """Optimiser steps (about a third of an epoch of the guard examples). Default 600.
    History: docs/tuning.md"""
    head_lr_multiplier: float = 20.0
    """Learning rate of the two heads and the ordinal thresholds = ``lr`` times this. Default 20."""
    category_weight: float = 0.5
    """Weight of the category cross-entropy beside the ordinal severity loss. Default 0.5."""
    image_weight: float = 0.5
    """Weight of the auxiliary image-severity cross-entropy (0: off). Default 0.5."""
    severe_cutoff: float = 0.35
    """Predict severe when P(severe) exceeds this (other levels: 0.5): for queries, and for answers
    when ``severe_recall_target`` is 0. Default 0.35. History: docs/tuning.md"""
    severe_recall_target: float = 0.97
    """Answers: the P(severe) cut-off is set so that this share of unseen severe training answers
    is caught (0: ``severe_cutoff``). Default 0.97. History: docs/tuning.md"""
    blocking: BlockingPolicy = dataclasses.field(default_factory=lambda: BlockingPolicy())
    """When the guard blocks and how often it regenerates (shared with the demo)."""
    n_eval_prompts: int = 600
    """Test prompts for the round-by-round safety and helpfulness curve. Default 600."""
    max_new_tokens: int = 40

    @classmethod
    def smoke(cls) -> Self:
        return cls(max_steps=40, batch_size=16, n_eval_prompts=48, threads=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("n_eval_prompts", "max_new_tokens")
        self._check(
            isinstance(self.blocking, BlockingPolicy), "blocking", "must be a BlockingPolicy"
        )
        self._check(
            isinstance(self.severe_recall_target, int | float)
            and 0 <= self.severe_recall_target <= 1,
            "severe_recall_target",
            "must be in [0, 1] (0: no calibration)",
        )
        self._check(
            isinstance(self.severe_cutoff, int | float) and 0 < self.severe_cutoff < 1,
            "severe_cutoff",
            "must be in (0, 1)",
        )
        for name in ("category_weight", "image_weight", "head_lr_multiplier"):
            self._check(
                isinstance(getattr(self, name), int | float) and getattr(self, name) >= 0,
                name,
                "must be >= 0",
            )


@dataclass
class PPOConfig(ModelStageConfig):
    """PPO-Lagrangian (Safe RLHF-V) and its baselines from one trainer (docs/design.md §6).

    Defaults are tuned for the embedded world on a CPU; the official trainer's values are
    given beside each field where they differ (measurements: docs/tuning.md)."""

    kinds: tuple[str, ...] = ("lagrangian", "reward_only")
    """Kinds of run to train at the config's own settings: ``lagrangian`` (learned λ),
    ``reward_only`` (λ ≡ 0), ``fixed_lambda`` (λ = ``lambda_init``).
    Default lagrangian reward_only."""
    thresholds: tuple[float, ...] = (-1.0,)
    """Threshold sweep: each d adds a lagrangian run ``lagrangian_d<d>`` (``lagrangian`` itself uses
    ``cost_threshold``). Default -1; none: ``--thresholds`` alone."""
    fixed_lambdas: tuple[float, ...] = (1.0,)
    """Reward-shaping grid: each λ adds a run ``fixed_lambda_<λ>``. Default 1."""
    seeds: int = 3
    """Training seeds per point: seed offset k > 0 adds ``<point>_seed<k>`` trained with
    ``seed + k``. Default 3 (the default grid is 12 runs). History: docs/tuning.md"""
    lora: bool = True
    """The policy trains through a LoRA adapter; the reference is the same weights with the
    adapter disabled. Default true."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    shared_backbone: bool = False
    """Put all six roles on one frozen backbone as LoRA adapters (needs ``lora`` and reward and cost
    models trained with ``--lora``; docs/design.md §5.6). Default false."""
    batch_size: int = 16
    """Prompts (episodes) per PPO step. Default 16 (official trainer: 16 per device)."""
    lr: float = 4e-4
    """Actor (LoRA) learning rate. Default 4e-4 (official trainer: 1e-5, full fine-tuning)."""
    critic_lr: float = 4e-4
    """Learning rate of the two critics (started from the reward and cost models). Default 4e-4."""
    max_steps: int = 40
    """PPO steps per variant, each one rollout and ``ppo_epochs`` x ``num_minibatches`` updates.
    Default 40. History: docs/tuning.md"""
    warmup_steps: int = 5
    max_new_tokens: int = 32
    """Response length limit of the rollouts. Default 32."""
    temperature: float = 1.0
    kl_coeff: float = 0.1
    """β of the per-token KL split. Default 0.1 (official trainer: 0.02). History: docs/tuning.md"""
    signal_clip: float = 50.0
    """c: per-token reward and cost signals are clipped to ±c. Default 50 (official trainer: 50)."""
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    """ε of the PPO ratio clip. Default 0.2."""
    value_clip: float = 5.0
    """ε_v of the clipped value loss. Default 5 (official trainer: 5)."""
    ppo_epochs: int = 2
    """Passes over each rollout; π_old and V_old stay the rollout's.
    Default 2 (official trainer: 1). History: docs/tuning.md"""
    num_minibatches: int = 2
    """Minibatches per pass (at most ``batch_size``), one optimiser step each; LR schedules count
    optimiser steps. Default 2 (official trainer: 1). History: docs/tuning.md"""
    cost_threshold: float = -2.0
    """d: the constraint J_C <= d. Default -2 (official trainer: -0.5 on its own cost scale).
    History: docs/tuning.md"""
    lambda_init: float = 1.0
    """Initial λ, and the λ of ``fixed_lambda``. Default 1.0 (official trainer: 10).
    History: docs/tuning.md"""
    lambda_lr: float = 0.1
    """SGD learning rate of log λ (docs/design.md §6.10). Default 0.1 (official trainer: 0.1).
    History: docs/tuning.md"""
    lambda_max: float = 5.0
    """Upper bound of λ. Default 5 (official trainer: 20). History: docs/tuning.md"""
    lambda_update_delay: int = 0
    """PPO steps before λ starts to move. Default 0."""
    lambda_controller: str = "sgd"
    """How a learned λ follows J_C (docs/design.md §6.10): ``sgd`` (one SGD step on log λ per PPO
    step, the official trainer's) or ``pid`` (the PID Lagrangian of Stooke et al. 2020, gains
    ``pid_*``). Default sgd."""
    lambda_controllers: tuple[str, ...] = ()
    """Train the ``lagrangian`` kind and the threshold sweep with each of these controllers
    (e.g. ``sgd pid``); a PID run is named ``lagrangian_pid``, ``lagrangian_pid_d<d>``. Default
    none: ``lambda_controller`` alone."""
    pid_kp: float = 0.25
    """K_P, the PID's proportional gain on the smoothed J_C - d. Default 0.25: within about ±0.5
    over the world's J_C - d (about -2..+1.5). History: docs/tuning.md"""
    pid_ki: float = 0.05
    """K_I, the integral gain (I += K_I·(J_C - d)). Default 0.05: half the SGD step's pace at
    λ = 1, since I drains linearly where log λ decays geometrically. History: docs/tuning.md"""
    pid_kd: float = 2.0
    """K_D, the derivative gain on the rise of the smoothed J_C over ``pid_delay`` steps. Default
    2: a rise of 0.25 adds 0.5 to λ. History: docs/tuning.md"""
    pid_ema_p: float = 0.5
    """α_p, the EMA weight of the old value in the P term's J_C - d (0: no smoothing). Default
    0.5 (paper: 0.95 over thousands of updates; J_C is already a window mean)."""
    pid_ema_d: float = 0.5
    """α_d, the EMA weight of the old value in the D term's J_C (0: no smoothing). Default 0.5
    (paper: 0.95)."""
    pid_delay: int = 4
    """k: the D term compares the smoothed J_C with its value k PPO steps back. Default 4, half
    of the 128-episode window at 16 episodes a step (paper's code: 10)."""
    episode_window: int = 128
    """Episodes in J_C's moving window. Default 128 (official trainer: 128)."""
    ptx_coeff: float = 0.0
    """γ_ptx: the actor's loss adds ``γ_ptx · SFT loss`` on demonstrations each step.
    Default 0 (off). History: docs/tuning.md"""
    ptx_data: str = "preferred"
    """PTX demonstrations: ``all`` (both responses), ``safe`` (those annotated safe) or
    ``preferred`` (the safe one; the more helpful when both are). Default preferred."""
    ptx_batch_size: int = 16
    """Demonstrations per PTX batch. Default 16."""
    n_eval_prompts: int = 600
    """Test prompts each trained variant answers (gold-judged) at the end. Default 600."""
    kernels: str = "auto"
    """Implementation of the log-prob, GAE and actor-loss ops: ``auto`` (the default), ``triton``
    or ``torch``."""
    checkpoint_every: int = 20
    """Steps between checkpoints (0: none); a killed run resumes from the last one. Default 20."""
    max_nonfinite: int = 3
    """Non-finite steps in a row that stop the run (each one is skipped). Default 3."""

    @classmethod
    def smoke(cls) -> Self:
        return cls(
            max_steps=4,
            batch_size=8,
            ptx_batch_size=8,
            n_eval_prompts=16,
            max_new_tokens=16,
            threads=1,
            checkpoint_every=2,
            thresholds=(),
            fixed_lambdas=(),
            seeds=1,
        )

    def runs(self) -> list[PPORun]:
        """Every run of the grid, in training order: the kinds, the threshold sweep, the λ grid
        (the learned λ under the first controller), the lagrangian runs under each other
        controller, then the other seeds of each of those points."""
        first, *more = self.controllers
        points = [PPORun(k, controller=first if k == "lagrangian" else "sgd") for k in self.kinds]
        points += [PPORun("lagrangian", threshold=d, controller=first) for d in self.thresholds]
        points += [PPORun("fixed_lambda", fixed_lambda=lam) for lam in self.fixed_lambdas]
        for c in more:  # the learned-λ runs again under each other controller
            points += [PPORun("lagrangian", controller=c)] if "lagrangian" in self.kinds else []
            points += [PPORun("lagrangian", threshold=d, controller=c) for d in self.thresholds]
        others = [
            dataclasses.replace(p, seed_offset=k) for p in points for k in range(1, self.seeds)
        ]
        return points + others

    @property
    def controllers(self) -> tuple[str, ...]:
        """The λ controllers of the grid: ``lambda_controllers``, else ``lambda_controller``."""
        return self.lambda_controllers or (self.lambda_controller,)

    def run_config(self, run: PPORun) -> Self:
        """The config ``run`` trains with: its threshold or λ, its λ controller, and seed + its
        seed offset."""
        changes: dict[str, Any] = {"seed": self.seed + run.seed_offset}
        if run.kind == "lagrangian":
            changes["lambda_controller"] = run.controller
        if run.threshold is not None:
            changes["cost_threshold"] = run.threshold
        if run.fixed_lambda is not None:
            changes["lambda_init"] = run.fixed_lambda
        return self.replace(**changes)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._tuple("kinds", str)
        self._tuple("thresholds", float)
        self._tuple("fixed_lambdas", float)
        self._tuple("lambda_controllers", str)
        self._check(
            self.lambda_controller in LAMBDA_CONTROLLERS,
            "lambda_controller",
            f"must be one of {LAMBDA_CONTROLLERS}",
        )
        self._check(
            all(c in LAMBDA_CONTROLLERS for c in self.lambda_controllers)
            and len(set(self.lambda_controllers)) == len(self.lambda_controllers),
            "lambda_controllers",
            f"must be distinct names from {LAMBDA_CONTROLLERS}",
        )
        self._check(
            all(k in PPO_KINDS for k in self.kinds) and len(set(self.kinds)) == len(self.kinds),
            "kinds",
            f"must be distinct names from {PPO_KINDS}",
        )
        self._check(
            all(v >= 0 for v in self.fixed_lambdas), "fixed_lambdas", "λ values must be >= 0"
        )
        self._check(
            bool(self.kinds or self.thresholds or self.fixed_lambdas),
            "kinds",
            "no run to train (no kinds, thresholds or fixed_lambdas)",
        )
        self._positive(
            "max_new_tokens",
            "n_eval_prompts",
            "episode_window",
            "max_nonfinite",
            "seeds",
            "ppo_epochs",
            "num_minibatches",
        )
        self._check(
            self.num_minibatches <= self.batch_size,
            "num_minibatches",
            f"must be <= batch_size ({self.batch_size}): every minibatch needs an episode",
        )
        self._check(
            isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
            "checkpoint_every",
            "must be >= 0",
        )
        for name in (
            "kl_coeff",
            "signal_clip",
            "clip_eps",
            "value_clip",
            "lambda_init",
            "lambda_lr",
            "lambda_max",
            "critic_lr",
            "temperature",
            "pid_kp",
            "pid_ki",
            "pid_kd",
        ):
            v = getattr(self, name)
            self._check(
                isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
                name,
                "must be >= 0",
            )
        self._check(0 < self.temperature, "temperature", "must be > 0")
        self._check(
            0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1,
            "gamma",
            "gamma and gae_lambda must be in [0, 1]",
        )
        self._check(
            self.kernels in ("auto", "triton", "torch"), "kernels", "must be auto, triton or torch"
        )
        self._check(self.ptx_data in PTX_DATA, "ptx_data", f"must be one of {PTX_DATA}")
        self._check(
            isinstance(self.ptx_coeff, int | float)
            and not isinstance(self.ptx_coeff, bool)
            and self.ptx_coeff >= 0,
            "ptx_coeff",
            "must be >= 0",
        )
        self._positive("ptx_batch_size", "pid_delay")
        self._fraction("pid_ema_p", "pid_ema_d")
        self._check(
            isinstance(self.lambda_update_delay, int) and self.lambda_update_delay >= 0,
            "lambda_update_delay",
            "must be >= 0",
        )
        self._check(
            isinstance(self.shared_backbone, bool), "shared_backbone", "must be true or false"
        )
        self._check(
            self.lora or not self.shared_backbone,
            "shared_backbone",
            "needs lora = true (on the shared backbone the actor is a LoRA adapter)",
        )


#: Demonstration sets of PPO's PTX term (``PPOConfig.ptx_data``).
PTX_DATA = ("all", "safe", "preferred")

#: ``device`` values a config accepts besides ``cuda:N`` (``models.device.resolve_device``).
DEVICES = ("auto", "cpu", "cuda")


def device_problem(name: Any) -> str | None:
    """Why ``name`` is not a device a config accepts (``None`` when it is)."""
    if isinstance(name, str) and (
        name in DEVICES or (name.startswith("cuda:") and name[5:].isdigit())
    ):
        return None
    return f"must be one of {DEVICES} or cuda:N"


#: ``ModelStageConfig.mixed_precision`` values.
MIXED_PRECISION = ("no", "bf16", "fp16")
#: The kinds of PPO run: learned λ, λ ≡ 0, λ fixed at ``lambda_init``.
PPO_KINDS = ("lagrangian", "reward_only", "fixed_lambda")
#: How a learned λ follows J_C: SGD on log λ (the default) or the PID Lagrangian.
LAMBDA_CONTROLLERS = ("sgd", "pid")
#: The tiny VLM architectures ``SFTConfig.tiny_family`` can build (``models.families``).
TINY_FAMILIES = ("llava", "gemma3", "llava_next", "idefics3", "aya_vision", "paddleocr_vl")


@dataclass(frozen=True)
class PPORun:
    """One run of the PPO stage's grid: its kind, what it sweeps, its λ controller and its seed
    offset.

    ``threshold`` is the d of a threshold-sweep run and ``fixed_lambda`` the λ of a λ-grid run
    (None: the stage config's own ``cost_threshold`` / ``lambda_init``); ``controller`` is how a
    lagrangian run's λ moves (``sgd`` or ``pid``); seed offset k > 0 trains with ``seed + k``.
    The run's folder under ``ppo/`` is :attr:`name`, its point on the trade-off plane (the
    seeds pooled) :attr:`point`, in :attr:`family`. Stored in the PPO stage's metrics as
    :meth:`to_dict` and read back with :meth:`from_dict` (a dict without ``controller``, from
    before the PID controller, is an SGD run), never parsed from the name."""

    kind: str
    threshold: float | None = None
    fixed_lambda: float | None = None
    seed_offset: int = 0
    controller: str = "sgd"

    def __post_init__(self) -> None:
        why = None
        if self.kind not in PPO_KINDS:
            why = f"kind must be one of {PPO_KINDS}"
        elif self.threshold is not None and self.kind != "lagrangian":
            why = "only a lagrangian run sweeps the threshold"
        elif self.fixed_lambda is not None and self.kind != "fixed_lambda":
            why = "only a fixed_lambda run sets λ"
        elif not isinstance(self.seed_offset, int) or self.seed_offset < 0:
            why = "seed_offset must be an integer >= 0"
        elif self.controller not in LAMBDA_CONTROLLERS:
            why = f"controller must be one of {LAMBDA_CONTROLLERS}"
        elif self.controller != "sgd" and self.kind != "lagrangian":
            why = "only a lagrangian run has a λ controller other than sgd"
        if why:
            raise ConfigError(f"{self!r}: {why}")

    @property
    def family(self) -> str:
        """The point's family on the trade-off plane: the kind, or ``lagrangian_pid`` for a PID
        lagrangian run."""
        return f"{self.kind}_pid" if self.controller == "pid" else self.kind

    @property
    def point(self) -> str:
        """The point's name: the kind, ``lagrangian_d<d>`` or ``fixed_lambda_<λ>``, with
        ``lagrangian_pid`` for ``lagrangian`` under the PID controller (``lagrangian_pid_d<d>``)."""
        if self.threshold is not None:
            return f"{self.family}_d{self.threshold:g}"
        if self.fixed_lambda is not None:
            return f"fixed_lambda_{self.fixed_lambda:g}"
        return self.family

    @property
    def name(self) -> str:
        """The run's folder under ``ppo/``: the point, then ``_seed<k>`` for seed offset k > 0."""
        return f"{self.point}_seed{self.seed_offset}" if self.seed_offset else self.point

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PPORun:
        return cls(**values)


@dataclass(frozen=True)
class BlockingPolicy:
    """When Beaver-Guard-V blocks, for the guard stage and the demo alike (docs/design.md §7)."""

    level: str = "minor"
    """Answers judged at or above this level are regenerated (refused after the last round)."""
    query_level: str = "severe"
    """Queries judged at or above this level are refused before any generation ("": none)."""
    safe_query_level: str = "moderate"
    """Answers to a query screened safe are regenerated only at or above this level
    ("": ``level``). History: docs/tuning.md"""
    rounds: int = 5
    """Filter-and-regenerate rounds (the paper's five)."""

    def __post_init__(self) -> None:
        blocking = SEVERITY_LEVELS[1:]
        for name, allowed in (
            ("level", blocking),
            ("query_level", ("", *blocking)),
            ("safe_query_level", ("", *blocking)),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"BlockingPolicy.{name} = {getattr(self, name)!r}: must be one of {allowed}"
                )
        if (
            not isinstance(self.rounds, int)
            or isinstance(self.rounds, bool)
            or not 0 <= self.rounds <= 20
        ):
            raise ConfigError(
                f"BlockingPolicy.rounds = {self.rounds!r}: must be an integer in 0..20"
            )

    @property
    def answer_level_after_safe_query(self) -> str:
        """The level that blocks an answer to a query the screen judged safe."""
        return self.safe_query_level or self.level

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BlockingPolicy:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"BlockingPolicy: unknown field(s) {unknown}")
        return cls(**values)


#: Fields renamed since runs were written: config class -> {old name: new name, with a dot
#: for a field of a nested setting}. ``from_dict`` reads an old ``config.json`` through it.
RENAMED: dict[str, dict[str, str]] = {
    "PPOConfig": {"variants": "kinds", "score_clip": "signal_clip"},
    "GuardConfig": {
        "blocking_level": "blocking.level",
        "query_blocking_level": "blocking.query_level",
        "safe_query_blocking_level": "blocking.safe_query_level",
        "rounds": "blocking.rounds",
    },
}


def _renamed(class_name: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the old field names of ``class_name`` moved to their new ones."""
    renames = RENAMED.get(class_name, {})
    if not renames.keys() & values.keys():
        return values
    out = {k: v for k, v in values.items() if k not in renames}
    for old, new in renames.items():
        if old not in values:
            continue
        outer, _, inner = new.partition(".")
        if inner:
            nested = out.setdefault(outer, {})
            if isinstance(nested, dict):
                nested.setdefault(inner, values[old])
        else:
            out.setdefault(outer, values[old])
    return out


#: Nested settings that ``from_dict`` builds from JSON objects: field name -> class.
_NESTED: dict[str, Any] = {"blocking": BlockingPolicy}


@dataclass
class AnalyzeConfig(StageConfig):
    """The analysis stage: every trained system on the test prompts, judged, with bootstrap
    confidence intervals, win rates against the base, breakdowns and the report.

    The systems are those the run has: the SFT base, the base behind the guard's five rounds,
    and every PPO variant (the grid and the seeds are the PPO stage's ``kinds``,
    ``thresholds``, ``fixed_lambdas`` and ``seeds``)."""

    n_prompts: int = 600
    """Prompts each system is scored on (the first n of the test or eval split). Default 600."""
    judge: str = "auto"
    """Who scores every answer (docs/design.md §8.1): ``gold`` (the world's oracle); ``models``
    (this run's own reward and cost models: the pair PPO optimised against, so they flatter the
    PPO policies); ``run`` (the reward and cost models of another run, ``--judge-run``);
    ``hf`` (a local HF sequence-classification reward/cost pair, ``--judge-reward`` and
    ``--judge-cost``); or ``auto`` (the default: ``run`` or ``hf`` when their paths are given,
    else gold on world prompts, else models)."""
    judge_run: str = ""
    """``--judge run``: another run directory whose finished reward and cost stages judge every
    system: models trained apart from the pair PPO optimised against (another seed, better other
    pairs). This run itself, or a run whose reward or cost stage links to this run's, is refused."""
    judge_reward: str = ""
    """``--judge hf``: a local folder that ``AutoModelForSequenceClassification`` loads
    (``num_labels`` 1, safetensors, no remote code) with its tokenizer: the helpfulness judge,
    higher = more helpful. It reads the question and answer as text, not the image."""
    judge_cost: str = ""
    """``--judge hf``: the harm judge, the same kind of folder; higher = more harmful, an answer is
    safe when its cost is below 0 (harmlessness = -cost, as for this run's own cost model)."""
    judge_format: str = ""
    """``--judge hf``: the text a (question, answer) pair becomes, a format string with
    ``{question}`` and ``{response}``; empty (the default): the tokenizer's chat template (a user
    turn, then an assistant turn) when it has one, else ``USER: {question} ASSISTANT: {response}``.
    beaver-7b-v1.0-reward/cost were trained on ``BEGINNING OF CONVERSATION: USER: {question}
    ASSISTANT:{response}``."""
    bootstrap: int = 2000
    """Bootstrap resamples for the intervals (seeds, then prompts within a seed). Default 2000."""
    confidence: float = 0.95
    """Coverage of the confidence intervals. Default 0.95."""
    max_new_tokens: int = 32
    """Answer length when a system's answers have to be sampled here. Default 32."""
    eval_batch_size: int = 64
    threads: int = 0
    """torch CPU threads; 0 (the default) keeps torch's default."""
    device: str = "auto"
    """Where the policies sample and the judges score: ``auto`` (the default: a GPU when CUDA
    is present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    prompts: str = "test"
    """``test`` (the default) or ``eval``: judge on eval prompts, to tune settings without looking
    at the test results; writes ``<run>/analyze_eval/``."""

    @classmethod
    def smoke(cls) -> Self:
        return cls(n_prompts=16, bootstrap=200, max_new_tokens=16, threads=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("n_prompts", "bootstrap", "max_new_tokens", "eval_batch_size")
        self._check(self.judge in JUDGES, "judge", f"must be one of {JUDGES}")
        self._check_judge()
        self._check(self.prompts in ("test", "eval"), "prompts", "must be test or eval")
        self._check(
            isinstance(self.confidence, float) and 0.5 <= self.confidence < 1,
            "confidence",
            "must be in [0.5, 1)",
        )
        self._check(isinstance(self.threads, int) and self.threads >= 0, "threads", "must be >= 0")
        problem = device_problem(self.device)
        self._check(problem is None, "device", problem or "")

    def _check_judge(self) -> None:
        """The judge's paths fit its kind; ``auto`` with paths becomes ``run`` or ``hf``."""
        for name in ("judge_run", "judge_reward", "judge_cost", "judge_format"):
            self._check(isinstance(getattr(self, name), str), name, "must be a string")
        hf_paths = [n for n in ("judge_reward", "judge_cost") if getattr(self, n)]
        if self.judge == "auto" and self.judge_run and not hf_paths:
            self.judge = "run"
        elif self.judge == "auto" and hf_paths and not self.judge_run:
            self.judge = "hf"
        self._check(
            not (self.judge == "auto" and self.judge_run and hf_paths),
            "judge_run",
            f"and {' and '.join(hf_paths)} are two judges; give one: --judge-run DIR, or "
            "--judge-reward DIR --judge-cost DIR",
        )
        if self.judge != "run":
            self._check(
                not self.judge_run,
                "judge_run",
                f"belongs to judge = 'run', but judge = {self.judge!r}",
            )
        else:
            self._check(bool(self.judge_run), "judge_run", "judge = 'run' needs --judge-run DIR")
        for name in ("judge_reward", "judge_cost", "judge_format"):
            if self.judge != "hf":
                self._check(
                    not getattr(self, name),
                    name,
                    f"belongs to judge = 'hf', but judge = {self.judge!r}",
                )
            elif name != "judge_format":
                self._check(
                    bool(getattr(self, name)),
                    name,
                    f"judge = 'hf' needs --{name.replace('_', '-')} DIR (a local HF "
                    "sequence-classification folder)",
                )
        if self.judge_format:
            try:
                self.judge_format.format(question="q", response="r")
                ok = "{question}" in self.judge_format and "{response}" in self.judge_format
            except (KeyError, IndexError, ValueError):
                ok = False
            self._check(
                ok,
                "judge_format",
                "must be a format string with {question} and {response} and no other fields",
            )


#: ``AnalyzeConfig.judge`` values.
JUDGES = ("auto", "gold", "models", "run", "hf")


#: ``DPOConfig.method`` values: DPO on either preference (the two ends), SafeDPO, MoCAN.
DPO_METHODS = ("dpo_helpful", "dpo_safe", "safedpo", "mocan")


@dataclass
class DPOConfig(ModelStageConfig):
    """Rollout-free safe alignment on the preference pairs that trained the reward and cost
    models (docs/design.md §6.13): DPO on the more-helpful or on the safer label, SafeDPO and
    MoCAN. The policy is a LoRA adapter over the SFT model; the reference is the same weights
    with the adapter switched off, as in PPO."""

    method: str = "safedpo"
    """``dpo_helpful`` (DPO on the more-helpful label), ``dpo_safe`` (DPO on the safer label),
    ``safedpo`` (pairs reordered so a safe response beats an unsafe one, margin Δ when only the
    loser is unsafe) or ``mocan`` (pairs relabelled by R - λ*·C, λ* from the dual at
    ``threshold``; needs the reward and cost models). Default safedpo."""
    beta: float = 0.1
    """β of every DPO loss: the KL coefficient of the problem it solves. Default 0.1, PPO's
    ``kl_coeff`` (SafeDPO and MoCAN papers: 0.1)."""
    margin: float = 2.0
    """SafeDPO's safety margin Δ >= 0, on pairs whose preferred response is safe and the other
    unsafe. Default 2 (paper: 10, on answers about ten times longer than the world's)."""
    both_unsafe: str = "drop"
    """SafeDPO's pairs with two unsafe responses: ``drop`` (the paper's transform T, the
    default) or ``keep`` (in helpfulness order, no margin)."""
    threshold: float = -2.0
    """MoCAN's d: the constraint E[C] <= d on the cost model's scale, as PPO-Lagrangian's
    ``cost_threshold`` (default -2), so a threshold sweep lines up point for point."""
    n_reference_prompts: int = 128
    """MoCAN: training prompts whose reference answers estimate the dual. Default 128
    (paper: about 600)."""
    n_reference_samples: int = 8
    """MoCAN: answers sampled from the reference per prompt. Default 8 (paper: 128)."""
    max_new_tokens: int = 32
    """Length limit of MoCAN's reference answers. Default 32, PPO's."""
    temperature: float = 1.0
    """Sampling temperature of MoCAN's reference answers. Default 1.0, PPO's."""
    lambda_max: float = 20.0
    """MoCAN: upper end of the search for λ*. A threshold no reference answer mix can meet
    (infeasible) ends here and is flagged. Default 20."""
    mocan_labels: str = "soft"
    """MoCAN's pseudo-preferences: ``soft`` (the Bradley-Terry probability
    σ(R_λ(y_1) - R_λ(y_2)) as the label, the default) or ``hard`` (the higher R_λ wins)."""
    n_eval_pairs: int = 512
    """Eval pairs for the implicit-reward metrics (the first ones of the eval split).
    Default 512."""
    lora: bool = True
    """The policy trains through a LoRA adapter; the reference is the adapter disabled.
    Default true."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    batch_size: int = 16
    """Pairs per optimiser step. Default 16."""
    lr: float = 1e-4
    """Learning rate of the LoRA adapter. Default 1e-4, tuned on eval prompts (docs/tuning.md;
    5e-4 collapsed every run to word salad). Papers: 1e-6 / 5e-7, full fine-tuning of 7B
    models."""
    max_steps: int = 200
    warmup_steps: int = 10
    kernels: str = "auto"
    """Implementation of the log-prob op: ``auto`` (the default), ``triton`` or ``torch``."""

    @classmethod
    def smoke(cls) -> Self:
        return cls(
            max_steps=8,
            warmup_steps=2,
            batch_size=8,
            n_reference_prompts=8,
            n_reference_samples=4,
            max_new_tokens=16,
            n_eval_pairs=64,
            threads=1,
        )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(self.method in DPO_METHODS, "method", f"must be one of {DPO_METHODS}")
        self._check(self.both_unsafe in ("drop", "keep"), "both_unsafe", "must be 'drop' or 'keep'")
        self._check(
            self.mocan_labels in ("soft", "hard"), "mocan_labels", "must be 'soft' or 'hard'"
        )
        for name in ("beta", "temperature", "lambda_max"):
            v = getattr(self, name)
            self._check(
                isinstance(v, int | float) and not isinstance(v, bool) and v > 0,
                name,
                "must be > 0",
            )
        self._check(
            isinstance(self.margin, int | float)
            and not isinstance(self.margin, bool)
            and self.margin >= 0,
            "margin",
            "must be >= 0",
        )
        self._check(
            isinstance(self.threshold, int | float)
            and not isinstance(self.threshold, bool)
            and float("-inf") < self.threshold < float("inf"),
            "threshold",
            "must be a finite number (the cost threshold d)",
        )
        self._positive(
            "n_reference_prompts", "n_reference_samples", "max_new_tokens", "n_eval_pairs"
        )
        self._check(
            self.kernels in ("auto", "triton", "torch"), "kernels", "must be auto, triton or torch"
        )


@dataclass
class MethodsConfig(StageConfig):
    """The comparison of the rollout-free methods (docs/design.md §6.14): every method of
    ``methods`` swept over its own knob (SafeDPO's ``margins``, MoCAN's ``thresholds``; the
    two DPO ends have none), ``seeds`` training seeds per point, each run trained from the SFT
    model with the ``dpo`` settings, its answers to the first ``n_prompts`` test prompts judged
    like the analysis's (the gold judge on the world) and summarised with bootstrap intervals
    beside the base and, when the run has them, the guard and the PPO points."""

    methods: tuple[str, ...] = ("dpo_helpful", "dpo_safe", "safedpo", "mocan")
    """Methods to train (``DPOConfig.method`` values). Default all four."""
    margins: tuple[float, ...] = (0.0, 2.0, 5.0)
    """SafeDPO's sweep of the margin Δ >= 0. Default 0 2 5 (paper: 0 2 5 10 20)."""
    thresholds: tuple[float, ...] = ()
    """MoCAN's sweep of the threshold d. Default (empty): the PPO stage's lagrangian thresholds
    when it has finished (its ``cost_threshold`` and ``thresholds``), else -3 -2 -1."""
    seeds: int = 3
    """Training seeds per point: seed offset k trains and samples with ``seed + k``. Default 3."""
    n_prompts: int = 600
    """Prompts every point is judged on (the first n, the analysis's). Default 600."""
    prompts: str = "test"
    """``test`` (the default) or ``eval``: judge every point on the eval prompts instead, to
    tune the ``dpo`` settings without looking at the test results; writes
    ``<run>/methods_eval/`` (never over the test comparison)."""
    bootstrap: int = 2000
    """Bootstrap resamples for the intervals (seeds, then prompts within a seed). Default 2000."""
    confidence: float = 0.95
    """Coverage of the confidence intervals. Default 0.95."""
    match_tolerance: float = 0.05
    """Two families' points are compared at matched safety when their safety rates differ by
    at most this much (the closest pair of each two families). Default 0.05."""
    max_new_tokens: int = 32
    """Answer length of the judged answers. Default 32, the analysis's."""
    eval_batch_size: int = 64
    """Prompts per generation batch. Default 64."""
    threads: int = 0
    """torch CPU threads; 0 (the default) keeps torch's default."""
    device: str = "auto"
    """Where every run trains and samples: ``auto`` (the default), ``cpu``, ``cuda``, ``cuda:N``."""
    mixed_precision: str = "no"
    """``no`` (fp32, the default), ``bf16`` or ``fp16`` for every run (as ``DPOConfig``)."""
    dpo: DPOConfig = dataclasses.field(default_factory=lambda: DPOConfig())
    """The training settings of every run (steps, batch, learning rate, LoRA, β, MoCAN's
    reference samples); its ``method``, ``margin``, ``threshold``, ``seed``, ``threads``,
    ``device`` and ``mixed_precision`` are set per run from the fields above."""

    #: Every point's MoCAN thresholds when neither ``thresholds`` nor a PPO stage gives them.
    DEFAULT_THRESHOLDS = (-3.0, -2.0, -1.0)

    @classmethod
    def smoke(cls) -> Self:
        return cls(
            margins=(2.0,),
            thresholds=(-1.0,),
            seeds=1,
            n_prompts=16,
            bootstrap=200,
            max_new_tokens=16,
            threads=1,
            dpo=DPOConfig.smoke().replace(max_steps=4, n_eval_pairs=16, threads=1),
        )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._tuple("methods", str)
        self._tuple("margins", float)
        self._tuple("thresholds", float)
        self._check(
            bool(self.methods)
            and all(m in DPO_METHODS for m in self.methods)
            and len(set(self.methods)) == len(self.methods),
            "methods",
            f"must be distinct names from {DPO_METHODS}",
        )
        self._check(all(m >= 0 for m in self.margins), "margins", "every Δ must be >= 0")
        self._check(
            "safedpo" not in self.methods or bool(self.margins),
            "margins",
            "safedpo needs at least one margin",
        )
        self._positive("seeds", "n_prompts", "bootstrap", "max_new_tokens", "eval_batch_size")
        self._check(self.prompts in ("test", "eval"), "prompts", "must be test or eval")
        self._check(
            isinstance(self.confidence, float) and 0.5 <= self.confidence < 1,
            "confidence",
            "must be in [0.5, 1)",
        )
        self._check(isinstance(self.threads, int) and self.threads >= 0, "threads", "must be >= 0")
        problem = device_problem(self.device)
        self._check(problem is None, "device", problem or "")
        self._check(
            self.mixed_precision in MIXED_PRECISION,
            "mixed_precision",
            f"must be one of {MIXED_PRECISION}",
        )
        self._fraction("match_tolerance", open_right=False)
        self._check(isinstance(self.dpo, DPOConfig), "dpo", "must be a DPOConfig")

    def knob_values(
        self, method: str, ppo_thresholds: tuple[float, ...] = ()
    ) -> list[float | None]:
        """The values ``method`` is swept over: Δ for SafeDPO, d for MoCAN (``thresholds``,
        else ``ppo_thresholds``, else :attr:`DEFAULT_THRESHOLDS`), none for the DPO ends."""
        if method == "safedpo":
            return list(self.margins)
        if method == "mocan":
            return list(self.thresholds or ppo_thresholds or self.DEFAULT_THRESHOLDS)
        return [None]

    def run_config(self, method: str, knob: float | None, seed_offset: int) -> DPOConfig:
        """The ``DPOConfig`` one run trains with."""
        changes: dict[str, Any] = {
            "method": method,
            "seed": self.seed + seed_offset,
            "threads": self.threads,
            "device": self.device,
            "mixed_precision": self.mixed_precision,
        }
        if method == "safedpo" and knob is not None:
            changes["margin"] = knob
        if method == "mocan" and knob is not None:
            changes["threshold"] = knob
        return self.dpo.replace(**changes)


_NESTED["MethodsConfig.dpo"] = DPOConfig


__all__ = [
    "ConfigError",
    "StageConfig",
    "DataConfig",
    "ModelStageConfig",
    "SFTConfig",
    "RewardConfig",
    "CostConfig",
    "GuardConfig",
    "PPOConfig",
    "AnalyzeConfig",
    "DPOConfig",
    "MethodsConfig",
    "PPORun",
    "BlockingPolicy",
    "PPO_KINDS",
    "LAMBDA_CONTROLLERS",
    "TINY_FAMILIES",
    "DPO_METHODS",
]
