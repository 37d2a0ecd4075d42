"""Load test of the demo: start time, then concurrent clients on loopback, unbatched and batched.

    python -m workbench bench demo [--smoke] [--clients 32] [--requests 192]
        [--run-dir DIR] [--out DIR] [--no-unbatched] [--kinds K,...] [--in-process]

1. Starts ``python -m workbench demo`` as a child process on ``127.0.0.1`` and a free port and
   measures its *start time*: from spawning the process (imports included) to the first
   successful HTTP answer.
2. ``--clients`` threads, each with its own ``gradio_client.Client``, share a fixed budget of
   ``--requests`` calls (bounded: the test always ends) over gallery prompts, in a fixed mix:
   ``/compare`` (base vs aligned), ``/compare`` with the reward-only column, ``/compare`` with
   the five-round guard, and ``/moderate``.
3. Does it twice, each time with a fresh demo: first **unbatched** (``--max-batch 1
   --concurrency 2``: model calls one at a time, the demo's behaviour before request
   batching; report key ``load_unbatched``), then **batched** (the demo's defaults:
   concurrent requests share model calls, :mod:`workbench.demo.batching`; key ``load``).
   ``--no-unbatched`` skips the first.
4. Reports errors (any call that raised, with examples) and latency percentiles (p50, p90,
   p99, max; overall and per kind), throughput, the CPU seconds per request of the server
   and of the clients (they share the machine), and writes ``<out>/demo.json`` and
   ``<out>/demo.md``. Each child process is stopped after its load. ``--kinds`` restricts
   the mix (e.g. ``--kinds compare``).
5. ``--in-process`` starts no server: after one warm-up request, one client and then
   ``--clients`` clients (threads) call the demo's functions on models loaded in this
   process -- no HTTP, no Gradio, no client CPU. That is the floor under the served
   latency: what batching the models alone achieves on this machine (report keys
   ``load_lone``, ``load``, ``compare_p50_ratio``).

Only loopback is ever contacted: the server is the child this command starts.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..demo.config import DemoConfig
from ..demo.models import display_path, load_gallery, resolve_model_dir
from . import save_report

HOST = "127.0.0.1"
#: Request kinds, in the order each client cycles through them.
KINDS = ("compare", "compare+reward_only", "compare+guard", "moderate")
#: Demo arguments of the unbatched leg: the demo's behaviour before request batching.
UNBATCHED_ARGS = ("--max-batch", "1", "--concurrency", "2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout_s: float) -> float:
    """Seconds until ``url`` answers HTTP 200; raises when the process dies or time runs out."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"the demo exited with status {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the demo did not answer at {url} within {timeout_s:.0f} s")


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    arr = np.asarray(values)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
    }


def _call(client, kind: str, example: dict[str, Any], seed: int):
    from gradio_client import handle_file

    image = handle_file(example["image_path"])
    if kind == "moderate":
        return client.predict(image, example["question"], "", api_name="/moderate")
    return client.predict(
        image,
        example["question"],
        kind == "compare+reward_only",
        kind == "compare+guard",
        seed,
        api_name="/compare",
    )


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid``, from ``/proc`` (Linux);
    ``None`` where there is no ``/proc``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(
    url: str,
    gallery: list[dict[str, Any]],
    clients: int,
    requests: int,
    server_pid: int | None = None,
    kinds: tuple[str, ...] = KINDS,
) -> dict[str, Any]:
    """``clients`` threads, each with its own ``gradio_client.Client``, share ``requests``
    calls against the demo at ``url``. With ``server_pid``, the report also has the CPU
    seconds the server and this process (the clients) spent per completed request: on a
    machine with few cores both compete."""
    from gradio_client import Client

    return drive(
        lambda worker: Client(url, verbose=False),
        _call,
        gallery,
        clients,
        requests,
        kinds=kinds,
        server_pid=server_pid,
    )


def in_process_load(
    models, cfg: DemoConfig, clients: int, requests: int, kinds: tuple[str, ...] = KINDS
) -> dict[str, Any]:
    """The same load with no HTTP: ``clients`` threads call the demo's functions
    (:func:`workbench.demo.logic.compare`, :func:`~workbench.demo.logic.moderate`) on
    ``models`` in this process. What is left is the models' own cost, batched as in the
    server: the floor under the served latency on this machine."""
    from ..demo.logic import compare, gallery_index, moderate

    index = gallery_index(models)

    def call(_, kind: str, example: dict[str, Any], seed: int):
        if kind == "moderate":
            return moderate(models, example["image_path"], example["question"], "", cfg)
        return compare(
            models,
            example["image_path"],
            example["question"],
            cfg,
            reward_only=kind == "compare+reward_only",
            guard_on=kind == "compare+guard",
            seed=seed,
            gallery=index,
        )

    return drive(lambda worker: None, call, models.gallery, clients, requests, kinds=kinds)


def drive(
    connect: Callable[[int], Any],
    call: Callable[[Any, str, dict[str, Any], int], Any],
    gallery: list[dict[str, Any]],
    clients: int,
    requests: int,
    kinds: tuple[str, ...] = KINDS,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """A closed loop: ``clients`` threads (``connect(worker)`` makes each one's handle) share
    ``requests`` calls ``call(handle, kind, example, seed)``, request ``i`` of kind
    ``kinds[i % len(kinds)]`` on gallery example ``i``; each thread sends its next request as
    soon as the last one is answered. Latency percentiles overall and per kind, errors,
    throughput, CPU per request."""
    if not gallery:
        raise ValueError(
            "the load test needs gallery examples (the served run has no test prompts)"
        )
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"request kinds must be among {', '.join(KINDS)}; got {list(kinds)}")
    lock = threading.Lock()
    counter = iter(range(requests))
    rows: list[dict[str, Any]] = []
    connect_errors: list[str] = []
    barrier = threading.Barrier(clients)

    def client_loop(worker: int) -> None:
        try:
            handle = connect(worker)
        except Exception as exc:  # noqa: BLE001 -- counted and reported
            with lock:
                connect_errors.append(f"{type(exc).__name__}: {exc}")
            barrier.abort()
            return
        try:
            barrier.wait()  # every client connected: the requests start together
        except threading.BrokenBarrierError:
            pass
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            kind = kinds[i % len(kinds)]
            example = gallery[i % len(gallery)]
            start = time.perf_counter()
            error = None
            try:
                call(handle, kind, example, i)
            except Exception as exc:  # noqa: BLE001 -- counted and reported
                error = f"{type(exc).__name__}: {exc}"[:300]
            row = {
                "kind": kind,
                "latency_s": time.perf_counter() - start,
                "error": error,
                "worker": worker,
            }
            with lock:
                rows.append(row)

    start = time.perf_counter()
    cpu_start = time.process_time(), process_cpu_s(server_pid) if server_pid else None
    threads = [threading.Thread(target=client_loop, args=(w,), daemon=True) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - cpu_start[0]
    server_now = process_cpu_s(server_pid) if server_pid else None
    server_cpu = (
        server_now - cpu_start[1] if server_now is not None and cpu_start[1] is not None else None
    )
    if server_pid is None:  # in process: the models' CPU is this process's
        server_cpu, client_cpu = client_cpu, 0.0
    ok = [r for r in rows if r["error"] is None]
    errors = [r for r in rows if r["error"] is not None]
    return {
        "clients": clients,
        "requests": requests,
        "kinds": list(kinds),
        "completed": len(rows),
        "ok": len(ok),
        "errors": len(errors) + len(connect_errors),
        "connect_errors": connect_errors[:5],
        "error_examples": sorted({r["error"] for r in errors})[:5],
        "wall_s": wall,
        "throughput_rps": len(ok) / wall if wall > 0 else None,
        "cpu_s_per_request": {
            "server": server_cpu / len(rows) if server_cpu is not None and rows else None,
            "clients": client_cpu / len(rows) if rows else None,
        },
        "latency_s": percentiles([r["latency_s"] for r in ok]),
        "by_kind": {
            k: {
                "n": sum(r["kind"] == k for r in ok),
                **percentiles([r["latency_s"] for r in ok if r["kind"] == k]),
            }
            for k in KINDS
        },
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def _cpu_line(load: dict[str, Any]) -> list[str]:
    cpu = load.get("cpu_s_per_request") or {}
    if cpu.get("server") is None:
        return []
    return [
        f"- CPU per request: server {cpu['server'] * 1000:.0f} ms, load-test clients "
        f"{cpu['clients'] * 1000:.0f} ms (both on this machine's {os.cpu_count()} cores)"
    ]


def _load_lines(title: str, load: dict[str, Any], start_time_s: float | None) -> list[str]:
    start = (
        []
        if start_time_s is None
        else [f"- start time (spawn to first HTTP 200, imports included): **{start_time_s:.1f} s**"]
    )
    lines = [
        f"## {title}",
        "",
        *start,
        f"- {load['clients']} concurrent clients, {load['requests']} requests: {load['ok']} ok, "
        f"**{load['errors']} errors**, {load['throughput_rps']:.2f} requests/s "
        f"over {load['wall_s']:.1f} s",
        *_cpu_line(load),
        "",
        "| requests | n | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    rows = [("all", {"n": load["ok"], **load["latency_s"]})] + list(load["by_kind"].items())
    for name, s in rows:
        lines.append(
            f"| {name} | {s['n']} | {_ms(s['p50'])} | {_ms(s['p90'])} | {_ms(s['p99'])} "
            f"| {_ms(s['max'])} |"
        )
    if load["error_examples"] or load["connect_errors"]:
        lines += ["", "Errors:"] + [
            f"- {e}" for e in load["connect_errors"] + load["error_examples"]
        ]
    return lines + [""]


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Demo load test",
        "",
        f"{report['machine']}; demo `{report['demo_args']}`, serving {report['served']}.",
        "",
    ]
    unbatched = report.get("load_unbatched")
    if unbatched is not None:
        lines += _load_lines(
            f"Before: unbatched (`{' '.join(UNBATCHED_ARGS)}`)",
            unbatched,
            report["start_time_unbatched_s"],
        )
    if report.get("in_process"):
        lines += _load_lines("In process, one client (no HTTP)", report["load_lone"], None)
        lines += _load_lines(
            f"In process, {report['load']['clients']} clients (no HTTP; batched, up to "
            f"{report['max_batch']} requests per model call)",
            report["load"],
            None,
        )
        ratio = report.get("compare_p50_ratio")
        if ratio is not None:
            lines += [
                f"`compare` p50 under {report['load']['clients']} clients: **{ratio:.1f}x** "
                "one client's, with no HTTP and no client on the machine's cores.",
                "",
            ]
        return "\n".join(lines)
    lines += _load_lines(
        f"After: batched (up to {report['max_batch']} requests per model call)",
        report["load"],
        report["start_time_s"],
    )
    p50 = report.get("compare_p50_speedup")
    if p50 is not None:
        lines += [f"`/compare` p50: {p50:.1f}x faster batched than unbatched.", ""]
    lines += [
        "Latency includes queueing. Unbatched, each endpoint runs at most 2 requests at once "
        "and model calls take turns, so with many clients most of a request's time is spent "
        "waiting. Batched, concurrent requests reach the models together and each model call "
        "serves up to `max_batch` of them in one padded batch.",
        "",
    ]
    return "\n".join(lines)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m workbench bench demo", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--smoke", action="store_true", help="the demo's smoke preset and 48 requests")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument(
        "--requests", type=int, default=None, help="total calls (default 192; 48 with --smoke)"
    )
    p.add_argument(
        "--run-dir", default="", help="run the demo serves (default: latest run, else assets)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument(
        "--start-timeout", type=float, default=300.0, help="seconds to wait for the demo to answer"
    )
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated request kinds the clients cycle through (default {','.join(KINDS)})",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="no server: one client then --clients clients call the demo's functions in this "
        "process (the models' own cost, the floor under the served latency)",
    )
    p.add_argument(
        "--no-unbatched",
        action="store_true",
        help="skip the unbatched leg (the demo before request batching)",
    )
    args = p.parse_args(argv)
    if args.clients < 1:
        p.error("--clients must be >= 1")
    args.requests = args.requests if args.requests is not None else (48 if args.smoke else 192)
    if args.requests < 1:
        p.error("--requests must be >= 1")
    args.kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = sorted(set(args.kinds) - set(KINDS))
    if unknown or not args.kinds:
        p.error(
            f"--kinds: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(KINDS)}"
        )
    return args


def serve_and_load(
    demo_args: list[str], gallery: list[dict[str, Any]], args: argparse.Namespace
) -> tuple[float, dict[str, Any]]:
    """Start ``python -m workbench demo demo_args`` on a free port, wait for it, load it with
    ``args.clients`` clients and stop it: ``(start time, load report)``."""
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "workbench", "demo", "--port", str(port), *demo_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            url = f"http://{HOST}:{port}/"
            start_time = wait_until_up(url, process, args.start_timeout)
            load = run_load(
                url, gallery, args.clients, args.requests, server_pid=process.pid, kinds=args.kinds
            )
        except (RuntimeError, TimeoutError) as exc:
            log.seek(0)
            raise RuntimeError(f"{exc}\n--- demo output ---\n{log.read()[-3000:]}") from None
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    return start_time, load


def main(argv: list[str] | None = None) -> int:
    """CLI entry: load the demo unbatched then batched, print and save the report; 1 when any
    call failed."""
    args = _parse(list(sys.argv[1:] if argv is None else argv))

    cfg = (DemoConfig.smoke if args.smoke else DemoConfig)(run_dir=args.run_dir)
    model_dir, source = resolve_model_dir(cfg)
    gallery = load_gallery(model_dir, cfg.gallery_size)
    shown = ["--host", HOST, "--quiet"] + (["--smoke"] if args.smoke else [])
    demo_args = [*shown, "--run-dir", str(model_dir)]
    report: dict[str, Any] = {
        "demo_args": " ".join([*shown, "--run-dir", display_path(model_dir)]),
        "served": f"{source} {display_path(model_dir)}",
        "machine": f"{os.cpu_count()} CPU cores",
        "smoke": args.smoke,
        "concurrency_limit": cfg.concurrency_limit,
        "max_batch": cfg.max_batch,
    }
    if args.in_process:
        return _main_in_process(args, cfg.replace(run_dir=str(model_dir)), report)
    try:
        if not args.no_unbatched:
            start, unbatched = serve_and_load([*demo_args, *UNBATCHED_ARGS], gallery, args)
            report |= {"start_time_unbatched_s": start, "load_unbatched": unbatched}
        start_time, load = serve_and_load(demo_args, gallery, args)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report |= {"start_time_s": start_time, "load": load}
    before = (report.get("load_unbatched") or {}).get("by_kind", {}).get("compare", {}).get("p50")
    after = load["by_kind"]["compare"]["p50"]
    report["compare_p50_speedup"] = before / after if before and after else None
    save_report(args.out, "demo", report, render_markdown(report))
    errors = load["errors"] + (report.get("load_unbatched") or {}).get("errors", 0)
    return 1 if errors else 0


def _main_in_process(args: argparse.Namespace, cfg: DemoConfig, report: dict[str, Any]) -> int:
    """``--in-process``: one client then ``args.clients`` clients calling the demo's functions
    on models loaded here, after one warm-up request."""
    from ..demo.models import load_models

    models = load_models(cfg)
    try:
        in_process_load(models, cfg, 1, 1, kinds=args.kinds)  # warm-up (first calls are slow)
        lone = in_process_load(models, cfg, 1, 4 * len(args.kinds), kinds=args.kinds)
        load = in_process_load(models, cfg, args.clients, args.requests, kinds=args.kinds)
    finally:
        models.close()
    report |= {"in_process": True, "demo_args": "in process", "load_lone": lone, "load": load}
    one = lone["by_kind"]["compare"]["p50"]
    many = load["by_kind"]["compare"]["p50"]
    report["compare_p50_ratio"] = many / one if one and many else None
    save_report(args.out, "demo", report, render_markdown(report))
    return 1 if lone["errors"] + load["errors"] else 0


__all__ = [
    "main",
    "drive",
    "in_process_load",
    "process_cpu_s",
    "run_load",
    "serve_and_load",
    "percentiles",
    "wait_until_up",
    "free_port",
    "render_markdown",
    "UNBATCHED_ARGS",
]
