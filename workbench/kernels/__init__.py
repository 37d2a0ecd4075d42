"""GPU kernels for PPO on VLMs: one file per op, each with Triton forward and backward
kernels, a launcher, a ``torch.autograd.Function`` and two pure-torch versions.

- :mod:`.logprob` — token log-probs and entropy straight from hidden states and the LM head,
  in vocabulary chunks with an online log-sum-exp; the [tokens × vocab] logits never exist.
- :mod:`.gae` — dual GAE: reward and cost advantages and returns in one reverse scan.
- :mod:`.ppo_loss` — the PPO-Lagrangian actor loss: ratio, two-sided clip,
  (A_r − λ·A_c)/(1+λ) with the Lagrange multiplier λ, masked mean.

Each op comes in three implementations with one signature, named as in kernel libraries:

- ``*_reference`` — the plain formula in torch, written to be read (full logits, a Python
  loop over time steps, unfused ops): the baseline of the benchmark and the implementation
  the tests check the other two against;
- ``*_torch`` — the optimised pure-torch version (vocabulary chunks with a hand-written
  backward, both GAE signals in one loop, fp32 accumulation): what runs without Triton;
- ``*_triton`` — the Triton kernels.

The switch ``kernels = "auto" | "triton" | "torch"`` (a trainer config field) picks the
implementation behind the public functions :func:`token_logprobs`, :func:`dual_gae` and
:func:`ppo_lagrangian_loss`: ``auto`` is Triton on CUDA tensors when Triton is installed and
``*_torch`` otherwise; ``triton`` insists (CUDA, or CPU under ``TRITON_INTERPRET=1`` set
before Triton is imported — slow, for tests); ``torch`` is ``*_torch`` everywhere.

Shapes: ``hidden`` [N, H] or [B, T, H], LM-head ``weight`` [V, H], ``targets`` [N] or [B, T]
(the token ids whose log-probs are wanted, i.e. the inputs shifted by one); GAE and loss
inputs [B, T] where position t is the t-th response token (V(t) is the critic's value there)
and ``mask`` is 1 on real response tokens.
"""

from __future__ import annotations

from typing import Literal

import torch

from . import gae, logprob, ppo_loss
from ._env import interpreting, triton_available
from .gae import LAMBDA_GAE, dual_gae_reference, dual_gae_torch, dual_gae_triton, gae_reference
from .logprob import (
    DEFAULT_CHUNK_SIZE,
    token_logprobs_reference,
    token_logprobs_torch,
    token_logprobs_triton,
)
from .ppo_loss import (
    ppo_lagrangian_loss_reference,
    ppo_lagrangian_loss_torch,
    ppo_lagrangian_loss_triton,
)

KernelChoice = Literal["auto", "triton", "torch"]
BACKENDS = ("auto", "triton", "torch")

__all__ = [
    "BACKENDS",
    "DEFAULT_CHUNK_SIZE",
    "KernelChoice",
    "dual_gae",
    "dual_gae_reference",
    "dual_gae_torch",
    "dual_gae_triton",
    "gae",
    "gae_reference",
    "interpreting",
    "logprob",
    "ppo_lagrangian_loss",
    "ppo_lagrangian_loss_reference",
    "ppo_lagrangian_loss_torch",
    "ppo_lagrangian_loss_triton",
    "ppo_loss",
    "resolve_backend",
    "token_logprobs",
    "token_logprobs_reference",
    "token_logprobs_torch",
    "token_logprobs_triton",
    "triton_available",
]


def resolve_backend(kernels: str, device: torch.device | str) -> Literal["triton", "torch"]:
    """Turn the ``kernels`` switch into the implementation used for tensors on ``device``.

    ``auto`` → ``triton`` on CUDA with Triton installed, else ``torch``. ``triton`` raises a
    ``RuntimeError`` that says what is missing when it cannot run there."""
    if kernels not in BACKENDS:
        raise ValueError(f"kernels must be one of {', '.join(BACKENDS)}; got {kernels!r}")
    if kernels == "torch":
        return "torch"
    device_type = torch.device(device).type
    if kernels == "auto":
        return "triton" if device_type == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise RuntimeError(
            "kernels='triton' needs the triton package: pip install triton "
            "(the project's 'kernels' extra), or use kernels='auto' or 'torch'"
        )
    if device_type != "cuda" and not interpreting():
        raise RuntimeError(
            f"kernels='triton' runs on CUDA tensors, or on CPU only with "
            f"TRITON_INTERPRET=1 set before triton is first imported; "
            f"got device {device_type!r}. Use kernels='auto' or 'torch' here."
        )
    return "triton"


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str = "auto",
    return_entropy: bool = False,
):
    """Log-probs (fp32, shaped like ``targets``) of ``targets`` under
    ``softmax(hidden @ weight.T / temperature)``, and the entropies when ``return_entropy``,
    without materialising the logits. Differentiable in ``hidden`` and ``weight``.

    hidden [N, H] or [B, T, H]; weight [V, H] (the LM head, no bias); targets [N] or [B, T]
    with ids in [0, V)."""
    if resolve_backend(backend, hidden.device) == "triton":
        logp, entropy = token_logprobs_triton(hidden, weight, targets, temperature, chunk_size)
    else:
        logp, entropy = token_logprobs_torch(hidden, weight, targets, temperature, chunk_size)
    return (logp, entropy) if return_entropy else logp


def dual_gae(
    rewards: torch.Tensor,
    costs: torch.Tensor,
    reward_values: torch.Tensor,
    cost_values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    gae_lambda: float = LAMBDA_GAE,
    backend: str = "auto",
):
    """``(adv_r, ret_r, adv_c, ret_c)``, each [B, T] fp32, from per-token rewards and costs,
    the two critics' values V(t) at each response position and the response mask (all
    [B, T]); GAE with γ = ``gamma``, λ_gae = ``gae_lambda`` (:mod:`.gae`)."""
    args = (rewards, costs, reward_values, cost_values, mask, gamma, gae_lambda)
    if resolve_backend(backend, rewards.device) == "triton":
        return dual_gae_triton(*args)
    return dual_gae_torch(*args)


def ppo_lagrangian_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv_r: torch.Tensor,
    adv_c: torch.Tensor,
    mask: torch.Tensor,
    lagrange_multiplier: float | torch.Tensor,
    clip_eps: float = 0.2,
    backend: str = "auto",
) -> torch.Tensor:
    """Scalar actor loss ``−mean_m(min(ρA, clip(ρ, 1−ε, 1+ε)A))`` with
    ``A = (adv_r − λ·adv_c)/(1 + λ)``, λ = ``lagrange_multiplier``, and
    ``ρ = exp(logp − old_logp)`` (:mod:`.ppo_loss`); gradient to ``logp`` only. All inputs
    share one shape, usually [B, T]."""
    args = (logp, old_logp, adv_r, adv_c, mask, lagrange_multiplier, clip_eps)
    if resolve_backend(backend, logp.device) == "triton":
        return ppo_lagrangian_loss_triton(*args)
    return ppo_lagrangian_loss_torch(*args)
