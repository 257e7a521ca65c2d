"""Discrete-event simulator (SimPy) of Engram serving and training on one node.

One process per physical actor (docs/simulator.md): each device's engine scheduler and compute
stream, its host worker pool and copy engines, and the node's shared host DRAM, PCIe uplinks and
NVMe drives as fair-shared fluid pipes. Durations come from :mod:`planner.costmodel`; row counts
from :mod:`planner.ngram_model`. Entry point: :func:`simulate`.
"""

from planner.sim.metrics import LayerMetrics, SimMetrics
from planner.sim.run import run_once, simulate

__all__ = ["LayerMetrics", "SimMetrics", "run_once", "simulate"]
