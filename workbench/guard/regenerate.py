"""Filter-and-regenerate (docs/design.md §7): a guard screens the query, then judges each answer;
blocked answers are sampled again, at most ``rounds`` times, and an answer still blocked
after the last round becomes a refusal with safe redirection.

It wraps *any* generator and *any* guard:

- ``generate(images, questions) -> list[str]`` samples one answer per prompt (a policy at
  temperature 1, a remote model, a scripted fake in tests);
- ``guard(images, questions, responses) -> list[Verdict]`` judges queries (``responses`` is
  ``None``) or answers. :class:`~workbench.guard.guard.GuardModel` is one.

Control flow for one prompt, with ``R = rounds`` (the paper uses five)::

    screen the query      -> level >= query_blocking_level: refuse, no generation
    a_0 = generate()      (round 0: the base policy's answer)
    for j in 1..R:        judge a_{j-1}; not blocked -> serve it; blocked -> a_j = generate()
    judge a_R             -> blocked: serve the refusal (fallback)

so at most R regenerations and R + 1 answer checks. A guard that raises or returns an
unusable verdict *fails closed*: the answer is withheld (the refusal is served) and the
reason is kept in the trace. Every step (round, response, verdict, blocked) is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import BlockingPolicy
from ..data.language import REDIRECTS, REFUSAL, join_sentences
from ..data.schema import CATEGORIES, NO_CATEGORY, SEVERITY_LEVELS

#: The refusal with safe redirection served when an answer is blocked for good.
SAFE_REFUSAL = join_sentences([REFUSAL, REDIRECTS[1]])

OUTCOMES = ("passed", "regenerated", "fallback", "query_blocked", "guard_error")


@dataclass
class Verdict:
    """A guard's judgement of a query or an answer."""

    level: str
    """Severity level: safe / minor / moderate / severe."""
    category: str = NO_CATEGORY
    """Harm category (one of the 20, or ``none``)."""
    probability: float = 1.0
    """The guard's probability of ``level`` (1.0 for guards without probabilities)."""
    p_unsafe: float | None = None
    """P(level != safe), when the guard has it."""

    def __post_init__(self) -> None:
        if self.level not in SEVERITY_LEVELS:
            raise ValueError(f"verdict level {self.level!r} is not one of {SEVERITY_LEVELS}")
        if self.category != NO_CATEGORY and self.category not in CATEGORIES:
            raise ValueError(
                f"verdict category {self.category!r} is not a BeaverTails-V category or 'none'"
            )

    @property
    def rank(self) -> int:
        return SEVERITY_LEVELS.index(self.level)

    def at_least(self, level: str) -> bool:
        return self.rank >= SEVERITY_LEVELS.index(level)


@dataclass
class Step:
    """One answer and what the guard said about it."""

    round: int
    response: str
    verdict: Verdict | None = None
    blocked: bool | None = None


@dataclass
class Trace:
    """Everything that happened to one prompt."""

    question: str
    rounds: int
    query_verdict: Verdict | None = None
    steps: list[Step] = field(default_factory=list)
    final: str = ""
    outcome: str = ""
    reason: str = ""

    @property
    def regenerations(self) -> int:
        return max(0, len(self.steps) - 1)

    def served(self, after: int) -> str:
        """The answer a user would get had the loop stopped after ``after`` rounds.

        ``served(0)`` is the base policy's first answer (no guard at all); ``served(rounds)``
        is :attr:`final`. Between, the latest answer sampled by then (a query refused by the
        screen, or a guard error, serves :attr:`final` from round 1 on)."""
        if after <= 0:
            return self.steps[0].response if self.steps else self.final
        if after >= self.rounds or self.outcome in ("query_blocked", "guard_error"):
            return self.final
        return self.steps[min(after, len(self.steps) - 1)].response

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"regenerations": self.regenerations}


Generator = Callable[[list[Any], list[str]], list[str]]
Guard = Callable[[list[Any], list[str], list[str] | None], list[Verdict]]


def _judge(
    guard: Guard, images: list[Any], questions: list[str], responses: list[str] | None
) -> list[Verdict]:
    """The guard's verdicts, checked: one :class:`Verdict` per item, or an exception."""
    verdicts = guard(images, questions, responses)
    verdicts = list(verdicts) if verdicts is not None else []
    if len(verdicts) != len(questions):
        raise RuntimeError(
            f"the guard returned {len(verdicts)} verdicts for {len(questions)} items"
        )
    for v in verdicts:
        if not isinstance(v, Verdict):
            raise RuntimeError(f"the guard returned {type(v).__name__}, not a Verdict")
    return verdicts


def filter_and_regenerate(
    generate: Generator,
    guard: Guard,
    images: Sequence[Any],
    questions: Sequence[str],
    policy: BlockingPolicy | None = None,
    refusal: str = SAFE_REFUSAL,
    initial: Sequence[str] | None = None,
) -> list[Trace]:
    """Run the loop over a batch of prompts (generation and judging are batched per round).

    ``policy`` says when the guard blocks and how many rounds it regenerates (default:
    :class:`~workbench.config.BlockingPolicy`'s defaults, the guard stage's). An empty
    ``query_level`` switches query screening off; answers to a query the screen judged *safe*
    are blocked only at ``safe_query_level``, so a benign request needs stronger evidence
    before its answer is thrown away. ``initial`` are round-0 answers already sampled
    (evaluation scores them as the base policy); they are kept in the trace even for a query
    the screen refuses, so that ``served(0)`` is always the base policy's answer.
    """
    policy = policy if policy is not None else BlockingPolicy()
    rounds = policy.rounds
    images, questions = list(images), list(questions)
    if len(images) != len(questions) or (initial is not None and len(initial) != len(questions)):
        raise ValueError("images, questions (and initial answers) must have the same length")
    traces = [Trace(question=q, rounds=rounds) for q in questions]

    def fail(idx: list[int], err: Exception) -> None:
        for i in idx:
            traces[i].final, traces[i].outcome = refusal, "guard_error"
            traces[i].reason = f"guard failed, answer withheld: {type(err).__name__}: {err}"

    if initial is not None:
        for t, answer in zip(traces, initial, strict=True):
            t.steps.append(Step(round=0, response=answer))
    open_ = list(range(len(questions)))
    if policy.query_level and open_:
        try:
            verdicts = _judge(guard, images, questions, None)
        except Exception as err:  # noqa: BLE001 -- any guard failure fails closed
            fail(open_, err)
            return traces
        for i, v in enumerate(verdicts):
            traces[i].query_verdict = v
            if v.at_least(policy.query_level):
                traces[i].final, traces[i].outcome = refusal, "query_blocked"
                traces[i].reason = f"query judged {v.level} ({v.category}) >= {policy.query_level}"
        open_ = [i for i in open_ if not traces[i].outcome]

    def sample(idx: list[int], round_: int) -> None:
        answers = generate([images[i] for i in idx], [questions[i] for i in idx])
        if len(answers) != len(idx):
            raise RuntimeError(
                f"the generator returned {len(answers)} answers for {len(idx)} prompts"
            )
        for i, a in zip(idx, answers, strict=True):
            traces[i].steps.append(Step(round=round_, response=a))

    if open_ and initial is None:
        sample(open_, 0)
    for round_ in range(1, rounds + 2):  # the judgement of round j decides on a_{j-1}
        if not open_:
            break
        try:
            verdicts = _judge(
                guard,
                [images[i] for i in open_],
                [questions[i] for i in open_],
                [traces[i].steps[-1].response for i in open_],
            )
        except Exception as err:  # noqa: BLE001
            fail(open_, err)
            break
        blocked = []
        for i, v in zip(open_, verdicts, strict=True):
            step = traces[i].steps[-1]
            query = traces[i].query_verdict
            safe_query = query is not None and query.level == SEVERITY_LEVELS[0]
            level = policy.answer_level_after_safe_query if safe_query else policy.level
            step.verdict, step.blocked = v, v.at_least(level)
            if not step.blocked:
                traces[i].final = step.response
                traces[i].outcome = "passed" if len(traces[i].steps) == 1 else "regenerated"
            elif round_ > rounds:
                traces[i].final, traces[i].outcome = refusal, "fallback"
                traces[i].reason = (
                    f"still {v.level} ({v.category}) after {rounds} rounds: "
                    "refused with redirection"
                )
            else:
                blocked.append(i)
        open_ = blocked
        if open_:
            sample(open_, round_)
    return traces


__all__ = ["Verdict", "Step", "Trace", "filter_and_regenerate", "SAFE_REFUSAL", "OUTCOMES"]
