r"""Dual GAE: reward and cost advantages and returns in one reverse scan.

For each signal (x, V) ∈ {(r, V_r), (c, V_c)} over a response of T positions with mask m
(1 = real token), γ = 1 and λ_gae = 0.95 by default:

    δ_t = x_t + γ·m_{t+1}·V_{t+1} − V_t
    A_t = m_t·(δ_t + γ·λ_gae·A_{t+1})           A_T = 0, V_T = 0
    G_t = m_t·(A_t + V_t)

so beyond the last real token V(t+1) = 0 and A(t+1) = 0, and masked positions get A = G = 0.
A masked position ends the episode: nothing is carried across it (with the usual right
padding this is exactly the official trainer's recursion).

The recursion ``A_t = b_t + a_t·A_{t+1}`` (a_t = γλ·m_t, b_t = m_t·δ_t) is a composition of
affine maps, which is associative, so the Triton kernel runs it as a parallel scan
(``tl.associative_scan``) over a block of the sequence, one program per batch row, and
carries ``A`` from block to block when T is longer than one block: batch × sequence parallel.

Backward (it is linear): with upstream gradients gA, gG, the adjoint is the same kind of scan
run forwards in time,

    ē_t = m_t·(gA_t + m_t·gG_t + γλ·ē_{t−1}),     ∂/∂x_t = ē_t,
    ∂/∂V_t = −ē_t + γ·m_t·ē_{t−1} + m_t·gG_t.

PPO uses the advantages as constants, but the op is differentiable all the same.

Three implementations with the same signature (λ_gae is the parameter ``gae_lambda``):

- :func:`dual_gae_reference` — the official trainer's loop over time steps, once per signal
  (:func:`gae_reference`); the plain statement the tests check the others against;
- :func:`dual_gae_torch` — the recursion above in torch, both signals stacked in one loop;
- :func:`dual_gae_triton` — the Triton scan kernels.
"""

from __future__ import annotations

import torch

from ._env import require_triton, tl, triton

GAMMA = 1.0
LAMBDA_GAE = 0.95
MAX_BLOCK_T = 1024
"""Sequence positions one Triton program scans at once; longer sequences loop over blocks."""


def _check(rewards, costs, reward_values, cost_values, mask) -> None:
    shape = tuple(rewards.shape)
    if len(shape) != 2:
        raise ValueError(f"GAE inputs must be [B, T], got rewards of shape {shape}")
    for name, t in (
        ("costs", costs),
        ("reward_values", reward_values),
        ("cost_values", cost_values),
        ("mask", mask),
    ):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} like rewards, got {tuple(t.shape)}")


def _mask_as(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mask as 0/1 numbers (any non-zero entry is a real token)."""
    return (mask != 0).to(like.dtype)


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


# --------------------------------------------------------------------------- reference
def gae_reference(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = GAMMA,
    gae_lambda: float = LAMBDA_GAE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One signal, a Python loop over time steps as in the official trainer (list + stack):
    ``(advantages, returns)``."""
    m = _mask_as(mask, _float(rewards))
    x, v = _float(rewards) * m, _float(values) * m
    length = x.shape[-1]
    last = torch.zeros_like(x[:, 0])
    reversed_adv = []
    for t in reversed(range(length)):
        next_values = v[:, t + 1] if t < length - 1 else torch.zeros_like(last)
        delta = x[:, t] + gamma * next_values - v[:, t]
        last = (delta + gamma * gae_lambda * last) * m[:, t]
        reversed_adv.append(last)
    adv = torch.stack(reversed_adv[::-1], dim=1)
    return adv, (adv + v) * m


def dual_gae_reference(
    rewards: torch.Tensor,
    costs: torch.Tensor,
    reward_values: torch.Tensor,
    cost_values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = GAMMA,
    gae_lambda: float = LAMBDA_GAE,
):
    """Two separate loops (reward, then cost) of :func:`gae_reference`: the baseline of the
    benchmark and the reference of the tests. ``(adv_r, ret_r, adv_c, ret_c)`` in fp32 (fp64
    for fp64 inputs)."""
    _check(rewards, costs, reward_values, cost_values, mask)
    adv_r, ret_r = gae_reference(rewards, reward_values, mask, gamma, gae_lambda)
    adv_c, ret_c = gae_reference(costs, cost_values, mask, gamma, gae_lambda)
    return adv_r, ret_r, adv_c, ret_c


# --------------------------------------------------------------------------- torch
def dual_gae_torch(
    rewards: torch.Tensor,
    costs: torch.Tensor,
    reward_values: torch.Tensor,
    cost_values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = GAMMA,
    gae_lambda: float = LAMBDA_GAE,
):
    """The module docstring's recursion, written once for both signals stacked as [2, B, T]
    (one reverse loop; differentiable by autograd). Returns fp32 (fp64 for fp64 inputs)
    ``(adv_r, ret_r, adv_c, ret_c)``."""
    _check(rewards, costs, reward_values, cost_values, mask)
    dtype = torch.float32
    for signal in (rewards, costs, reward_values, cost_values):
        dtype = torch.promote_types(dtype, signal.dtype)
    x = torch.stack([rewards.to(dtype), costs.to(dtype)])  # [2, B, T]
    v = torch.stack([reward_values.to(dtype), cost_values.to(dtype)])
    m = _mask_as(mask, x)[None].expand_as(x)
    length = x.shape[-1]
    steps: list[torch.Tensor] = []  # A_t for t = T-1, ..., 0
    next_adv = torch.zeros_like(x[..., 0])
    next_value = torch.zeros_like(x[..., 0])  # m_{t+1}·V_{t+1}
    for t in reversed(range(length)):
        delta = x[..., t] + gamma * next_value - v[..., t]
        next_adv = m[..., t] * (delta + gamma * gae_lambda * next_adv)
        steps.append(next_adv)
        next_value = m[..., t] * v[..., t]
    adv = torch.stack(steps[::-1], dim=-1)
    ret = m * (adv + v)
    return adv[0], ret[0], adv[1], ret[1]


# --------------------------------------------------------------------------- Triton
if triton is not None:

    @triton.jit
    def _compose(a_first, b_first, a_next, b_next):
        """Affine maps in scan order: first = the later time step (already accumulated),
        next = the earlier one; y ↦ b_next + a_next·(b_first + a_first·y)."""
        return a_first * a_next, b_next + a_next * b_first

    @triton.jit
    def _dual_gae_fwd_kernel(
        r_ptr,
        c_ptr,
        vr_ptr,
        vc_ptr,
        m_ptr,
        adv_r_ptr,
        ret_r_ptr,
        adv_c_ptr,
        ret_c_ptr,
        T,
        gamma,
        gamma_lambda,
        BLOCK_T: tl.constexpr,
    ):
        """One program per batch row; blocks of the sequence from the last to the first,
        each scanned in reverse time order, carrying A across block borders."""
        row = tl.program_id(0).to(tl.int64) * T
        offs = tl.arange(0, BLOCK_T)
        carry_r = tl.zeros((1,), dtype=tl.float32)  # A_{t+1} at the block's last position
        carry_c = tl.zeros((1,), dtype=tl.float32)
        n_blocks = tl.cdiv(T, BLOCK_T)
        for i in range(0, n_blocks):
            t = (n_blocks - 1 - i) * BLOCK_T + (BLOCK_T - 1 - offs)  # reverse time order
            ok = t < T
            ok_next = (t + 1) < T
            m = tl.where(tl.load(m_ptr + row + t, mask=ok, other=0) != 0, 1.0, 0.0)
            m_next = tl.where(tl.load(m_ptr + row + t + 1, mask=ok_next, other=0) != 0, 1.0, 0.0)
            a = m * gamma_lambda
            vr = tl.load(vr_ptr + row + t, mask=ok, other=0.0).to(tl.float32)
            vc = tl.load(vc_ptr + row + t, mask=ok, other=0.0).to(tl.float32)
            vr_next = tl.load(vr_ptr + row + t + 1, mask=ok_next, other=0.0).to(tl.float32)
            vc_next = tl.load(vc_ptr + row + t + 1, mask=ok_next, other=0.0).to(tl.float32)
            r = tl.load(r_ptr + row + t, mask=ok, other=0.0).to(tl.float32)
            c = tl.load(c_ptr + row + t, mask=ok, other=0.0).to(tl.float32)
            delta_r = m * (r + gamma * m_next * vr_next - vr)
            delta_c = m * (c + gamma * m_next * vc_next - vc)
            coef_r, adv_r = tl.associative_scan((a, delta_r), 0, _compose)
            coef_c, adv_c = tl.associative_scan((a, delta_c), 0, _compose)
            adv_r = adv_r + coef_r * carry_r
            adv_c = adv_c + coef_c * carry_c
            tl.store(adv_r_ptr + row + t, adv_r, mask=ok)
            tl.store(adv_c_ptr + row + t, adv_c, mask=ok)
            tl.store(ret_r_ptr + row + t, m * (adv_r + vr), mask=ok)
            tl.store(ret_c_ptr + row + t, m * (adv_c + vc), mask=ok)
            first = offs == BLOCK_T - 1  # the earliest time step of this block
            carry_r = tl.sum(tl.where(first, adv_r, 0.0), axis=0) + tl.zeros((1,), tl.float32)
            carry_c = tl.sum(tl.where(first, adv_c, 0.0), axis=0) + tl.zeros((1,), tl.float32)

    @triton.jit
    def _gae_adjoint_kernel(
        g_adv_ptr,
        g_ret_ptr,
        m_ptr,
        e_ptr,
        B,
        T,
        gamma_lambda,
        HAS_GADV: tl.constexpr,
        HAS_GRET: tl.constexpr,
        BLOCK_T: tl.constexpr,
    ):
        """ē_t = m_t·(gA_t + m_t·gG_t + γλ·ē_{t−1}), forwards in time, one program per row
        of the stacked [2·B, T] signals."""
        row = tl.program_id(0).to(tl.int64) * T
        m_row = (tl.program_id(0) % B).to(tl.int64) * T
        offs = tl.arange(0, BLOCK_T)
        carry = tl.zeros((1,), dtype=tl.float32)
        for start in range(0, T, BLOCK_T):
            t = start + offs
            ok = t < T
            m = tl.where(tl.load(m_ptr + m_row + t, mask=ok, other=0) != 0, 1.0, 0.0)
            h = tl.zeros((BLOCK_T,), dtype=tl.float32)
            if HAS_GADV:
                h += tl.load(g_adv_ptr + row + t, mask=ok, other=0.0).to(tl.float32)
            if HAS_GRET:
                h += m * tl.load(g_ret_ptr + row + t, mask=ok, other=0.0).to(tl.float32)
            coef, e = tl.associative_scan((m * gamma_lambda, m * h), 0, _compose)
            e = e + coef * carry
            tl.store(e_ptr + row + t, e, mask=ok)
            last = offs == BLOCK_T - 1
            carry = tl.sum(tl.where(last, e, 0.0), axis=0) + tl.zeros((1,), tl.float32)


def _block_t(length: int) -> int:
    return max(16, min(MAX_BLOCK_T, triton.next_power_of_2(max(length, 1))))


class TritonDualGAE(torch.autograd.Function):
    """Triton dual GAE: forward scan kernel, adjoint scan kernel for the backward."""

    @staticmethod
    def forward(
        ctx, rewards, costs, reward_values, cost_values, mask, gamma: float, gae_lambda: float
    ):
        batch, length = rewards.shape
        outs = [
            torch.empty((batch, length), dtype=torch.float32, device=rewards.device)
            for _ in range(4)
        ]
        if batch and length:
            _dual_gae_fwd_kernel[(batch,)](
                rewards,
                costs,
                reward_values,
                cost_values,
                mask,
                *outs,
                length,
                float(gamma),
                float(gamma * gae_lambda),
                BLOCK_T=_block_t(length),
            )
        ctx.save_for_backward(mask)
        ctx.gamma, ctx.gae_lambda = gamma, gae_lambda
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    def backward(ctx, g_adv_r, g_ret_r, g_adv_c, g_ret_c):
        (mask,) = ctx.saved_tensors
        batch, length = mask.shape
        gamma = ctx.gamma

        def stacked(g_r, g_c):
            if g_r is None and g_c is None:
                return None
            zero = torch.zeros((batch, length), dtype=torch.float32, device=mask.device)
            return torch.stack([zero if g is None else g.float() for g in (g_r, g_c)]).contiguous()

        g_adv, g_ret = stacked(g_adv_r, g_adv_c), stacked(g_ret_r, g_ret_c)
        e = torch.empty((2, batch, length), dtype=torch.float32, device=mask.device)
        placeholder = e
        if batch and length:
            _gae_adjoint_kernel[(2 * batch,)](
                placeholder if g_adv is None else g_adv,
                placeholder if g_ret is None else g_ret,
                mask,
                e,
                batch,
                length,
                float(gamma * ctx.gae_lambda),
                HAS_GADV=g_adv is not None,
                HAS_GRET=g_ret is not None,
                BLOCK_T=_block_t(length),
            )
        m = _mask_as(mask, e)[None]
        e_prev = torch.nn.functional.pad(e[..., :-1], (1, 0))  # ē_{t−1}, 0 at t = 0
        g_values = -e + gamma * m * e_prev
        if g_ret is not None:
            g_values = g_values + m * g_ret
        return e[0], e[1], g_values[0], g_values[1], None, None, None


def dual_gae_triton(
    rewards: torch.Tensor,
    costs: torch.Tensor,
    reward_values: torch.Tensor,
    cost_values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = GAMMA,
    gae_lambda: float = LAMBDA_GAE,
):
    """Triton dual GAE; fp32 ``(adv_r, ret_r, adv_c, ret_c)``. CUDA tensors, or CPU tensors
    under ``TRITON_INTERPRET=1``."""
    require_triton("dual_gae_triton")
    _check(rewards, costs, reward_values, cost_values, mask)
    if mask.dtype == torch.bool:
        mask = mask.to(torch.uint8)
    args = [t.contiguous() for t in (rewards, costs, reward_values, cost_values, mask)]
    return TritonDualGAE.apply(*args, float(gamma), float(gae_lambda))
