"""Run every study of a plan: in this process, a local process pool, or Ray tasks; resumable.

Each study is one task (:func:`run_study_dict`: a JSON-able dict in, a JSON-able dict out), so
the same bytes travel to a pool worker or a Ray worker and results are identical everywhere
(every model is deterministic; results are returned in study order).

Resume: with ``out_dir``, a study's result is stored as ``out_dir/cache/<key>.json`` where
``key`` hashes the study's resolved inputs (scenario, search, settings) and the code version;
a later run loads it instead of recomputing (``meta.from_cache`` says which).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Callable

from planner.plan.results import PlanResult
from planner.plan.spec import PlanSpec, Study, expand_plan

Progress = Callable[[int, int, PlanResult], None]


@lru_cache(maxsize=1)
def code_version() -> str:
    """``git describe`` of the checkout when there is one, else the package version. Computed
    once per process, so a commit landing mid-run does not split one run's cache keys."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "describe", "--always", "--tags"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return f"git:{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"engram-planner {version('engram-planner')}"
    except PackageNotFoundError:
        return "engram-planner (unknown version)"


@lru_cache(maxsize=1)
def source_digest() -> str:
    """Hash of the planner package's sources: uncommitted edits invalidate the cache too."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def study_key(study: Study) -> str:
    text = study.model_dump_json(exclude={"index"}) + "\n" + code_version() + "\n" + source_digest()
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def run_study_dict(study_json: str) -> dict:
    """One task: a study as JSON in, its result as a plain dict out (what workers run)."""
    from planner.plan.search import plan_study

    return plan_study(Study.model_validate_json(study_json)).as_dict()


def run_plan(plan: PlanSpec, *, workers: int = 1, cluster: str | None = None, out_dir: str | Path | None = None,
             progress: Progress | None = None) -> list[PlanResult]:
    """Plan every study; results in study order.

    ``cluster``: ``None`` = this machine (``workers`` processes; 1 = in this process);
    ``"ray://HOST:PORT"`` or ``"auto"`` = Ray tasks on an existing cluster (one already
    initialised with ``ray.init`` in this process is used as is); ``"local"`` = start a local
    Ray for this call. ``out_dir``: resume cache (finished studies are not recomputed).
    ``progress(done, total, result)`` is called as each study finishes (in completion order).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    studies = expand_plan(plan)
    cache = Path(out_dir) / "cache" if out_dir is not None else None
    results: dict[int, PlanResult] = {}
    todo: list[Study] = []
    for study in studies:
        hit = cache / f"{study_key(study)}.json" if cache else None
        if hit is not None and hit.is_file():
            data = json.loads(hit.read_text())
            data["meta"] = {**data["meta"], "from_cache": True}
            results[study.index] = PlanResult.from_dict(data)
        else:
            todo.append(study)
    done = len(results)
    for r in sorted(results.values(), key=lambda r: r.index):
        if progress:
            progress(done, len(studies), r)

    def finish(study: Study, data: dict) -> None:
        nonlocal done
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            path = cache / f"{study_key(study)}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, sort_keys=True))
            tmp.replace(path)
        results[study.index] = PlanResult.from_dict(data)
        done += 1
        if progress:
            progress(done, len(studies), results[study.index])

    if todo:
        if cluster is not None:
            _run_ray(todo, cluster, finish)
        elif workers == 1 or len(todo) == 1:
            for study in todo:
                finish(study, json.loads(json.dumps(run_study_dict(study.model_dump_json()))))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
                futures = {pool.submit(run_study_dict, s.model_dump_json()): s for s in todo}
                for future, study in futures.items():
                    finish(study, future.result())
    return [results[s.index] for s in studies]


def _run_ray(todo: list[Study], cluster: str, finish) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError("--cluster needs Ray: pip install 'engram-planner[cluster]'") from None
    started = False
    if not ray.is_initialized():
        if cluster == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=cluster, log_to_driver=False)
        started = True
    try:
        task = ray.remote(run_study_dict)
        refs = {task.remote(s.model_dump_json()): s for s in todo}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            finish(refs[ready[0]], ray.get(ready[0]))
    finally:
        if started:
            ray.shutdown()
