"""Validation: real reference-model runs with offloaded lookups vs the simulator's predictions
for the same scenarios (docs/validation.md).

* :mod:`grid` the runs and the scenario describing each (torch-free);
* :mod:`measure` real runs (torch, imported lazily);
* :mod:`compare` predicted metrics, errors, prediction bands, coverage, regimes (torch-free);
* :mod:`report` ``validation.json``, the text table, the plot and the side-by-side traces;
* :mod:`run` :func:`validate`, the loop over them.
"""
