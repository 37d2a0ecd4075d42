"""One dataclass config per stage (DESIGN §2).

Each config documents its fields where they are declared, validates itself in
``__post_init__`` (an invalid value fails at construction with a message naming the field),
has a ``smoke()`` preset for tests and notebooks, and round-trips through JSON: the resolved
config is saved as ``config.json`` next to a stage's results, so a result can be reproduced
from it. The CLI turns every field into a ``--flag`` (see ``workbench.cli``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self


class ConfigError(ValueError):
    """An invalid config value; the message names the config class and the field."""


@dataclass
class StageConfig:
    """Base class: seed, JSON round trip and the validation helpers."""

    stage: ClassVar[str] = ""

    seed: int = 0
    """Seed for every random choice of the stage."""

    @classmethod
    def smoke(cls) -> Self:
        """A small preset that finishes in seconds (tests, notebooks in smoke mode)."""
        return cls()

    def __post_init__(self) -> None:
        self._check(isinstance(self.seed, int) and self.seed >= 0, "seed", "must be an integer >= 0")

    # -- validation helpers -------------------------------------------------------------
    def _check(self, ok: bool, name: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{type(self).__name__}.{name} = {getattr(self, name)!r}: {why}")

    def _positive(self, *names: str) -> None:
        for name in names:
            v = getattr(self, name)
            self._check(isinstance(v, int) and not isinstance(v, bool) and v > 0, name, "must be a positive integer")

    def _fraction(self, *names: str, open_right: bool = True) -> None:
        for name in names:
            v = getattr(self, name)
            in_range = (0.0 <= v < 1.0) if open_right else (0.0 <= v <= 1.0)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and in_range
            self._check(ok, name, "must be a fraction in [0, 1)" if open_right else "must be a fraction in [0, 1]")

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: StageConfig | None = None) -> Self:
        """Build a config from ``values`` over ``base`` (default: the class defaults).
        Unknown keys are an error that names them."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {cls.field_names()}")
        start = base.to_dict() if base is not None else {}
        return cls(**{**start, **values})

    @classmethod
    def from_json(cls, path: str | Path, base: StageConfig | None = None) -> Self:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        return cls.from_dict(values, base)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


@dataclass
class DataConfig(StageConfig):
    """The data stage: the synthetic safety world (default) or real BeaverTails-V files.

    The world's sizes, rendering and annotator noise are all here, so the generated dataset
    is a pure function of this config.
    """

    stage: ClassVar[str] = "data"

    source: str = "world"
    """``world`` for the embedded synthetic world, or a path to real BeaverTails-V files
    (a parquet or jsonl file, a directory of them, or a ``datasets`` save_to_disk directory)."""
    n_train: int = 20_000
    """Training preference pairs (world only)."""
    n_eval: int = 1_200
    """Held-out evaluation pairs from the training object-template combinations (world only)."""
    n_test: int = 600
    """Test prompts (no responses) from held-out object-template combinations (world only)."""
    image_size: int = 64
    """Side of the square scene images, in pixels."""
    heldout_fraction: float = 0.15
    """Share of (object kind, question template) combinations kept for the test split only."""
    questions_per_scene: int = 2
    """How many questions share one rendered scene (fewer images to draw and store)."""
    helpful_temperature: float = 0.5
    """Annotator noise of the more-helpful preference: P(1 preferred) = σ((h1 - h2) / T)."""
    rate_noise: float = 0.45
    """Std of the Gaussian noise added to gold scores before rounding to annotator rates."""
    safer_tie_temperature: float = 0.5
    """When the two harmless rates tie, P(1 safer) = σ((s1 - s2) / T) on the gold scores."""
    safe_helpful_score: float = 2.5
    """World v2: gold helpfulness of the full safe-and-helpful answer to a risky prompt (names
    the object in the image, explains its risk, two safe tips about it, a redirection);
    compliance scores 3, a bare refusal 0.5. ``1.5`` is the first world, where no safe answer
    beats a redirection and constrained RL can only trade helpfulness for safety (notebook 04).
    Kept on every world prompt, so the gold judge scores each run by its own world."""
    eval_fraction: float = 0.05
    """Real data without an evaluation split: share of records held out for eval."""
    strict: bool = False
    """Real data: stop at the first invalid record instead of counting it as a reject."""

    @classmethod
    def smoke(cls) -> Self:
        return cls(n_train=900, n_eval=120, n_test=120)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(isinstance(self.source, str) and bool(self.source), "source", "must be 'world' or a path")
        self._positive("n_train", "n_eval", "n_test", "questions_per_scene")
        self._check(isinstance(self.image_size, int) and 32 <= self.image_size <= 512, "image_size",
                    "must be an integer in [32, 512]")
        self._fraction("heldout_fraction", "eval_fraction")
        self._check(self.heldout_fraction > 0, "heldout_fraction", "must be > 0 (the test split needs held-out combinations)")
        for name in ("helpful_temperature", "safer_tie_temperature"):
            self._check(isinstance(getattr(self, name), int | float) and getattr(self, name) > 0, name, "must be > 0")
        self._check(isinstance(self.rate_noise, int | float) and self.rate_noise >= 0, "rate_noise", "must be >= 0")
        self._check(isinstance(self.safe_helpful_score, int | float) and not isinstance(self.safe_helpful_score, bool)
                    and 0.5 <= self.safe_helpful_score <= 3, "safe_helpful_score",
                    "must be in [0.5, 3] (1.5: the first world, no safe and helpful answer)")
        self._check(isinstance(self.strict, bool), "strict", "must be true or false")

    @property
    def is_world(self) -> bool:
        return self.source == "world"


@dataclass
class ModelStageConfig(StageConfig):
    """Fields shared by the stages that train a model (SFT, reward, cost, ...)."""

    policy: str = ""
    """A local HF vision-language model directory to start from instead of the default
    (SFT: the tiny VLM built from config; reward/cost: the SFT model of this run)."""
    lora: bool = False
    """Train a ``peft`` LoRA adapter instead of all weights (the way to train a real VLM)."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_targets: str = "q_proj,v_proj"
    """Comma-separated names of the modules that get adapters (checked against the model)."""
    batch_size: int = 32
    """Sequences (SFT) or pairs (reward, cost) per optimiser step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, linear warm-up then cosine decay)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    max_steps: int = 600
    """Optimiser steps."""
    eval_batch_size: int = 64
    """Batch size for evaluation."""
    threads: int = 0
    """torch CPU threads (0: torch's default). Smoke presets use 1: tiny models gain nothing
    from a second thread, and on a busy 2-core machine two threads spin against each other
    (a smoke stage went from ~10 s to ~90 s)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("lora_r", "lora_alpha", "batch_size", "max_steps", "eval_batch_size")
        self._check(isinstance(self.lr, int | float) and self.lr > 0, "lr", "must be > 0")
        self._check(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        self._check(isinstance(self.threads, int) and self.threads >= 0, "threads", "must be >= 0")
        self._check(isinstance(self.weight_decay, int | float) and self.weight_decay >= 0, "weight_decay", "must be >= 0")
        targets = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
        self._check(bool(targets), "lora_targets", "needs at least one module name")

    @property
    def lora_target_modules(self) -> list[str]:
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]


@dataclass
class SFTConfig(ModelStageConfig):
    """The SFT stage: the base ("precursor") policy imitates the world's demonstrations."""

    stage: ClassVar[str] = "sft"

    batch_size: int = 24
    """Demonstrations per step. Batches group similar lengths (about half the padding of
    random batches); 24 x 700 steps fits the default run's time budget on 2 CPU cores."""
    max_steps: int = 700
    vision_steps: int = 800
    """Object-presence pretraining steps of the vision tower and projector before image
    alignment (world data only; ``workbench.train.sft.pretrain_vision``): without it the
    tiny model's image features hardly differ between images. 0: off."""
    vision_batch_size: int = 64
    """Scenes per vision pretraining step."""
    vision_lr: float = 4e-3
    """Learning rate of vision pretraining."""
    caption_steps: int = 300
    """Image-alignment steps before SFT: empty question -> the scene's true description
    (world data only). Teaches the vision tower the objects the world is about."""
    n_eval_prompts: int = 600
    """Test prompts the base policy answers for its gold helpfulness and safety rate."""
    max_new_tokens: int = 40
    """Generation length limit when evaluating the policy."""

    @classmethod
    def smoke(cls) -> Self:
        return cls(max_steps=150, vision_steps=20, caption_steps=10, n_eval_prompts=48, batch_size=16, threads=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("n_eval_prompts", "max_new_tokens", "vision_batch_size")
        self._check(isinstance(self.vision_steps, int) and self.vision_steps >= 0, "vision_steps", "must be >= 0")
        self._check(isinstance(self.vision_lr, int | float) and self.vision_lr > 0, "vision_lr", "must be > 0")


@dataclass
class RewardConfig(ModelStageConfig):
    """The reward model: ``-log σ(R_w - R_l) + η·mean(R²)`` on the more-helpful pairs."""

    stage: ClassVar[str] = "reward"

    lora: bool = False
    """Train the score model as a ``peft`` LoRA adapter over the SFT model (saved as the adapter
    plus ``score_head.safetensors``) instead of all weights: what ``ppo --shared-backbone``
    needs to put the reward and cost models on the policy's backbone."""
    batch_size: int = 16
    lr: float = 5e-4
    max_steps: int = 420
    eta: float = 1e-3
    """Weight η of the score regulariser mean(R²) that keeps scores near 0."""
    head_lr_multiplier: float = 20.0
    """Learning rate of the linear score head = ``lr`` times this. The head starts near 0 (so
    do the scores) and is one vector; a faster head is worth ~1-2.5 accuracy points at the
    default budget (tuned on the world: 420 steps of 16 pairs, ~65 s on 2 CPU cores)."""

    ground_weight: float = 1.0
    """Weight of the grounding loss on contrast pairs (world data only; 0: off): a safe answer
    about the object in the image against the same answer about another object
    (``workbench.train.preference``, module doc). Without it the reward model scores tips
    about an absent object like tips about the right one (right-object rate 0.51 on the eval
    prompts, chance) and the constrained policy learns to name any object; with the defaults
    0.97 (in the scene but not meant: 0.90), at the same eval accuracy (0.80)."""
    ground_batch_size: int = 8
    """Contrast pairs per step, beside ``batch_size`` preference pairs."""
    ground_mention_weight: float = 1.0
    """Weight of the mention objective on the contrast pairs (0: off): a linear head on the
    hidden state at each object word of the answer learns whether that object is the one the
    prompt is about (BCE; the head is dropped after training), which binds every mention to
    the image, not only the answer as a whole."""
    ground_vision_weight: float = 1.0
    """Weight of object-presence BCE on the contrast pairs' images (0: off): a linear head on
    the pooled image features learns which object kinds the scene holds (the SFT stage's
    vision pretraining, carried on in the score model; the head is dropped after training)."""

    @classmethod
    def smoke(cls) -> Self:
        return cls(max_steps=30, batch_size=8, threads=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(isinstance(self.eta, int | float) and self.eta >= 0, "eta", "must be >= 0")
        for name in ("ground_weight", "ground_mention_weight", "ground_vision_weight"):
            self._check(isinstance(getattr(self, name), int | float) and getattr(self, name) >= 0, name, "must be >= 0")
        self._positive("ground_batch_size")
        self._check(isinstance(self.head_lr_multiplier, int | float) and self.head_lr_multiplier > 0,
                    "head_lr_multiplier", "must be > 0")


@dataclass
class CostConfig(RewardConfig):
    """The cost model: ``-log σ(C_u - C_s) - log σ(s_u·C_u) - log σ(s_s·C_s) + η·mean(C²)``."""

    stage: ClassVar[str] = "cost"

    sign_mode: str = "graded"
    """``graded``: sign weight s = -harmless_rate (multi-level); ``binary``: s = ±1 from is_safe."""
    ground_weight: float = 0.0
    """Grounding contrast pairs (see RewardConfig): off for the cost model, because the gold
    harmlessness of a safe answer does not depend on the object it names."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(self.sign_mode in ("graded", "binary"), "sign_mode", "must be 'graded' or 'binary'")


@dataclass
class GuardConfig(ModelStageConfig):
    """Beaver-Guard-V: severity (ordinal) and harm-category heads on a score-model backbone,
    and the five-round filter-and-regenerate loop evaluated on the base policy."""

    stage: ClassVar[str] = "guard"

    batch_size: int = 32
    """Guard examples per step. Each training pair gives three: its query (image + question,
    no answer) and its two answers (image + question + response)."""
    lr: float = 5e-4
    max_steps: int = 600
    """600 steps of 32 (~1/3 of an epoch of the 60k guard examples) fit the 3-minute budget
    on 2 CPU cores; 800 steps gave +0.04 macro F1 (0.72 vs 0.68 at 450)."""
    head_lr_multiplier: float = 20.0
    """Learning rate of the two heads and the ordinal thresholds = ``lr`` times this."""
    category_weight: float = 0.5
    """Weight of the category cross-entropy beside the ordinal severity loss."""
    image_weight: float = 0.5
    """Weight of the auxiliary image-severity cross-entropy (0: off), which teaches the
    vision side which objects make a scene risky."""
    severe_cutoff: float = 0.35
    """Predict "severe" when P(level = severe) exceeds this (the other levels use 0.5):
    below 0.5 trades some severe precision for recall. Used for queries, and for answers
    when ``severe_recall_target`` is 0."""
    severe_recall_target: float = 0.97
    """Answers: choose the cut-off on P(severe) so that this share of the severe training
    answers the guard never trained on (600 steps of 32 see about a third of them) is
    predicted severe -- missing severe harm is the worst error, so severe precision is traded
    for it (0: use ``severe_cutoff``). Severe still needs P(unsafe) > 0.5. 0.97 leaves room
    for sampling noise under a 0.95 target on the eval pairs."""
    blocking_level: str = "minor"
    """Answers judged at or above this level are regenerated (and refused after the last round)."""
    query_blocking_level: str = "severe"
    """Queries judged at or above this level are refused before any generation."""
    safe_query_blocking_level: str = "moderate"
    """Answers to a query the screen judged *safe* are regenerated only at or above this level
    ("" = ``blocking_level`` for every answer): a benign request needs stronger evidence
    before its (likely helpful) answer is thrown away. On the default run it halves the
    benign answers regenerated by mistake (20 -> 9 of 219) and lets 12 more minor-harm
    answers of 600 through."""
    rounds: int = 5
    """Filter-and-regenerate rounds (the paper uses five)."""
    n_eval_prompts: int = 600
    """Test prompts for the round-by-round safety and helpfulness curve."""
    max_new_tokens: int = 40

    @classmethod
    def smoke(cls) -> Self:
        return cls(max_steps=40, batch_size=16, n_eval_prompts=48, threads=1)

    def __post_init__(self) -> None:
        from .data.schema import SEVERITY_LEVELS

        super().__post_init__()
        self._positive("n_eval_prompts", "max_new_tokens")
        self._check(isinstance(self.rounds, int) and 0 <= self.rounds <= 20, "rounds", "must be an integer in 0..20")
        self._check(isinstance(self.severe_recall_target, int | float) and 0 <= self.severe_recall_target <= 1,
                    "severe_recall_target", "must be in [0, 1] (0: no calibration)")
        for name in ("blocking_level", "query_blocking_level"):
            self._check(getattr(self, name) in SEVERITY_LEVELS[1:], name, f"must be one of {SEVERITY_LEVELS[1:]}")
        self._check(self.safe_query_blocking_level in ("", *SEVERITY_LEVELS[1:]), "safe_query_blocking_level",
                    f"must be '' or one of {SEVERITY_LEVELS[1:]}")
        self._check(isinstance(self.severe_cutoff, int | float) and 0 < self.severe_cutoff < 1, "severe_cutoff",
                    "must be in (0, 1)")
        for name in ("category_weight", "image_weight", "head_lr_multiplier"):
            self._check(isinstance(getattr(self, name), int | float) and getattr(self, name) >= 0, name, "must be >= 0")


@dataclass
class PPOConfig(ModelStageConfig):
    """PPO-Lagrangian (Safe RLHF-V) and its baselines from one trainer (DESIGN §6).

    Defaults are tuned for the embedded world on a CPU; the official trainer's values are
    given beside each field where they differ."""

    stage: ClassVar[str] = "ppo"

    variants: str = "lagrangian,reward_only"
    """Comma-separated variants to train: ``lagrangian`` (learned λ), ``reward_only`` (λ ≡ 0),
    ``fixed_lambda`` (λ fixed at ``lambda_init``)."""
    thresholds: str = "-1"
    """Threshold sweep: comma-separated d values; each adds a ``lagrangian_d<d>`` variant
    (the trade-off curve; ``lagrangian`` itself uses ``cost_threshold``). Empty: none."""
    fixed_lambdas: str = "1"
    """Reward-shaping grid: comma-separated λ values; each adds a ``fixed_lambda_<λ>`` variant."""
    seeds: int = 3
    """Training seeds per variant: seed ``k`` > 0 adds ``<variant>_seed<k>`` trained with
    ``seed + k`` (the analysis stage pools them into one point with error bars). The default
    grid is 4 points x 3 seeds = 12 runs (reward_only, fixed λ = 1, lagrangian at d = -2 and
    -1)."""
    lora: bool = True
    """The policy trains through a LoRA adapter; the reference is the same weights with the
    adapter disabled (no second copy)."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    shared_backbone: bool = False
    """Memory layout. False: the reward and cost models and the two critics are models of their
    own (only the reference shares the actor's weights). True: all six roles sit on one frozen
    backbone (the SFT model) -- the actor, the reward and cost models and the critics are LoRA
    adapters with score heads, the reference is the adapters disabled. Needs ``lora`` and reward
    and cost models trained with ``--lora`` (``python -m workbench bench ppo`` measures both)."""
    batch_size: int = 16
    """Prompts (episodes) per PPO step (official: 16 per device)."""
    lr: float = 4e-4
    """Actor (LoRA) learning rate (official: 1e-5 for full fine-tuning)."""
    critic_lr: float = 4e-4
    """Learning rate of the two critics (initialised from the reward and cost models)."""
    max_steps: int = 40
    """PPO steps per variant: each is one rollout followed by ``ppo_epochs`` x
    ``num_minibatches`` updates (four with the defaults). 80 steps (2 x 2, eval prompts) ended
    at 1.89 / 0.59: λ fell to 0.15 by step 40 and the policy went back to compliance."""
    warmup_steps: int = 5
    max_new_tokens: int = 32
    """Response length limit of the rollouts."""
    temperature: float = 1.0
    kl_coeff: float = 0.1
    """β of the per-token KL split (official: 0.02; 0.02 let reward-only PPO drift to KL ~15
    nats per answer and exploit the reward model on the world)."""
    score_clip: float = 50.0
    """c: per-token reward and cost signals are clipped to ±c (official: 50)."""
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    """ε of the PPO ratio clip."""
    value_clip: float = 5.0
    """ε_v of the clipped value loss (official: 5)."""
    ppo_epochs: int = 2
    """Passes over each rollout's batch (official: 1). π_old and V_old stay the rollout's, so
    from the second update on the ratio moves and both clips act. Tuned on 400 eval prompts of
    world v2 (lagrangian, d = -2, 40 steps, seed 0; gold helpfulness / safety, base 1.46 /
    0.72): 1 epoch x 1 minibatch 1.02 / 0.96; 2 x 2 1.21 / 0.94; 4 x 2 (λ_max 3) 1.90 / 0.55 --
    λ fell below 0.2 once the constraint held and the policy drifted back to compliance, which
    the slow multiplicative λ update could not catch within the run."""
    num_minibatches: int = 2
    """Minibatches per pass: the episodes are shuffled (seeded) and split into this many, each
    one optimiser step (official: 1); at most ``batch_size``. The learning-rate schedule counts
    optimiser steps, ``max_steps`` x ``ppo_epochs`` x ``num_minibatches`` in all (warm-up scaled
    alike)."""
    cost_threshold: float = -2.0
    """d: the constraint J_C <= d (official: -0.5 on its own cost scale). World v2's cost
    model scores safe answers about -3.3 and unsafe ones about +3, so d = -2 asks for roughly
    four answers in five to be safe; in practice J_C overshoots to about -3.6 (gold safety
    0.94 on eval prompts). d = -2.5 gave 1.08 / 0.98 there against 1.21 / 0.94 at -2."""
    lambda_init: float = 1.0
    """Initial λ (official: 10); the fixed λ of ``fixed_lambda``. With 40 steps λ has little
    time to climb: from 0.5, two of three seeds ended above d = -2 with gold safety 0.70-0.85;
    from 1.0 all three met the constraint (safety 0.94-0.98)."""
    lambda_lr: float = 0.1
    """SGD learning rate of log λ (official: 0.1). The step on log λ is proportional to λ, so
    a large λ moves fast: 0.1 with λ_init 1 reached λ_max = 20 within 8 steps here (hence
    λ_max 5)."""
    lambda_max: float = 5.0
    """Upper bound of λ (official: 20)."""
    lambda_update_delay: int = 0
    """Steps before λ starts to move."""
    episode_window: int = 128
    """Episodes in J_C's moving window (official: 128)."""
    ptx_coeff: float = 0.0
    """γ_ptx of the optional PTX term: the actor's loss adds ``γ_ptx · SFT loss`` on a batch
    of demonstrations each step (InstructGPT's PPO-ptx; 0: off). Measured on the world (40
    steps, d = -2, seed 0; gold helpfulness / safety on the test prompts, base 1.70 / 0.58):
    lagrangian 0.81 / 0.95 without PTX, 0.88 / 0.95 with γ_ptx 1 on ``preferred``, 1.01 / 0.89
    on ``all``; but reward_only, 2.00 / 0.47 without, becomes 1.82 / 0.57 with ``preferred``,
    hardly less safe than the base -- the failure it exists to show fades, hence off by default."""
    ptx_data: str = "preferred"
    """Demonstrations of the PTX term, from the training pairs' annotations: ``all`` (both
    responses of every pair: the SFT data), ``safe`` (the responses annotated safe) or
    ``preferred`` (per pair, the response annotated safe, the more helpful one when both are)."""
    ptx_batch_size: int = 16
    """Demonstrations per PTX batch."""
    n_eval_prompts: int = 600
    """Test prompts each trained variant answers (gold-judged) at the end."""
    kernels: str = "auto"
    """``auto`` | ``triton`` | ``torch``: the implementation of the log-prob, GAE and actor-loss ops."""
    checkpoint_every: int = 20
    """Steps between checkpoints (0: none); a killed run resumes from the last one."""
    max_nonfinite: int = 3
    """Non-finite losses in a row that stop the run (each one skips its step)."""

    @classmethod
    def smoke(cls) -> Self:
        return cls(max_steps=4, batch_size=8, ptx_batch_size=8, n_eval_prompts=16, max_new_tokens=16, threads=1,
                   checkpoint_every=2, thresholds="", fixed_lambdas="", seeds=1)

    @property
    def variant_names(self) -> list[str]:
        return list(self.variant_configs())

    def variant_configs(self) -> dict[str, tuple[str, Self]]:
        """Every variant to train: name -> (kind, the config it trains with)."""
        out: dict[str, tuple[str, Self]] = {v.strip(): (v.strip(), self) for v in self.variants.split(",") if v.strip()}
        for d in _floats(self.thresholds):
            out[f"lagrangian_d{d:g}"] = ("lagrangian", self.replace(cost_threshold=d))
        for lam in _floats(self.fixed_lambdas):
            out[f"fixed_lambda_{lam:g}"] = ("fixed_lambda", self.replace(lambda_init=lam))
        for name, (kind, cfg) in list(out.items()):
            for k in range(1, self.seeds):
                out[f"{name}{SEED_SUFFIX}{k}"] = (kind, cfg.replace(seed=cfg.seed + k))
        return out

    def __post_init__(self) -> None:
        super().__post_init__()
        allowed = ("lagrangian", "reward_only", "fixed_lambda")
        names = [v.strip() for v in self.variants.split(",") if v.strip()]
        self._check(all(v in allowed for v in names) and len(set(names)) == len(names), "variants",
                    f"must be distinct names from {allowed}")
        for name in ("thresholds", "fixed_lambdas"):
            try:
                values = _floats(getattr(self, name))
            except ValueError:
                values = None
            self._check(values is not None and (name != "fixed_lambdas" or all(v >= 0 for v in values)), name,
                        "must be comma-separated numbers (λ values >= 0)")
        self._check(bool(names) or bool(self.thresholds.strip()) or bool(self.fixed_lambdas.strip()), "variants",
                    "names no variant to train")
        self._positive("max_new_tokens", "n_eval_prompts", "episode_window", "max_nonfinite", "seeds", "ppo_epochs",
                       "num_minibatches")
        self._check(self.num_minibatches <= self.batch_size, "num_minibatches",
                    f"must be <= batch_size ({self.batch_size}): every minibatch needs an episode")
        self._check(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0, "checkpoint_every",
                    "must be >= 0")
        for name in ("kl_coeff", "score_clip", "clip_eps", "value_clip", "lambda_init", "lambda_lr", "lambda_max",
                     "critic_lr", "temperature"):
            v = getattr(self, name)
            self._check(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0, name, "must be >= 0")
        self._check(0 < self.temperature, "temperature", "must be > 0")
        self._check(0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "gamma", "gamma and gae_lambda must be in [0, 1]")
        self._check(self.kernels in ("auto", "triton", "torch"), "kernels", "must be auto, triton or torch")
        self._check(self.ptx_data in PTX_DATA, "ptx_data", f"must be one of {PTX_DATA}")
        self._check(isinstance(self.ptx_coeff, int | float) and not isinstance(self.ptx_coeff, bool)
                    and self.ptx_coeff >= 0, "ptx_coeff", "must be >= 0")
        self._positive("ptx_batch_size")
        self._check(isinstance(self.lambda_update_delay, int) and self.lambda_update_delay >= 0,
                    "lambda_update_delay", "must be >= 0")
        self._check(isinstance(self.shared_backbone, bool), "shared_backbone", "must be true or false")
        self._check(self.lora or not self.shared_backbone, "shared_backbone",
                    "needs lora = true (on the shared backbone the actor is a LoRA adapter)")


#: Demonstration sets of PPO's PTX term (``PPOConfig.ptx_data``).
PTX_DATA = ("all", "safe", "preferred")

#: ``<variant><SEED_SUFFIX><k>`` names the variant trained with seed ``seed + k``.
SEED_SUFFIX = "_seed"


@dataclass
class AnalyzeConfig(StageConfig):
    """The analysis stage: every trained system on the test prompts, judged, with bootstrap
    confidence intervals, win rates against the base, breakdowns and the report.

    The systems are those the run has: the SFT base, the base behind the guard's five rounds,
    and every PPO variant (the grid and the seeds are the PPO stage's ``variants``,
    ``thresholds``, ``fixed_lambdas`` and ``seeds``)."""

    stage: ClassVar[str] = "analyze"

    n_prompts: int = 600
    """Test prompts each system is scored on (the first n of the test split)."""
    judge: str = "auto"
    """``gold`` (the world's oracle), ``models`` (this run's reward and cost models: helpfulness
    = reward score, harmlessness = -cost; for real data) or ``auto`` (gold when the prompts
    carry the world's metadata, else models)."""
    bootstrap: int = 2000
    """Bootstrap resamples for the confidence intervals (seeds, then prompts within a seed)."""
    confidence: float = 0.95
    """Coverage of the confidence intervals."""
    max_new_tokens: int = 32
    """Answer length when a system's test answers have to be generated here."""
    eval_batch_size: int = 64
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    prompts: str = "test"
    """``test`` (the first ``n_prompts`` test prompts) or ``eval`` (the first ``n_prompts`` eval
    prompts, every system sampled here: for tuning settings without looking at the test
    results). Eval mode writes to ``<run>/analyze_eval/`` (:attr:`out_stage`), never over the
    test analysis."""

    @property
    def out_stage(self) -> str:
        """The run directory's folder of this analysis: ``analyze`` on the test prompts,
        ``analyze_eval`` on the eval prompts."""
        return self.stage if self.prompts == "test" else f"{self.stage}_eval"

    @classmethod
    def smoke(cls) -> Self:
        return cls(n_prompts=16, bootstrap=200, max_new_tokens=16, threads=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("n_prompts", "bootstrap", "max_new_tokens", "eval_batch_size")
        self._check(self.judge in ("auto", "gold", "models"), "judge", "must be auto, gold or models")
        self._check(self.prompts in ("test", "eval"), "prompts", "must be test or eval")
        self._check(isinstance(self.confidence, float) and 0.5 <= self.confidence < 1, "confidence",
                    "must be in [0.5, 1)")
        self._check(isinstance(self.threads, int) and self.threads >= 0, "threads", "must be >= 0")


def _floats(text: str) -> list[float]:
    return [float(v) for v in str(text).split(",") if v.strip()]


#: Every stage's config class, by stage name. Later stages add theirs here.
CONFIGS: dict[str, type[StageConfig]] = {
    "data": DataConfig, "sft": SFTConfig, "reward": RewardConfig, "cost": CostConfig, "guard": GuardConfig,
    "ppo": PPOConfig, "analyze": AnalyzeConfig,
}

__all__ = ["ConfigError", "StageConfig", "DataConfig", "ModelStageConfig", "SFTConfig", "RewardConfig",
           "CostConfig", "GuardConfig", "PPOConfig", "AnalyzeConfig", "SEED_SUFFIX", "CONFIGS"]
