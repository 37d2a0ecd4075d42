"""What every interactive view shares: redrawing an ``ipywidgets.Output``.

Views never use ``with output:`` (the widget capturing the kernel's output by message id).
Under nbclient -- ``nbmake``, the notebook tests -- a cell that drew into a capturing
``Output`` at execution time sometimes left the client waiting for ever on a cell the kernel
had finished (seen in notebook 05's explorer: the kernel idle, the client idle, no timeout).
:func:`show_in` sets the widget's outputs through its state instead, which a live notebook
renders the same way.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets


def show_in(output: widgets.Output, *items: Any) -> None:
    """Replace what ``output`` shows by ``items``, in order: a string is printed text, anything
    else is displayed (plotly figures, DataFrames, HTML)."""
    output.outputs = ()
    for item in items:
        if isinstance(item, str):
            output.append_stdout(item if item.endswith("\n") else item + "\n")
        elif hasattr(item, "_repr_mimebundle_"):  # plotly figures display themselves otherwise
            bundle = item._repr_mimebundle_()
            data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
            output.outputs += ({"output_type": "display_data", "data": data, "metadata": metadata},)
        else:
            output.append_display_data(item)


__all__ = ["show_in"]
