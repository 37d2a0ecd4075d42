"""Kernels: the optimised torch (``*_torch``) and Triton (``*_triton``) implementations of
each op against its plain-formula reference (``*_reference``) run in float64, and the
reference itself against the formulas read literally.

On CPU the Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set here before
``workbench.kernels`` is imported), at small shapes; on a GPU the same tests run on CUDA.

Gold values: float64 inputs through the ``*_reference`` implementation (full logits, the
official trainer's loop, unfused ops); for GAE and the loss the reference is also checked
against a literal Python loop / the formula with its gradient written out.
Tolerances, as max |actual − gold| against ``atol + rtol·|gold|`` (``torch.testing``):

- fp32: values and gradients within atol 5e-5, rtol 1e-4 (observed ≈ 1e-6 … 1e-5);
- bf16 inputs (the gold sees the same bf16-rounded inputs): log-probs and entropies within
  atol 6e-2 for torch, which rounds its logits to bf16 like an HF model (observed
  ≤ 3e-2), and 2e-3 for Triton, which keeps fp32 logits (observed < 1e-4); gradients,
  returned in bf16, within 5% (torch) and 2% (Triton) of the gold's largest entry
  (observed ≤ 2.3% and ≤ 0.6%);
- GAE and the loss compute in fp32 whatever the input dtype: fp32 inputs within atol 1e-5.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch

CUDA = torch.cuda.is_available()
TRITON_IMPORTED_EARLIER = "triton" in sys.modules
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import workbench.kernels as K  # noqa: E402
from workbench.kernels import gae as gae_module  # noqa: E402
from workbench.kernels import logprob as logprob_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEVICE = torch.device("cuda" if CUDA else "cpu")
HAS_TRITON = K.triton_available() and (CUDA or K.interpreting())
needs_triton = pytest.mark.skipif(
    not HAS_TRITON,
    reason="needs triton (the dev extra) and CUDA "
    "or TRITON_INTERPRET=1 set before triton is imported",
)

FP32_TOL = {"atol": 5e-5, "rtol": 1e-4}
BF16_VALUE_TOL = {"torch": {"atol": 6e-2, "rtol": 0.0}, "triton": {"atol": 2e-3, "rtol": 0.0}}
BF16_GRAD_FRACTION = {"torch": 0.05, "triton": 0.02}
LOGPROB_IMPLS = ["torch", pytest.param("triton", marks=needs_triton)]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _close(actual: torch.Tensor, gold: torch.Tensor, tol: dict, what: str) -> None:
    torch.testing.assert_close(
        actual.detach().double().cpu(),
        gold.detach().double().cpu(),
        **tol,
        msg=lambda m: f"{what}: {m}",
    )


def _close_to_scale(actual: torch.Tensor, gold: torch.Tensor, fraction: float, what: str) -> None:
    """max |actual − gold| ≤ fraction · max |gold| (for bf16 results, whose rounding error
    scales with the largest entries)."""
    error = float((actual.detach().double().cpu() - gold.detach().double().cpu()).abs().max())
    scale = float(gold.abs().max())
    assert error <= fraction * scale, f"{what}: max error {error:.3g} > {fraction} × {scale:.3g}"


# =========================================================================== token log-probs
def _logprob_inputs(lead: tuple[int, ...], h: int, v: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) * (2.0 / math.sqrt(h))
    targets = torch.randint(0, v, lead, generator=gen)
    g_logp = torch.randn(lead, generator=gen, dtype=torch.float64)
    g_ent = torch.randn(lead, generator=gen, dtype=torch.float64)
    return hidden, weight, targets, g_logp, g_ent


def _run_logprob(fn, hidden, weight, targets, g_logp, g_ent, dtype, **kw):
    """Values and gradients of Σ g·logp + Σ h·entropy for one implementation."""
    x = hidden.detach().to(DEVICE, dtype).requires_grad_()
    w = weight.detach().to(DEVICE, dtype).requires_grad_()
    logp, entropy = fn(x, w, targets.to(DEVICE), **kw)
    loss = (logp.double() * g_logp.to(DEVICE)).sum()
    if g_ent is not None:
        loss = loss + (entropy.double() * g_ent.to(DEVICE)).sum()
    loss.backward()
    return {"logp": logp, "entropy": entropy, "grad_hidden": x.grad, "grad_weight": w.grad}


LOGPROB_SHAPES = [
    # (leading shape, H, V, chunk): odd sizes, V not a multiple of the chunk, [B, T, H] input,
    # more tokens than a tile (64) and H longer than a tile step (128) under the interpreter
    ((7,), 24, 50, 16),
    ((2, 5), 32, 41, 32),
    ((70,), 136, 300, 128),
    ((1,), 16, 17, 8),
]


@pytest.mark.parametrize("lead,h,v,chunk", LOGPROB_SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("impl", LOGPROB_IMPLS)
def test_logprob_fp32_matches_reference(lead, h, v, chunk, temperature, impl):
    inputs = _logprob_inputs(lead, h, v)
    gold = _run_logprob(K.token_logprobs_reference, *inputs, torch.float64, temperature=temperature)
    fn = K.token_logprobs_torch if impl == "torch" else K.token_logprobs_triton
    got = _run_logprob(fn, *inputs, torch.float32, temperature=temperature, chunk_size=chunk)
    for key, value in got.items():
        assert value.shape == gold[key].shape, key
        _close(value, gold[key], FP32_TOL, f"{impl} {key}")
    assert got["logp"].dtype == torch.float32


@pytest.mark.parametrize("lead,h,v,chunk", LOGPROB_SHAPES[:3])
@pytest.mark.parametrize("impl", LOGPROB_IMPLS)
def test_logprob_bf16_matches_reference(lead, h, v, chunk, impl):
    hidden, weight, targets, g_logp, g_ent = _logprob_inputs(lead, h, v, seed=1)
    hidden, weight = (t.to(torch.bfloat16).double() for t in (hidden, weight))  # same inputs
    inputs = (hidden, weight, targets, g_logp, g_ent)
    gold = _run_logprob(K.token_logprobs_reference, *inputs, torch.float64, temperature=0.8)
    fn = K.token_logprobs_torch if impl == "torch" else K.token_logprobs_triton
    got = _run_logprob(fn, *inputs, torch.bfloat16, temperature=0.8, chunk_size=chunk)
    for key in ("logp", "entropy"):
        _close(got[key], gold[key], BF16_VALUE_TOL[impl], f"{impl} {key}")
    for key in ("grad_hidden", "grad_weight"):
        assert got[key].dtype == torch.bfloat16
        _close_to_scale(got[key], gold[key], BF16_GRAD_FRACTION[impl], f"{impl} {key}")


def test_logprob_torch_gradcheck_float64():
    """The hand-written chunked backward against finite differences."""
    hidden, weight, targets, _, _ = _logprob_inputs((5,), 6, 11, seed=2)
    x, w = hidden.requires_grad_(), weight.requires_grad_()

    def both(x, w):
        return K.token_logprobs_torch(x, w, targets, temperature=0.9, chunk_size=4)

    assert torch.autograd.gradcheck(both, (x, w), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", LOGPROB_IMPLS)
def test_logprob_single_output_and_frozen_head(impl):
    """Only log-probs used (the entropy gradient path off), and an LM head without grad."""
    hidden, weight, targets, g_logp, _ = _logprob_inputs((9,), 20, 37, seed=3)
    gold = _run_logprob(
        K.token_logprobs_reference, hidden, weight, targets, g_logp, None, torch.float64
    )
    backend = impl
    x = hidden.to(DEVICE, torch.float32).requires_grad_()
    w = weight.to(DEVICE, torch.float32)  # frozen head
    logp = K.token_logprobs(x, w, targets.to(DEVICE), chunk_size=16, backend=backend)
    (logp.double() * g_logp.to(DEVICE)).sum().backward()
    _close(logp, gold["logp"], FP32_TOL, "logp")
    _close(x.grad, gold["grad_hidden"], FP32_TOL, "grad_hidden")
    # the entropy alone
    gold_ent = _run_logprob(
        K.token_logprobs_reference,
        hidden,
        weight,
        targets,
        torch.zeros_like(g_logp),
        g_logp,
        torch.float64,
    )
    x.grad = None
    _, entropy = K.token_logprobs(
        x, w, targets.to(DEVICE), chunk_size=16, backend=backend, return_entropy=True
    )
    (entropy.double() * g_logp.to(DEVICE)).sum().backward()
    _close(x.grad, gold_ent["grad_hidden"], FP32_TOL, "grad_hidden (entropy)")


@needs_triton
def test_logprob_triton_vocab_splits_merge():
    """The forward splits the vocabulary over programs (on a GPU, for parallelism); any
    number of splits gives the same log-sum-exp."""
    hidden, weight, targets, _, _ = _logprob_inputs((20,), 32, 333, seed=4)
    x, w, y = (t.to(DEVICE) for t in (hidden.float(), weight.float(), targets))
    results = [logprob_module._triton_forward(x, w, y, 1.0, num_splits=s) for s in (1, 2, 3)]
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            _close(a, b, {"atol": 1e-5, "rtol": 1e-5}, "split merge")


@pytest.mark.parametrize("impl", LOGPROB_IMPLS)
def test_logprob_never_keeps_full_logits(impl):
    """What autograd keeps for the backward is O(N + V·H), never an [N, V] block."""
    n, h, v = 40, 16, 64
    hidden, weight, targets, _, _ = _logprob_inputs((n,), h, v)
    x = hidden.float().to(DEVICE).requires_grad_()
    w = weight.float().to(DEVICE).requires_grad_()
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    fn = K.token_logprobs_torch if impl == "torch" else K.token_logprobs_triton
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, w, targets.to(DEVICE), chunk_size=16)
    assert saved and max(saved) <= v * h, saved
    # the plain-formula reference, for contrast, keeps [N, V] blocks
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        K.token_logprobs_reference(x, w, targets.to(DEVICE))
    assert max(saved) >= n * v


def test_logprob_rejects_bad_inputs():
    hidden, weight, targets, _, _ = _logprob_inputs((4,), 8, 10)
    with pytest.raises(ValueError, match="targets must lie"):
        K.token_logprobs(hidden, weight, targets + 10, backend="torch")
    with pytest.raises(ValueError, match="weight must be"):
        K.token_logprobs(hidden, weight[:, :5], targets, backend="torch")
    with pytest.raises(ValueError, match="targets must have shape"):
        K.token_logprobs(hidden, weight, targets[:3], backend="torch")
    with pytest.raises(ValueError, match="temperature"):
        K.token_logprobs(hidden, weight, targets, temperature=0.0, backend="torch")


# =========================================================================== dual GAE
def _gae_gold(x, v, m, gamma, gae_lambda):
    """The recursion of :mod:`workbench.kernels.gae` read literally, one float at a time."""
    batch, length = x.shape
    adv = [[0.0] * length for _ in range(batch)]
    ret = [[0.0] * length for _ in range(batch)]
    for b in range(batch):
        next_adv = 0.0
        for t in reversed(range(length)):
            real_next = t + 1 < length and bool(m[b][t + 1])
            next_value = float(v[b][t + 1]) if real_next else 0.0  # V(t+1) = 0 beyond the end
            next_adv = next_adv if real_next else 0.0  # A(t+1) = 0 beyond the end
            if not m[b][t]:
                next_adv = 0.0  # masked positions get A = 0
                continue
            delta = float(x[b][t]) + gamma * next_value - float(v[b][t])
            next_adv = delta + gamma * gae_lambda * next_adv
            adv[b][t] = next_adv
            ret[b][t] = next_adv + float(v[b][t])
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(ret, dtype=torch.float64)


def _gae_inputs(batch, length, padding, seed=0):
    gen = torch.Generator().manual_seed(seed)
    signals = [torch.randn(batch, length, generator=gen, dtype=torch.float64) for _ in range(4)]
    positions = torch.arange(length)[None, :]
    lengths = torch.randint(0, length + 1, (batch,), generator=gen)
    lengths[0] = length  # one full row
    if padding == "right":
        mask = positions < lengths[:, None]
    elif padding == "left":
        mask = positions >= (length - lengths)[:, None]
    else:  # holes: a masked position inside a row ends the episode there
        mask = torch.rand(batch, length, generator=gen) < 0.75
    return signals, mask


GAE_SHAPES = [(1, 1), (3, 5), (4, 37), (2, 70)]


GAE_NAMES = ("adv_r", "ret_r", "adv_c", "ret_c")


def _gae_params(padding):
    return (1.0, 0.95) if padding != "holes" else (0.9, 0.8)


@pytest.mark.parametrize("batch,length", GAE_SHAPES)
@pytest.mark.parametrize("padding", ["right", "left", "holes"])
def test_dual_gae_reference_matches_literal_loop(batch, length, padding):
    (rewards, costs, v_r, v_c), mask = _gae_inputs(batch, length, padding)
    gamma, gae_lambda = _gae_params(padding)
    gold = [
        *_gae_gold(rewards, v_r, mask, gamma, gae_lambda),
        *_gae_gold(costs, v_c, mask, gamma, gae_lambda),
    ]
    got = K.dual_gae_reference(rewards, costs, v_r, v_c, mask, gamma=gamma, gae_lambda=gae_lambda)
    for name, value, expected in zip(GAE_NAMES, got, gold, strict=True):
        assert value.dtype == torch.float64
        _close(value, expected, {"atol": 1e-12, "rtol": 1e-12}, f"reference {name}")


@pytest.mark.parametrize("batch,length", GAE_SHAPES)
@pytest.mark.parametrize("padding", ["right", "left", "holes"])
@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
def test_dual_gae_matches_reference(batch, length, padding, impl, monkeypatch):
    monkeypatch.setattr(gae_module, "MAX_BLOCK_T", 16)  # several sequence blocks per row
    (rewards, costs, v_r, v_c), mask = _gae_inputs(batch, length, padding)
    gamma, gae_lambda = _gae_params(padding)
    gold = K.dual_gae_reference(rewards, costs, v_r, v_c, mask, gamma, gae_lambda)
    fn = {"torch": K.dual_gae_torch, "triton": K.dual_gae_triton}[impl]
    args = [t.float().to(DEVICE) for t in (rewards, costs, v_r, v_c)]
    got = fn(*args, mask.to(DEVICE), gamma=gamma, gae_lambda=gae_lambda)
    for name, value, expected in zip(GAE_NAMES, got, gold, strict=True):
        assert value.dtype == torch.float32
        _close(value, expected, {"atol": 1e-5, "rtol": 1e-5}, f"{impl} {name}")
        assert not value[~mask.to(DEVICE)].any(), f"{name} must be 0 at masked positions"


@needs_triton
@pytest.mark.parametrize("batch,length", [(3, 5), (4, 37)])
@pytest.mark.parametrize("used", ["all", "advantages", "returns_cost"])
def test_dual_gae_triton_backward(batch, length, used, monkeypatch):
    """The adjoint scan against autograd through the float64 plain-formula reference."""
    monkeypatch.setattr(gae_module, "MAX_BLOCK_T", 16)
    signals, mask = _gae_inputs(batch, length, "holes", seed=5)
    gen = torch.Generator().manual_seed(6)
    weights = [torch.randn(batch, length, generator=gen, dtype=torch.float64) for _ in range(4)]
    keep = {"all": (0, 1, 2, 3), "advantages": (0, 2), "returns_cost": (3,)}[used]

    def grads(fn, dtype):
        leaves = [s.detach().to(DEVICE, dtype).requires_grad_() for s in signals]
        outs = fn(*leaves, mask.to(DEVICE))
        sum((outs[i].double() * weights[i].to(DEVICE)).sum() for i in keep).backward()
        # None where an input does not reach the used outputs (the reference's separate loops)
        return [torch.zeros_like(x) if x.grad is None else x.grad for x in leaves]

    gold = grads(K.dual_gae_reference, torch.float64)
    _check_grads(grads(K.dual_gae_torch, torch.float32), gold, "torch")
    _check_grads(grads(K.dual_gae_triton, torch.float32), gold, "triton")


def _check_grads(got, gold, impl):
    for name, a, b in zip(
        ("rewards", "costs", "reward_values", "cost_values"), got, gold, strict=True
    ):
        _close(a, b, {"atol": 1e-5, "rtol": 1e-5}, f"{impl} grad {name}")


@needs_triton
def test_dual_gae_triton_bf16_and_bool_mask():
    signals, mask = _gae_inputs(3, 21, "right", seed=7)
    signals = [s.to(torch.bfloat16) for s in signals]
    gold = K.dual_gae_reference(*[s.double() for s in signals], mask)
    got = K.dual_gae_triton(*[s.to(DEVICE) for s in signals], mask.to(DEVICE))
    for a, b in zip(got, gold, strict=True):
        _close(a, b, {"atol": 1e-5, "rtol": 1e-5}, "bf16 inputs")


def test_dual_gae_right_padding_is_the_official_recursion():
    """With right padding the mask formulation equals the official trainer's loop (values and
    rewards zeroed by the mask, last column taken as the end)."""
    (rewards, costs, v_r, _), mask = _gae_inputs(5, 12, "right", seed=8)
    m = mask.double()
    x, v = rewards * m, v_r * m
    last, advs = 0.0, []
    for t in reversed(range(12)):
        next_values = v[:, t + 1] if t < 11 else 0.0
        last = x[:, t] + next_values - v[:, t] + 0.95 * last
        advs.append(last)
    official = torch.stack(advs[::-1], dim=1)
    adv_r, ret_r, _, _ = K.dual_gae(rewards, costs, v_r, v_r, mask, backend="torch")
    _close(adv_r, official * m, {"atol": 1e-12, "rtol": 0}, "advantages")
    _close(ret_r, (official + v) * m, {"atol": 1e-12, "rtol": 0}, "returns")


# =========================================================================== PPO-Lagrangian loss
def _loss_gold(logp, old, adv_r, adv_c, mask, multiplier, eps):
    """The loss of :mod:`workbench.kernels.ppo_loss` read literally, in float64: loss and
    ∂loss/∂logp written out."""
    m = mask.double()
    adv = (adv_r - multiplier * adv_c) / (1 + multiplier)
    ratio = torch.exp(logp - old)
    unclipped, clipped = ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv
    count = max(float(m.sum()), 1.0)
    loss = -(torch.minimum(unclipped, clipped) * m).sum() / count
    grad = torch.where(unclipped <= clipped, -m * ratio * adv / count, 0.0)
    return loss, grad


def _loss_inputs(shape, seed=0, masked_fraction=0.3):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(shape, generator=gen, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64)
    adv_r = torch.randn(shape, generator=gen, dtype=torch.float64)
    adv_c = torch.randn(shape, generator=gen, dtype=torch.float64)
    mask = torch.rand(shape, generator=gen) >= masked_fraction
    return logp, old, adv_r, adv_c, mask


LOSS_SHAPES = [(1, 1), (3, 5), (4, 37), (3, 700)]
LOSS_PARAMS = [(0.0, 0.2), (2.5, 0.2), ("tensor", 0.1)]


def _run_loss(fn, inputs, multiplier, eps, dtype):
    """Loss and ∂loss/∂logp of one implementation; ``multiplier`` "tensor" means 1.3 given
    as a 0-dim tensor."""
    logp, old, adv_r, adv_c, mask = inputs
    x = logp.detach().to(DEVICE, dtype).requires_grad_()
    if multiplier == "tensor":
        multiplier = torch.tensor(1.3, device=DEVICE, dtype=dtype)
    others = [t.to(DEVICE, dtype) for t in (old, adv_r, adv_c)]
    loss = fn(x, *others, mask.to(DEVICE), multiplier, clip_eps=eps)
    loss.backward()
    assert loss.dim() == 0
    return loss, x.grad


@pytest.mark.parametrize("shape", LOSS_SHAPES)
@pytest.mark.parametrize("multiplier,eps", LOSS_PARAMS)
def test_ppo_loss_reference_matches_formula(shape, multiplier, eps):
    inputs = _loss_inputs(shape)
    value = 1.3 if multiplier == "tensor" else multiplier
    gold_loss, gold_grad = _loss_gold(*inputs, value, eps)
    loss, grad = _run_loss(K.ppo_lagrangian_loss_reference, inputs, multiplier, eps, torch.float64)
    _close(loss, gold_loss, {"atol": 1e-12, "rtol": 1e-12}, "reference loss")
    _close(grad, gold_grad, {"atol": 1e-12, "rtol": 1e-12}, "reference grad")


@pytest.mark.parametrize("shape", LOSS_SHAPES)
@pytest.mark.parametrize("multiplier,eps", LOSS_PARAMS)
@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
def test_ppo_loss_matches_reference(shape, multiplier, eps, impl):
    inputs = _loss_inputs(shape)
    gold_loss, gold_grad = _run_loss(
        K.ppo_lagrangian_loss_reference, inputs, multiplier, eps, torch.float64
    )
    fn = {"torch": K.ppo_lagrangian_loss_torch, "triton": K.ppo_lagrangian_loss_triton}[impl]
    loss, grad = _run_loss(fn, inputs, multiplier, eps, torch.float32)
    _close(loss, gold_loss, {"atol": 1e-5, "rtol": 1e-5}, f"{impl} loss")
    _close(grad, gold_grad, {"atol": 1e-6, "rtol": 1e-4}, f"{impl} grad")


def test_ppo_loss_inputs_exercise_clipping():
    """The shared test inputs reach both sides of the clip range with both advantage signs."""
    logp, old, adv_r, _, _ = _loss_inputs((3, 700))
    ratio = torch.exp(logp - old)
    for side in (ratio > 1.2, ratio < 0.8):
        assert (side & (adv_r > 0)).any() and (side & (adv_r < 0)).any()


@needs_triton
def test_ppo_loss_triton_bf16_and_empty_mask():
    logp, old, adv_r, adv_c, mask = _loss_inputs((4, 37), seed=3)
    rounded = [t.to(torch.bfloat16) for t in (logp, old, adv_r, adv_c)]
    gold_loss, gold_grad = _run_loss(
        K.ppo_lagrangian_loss_reference,
        [*[t.double() for t in rounded], mask],
        0.7,
        0.2,
        torch.float64,
    )
    x = rounded[0].to(DEVICE).requires_grad_()
    loss = K.ppo_lagrangian_loss_triton(
        x, *[t.to(DEVICE) for t in rounded[1:]], mask.to(DEVICE), 0.7
    )
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    _close(loss, gold_loss, {"atol": 1e-5, "rtol": 1e-5}, "bf16 loss")
    _close(x.grad, gold_grad, {"atol": 1e-4, "rtol": 1e-2}, "bf16 grad")
    # nothing real in the batch: loss 0, no gradient, no NaN
    x.grad = None
    empty = torch.zeros_like(mask).to(DEVICE)
    loss = K.ppo_lagrangian_loss_triton(x, *[t.to(DEVICE) for t in rounded[1:]], empty, 0.7)
    loss.backward()
    assert float(loss.detach()) == 0.0 and not x.grad.float().abs().sum()


# =========================================================================== the switch
def test_resolve_backend():
    assert K.resolve_backend("torch", "cpu") == "torch"
    assert K.resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="kernels must be one of"):
        K.resolve_backend("cuda", "cpu")
    if HAS_TRITON:
        assert K.resolve_backend("triton", DEVICE) == "triton"
    if CUDA and K.triton_available():
        assert K.resolve_backend("auto", "cuda") == "triton"


@needs_triton
def test_public_functions_agree_across_backends():
    hidden, weight, targets, _, _ = _logprob_inputs((2, 6), 24, 45, seed=9)
    x, w, y = hidden.float().to(DEVICE), weight.float().to(DEVICE), targets.to(DEVICE)
    by_backend = {
        b: K.token_logprobs(x, w, y, chunk_size=16, backend=b, return_entropy=True)
        for b in ("torch", "triton")
    }
    for a, b in zip(by_backend["torch"], by_backend["triton"], strict=True):
        _close(a, b, FP32_TOL, "token_logprobs")
    signals, mask = _gae_inputs(3, 9, "right")
    args = [s.float().to(DEVICE) for s in signals]
    for a, b in zip(
        K.dual_gae(*args, mask.to(DEVICE), backend="torch"),
        K.dual_gae(*args, mask.to(DEVICE), backend="triton"),
        strict=True,
    ):
        _close(a, b, {"atol": 1e-5, "rtol": 1e-5}, "dual_gae")
    loss_args = [t.float().to(DEVICE) for t in _loss_inputs((3, 9))[:4]]
    loss_mask = _loss_inputs((3, 9))[4].to(DEVICE)
    _close(
        K.ppo_lagrangian_loss(*loss_args, loss_mask, 1.0, backend="torch"),
        K.ppo_lagrangian_loss(*loss_args, loss_mask, 1.0, backend="triton"),
        {"atol": 1e-6, "rtol": 1e-5},
        "ppo_lagrangian_loss",
    )


@pytest.mark.slow
def test_works_without_triton():
    """With triton not importable, the package imports, 'auto' falls back to torch and
    'triton' says what is missing."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch; torch.set_num_threads(1)\n"
        "import workbench.kernels as K\n"
        "assert not K.triton_available()\n"
        "assert K.resolve_backend('auto', 'cpu') == 'torch'\n"
        "x, w = torch.randn(3, 4), torch.randn(5, 4)\n"
        "assert K.token_logprobs(x, w, torch.tensor([0, 1, 4])).shape == (3,)\n"
        "try:\n"
        "    K.resolve_backend('triton', 'cpu')\n"
        "except RuntimeError as e:\n"
        "    assert 'pip install triton' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "try:\n"
        "    K.token_logprobs_triton(x, w, torch.tensor([0, 1, 4]))\n"
        "except RuntimeError as e:\n"
        "    assert 'needs Triton' in str(e), e\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


if (
    not CUDA
    and not HAS_TRITON
    and TRITON_IMPORTED_EARLIER
    and K.triton_available()
    and os.environ.get("TRITON_INTERPRET") == "1"
):

    def test_triton_kernels_in_a_fresh_process():
        """Another module imported triton before this one could set TRITON_INTERPRET=1 (Triton
        and its language functions pick the interpreter when they are imported), so the
        Triton tests above are skipped here: run the whole file in a fresh process instead."""
        out = subprocess.run(
            [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"},
            timeout=600,
        )
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
        assert " skipped" not in out.stdout.splitlines()[-1], out.stdout[-2000:]


# =========================================================================== the benchmark
@pytest.mark.slow
def test_bench_writes_table(tmp_path, monkeypatch):
    """The benchmark at toy sizes: every row of ours measured without error, files written."""
    import json

    from workbench.bench import kernels as bench

    tiny = bench.KernelBenchConfig(
        tokens=24,
        hidden=16,
        vocab=200,
        chunk_size=64,
        dtype="float32",
        gae_batch=3,
        gae_length=20,
        loss_batch=3,
        loss_length=20,
        warmup=0,
        repeats=1,
    )
    monkeypatch.setattr(bench, "preset", lambda device_type, smoke: tiny)
    monkeypatch.setattr(bench, "pin_mmap_threshold", lambda: False)  # keep this process's malloc
    assert bench.main(["--smoke", "--out", str(tmp_path), "--device", DEVICE.type]) == 0
    report = json.loads((tmp_path / "kernels.json").read_text())
    variants = {(r["op"], r["variant"]) for r in report["rows"] if r["error"] is None}
    for op in ("token logprobs", "dual GAE (fwd)", "PPO-Lagrangian loss"):
        assert (op, "reference") in variants and (op, "torch") in variants, op
    if HAS_TRITON:
        assert ("token logprobs", "triton") in variants
        assert ("dual GAE (fwd)", "triton") in variants
    for row in report["rows"]:
        if row["ours"]:
            assert row["time_ms"] > 0 and row["error"] is None, row
        if row["max_abs_diff"] is not None:
            assert row["max_abs_diff"] < 1e-3, row
    assert "| token logprobs | reference |" in (tmp_path / "kernels.md").read_text()


def test_bench_cli_unknown_name():
    from workbench.bench import main

    assert main(["nope"]) == 2
