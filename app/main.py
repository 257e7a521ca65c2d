"""Entry point of the dashboard: ``engram-planner app`` runs ``streamlit run app/main.py``.

Pages are files under ``app/pages/`` registered with ``st.navigation``; each page draws its own
inputs (sidebar) and outputs (main area) from library calls.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` from a checkout without an install
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="engram-planner", page_icon="🧮", layout="wide",
                   initial_sidebar_state="expanded")

PAGES = [
    st.Page("pages/whatif.py", title="What-if", icon=":material/tune:", default=True),
    st.Page("pages/sweeps.py", title="Sweeps", icon=":material/show_chart:"),
    st.Page("pages/planner.py", title="Planner", icon=":material/checklist:"),
    st.Page("pages/validation.py", title="Validation", icon=":material/fact_check:"),
    st.Page("pages/hardware.py", title="Hardware", icon=":material/memory:"),
]

page = st.navigation(PAGES)
st.sidebar.caption("engram-planner · Engram tables on GPU, host RAM or SSD: what they cost")
page.run()
