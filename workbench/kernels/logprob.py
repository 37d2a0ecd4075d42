r"""Token log-probs and entropy straight from hidden states and the LM head.

For hidden states ``X`` [N, H], the LM head ``W`` [V, H], chosen tokens ``y`` [N] and a
temperature ``τ``, with scaled logits ``z = X·Wᵀ / τ`` [N, V]:

    lse_n      = log Σ_j exp(z_nj)                      (online over vocabulary chunks)
    logp_n     = z_{n,y_n} − lse_n
    entropy_n  = lse_n − Σ_j p_nj·z_nj,      p = softmax(z)

Backward, for upstream gradients ``g`` (on logp) and ``h`` (on entropy):

    ∂L/∂z_nj   = g_n·(1[j = y_n] − p_nj) − h_n·p_nj·(z_nj − z̄_n),     z̄_n = Σ_j p_nj·z_nj
    ∂L/∂X      = (∂L/∂z)·W / τ,        ∂L/∂W = (∂L/∂z)ᵀ·X / τ

Only ``lse`` and ``z̄`` (two floats per token) are kept from the forward; the backward
recomputes each vocabulary chunk of logits, so the [N × V] logits never exist in memory
(at 4096 tokens × 152064 vocab that is 2.5 GB in fp32 for each copy the plain formula
makes). Cost: 2·N·V·H multiply-adds in the forward, 2 to recompute and 4 for the two
gradient matmuls in the backward (8 against the 6 of a bare matmul with its backward).

Three implementations, one signature (the reference has no ``chunk_size``):

- :func:`token_logprobs_reference` — the usual ``log_softmax(X @ Wᵀ)`` with full logits
  (the memory hot spot this module exists for); the readable statement, the baseline of the
  benchmark and the reference of the tests.
- :func:`token_logprobs_torch` — pure torch, vocabulary chunks with an online log-sum-exp
  and a hand-written chunked backward (a ``torch.autograd.Function``).
- :func:`token_logprobs_triton` — Triton kernels: the forward computes the logit tiles
  with ``tl.dot`` (fp32 accumulation) and folds them into the running max / sum / entropy
  sums in registers (split over the vocabulary for parallelism, then merged); the backward
  kernel recomputes a chunk of logit tiles and writes ``∂L/∂z`` for that chunk, and two
  cuBLAS matmuls turn it into the gradients of ``X`` and ``W``.

All return log-probs and entropies shaped like ``targets``, in fp32 (fp64 for fp64 inputs,
which is how the tests compute their gold values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._env import require_triton, tl, triton

DEFAULT_CHUNK_SIZE = 8192
"""Vocabulary columns per chunk: the largest logit block that exists at any time is
[N, chunk_size] (the torch version) or the backward's ∂L/∂z block of that size (Triton)."""


def _flatten(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """[..., H] hidden, [...] targets -> [N, H], [N] plus the leading shape; validated."""
    if hidden.dim() < 2:
        raise ValueError(f"hidden must be [N, H] or [B, T, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must be [V, H] with H = {hidden.shape[-1]}, got {tuple(weight.shape)}"
        )
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"targets must have shape {tuple(hidden.shape[:-1])}, got {tuple(targets.shape)}"
        )
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= weight.shape[0]):
        raise ValueError(
            f"targets must lie in [0, {weight.shape[0]}); give padded positions any "
            "valid id and mask them downstream"
        )
    lead = tuple(hidden.shape[:-1])
    return hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1), lead


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half types, fp64 stays fp64 (so the float64 gold is computed in float64)."""
    return torch.promote_types(dtype, torch.float32)


# --------------------------------------------------------------------------- reference
def token_logprobs_reference(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full logits, ``log_softmax``, gather: what most RLHF code does. Materialises
    [N, V] logits (in the input dtype, then fp32 copies for log-softmax and softmax)."""
    x, y, lead = _flatten(hidden, weight, targets)
    logits = (x @ weight.t()).to(_at_least_fp32(x.dtype)) / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, y[:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp.reshape(lead), entropy.reshape(lead)


# --------------------------------------------------------------------------- chunked torch
def _chunk_logits(x: torch.Tensor, w_chunk: torch.Tensor, inv_temp: float) -> torch.Tensor:
    """One [N, chunk] block of scaled logits in fp32 (matmul in the input dtype, like an
    HF model's LM head followed by ``.float()``)."""
    return (x @ w_chunk.t()).to(_at_least_fp32(x.dtype)).mul_(inv_temp)


def _grad_logits(
    z: torch.Tensor,
    start: int,
    y: torch.Tensor,
    lse: torch.Tensor,
    zbar: torch.Tensor,
    g_logp: torch.Tensor | None,
    g_ent: torch.Tensor | None,
    inv_temp: float,
) -> torch.Tensor:
    """∂L/∂(X·Wᵀ) for the chunk of columns [start, start + z.shape[1]) (module docstring);
    consumes ``z``. In place where it can: two [N, chunk] blocks live at once."""
    p = (z - lse[:, None]).exp_()
    if g_ent is not None:
        dz = z.sub_(zbar[:, None]).mul_(p).mul_(-g_ent[:, None])  # −h·p·(z − z̄)
    else:
        dz = z.zero_()
    if g_logp is not None:
        dz.sub_(p.mul_(g_logp[:, None]))  # −g·p
        rows = torch.nonzero((y >= start) & (y < start + z.shape[1])).squeeze(1)
        dz[rows, y[rows] - start] += g_logp[rows]  # +g at the chosen token
    return dz.mul_(inv_temp)


def _chunked_backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    grad_logits_of_chunk,
    chunk_size: int,
    need_x: bool,
    need_w: bool,
):
    """Shared backward loop: for each chunk, ∂L/∂z (from the callback) → dX, dW."""
    acc_dtype = _at_least_fp32(x.dtype)
    grad_x = torch.zeros(x.shape, dtype=acc_dtype, device=x.device) if need_x else None
    grad_w = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if need_w else None
    for start in range(0, weight.shape[0], chunk_size):
        stop = min(start + chunk_size, weight.shape[0])
        w_chunk = weight[start:stop]
        dz = grad_logits_of_chunk(start, stop).to(x.dtype)
        if grad_x is not None:  # need_x
            grad_x += (dz @ w_chunk).to(acc_dtype)
        if grad_w is not None:  # need_w
            torch.mm(dz.t(), x, out=grad_w[start:stop])
    return (grad_x.to(x.dtype) if grad_x is not None else None), grad_w


class ChunkedTokenLogprobs(torch.autograd.Function):
    """Pure-torch chunked op: online log-sum-exp forward, recomputing chunked backward."""

    @staticmethod
    def forward(ctx, x, weight, y, temperature: float, chunk_size: int):
        inv_temp = 1.0 / temperature
        n, acc_dtype = x.shape[0], _at_least_fp32(x.dtype)
        running_max = torch.full((n,), -math.inf, dtype=acc_dtype, device=x.device)
        running_sum = torch.zeros(n, dtype=acc_dtype, device=x.device)  # Σ exp(z - max)
        running_zsum = torch.zeros_like(running_sum)  # Σ exp(z - max)·z (for the entropy)
        target_logit = torch.zeros_like(running_sum)
        for start in range(0, weight.shape[0], chunk_size):
            stop = min(start + chunk_size, weight.shape[0])
            z = _chunk_logits(x, weight[start:stop], inv_temp)
            in_chunk = (y >= start) & (y < stop)
            local = (y - start).clamp(0, stop - start - 1)
            target_logit += torch.where(in_chunk, z.gather(-1, local[:, None]).squeeze(-1), 0.0)
            new_max = torch.maximum(running_max, z.max(dim=-1).values)
            rescale = torch.exp(running_max - new_max)
            e = (z - new_max[:, None]).exp_()
            running_sum = running_sum * rescale + e.sum(-1)
            running_zsum = running_zsum * rescale + e.mul_(z).sum(-1)  # Σ e·z (e is spent)
            running_max = new_max
        lse = running_max + torch.log(running_sum)
        zbar = running_zsum / running_sum  # Σ p·z
        ctx.save_for_backward(x, weight, y, lse, zbar)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.set_materialize_grads(False)
        return target_logit - lse, lse - zbar

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        x, weight, y, lse, zbar = ctx.saved_tensors
        inv_temp = 1.0 / ctx.temperature
        if g_logp is None and g_ent is None:
            return None, None, None, None, None
        g_logp = None if g_logp is None else g_logp.to(lse.dtype)
        g_ent = None if g_ent is None else g_ent.to(lse.dtype)

        def grad_chunk(start: int, stop: int) -> torch.Tensor:
            z = _chunk_logits(x, weight[start:stop], inv_temp)
            return _grad_logits(z, start, y, lse, zbar, g_logp, g_ent, inv_temp)

        grad_x, grad_w = _chunked_backward(
            x, weight, grad_chunk, ctx.chunk_size, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        return grad_x, grad_w, None, None, None


def token_logprobs_torch(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked pure-torch log-probs and entropies (fp32, or fp64 for fp64 inputs; shaped like
    ``targets``)."""
    _check_args(temperature, chunk_size)
    x, y, lead = _flatten(hidden, weight, targets)
    logp, entropy = ChunkedTokenLogprobs.apply(
        x.contiguous(), weight, y, float(temperature), int(chunk_size)
    )
    return logp.reshape(lead), entropy.reshape(lead)


def _check_args(temperature: float, chunk_size: int) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


# --------------------------------------------------------------------------- Triton
@dataclass(frozen=True)
class LogprobLaunchConfig:
    """Tile sizes of the Triton kernels (``tl.dot`` needs every side >= 16)."""

    block_n: int = 64
    """tokens per tile"""
    block_v: int = 128
    """vocabulary columns per tile"""
    block_h: int = 64
    """hidden features per step of the tile matmul"""
    num_warps: int = 8
    num_stages: int = 3
    programs_per_sm: int = 4
    """the forward splits the vocabulary until about this many programs per SM run"""


def _pow2_at_least_16(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(max(int(n), 1))))


def _launch_config(x: torch.Tensor, n: int, v: int, h: int) -> LogprobLaunchConfig:
    if x.device.type != "cuda":  # the interpreter: big tiles mean fewer Python-level steps
        base = LogprobLaunchConfig(block_n=64, block_v=128, block_h=128)
    else:
        base = LogprobLaunchConfig()
    return LogprobLaunchConfig(
        block_n=_pow2_at_least_16(n, base.block_n),
        block_v=_pow2_at_least_16(v, base.block_v),
        block_h=_pow2_at_least_16(h, base.block_h),
        num_warps=base.num_warps,
        num_stages=base.num_stages,
        programs_per_sm=base.programs_per_sm,
    )


if triton is not None:

    @triton.jit
    def _logit_tile(
        x_ptr,
        w_ptr,
        rows,
        cols,
        row_ok,
        col_ok,
        H,
        stride_xn,
        stride_wv,
        BLOCK_N: tl.constexpr,
        BLOCK_V: tl.constexpr,
        BLOCK_H: tl.constexpr,
        UPCAST: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        """acc[BLOCK_N, BLOCK_V] = X[rows] · W[cols]ᵀ in fp32."""
        acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            h_ok = hs < H
            xt = tl.load(
                x_ptr + rows[:, None].to(tl.int64) * stride_xn + hs[None, :],
                mask=row_ok[:, None] & h_ok[None, :],
                other=0.0,
            )
            wt = tl.load(
                w_ptr + cols[:, None].to(tl.int64) * stride_wv + hs[None, :],
                mask=col_ok[:, None] & h_ok[None, :],
                other=0.0,
            )
            if UPCAST:  # the CPU interpreter multiplies bf16 tiles wrongly; fp32 is exact there
                xt = xt.to(tl.float32)
                wt = wt.to(tl.float32)
            if IEEE:  # fp32 inputs: true fp32 products, not TF32
                acc = tl.dot(xt, tl.trans(wt), acc, input_precision="ieee")
            else:
                acc = tl.dot(xt, tl.trans(wt), acc)
        return acc

    @triton.jit
    def _logprob_fwd_kernel(
        x_ptr,
        w_ptr,
        y_ptr,
        part_ptr,
        N,
        V,
        H,
        inv_temp,
        cols_per_split,
        stride_xn,
        stride_wv,
        BLOCK_N: tl.constexpr,
        BLOCK_V: tl.constexpr,
        BLOCK_H: tl.constexpr,
        UPCAST: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        """Program (row block, vocabulary split): running max, Σexp, Σexp·z and the target
        logit over its columns, written to part[4, splits, N]."""
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        n_splits = tl.num_programs(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        y = tl.load(y_ptr + rows, mask=row_ok, other=-1)
        run_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
        run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
        run_zsum = tl.zeros((BLOCK_N,), dtype=tl.float32)
        target = tl.zeros((BLOCK_N,), dtype=tl.float32)
        v_start = pid_s * cols_per_split
        v_stop = tl.minimum(v_start + cols_per_split, V)
        for v0 in range(v_start, v_stop, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_ok = cols < v_stop
            z = (
                _logit_tile(
                    x_ptr,
                    w_ptr,
                    rows,
                    cols,
                    row_ok,
                    col_ok,
                    H,
                    stride_xn,
                    stride_wv,
                    BLOCK_N,
                    BLOCK_V,
                    BLOCK_H,
                    UPCAST,
                    IEEE,
                )
                * inv_temp
            )
            z_or_ninf = tl.where(col_ok[None, :], z, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(z_or_ninf, axis=1))
            rescale = tl.exp(run_max - new_max)
            e = tl.where(col_ok[None, :], tl.exp(z - new_max[:, None]), 0.0)
            run_sum = run_sum * rescale + tl.sum(e, axis=1)
            run_zsum = run_zsum * rescale + tl.sum(e * z, axis=1)
            run_max = new_max
            target += tl.sum(tl.where(cols[None, :] == y[:, None], z, 0.0), axis=1)
        out = part_ptr + pid_s * N + rows
        plane = n_splits * N
        tl.store(out, run_max, mask=row_ok)
        tl.store(out + plane, run_sum, mask=row_ok)
        tl.store(out + 2 * plane, run_zsum, mask=row_ok)
        tl.store(out + 3 * plane, target, mask=row_ok)

    @triton.jit
    def _logprob_bwd_kernel(
        x_ptr,
        w_ptr,
        y_ptr,
        lse_ptr,
        zbar_ptr,
        glogp_ptr,
        gent_ptr,
        dz_ptr,
        N,
        H,
        v_start,
        v_stop,
        inv_temp,
        stride_xn,
        stride_wv,
        stride_dzn,
        HAS_GLOGP: tl.constexpr,
        HAS_GENT: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_V: tl.constexpr,
        BLOCK_H: tl.constexpr,
        UPCAST: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        """Program (row block, column block of the chunk [v_start, v_stop)): recompute the
        logit tile and write ∂L/∂(X·Wᵀ) into dz[N, v_stop - v_start]."""
        pid_n = tl.program_id(0)
        pid_v = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        cols = v_start + pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
        col_ok = cols < v_stop
        z = (
            _logit_tile(
                x_ptr,
                w_ptr,
                rows,
                cols,
                row_ok,
                col_ok,
                H,
                stride_xn,
                stride_wv,
                BLOCK_N,
                BLOCK_V,
                BLOCK_H,
                UPCAST,
                IEEE,
            )
            * inv_temp
        )
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        p = tl.where(col_ok[None, :], tl.exp(z - lse[:, None]), 0.0)
        dz = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        if HAS_GLOGP:
            y = tl.load(y_ptr + rows, mask=row_ok, other=-1)
            g = tl.load(glogp_ptr + rows, mask=row_ok, other=0.0)
            dz += g[:, None] * (tl.where(cols[None, :] == y[:, None], 1.0, 0.0) - p)
        if HAS_GENT:
            zbar = tl.load(zbar_ptr + rows, mask=row_ok, other=0.0)
            h = tl.load(gent_ptr + rows, mask=row_ok, other=0.0)
            dz -= h[:, None] * p * (z - zbar[:, None])
        dz = dz * inv_temp
        out = dz_ptr + rows[:, None].to(tl.int64) * stride_dzn + (cols - v_start)[None, :]
        tl.store(out, dz.to(dz_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _kernel_flags(x: torch.Tensor) -> dict:
    return {"UPCAST": x.device.type != "cuda", "IEEE": x.dtype == torch.float32}


def _launch_options(cfg: LogprobLaunchConfig, x: torch.Tensor) -> dict:
    if x.device.type != "cuda":
        return {}
    return {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def _triton_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    y: torch.Tensor,
    inv_temp: float,
    num_splits: int | None = None,
):
    """Launch the forward kernel and merge its vocabulary splits -> (target_logit, lse, zbar)."""
    n, h = x.shape
    v = weight.shape[0]
    cfg = _launch_config(x, n, v, h)
    row_blocks = triton.cdiv(n, cfg.block_n)
    col_blocks = triton.cdiv(v, cfg.block_v)
    if num_splits is None:
        if x.device.type == "cuda":
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count
            num_splits = triton.cdiv(cfg.programs_per_sm * sms, row_blocks)
        else:
            num_splits = 1
    num_splits = max(1, min(num_splits, col_blocks))
    cols_per_split = triton.cdiv(col_blocks, num_splits) * cfg.block_v
    num_splits = triton.cdiv(v, cols_per_split)  # every split owns at least one column
    part = torch.empty((4, num_splits, n), dtype=torch.float32, device=x.device)
    _logprob_fwd_kernel[(row_blocks, num_splits)](
        x,
        weight,
        y,
        part,
        n,
        v,
        h,
        inv_temp,
        cols_per_split,
        x.stride(0),
        weight.stride(0),
        BLOCK_N=cfg.block_n,
        BLOCK_V=cfg.block_v,
        BLOCK_H=cfg.block_h,
        **_kernel_flags(x),
        **_launch_options(cfg, x),
    )
    split_max, split_sum, split_zsum, split_target = part
    run_max = split_max.max(dim=0).values
    rescale = torch.exp(split_max - run_max[None, :])
    total = (split_sum * rescale).sum(0)
    lse = run_max + torch.log(total)
    zbar = (split_zsum * rescale).sum(0) / total
    return split_target.sum(0), lse, zbar


class TritonTokenLogprobs(torch.autograd.Function):
    """Triton op: fused logit-tile + online log-sum-exp forward, recomputing backward."""

    @staticmethod
    def forward(ctx, x, weight, y, temperature: float, chunk_size: int):
        target, lse, zbar = _triton_forward(x, weight, y, 1.0 / temperature)
        ctx.save_for_backward(x, weight, y, lse, zbar)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.set_materialize_grads(False)
        return target - lse, lse - zbar

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        x, weight, y, lse, zbar = ctx.saved_tensors
        if g_logp is None and g_ent is None:
            return None, None, None, None, None
        n, h = x.shape
        inv_temp = 1.0 / ctx.temperature
        glogp = lse if g_logp is None else g_logp.float().contiguous()  # placeholder pointer
        gent = lse if g_ent is None else g_ent.float().contiguous()
        chunk = min(ctx.chunk_size, weight.shape[0])
        cfg = _launch_config(x, n, chunk, h)
        dz_buffer = torch.empty((n, chunk), dtype=x.dtype, device=x.device)

        def grad_chunk(start: int, stop: int) -> torch.Tensor:
            dz = dz_buffer[:, : stop - start]
            grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(stop - start, cfg.block_v))
            _logprob_bwd_kernel[grid](
                x,
                weight,
                y,
                lse,
                zbar,
                glogp,
                gent,
                dz,
                n,
                h,
                start,
                stop,
                inv_temp,
                x.stride(0),
                weight.stride(0),
                dz.stride(0),
                HAS_GLOGP=g_logp is not None,
                HAS_GENT=g_ent is not None,
                BLOCK_N=cfg.block_n,
                BLOCK_V=cfg.block_v,
                BLOCK_H=cfg.block_h,
                **_kernel_flags(x),
                **_launch_options(cfg, x),
            )
            return dz

        grad_x, grad_w = _chunked_backward(
            x, weight, grad_chunk, chunk, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        return grad_x, grad_w, None, None, None


def token_logprobs_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton log-probs and entropies (fp32, shaped like ``targets``); CUDA tensors, or CPU
    tensors under ``TRITON_INTERPRET=1``."""
    require_triton("token_logprobs_triton")
    _check_args(temperature, chunk_size)
    if hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"the Triton op takes fp32, bf16 or fp16 tensors, got {hidden.dtype}")
    x, y, lead = _flatten(hidden, weight, targets)
    if x.shape[0] == 0:  # nothing to launch
        return token_logprobs_torch(hidden, weight, targets, temperature, chunk_size)
    logp, entropy = TritonTokenLogprobs.apply(
        x.contiguous(), weight.contiguous(), y.contiguous(), float(temperature), int(chunk_size)
    )
    return logp.reshape(lead), entropy.reshape(lead)
