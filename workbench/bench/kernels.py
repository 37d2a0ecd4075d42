"""Kernel benchmark: time and peak memory of the three implementations of each op in
:mod:`workbench.kernels` — ``reference`` (the plain formula in torch), ``torch`` (the
optimised pure-torch version) and ``triton``; for the log-prob op also the bare LM-head matmul
with its backward (the physical floor) and Liger-Kernel's fused linear cross-entropy when
``liger-kernel`` is installed (CUDA only). Ratios and differences are taken against the
``reference`` row of the same op.

    python -m workbench bench kernels [--smoke] [--out DIR] [--threads N] [--device D]

Sizes: on a GPU the real ones (4096 tokens, hidden 3584, vocab 152064, bf16; GAE and loss at
64 × 1024); on CPU scaled down (1024 tokens, hidden 512, vocab 32768, fp32); ``--smoke``
shrinks the CPU sizes further so that everything runs in seconds.

Each step is what a PPO update does with the op: log-probs — forward and backward of
``Σ g·logp + Σ h·entropy`` with random g, h (the loss of a PPO step with an entropy term);
GAE — forward only (advantages are constants of the update); actor loss — forward and
backward.

Measurement:

- time: median wall time of ``repeats`` runs after ``warmup`` runs (CUDA synchronised);
- peak memory: the most memory the step holds above what existed before it (the inputs and,
  for the bare matmul, its preallocated upstream gradient). CUDA: ``max_memory_allocated``
  after ``reset_peak_memory_stats``. CPU: the process's resident set size — ``malloc_trim``,
  reset the kernel's high-water mark (``5`` into ``/proc/self/clear_refs``), run the step,
  then ``VmHWM`` minus the ``VmRSS`` before. torch's CPU allocator does not cache, and the
  benchmark pins glibc's mmap threshold at 128 KiB (``mallopt``; glibc otherwise raises it
  after the first large free and keeps later large blocks in its heap), so every block of
  128 KiB or more is mapped on allocation and unmapped on free: the resident set follows
  the live tensors (page-granular, plus anything else the process allocates meanwhile).
- On CPU the Triton rows run in Triton's interpreter (``TRITON_INTERPRET=1``, which this
  command sets when CUDA is absent): they show that the kernels run and agree with the
  reference; their time and memory say nothing about a GPU (the interpreter executes tiles in
  numpy and copies every tensor argument to host arrays).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar, cast

import torch

from . import save_report

DEFAULT_OUT = Path("runs/bench")

# Liger-Kernel's claim and ours are about these: the log-prob op within this factor of the bare
# matmul (fwd + bwd) at the real shape on a GPU, with at most this fraction of the reference's
# (full logits) memory.
TARGETS = {
    "logprob_time_vs_matmul_gpu": 1.3,
    "logprob_peak_vs_reference_gpu": 1 / 8,
    "gae_speedup_vs_loop_gpu": 20.0,
    "torch_peak_vs_reference_cpu": 1 / 4,
}


@dataclass
class KernelBenchConfig:
    """Sizes and repetitions of one benchmark run."""

    tokens: int
    """log-prob op: tokens N (rows of the hidden states)"""
    hidden: int
    """log-prob op: hidden size H"""
    vocab: int
    """log-prob op: vocabulary V (rows of the LM head)"""
    chunk_size: int
    """log-prob op: vocabulary columns per chunk"""
    dtype: str
    """log-prob op: dtype of hidden states and head ('float32' or 'bfloat16')"""
    gae_batch: int
    """GAE: sequences B"""
    gae_length: int
    """GAE: response positions T"""
    loss_batch: int
    """actor loss: sequences"""
    loss_length: int
    """actor loss: positions"""
    warmup: int = 1
    """untimed runs before the timed ones"""
    repeats: int = 3
    """timed runs (the median is reported)"""
    interpreter_repeats: int = 1
    """timed runs for Triton in the CPU interpreter (slow; no warm-up there)"""


def preset(device_type: str, smoke: bool) -> KernelBenchConfig:
    """Real sizes on CUDA; scaled-down ones on CPU; tiny ones with ``smoke``."""
    if device_type == "cuda" and not smoke:
        return KernelBenchConfig(
            tokens=4096,
            hidden=3584,
            vocab=152064,
            chunk_size=8192,
            dtype="bfloat16",
            gae_batch=64,
            gae_length=1024,
            loss_batch=64,
            loss_length=1024,
            warmup=3,
            repeats=10,
        )
    if smoke:
        return KernelBenchConfig(
            tokens=256,
            hidden=128,
            vocab=8192,
            chunk_size=1024,
            dtype="float32",
            gae_batch=16,
            gae_length=256,
            loss_batch=16,
            loss_length=256,
            warmup=1,
            repeats=2,
        )
    return KernelBenchConfig(
        tokens=1024,
        hidden=512,
        vocab=32768,
        chunk_size=4096,
        dtype="float32",
        gae_batch=64,
        gae_length=1024,
        loss_batch=64,
        loss_length=1024,
        warmup=1,
        repeats=3,
    )


@dataclass
class Row:
    """One measured variant of one op."""

    op: str
    variant: str
    shape: str
    dtype: str
    time_ms: float | None = None
    peak_mib: float | None = None
    max_abs_diff: float | None = None
    """largest |difference| of the op's output from the reference's"""
    note: str = ""
    error: str | None = None
    ours: bool = True
    """an implementation of this project (its failure fails the benchmark)"""


# --------------------------------------------------------------------------- measuring
_LIBC: ctypes.CDLL | None
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # pragma: no cover - not glibc
    _LIBC = None


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def pin_mmap_threshold(nbytes: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold (turning off its dynamic growth) so that freed large blocks
    leave the resident set at once; False where that is not possible."""
    if _LIBC is None or not hasattr(_LIBC, "mallopt"):
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, nbytes))


def _reset_cpu_peak() -> int | None:
    """Return the resident set (kB) after resetting its high-water mark; None if impossible."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_kb("VmRSS")


T = TypeVar("T")


class Meter:
    """Times a step and measures the peak memory it adds (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def run(
        self, step: Callable[[], T], reset: Callable[[], None], warmup: int, repeats: int
    ) -> tuple[float, float | None, T]:
        """(median ms, peak MiB or None, output of the last run)."""
        output: T | None = None
        for _ in range(warmup):
            reset()
            output = step()
        times: list[float] = []
        peaks: list[float | None] = []
        for _ in range(max(1, repeats)):
            reset()
            output = None
            gpu_base = 0  # bytes allocated before the step
            cpu_base: int | None = None  # resident kB before the step
            if self.cuda:
                gc.collect()
                self._sync()
                torch.cuda.reset_peak_memory_stats(self.device)
                gpu_base = torch.cuda.memory_allocated(self.device)
            else:
                cpu_base = _reset_cpu_peak()
            start = time.perf_counter()
            output = step()
            self._sync()
            times.append((time.perf_counter() - start) * 1e3)
            if self.cuda:
                peaks.append((torch.cuda.max_memory_allocated(self.device) - gpu_base) / 2**20)
            elif cpu_base is not None:
                high = _status_kb("VmHWM")
                peaks.append(None if high is None else max(0, high - cpu_base) / 1024)
        known = [p for p in peaks if p is not None]
        peak = max(known) if peaks and len(known) == len(peaks) else None
        # the loop above runs at least once: output is the last step's
        return statistics.median(times), peak, cast(T, output)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def _max_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    return _diff(a, b)


# --------------------------------------------------------------------------- cases
def _bench_logprob(
    cfg: KernelBenchConfig, device: torch.device, meter: Meter, with_triton: bool, interpreter: bool
) -> list[Row]:
    from workbench import kernels

    dtype = getattr(torch, cfg.dtype)
    n, h, v = cfg.tokens, cfg.hidden, cfg.vocab
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, h, device=device, dtype=dtype, generator=gen).requires_grad_()
    w = (torch.randn(v, h, device=device, dtype=dtype, generator=gen) * h**-0.5).requires_grad_()
    y = torch.randint(0, v, (n,), device=device, generator=gen)
    g_logp = torch.randn(n, device=device, generator=gen)
    g_ent = 0.01 * torch.randn(n, device=device, generator=gen)
    shape = f"N={n} H={h} V={v} chunk={cfg.chunk_size}"

    def reset() -> None:
        x.grad = None
        w.grad = None

    def ours(fn, with_entropy: bool = True, **kw):
        def step():
            logp, entropy = fn(x, w, y, **kw)
            loss = (logp * g_logp).sum()
            if with_entropy:
                loss = loss + (entropy * g_ent).sum()
            loss.backward()
            return logp.detach()

        return step

    grad_logits = None

    def bare_matmul():
        (x @ w.t()).backward(grad_logits)

    def liger_step():
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        LigerFusedLinearCrossEntropyLoss(reduction="sum")(w, x, y).backward()

    cases: list[tuple[str, Callable[[], object], str, bool, bool]] = [
        # (variant, step, note, ours, interpreted)
        (
            "reference",
            ours(kernels.token_logprobs_reference),
            "full [N, V] logits, log_softmax",
            True,
            False,
        ),
        (
            "torch",
            ours(kernels.token_logprobs_torch, chunk_size=cfg.chunk_size),
            "vocabulary chunks, online LSE, recomputing backward",
            True,
            False,
        ),
    ]
    if with_triton:
        note = "interpreter (CPU): not a speed figure" if interpreter else "fused tiles (tl.dot)"
        cases.append(
            (
                "triton",
                ours(kernels.token_logprobs_triton, chunk_size=cfg.chunk_size),
                note,
                True,
                interpreter,
            )
        )
        if device.type == "cuda":
            cases.append(
                (
                    "triton, logp only",
                    ours(
                        kernels.token_logprobs_triton, with_entropy=False, chunk_size=cfg.chunk_size
                    ),
                    "no entropy term (like Liger's loss)",
                    True,
                    False,
                )
            )
    cases.append(
        (
            "bare matmul fwd+bwd",
            bare_matmul,
            "X·Wᵀ and its backward; upstream grad preallocated",
            False,
            False,
        )
    )
    if device.type == "cuda":
        cases.append(
            ("liger fused linear CE", liger_step, "Liger-Kernel, CE loss (sum)", False, False)
        )

    rows: list[Row] = []
    reference_logp: torch.Tensor | None = None
    for variant, step, note, is_ours, interpreted in cases:
        row = Row("token logprobs", variant, shape, cfg.dtype, note=note, ours=is_ours)
        try:
            if variant.startswith("bare matmul"):
                grad_logits = torch.randn(n, v, device=device, dtype=dtype, generator=gen)
            warmup = 0 if interpreted else cfg.warmup
            repeats = cfg.interpreter_repeats if interpreted else cfg.repeats
            row.time_ms, row.peak_mib, out = meter.run(step, reset, warmup, repeats)
            if variant == "reference":
                reference_logp = out if isinstance(out, torch.Tensor) else None
            elif isinstance(out, torch.Tensor):
                row.max_abs_diff = _max_diff(out, reference_logp)
        except ImportError as exc:
            row.error = f"not installed ({exc.name or exc})"
        except Exception as exc:  # noqa: BLE001 - recorded in the table, checked by the caller
            row.error = f"{type(exc).__name__}: {exc}"
        finally:
            grad_logits = None
            reset()
        rows.append(row)
    return rows


def _bench_gae(
    cfg: KernelBenchConfig, device: torch.device, meter: Meter, with_triton: bool, interpreter: bool
) -> list[Row]:
    from workbench import kernels

    b, t = cfg.gae_batch, cfg.gae_length
    gen = torch.Generator(device=device).manual_seed(1)
    inputs = [torch.randn(b, t, device=device, generator=gen) for _ in range(4)]
    lengths = torch.randint(1, t + 1, (b,), device=device, generator=gen)
    mask = torch.arange(t, device=device)[None, :] < lengths[:, None]
    shape = f"B={b} T={t}"
    cases = [
        ("reference", kernels.dual_gae_reference, "Python loop over t, one per signal", False),
        ("torch", kernels.dual_gae_torch, "Python loop over t, both signals", False),
    ]
    if with_triton:
        cases.append(
            (
                "triton",
                kernels.dual_gae_triton,
                "interpreter (CPU): not a speed figure"
                if interpreter
                else "associative scan, one program per row",
                interpreter,
            )
        )
    rows, reference_out = [], None
    for variant, fn, note, interpreted in cases:
        row = Row("dual GAE (fwd)", variant, shape, "float32", note=note)

        def step(fn=fn):
            with torch.no_grad():
                return fn(*inputs, mask)

        try:
            warmup = 0 if interpreted else cfg.warmup
            repeats = cfg.interpreter_repeats if interpreted else cfg.repeats
            row.time_ms, row.peak_mib, out = meter.run(step, lambda: None, warmup, repeats)
            if reference_out is None:
                reference_out = out
            else:
                row.max_abs_diff = max(_diff(a, b) for a, b in zip(out, reference_out, strict=True))
        except Exception as exc:  # noqa: BLE001
            row.error = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def _bench_loss(
    cfg: KernelBenchConfig, device: torch.device, meter: Meter, with_triton: bool, interpreter: bool
) -> list[Row]:
    from workbench import kernels

    b, t = cfg.loss_batch, cfg.loss_length
    gen = torch.Generator(device=device).manual_seed(2)
    logp = (-torch.rand(b, t, device=device, generator=gen) * 3).requires_grad_()
    old_logp = logp.detach() + 0.2 * torch.randn(b, t, device=device, generator=gen)
    adv_r, adv_c = (torch.randn(b, t, device=device, generator=gen) for _ in range(2))
    mask = torch.rand(b, t, device=device, generator=gen) < 0.8
    lagrange_multiplier = torch.tensor(1.5, device=device)
    shape = f"B={b} T={t}"
    cases = [
        ("reference", kernels.ppo_lagrangian_loss_reference, "unfused torch ops", False),
        ("torch", kernels.ppo_lagrangian_loss_torch, "fp32, gradient to logp only", False),
    ]
    if with_triton:
        cases.append(
            (
                "triton",
                kernels.ppo_lagrangian_loss_triton,
                "interpreter (CPU): not a speed figure"
                if interpreter
                else "block partial sums + elementwise backward",
                interpreter,
            )
        )

    def reset() -> None:
        logp.grad = None

    rows, reference_loss = [], None
    for variant, fn, note, interpreted in cases:
        row = Row("PPO-Lagrangian loss", variant, shape, "float32", note=note)

        def step(fn=fn):
            loss = fn(logp, old_logp, adv_r, adv_c, mask, lagrange_multiplier)
            loss.backward()
            return loss.detach()

        try:
            warmup = 0 if interpreted else cfg.warmup
            repeats = cfg.interpreter_repeats if interpreted else cfg.repeats
            row.time_ms, row.peak_mib, out = meter.run(step, reset, warmup, repeats)
            if reference_loss is None:
                reference_loss = out
            else:
                row.max_abs_diff = _max_diff(out, reference_loss)
        except Exception as exc:  # noqa: BLE001
            row.error = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- report
def _find(rows: list[Row], op: str, variant: str) -> Row | None:
    for row in rows:
        if row.op == op and row.variant == variant and row.error is None:
            return row
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def evaluate_targets(rows: list[Row], device_type: str, real_sizes: bool) -> list[dict]:
    """The issue's targets, each with the measured value and whether it is met (None when it
    cannot be judged on this device or at these sizes)."""
    lp = "token logprobs"

    def get(op, variant, attr):
        row = _find(rows, op, variant)
        return None if row is None else getattr(row, attr)

    gpu = device_type == "cuda" and real_sizes
    checks = []

    def check(name, value, target, better, applies, why=""):
        # Where the target does not apply (CPU interpreter, smoke sizes) the ratio would
        # only mislead, so it is not reported as "measured".
        met = None
        if applies and value is not None:
            met = value <= target if better == "lower" else value >= target
        checks.append(
            {
                "target": name,
                "measured": value if applies else None,
                "goal": target,
                "met": met,
                "note": why if not applies else "",
            }
        )

    owed = "GPU at the real shape; owed"
    check(
        "log-prob triton fwd+bwd time / bare matmul (≤)",
        _ratio(get(lp, "triton", "time_ms"), get(lp, "bare matmul fwd+bwd", "time_ms")),
        TARGETS["logprob_time_vs_matmul_gpu"],
        "lower",
        gpu,
        owed,
    )
    check(
        "log-prob triton peak memory / reference (≤)",
        _ratio(get(lp, "triton", "peak_mib"), get(lp, "reference", "peak_mib")),
        TARGETS["logprob_peak_vs_reference_gpu"],
        "lower",
        gpu,
        owed,
    )
    check(
        "log-prob triton (logp only) time / Liger (≤)",
        _ratio(
            get(lp, "triton, logp only", "time_ms"), get(lp, "liger fused linear CE", "time_ms")
        ),
        1.0,
        "lower",
        gpu and _find(rows, lp, "liger fused linear CE") is not None,
        owed + " (needs liger-kernel)",
    )
    check(
        "dual GAE reference loop time / triton (≥)",
        _ratio(
            get("dual GAE (fwd)", "reference", "time_ms"),
            get("dual GAE (fwd)", "triton", "time_ms"),
        ),
        TARGETS["gae_speedup_vs_loop_gpu"],
        "higher",
        device_type == "cuda",
        "GPU; owed (CPU rows run the Triton interpreter)",
    )
    check(
        "log-prob torch (chunked) peak memory / reference on CPU (≤)",
        _ratio(get(lp, "torch", "peak_mib"), get(lp, "reference", "peak_mib")),
        TARGETS["torch_peak_vs_reference_cpu"],
        "lower",
        device_type == "cpu" and real_sizes,
        "CPU at the scaled (full, not smoke) sizes",
    )
    return checks


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if value != 0 and abs(value) < 10**-digits:
        return f"{value:.1e}"
    return f"{value:,.{digits}f}"


def render_markdown(report: dict) -> str:
    rows = [Row(**r) for r in report["rows"]]
    lines = [
        f"# Kernel benchmark ({report['mode']}, {report['date']})",
        "",
        f"- device: {report['device_name']} ({report['device']}), torch {report['torch']}, "
        f"triton {report['triton'] or 'not installed'}, threads {report['threads']}",
        f"- time: {report['method']['time']}",
        f"- peak memory: {report['method']['memory']}",
        "",
        "| op | variant | shape | dtype | time (ms) | peak mem (MiB) | × reference time | "
        "× reference mem | max abs diff vs reference | note |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        reference = _find(rows, row.op, "reference")
        t_ratio = _ratio(row.time_ms, reference.time_ms) if reference else None
        m_ratio = _ratio(row.peak_mib, reference.peak_mib) if reference else None
        note = f"ERROR {row.error}" if row.error else row.note
        lines.append(
            f"| {row.op} | {row.variant} | {row.shape} | {row.dtype} | "
            f"{_fmt(row.time_ms, 2)} | {_fmt(row.peak_mib, 1)} | {_fmt(t_ratio, 2)} | "
            f"{_fmt(m_ratio, 3)} | {_fmt(row.max_abs_diff, 6)} | {note} |"
        )
    lines += [f"\nNote: {note}" for note in report.get("notes", [])]
    lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
    for check in report["targets"]:
        met = {True: "yes", False: "NO", None: "not judged here"}[check["met"]]
        if check["note"]:
            met += f" ({check['note']})"
        lines.append(
            f"| {check['target']} | {_fmt(check['measured'], 3)} | "
            f"{_fmt(check['goal'], 3)} | {met} |"
        )
    return "\n".join(lines) + "\n"


def run_bench(cfg: KernelBenchConfig, device: torch.device, mode: str) -> dict:
    """Measure every op and return the report (rows, targets, method)."""
    from workbench import kernels

    interpreter = device.type != "cuda" and kernels.interpreting()
    with_triton = kernels.triton_available() and (device.type == "cuda" or interpreter)
    pinned = device.type == "cpu" and pin_mmap_threshold()
    meter = Meter(device)
    rows = (
        _bench_logprob(cfg, device, meter, with_triton, interpreter)
        + _bench_gae(cfg, device, meter, with_triton, interpreter)
        + _bench_loss(cfg, device, meter, with_triton, interpreter)
    )
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cpu_memory = (
        "resident set: malloc_trim, reset VmHWM via /proc/self/clear_refs, "
        "VmHWM − VmRSS before the step"
        + (
            "; glibc mmap threshold pinned at 128 KiB"
            if pinned
            else "; glibc mmap threshold NOT pinned (freed heap blocks may inflate peaks)"
        )
    )
    report = {
        "mode": mode,
        "device": device.type,
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
        ),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "torch": torch.__version__,
        "triton": triton_version,
        "threads": torch.get_num_threads(),
        "triton_interpreter": interpreter,
        "config": asdict(cfg),
        "method": {
            "time": (
                f"median of {cfg.repeats} runs after {cfg.warmup} warm-up"
                + ("; CUDA synchronised" if device.type == "cuda" else "")
                + (
                    f"; Triton in the interpreter: {cfg.interpreter_repeats} run, no warm-up"
                    if interpreter
                    else ""
                )
            ),
            "memory": (
                "torch.cuda.max_memory_allocated above the allocation before the step"
                if device.type == "cuda"
                else cpu_memory
            ),
        },
        "rows": [asdict(r) for r in rows],
    }
    report["targets"] = evaluate_targets(rows, device.type, real_sizes=(mode == "full"))
    report["notes"] = []
    if not with_triton:
        report["notes"].append(
            "no Triton rows: "
            + (
                "triton is not installed"
                if not kernels.triton_available()
                else "on CPU Triton needs TRITON_INTERPRET=1 set before triton is first imported"
            )
        )
    return report


@dataclass
class _Args:
    smoke: bool = False
    out: Path = DEFAULT_OUT
    threads: int | None = None
    device: str = "auto"


def _parse(argv: list[str]) -> _Args:
    p = argparse.ArgumentParser(
        prog="python -m workbench bench kernels", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds on CPU")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"directory for kernels.json and kernels.md (default {DEFAULT_OUT})",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when available",
    )
    return _Args(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    """CLI entry: measure, print the table, save ``kernels.json`` and ``kernels.md``."""
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if not use_cuda and "triton" not in sys.modules:
        # Triton decides at import whether its kernels are interpreted; on CPU they must be.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "smoke" if args.smoke else "full"
    report = run_bench(preset(device.type, args.smoke), device, mode)
    save_report(args.out, "kernels", report, render_markdown(report))
    failed = [r for r in report["rows"] if r["ours"] and r["error"]]
    for r in failed:
        print(f"error: {r['op']} / {r['variant']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0
