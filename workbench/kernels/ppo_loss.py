r"""Fused PPO-Lagrangian actor loss.

With log-probs ``logp`` of the current policy, ``old_logp`` of the policy that sampled the
batch, reward and cost advantages ``A^r``, ``A^c``, the Lagrange multiplier λ ≥ 0 (the
parameter ``lagrange_multiplier``), the clip range ε and the response mask m:

    A_t  = (A^r_t − λ·A^c_t) / (1 + λ)
    ρ_t  = exp(logp_t − old_logp_t)
    L    = −Σ_t m_t·min(ρ_t·A_t, clip(ρ_t, 1−ε, 1+ε)·A_t) / max(Σ_t m_t, 1)

(the masked mean over every real token of the batch; an all-masked batch gives 0.)
Gradient, to ``logp`` only — the advantages, the old log-probs and λ are constants of the
actor update:

    ∂L/∂logp_t = −m_t·ρ_t·A_t·[ρ_t·A_t ≤ clip(ρ_t)·A_t] / max(Σ m, 1)

The Triton forward reduces each block of tokens to two partial sums (Σ m·min(...), Σ m),
summed in a fixed order afterwards (deterministic, no atomics); the backward kernel writes
the gradient in one elementwise pass. Inputs of any shape (usually [B, T]); all arithmetic
in fp32.

Three implementations with the same signature:

- :func:`ppo_lagrangian_loss_reference` — the formula as unfused torch ops in the inputs'
  dtype (the official trainer's way); the baseline of the benchmark and the reference of
  the tests;
- :func:`ppo_lagrangian_loss_torch` — the same in fp32 with the inputs checked and the
  gradient kept to ``logp``: what runs without Triton;
- :func:`ppo_lagrangian_loss_triton` — the Triton kernels.
"""

from __future__ import annotations

import torch

from ._env import require_triton, tl, triton

CLIP_EPS = 0.2
BLOCK = 1024
"""Tokens per Triton program."""


def _check(logp, old_logp, adv_r, adv_c, mask, clip_eps) -> None:
    shape = tuple(logp.shape)
    for name, t in (("old_logp", old_logp), ("adv_r", adv_r), ("adv_c", adv_c), ("mask", mask)):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} like logp, got {tuple(t.shape)}")
    if not 0 <= clip_eps < 1:
        raise ValueError(f"clip_eps must be in [0, 1), got {clip_eps}")


def _multiplier_tensor(
    lagrange_multiplier: float | torch.Tensor, like: torch.Tensor
) -> torch.Tensor:
    """λ as a 0-dim float tensor on ``like``'s device (fp32, fp64 for fp64 inputs)."""
    multiplier = torch.as_tensor(lagrange_multiplier, device=like.device).detach().reshape(())
    return multiplier.to(torch.promote_types(like.dtype, torch.float32))


# --------------------------------------------------------------------------- reference
def ppo_lagrangian_loss_reference(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv_r: torch.Tensor,
    adv_c: torch.Tensor,
    mask: torch.Tensor,
    lagrange_multiplier: float | torch.Tensor,
    clip_eps: float = CLIP_EPS,
) -> torch.Tensor:
    """The formula as unfused torch ops in the inputs' dtype (the official trainer's way)."""
    multiplier = lagrange_multiplier
    advantages = (adv_r - multiplier * adv_c) / (1 + multiplier)
    ratio = torch.exp(logp - old_logp)
    surrogate1 = advantages * ratio
    surrogate2 = advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    return -(torch.minimum(surrogate1, surrogate2) * mask).sum() / mask.sum().clamp_min(1)


# --------------------------------------------------------------------------- torch
def ppo_lagrangian_loss_torch(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv_r: torch.Tensor,
    adv_c: torch.Tensor,
    mask: torch.Tensor,
    lagrange_multiplier: float | torch.Tensor,
    clip_eps: float = CLIP_EPS,
) -> torch.Tensor:
    """The module docstring's loss in fp32 (fp64 for fp64 inputs), autograd for the backward.
    Gradients reach ``logp`` only."""
    _check(logp, old_logp, adv_r, adv_c, mask, clip_eps)
    acc = torch.promote_types(logp.dtype, torch.float32)
    multiplier = _multiplier_tensor(lagrange_multiplier, logp)
    m = (mask != 0).to(acc)
    advantages = (adv_r.detach().to(acc) - multiplier * adv_c.detach().to(acc)) / (1 + multiplier)
    ratio = torch.exp(logp.to(acc) - old_logp.detach().to(acc))
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    objective = torch.minimum(ratio * advantages, clipped * advantages)
    return -(objective * m).sum() / m.sum().clamp_min(1)


# --------------------------------------------------------------------------- Triton
if triton is not None:

    @triton.jit
    def _advantage_and_ratio(logp_ptr, old_ptr, ar_ptr, ac_ptr, multiplier_ptr, offs, ok):
        multiplier = tl.load(multiplier_ptr).to(tl.float32)
        logp = tl.load(logp_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        old = tl.load(old_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        adv_r = tl.load(ar_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        adv_c = tl.load(ac_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        return (adv_r - multiplier * adv_c) / (1.0 + multiplier), tl.exp(logp - old)

    @triton.jit
    def _ppo_fwd_kernel(
        logp_ptr,
        old_ptr,
        ar_ptr,
        ac_ptr,
        m_ptr,
        multiplier_ptr,
        part_ptr,
        n,
        clip_eps,
        BLOCK: tl.constexpr,
    ):
        """part[0, pid] = Σ m·min(ρA, clip(ρ)A), part[1, pid] = Σ m over this block."""
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n
        adv, ratio = _advantage_and_ratio(
            logp_ptr, old_ptr, ar_ptr, ac_ptr, multiplier_ptr, offs, ok
        )
        m = tl.where(tl.load(m_ptr + offs, mask=ok, other=0) != 0, 1.0, 0.0)
        clipped = tl.minimum(tl.maximum(ratio, 1.0 - clip_eps), 1.0 + clip_eps)
        objective = tl.minimum(ratio * adv, clipped * adv)
        tl.store(part_ptr + pid, tl.sum(m * objective, axis=0))
        tl.store(part_ptr + tl.num_programs(0) + pid, tl.sum(m, axis=0))

    @triton.jit
    def _ppo_bwd_kernel(
        logp_ptr,
        old_ptr,
        ar_ptr,
        ac_ptr,
        m_ptr,
        multiplier_ptr,
        scale_ptr,
        grad_ptr,
        n,
        clip_eps,
        BLOCK: tl.constexpr,
    ):
        """grad = −scale·m·ρ·A where the unclipped term is the minimum, else 0;
        scale = upstream gradient / max(Σ m, 1)."""
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n
        adv, ratio = _advantage_and_ratio(
            logp_ptr, old_ptr, ar_ptr, ac_ptr, multiplier_ptr, offs, ok
        )
        m = tl.where(tl.load(m_ptr + offs, mask=ok, other=0) != 0, 1.0, 0.0)
        clipped = tl.minimum(tl.maximum(ratio, 1.0 - clip_eps), 1.0 + clip_eps)
        unclipped_is_min = ratio * adv <= clipped * adv
        scale = tl.load(scale_ptr).to(tl.float32)
        grad = tl.where(unclipped_is_min, -scale * m * ratio * adv, 0.0)
        tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=ok)


class TritonPPOLagrangianLoss(torch.autograd.Function):
    """Triton PPO-Lagrangian loss: block partial sums forward, elementwise backward."""

    @staticmethod
    def forward(ctx, logp, old_logp, adv_r, adv_c, mask, multiplier, clip_eps: float):
        n = logp.numel()
        n_blocks = max(1, triton.cdiv(n, BLOCK))
        part = torch.zeros((2, n_blocks), dtype=torch.float32, device=logp.device)
        if n:
            _ppo_fwd_kernel[(n_blocks,)](
                logp,
                old_logp,
                adv_r,
                adv_c,
                mask,
                multiplier,
                part,
                n,
                float(clip_eps),
                BLOCK=BLOCK,
            )
        objective, count = part.sum(dim=1)
        denominator = count.clamp_min(1)
        ctx.save_for_backward(logp, old_logp, adv_r, adv_c, mask, multiplier, denominator)
        ctx.clip_eps = clip_eps
        return -objective / denominator

    @staticmethod
    def backward(ctx, grad_loss):
        logp, old_logp, adv_r, adv_c, mask, multiplier, denominator = ctx.saved_tensors
        grad = torch.empty_like(logp)
        n = logp.numel()
        if n:
            scale = (grad_loss.float() / denominator).reshape(1)
            _ppo_bwd_kernel[(triton.cdiv(n, BLOCK),)](
                logp,
                old_logp,
                adv_r,
                adv_c,
                mask,
                multiplier,
                scale,
                grad,
                n,
                float(ctx.clip_eps),
                BLOCK=BLOCK,
            )
        return grad, None, None, None, None, None, None


def ppo_lagrangian_loss_triton(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv_r: torch.Tensor,
    adv_c: torch.Tensor,
    mask: torch.Tensor,
    lagrange_multiplier: float | torch.Tensor,
    clip_eps: float = CLIP_EPS,
) -> torch.Tensor:
    """Triton loss (an fp32 scalar); CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
    ``lagrange_multiplier`` may be a float or a tensor (read on the device, no host sync)."""
    require_triton("ppo_lagrangian_loss_triton")
    _check(logp, old_logp, adv_r, adv_c, mask, clip_eps)
    if mask.dtype == torch.bool:
        mask = mask.to(torch.uint8)
    multiplier = _multiplier_tensor(lagrange_multiplier, logp).float().reshape(1)
    args = [
        t.detach().contiguous() if i else t.contiguous()
        for i, t in enumerate((logp, old_logp, adv_r, adv_c, mask))
    ]
    return TritonPPOLagrangianLoss.apply(*args, multiplier, float(clip_eps))
