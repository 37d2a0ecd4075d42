"""Triton, when installed, and what it can run here: the optional import shared by the op
files, :func:`triton_available` and :func:`interpreting`.

A leaf module (it imports nothing from :mod:`workbench`), so that the op files and the
package ``__init__`` both import from it without a cycle.
"""

from __future__ import annotations

try:  # Triton is optional: every op also has pure-torch implementations.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None
    tl = None

if triton is not None:

    @triton.jit
    def _probe():
        """A kernel built at the same import as the op files' kernels (see
        :func:`interpreting`)."""
        pass


def triton_available() -> bool:
    """Whether Triton imported, so that the Triton kernels exist."""
    return triton is not None


def interpreting() -> bool:
    """Whether the kernels run in Triton's CPU interpreter: ``TRITON_INTERPRET=1`` was set
    before Triton was first imported, so that both Triton's own ``tl.*`` helpers and the
    kernels of this package were built for it (Triton decides when it decorates a function;
    the op files decorate theirs in the same import as ``_probe`` here)."""
    if triton is None:
        return False
    functions = (_probe, tl.zeros, tl.sum)
    return all(type(f).__name__ == "InterpretedFunction" for f in functions)


def require_triton(what: str) -> None:
    """Raise the ``RuntimeError`` that says how to get Triton when it is missing."""
    if triton is None:
        raise RuntimeError(
            f"{what} needs Triton: pip install triton (or the project's 'kernels' extra)"
        )
