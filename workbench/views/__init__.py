"""Notebook companions, one module per notebook, named after it: :mod:`.data` (01_data),
:mod:`.reward_cost` (02_reward_cost), :mod:`.guard` (03_guard), :mod:`.ppo_lagrangian`
(04_ppo_lagrangian), :mod:`.analysis` (05_analysis)
and :mod:`.methods` (06_methods).

Tables, figures and ``ipywidgets`` browsers over a finished run. Views sit above the stages:
no stage, trainer or evaluation module imports them; the figures the report needs live in
:mod:`workbench.eval` and the views import them from there.
"""
