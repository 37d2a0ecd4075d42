"""Batching concurrent requests through the demo's models.

Every model call of a request (a policy's sample, the guard's verdict, a reward or a cost
score) is one *job* handed to :class:`ModelBatcher`. One worker thread runs the jobs: it takes
the oldest waiting job and every other waiting job of the same kind (same model), up to
``max_batch``, and runs them as one padded batch. Under a crowd, 32 requests that all need
the base policy's answer are sampled together in one ``generate`` call instead of taking
turns; a lone request is run at once, without waiting for company. ``max_batch = 1`` is the
demo's former behaviour: model calls one at a time, first come first served.

Batching must not change an answer, so sampling does not use torch's global random state
(which a batch would share): :class:`SeededSampler` draws each row's Gumbel noise from that
row's own ``torch.Generator`` and ``generate`` then picks the arg-max -- the Gumbel-max trick,
an exact sample from ``softmax(logits / T)`` that depends only on the row's logits and its
seed. Each ``generate`` job of a request gets its own seed, derived from the request's seed
and the job's rank within the request (:func:`job_seed`), so the five-round guard's
regenerations are reproducible too. Batched and lone answers are then the same up to float
rounding of the padded forward pass (an arg-max tie at 1e-6 is what it would take).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..models.vlm import encode, sampling_kwargs


def job_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th sampling job of a request seeded ``seed`` (64-bit, from
    numpy's ``SeedSequence``: distinct requests and ranks give unrelated streams)."""
    state = np.random.SeedSequence([abs(int(seed)), int(seed < 0), int(index)]).generate_state(2)
    return int(state[0]) << 31 | int(state[1]) >> 1


class SeededSampler(LogitsProcessor):
    """Per-row sampling by the Gumbel-max trick: ``scores / T + Gumbel noise``, the noise of
    row ``i`` from ``generators[i]`` (one draw of the vocabulary's size per step). Used with
    greedy decoding, the arg-max of what it returns is a sample of ``softmax(scores / T)``."""

    def __init__(self, generators: Sequence[torch.Generator], temperature: float = 1.0):
        self.generators = list(generators)
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(
                f"SeededSampler has {len(self.generators)} generators for {scores.shape[0]} rows"
            )
        vocab = scores.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g) for g in self.generators])
        tiny = torch.finfo(torch.float32).tiny
        gumbel = -torch.log(-torch.log(uniform.clamp(min=tiny, max=1.0 - 1e-7)))
        return scores.float() / self.temperature + gumbel.to(scores.device)


@torch.no_grad()
def generate_seeded(
    model,
    processor,
    images: list,
    questions: list[str],
    seeds: list[int],
    max_new_tokens: int = 40,
    temperature: float = 1.0,
) -> list[str]:
    """One sampled answer per (image, question), row ``i`` seeded by ``seeds[i]``: the same
    answer whatever else is in the batch (see the module's docstring)."""
    if not len(images) == len(questions) == len(seeds):
        raise ValueError("images, questions and seeds must have the same length")
    batch = encode(processor, images, questions, padding_side="left")
    batch = {k: v.to(model.device) for k, v in batch.items()}
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    out = model.generate(
        **batch,
        **sampling_kwargs(processor, max_new_tokens, do_sample=False),
        logits_processor=LogitsProcessorList([SeededSampler(generators, temperature)]),
    )
    new = out[:, batch["input_ids"].shape[1] :]
    return [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]


@dataclass
class _Job:
    kind: str
    item: Any
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


#: ``run(kind, items) -> results``: one batched model call over the items of one kind.
Runner = Callable[[str, list[Any]], list[Any]]


class ModelBatcher:
    """A worker thread that runs model jobs in batches of one kind (see the module's doc).

    ``submit(kind, item)`` blocks until the job's result is ready (an exception raised by the
    batched call is raised in every caller of that batch). ``stats`` counts batches and jobs."""

    def __init__(self, run: Runner, max_batch: int = 32, name: str = "demo-batcher"):
        if max_batch < 1:
            raise ValueError(f"ModelBatcher.max_batch must be >= 1, got {max_batch}")
        self.run, self.max_batch = run, max_batch
        self._queue: list[_Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self.stats = {"batches": 0, "jobs": 0, "largest": 0, "busy_s": 0.0}
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, kind: str, item: Any) -> Any:
        return self.submit_many(kind, [item])[0]

    def submit_many(self, kind: str, items: Sequence[Any]) -> list[Any]:
        """Queue ``items`` as jobs of ``kind`` and wait for all their results."""
        return self.gather([(kind, items)])[0]

    def gather(self, groups: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """Queue several groups ``(kind, items)`` at once (so that none waits for another to be
        run first) and wait for all: one list of results per group."""
        jobs = [[_Job(kind, item) for item in items] for kind, items in groups]
        with self._cond:
            if self._closed:
                raise RuntimeError("the model batcher is closed")
            for group in jobs:
                self._queue.extend(group)
            self._cond.notify()
        for group in jobs:
            for job in group:
                job.done.wait()
        for group in jobs:
            for job in group:
                if job.error is not None:
                    raise job.error
        return [[job.result for job in group] for group in jobs]

    def _take(self) -> list[_Job]:
        """The oldest job and the waiting jobs of its kind (first come first served)."""
        kind = self._queue[0].kind
        batch = [j for j in self._queue if j.kind == kind][: self.max_batch]
        taken = {id(j) for j in batch}
        self._queue = [j for j in self._queue if id(j) not in taken]
        return batch

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                batch = self._take()
            start = time.perf_counter()
            try:
                results = self.run(batch[0].kind, [j.item for j in batch])
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"{batch[0].kind}: {len(results)} results for {len(batch)} jobs"
                    )
                for job, result in zip(batch, results, strict=True):
                    job.result = result
            except Exception as exc:  # noqa: BLE001 -- handed to every caller of the batch
                for job in batch:
                    job.error = exc
            self.stats["batches"] += 1
            self.stats["jobs"] += len(batch)
            self.stats["largest"] = max(self.stats["largest"], len(batch))
            self.stats["busy_s"] += time.perf_counter() - start
            for job in batch:
                job.done.set()

    def close(self) -> None:
        """Finish the waiting jobs, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=60)


__all__ = ["ModelBatcher", "SeededSampler", "generate_seeded", "job_seed"]
