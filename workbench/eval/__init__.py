"""Evaluation: metrics, the trade-off, the report figures and the analysis of every trained
system (the judges are :mod:`workbench.models.judge`)."""
