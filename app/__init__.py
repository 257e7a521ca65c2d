"""The Streamlit dashboard: widgets in, library calls, plotly figures out (no modelling here).

Launch with ``engram-planner app``; pages live in ``app/pages/``, shared input widgets in
``app/widgets.py``, figure builders in ``app/figures.py`` and cached library calls in
``app/runs.py``.
"""
