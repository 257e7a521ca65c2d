"""Run every study of a plan: in this process, a local process pool, or Ray tasks; resumable.

Each study is one task (:func:`run_study_dict`: a JSON-able dict in, a JSON-able dict out), so
the same bytes travel to a pool worker or a Ray worker and results are identical everywhere
(every model is deterministic; results are returned in study order).

Resume: with ``out_dir``, a study's result is stored as ``out_dir/cache/<key>.json`` where
``key`` hashes the study's resolved inputs (scenario, search, settings) and the code version;
a later run loads it instead of recomputing (``meta.from_cache`` says which). An entry is
written to a temporary file and renamed into place, so a run killed at any point (SIGKILL
included) leaves whole entries or none; an entry that does not load back (truncated by a full
disk, edited by hand) is reported with its path (:class:`CorruptCacheWarning`) and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import warnings
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Callable

from planner.plan.results import PlanProgress, PlanResult
from planner.plan.spec import PlanSpec, Study, expand_plan

Progress = Callable[[PlanProgress], None]


class CorruptCacheWarning(UserWarning):
    """A resume-cache entry that does not load back; it is recomputed and rewritten."""


class ClusterError(ValueError):
    """The Ray cluster named by ``cluster`` cannot be used; the message says why in its terms."""


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


def run_study_dict(study_json: str, progress: Progress | None = None) -> dict:
    """One task: a study as JSON in, its result as a plain dict out (what workers run);
    ``progress`` (this process only) receives the study's own events."""
    from planner.plan.search import plan_study

    return plan_study(Study.model_validate_json(study_json), progress).as_dict()


class _Tally:
    """Sums each study's latest counts into plan-wide :class:`PlanProgress` events."""

    def __init__(self, studies: list[Study], cached: dict[int, PlanResult], progress: Progress | None):
        from planner.plan.candidates import groups

        self.progress = progress
        self.studies = len(studies)
        self.done = 0
        # (screened, candidates, verified, to_verify) per study index, every study from the
        # start so the plan's candidate total never changes (counting a grid costs milliseconds)
        self.counts: dict[int, tuple[int, int, int, int]] = {}
        if progress is not None:
            for s in studies:
                if s.index in cached:
                    n, sims = cached[s.index].meta["candidates"], cached[s.index].meta["simulations"]
                    self.counts[s.index] = (n, n, sims, sims)
                else:
                    n = sum(len(g) for g in groups(s))
                    self.counts[s.index] = (0, n, 0, min(s.settings.verify.max_simulations, n))

    def start(self, study: Study) -> None:
        """The totals before any work, so a bar can show them while the first study runs."""
        self._emit("screen", study.name, None)

    def study(self, study: Study, event: PlanProgress) -> None:
        """An event of one study running in this process."""
        self.counts[study.index] = (event.screened, event.candidates, event.verified, event.to_verify)
        self._emit(event.stage, study.name, None)

    def finished(self, study: Study, result: PlanResult) -> None:
        self.done += 1
        if self.progress is not None:
            n, sims = result.meta["candidates"], result.meta["simulations"]
            self.counts[study.index] = (n, n, sims, sims)
            self._emit("done", study.name, result)

    def _emit(self, stage, name: str, result: PlanResult | None) -> None:
        if self.progress is None:
            return
        screened, candidates, verified, to_verify = (sum(c[k] for c in self.counts.values()) for k in range(4))
        self.progress(PlanProgress(stage, name, screened, candidates, verified, to_verify, self.done, self.studies,
                                   result))


def run_plan(plan: PlanSpec, *, workers: int = 1, cluster: str | None = None, out_dir: str | Path | None = None,
             progress: Progress | None = None) -> list[PlanResult]:
    """Plan every study; results in study order.

    ``cluster``: ``None`` = this machine (``workers`` processes; 1 = in this process);
    ``"ray://HOST:PORT"`` or ``"auto"`` = Ray tasks on an existing cluster (one already
    initialised with ``ray.init`` in this process is used as is); ``"local"`` = start a local
    Ray for this call. ``out_dir``: resume cache (finished studies are not recomputed).
    ``progress(event)`` receives a :class:`PlanProgress` (candidates screened, simulations run,
    studies done) as work advances; cached studies report first, as done.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if cluster is not None:
        _cluster_address(cluster)  # a malformed address is refused before any work
    studies = expand_plan(plan)
    cache = Path(out_dir) / "cache" if out_dir is not None else None
    results: dict[int, PlanResult] = {}
    todo: list[Study] = []
    for study in studies:
        hit = cache / f"{study_key(study)}.json" if cache else None
        cached = load_cached(hit) if hit is not None and hit.is_file() else None
        if cached is not None:
            results[study.index] = cached
        else:
            todo.append(study)
    tally = _Tally(studies, results, progress)
    for study in studies:
        if study.index in results:
            tally.finished(study, results[study.index])

    def finish(study: Study, data: dict) -> None:
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            path = cache / f"{study_key(study)}.json"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # never read as an entry
            tmp.write_text(json.dumps(data, sort_keys=True, allow_nan=False))
            tmp.replace(path)
        results[study.index] = PlanResult.from_dict(data)
        tally.finished(study, results[study.index])

    if todo:
        tally.start(todo[0])
        if cluster is not None:
            _run_ray(todo, cluster, finish)
        elif workers == 1 or len(todo) == 1:
            for study in todo:
                events = None if progress is None else (lambda event, study=study: tally.study(study, event))
                finish(study, json.loads(json.dumps(run_study_dict(study.model_dump_json(), events))))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
                futures = {pool.submit(run_study_dict, s.model_dump_json()): s for s in todo}
                for future, study in futures.items():
                    finish(study, future.result())
    return [results[s.index] for s in studies]


def load_cached(path: Path) -> PlanResult | None:
    """The cached result at ``path``, or None (with a :class:`CorruptCacheWarning` naming the
    file and what is wrong) when it does not load back as a whole result."""
    try:
        data = json.loads(path.read_text(), parse_constant=_no_constant)
        if not isinstance(data, dict) or not isinstance(data.get("meta"), dict):
            raise ValueError("not a plan result")
        data["meta"] = {**data["meta"], "from_cache": True}
        return PlanResult.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        reason = reason if len(reason) <= 120 else reason[:117] + "..."
        warnings.warn(f"{path}: corrupt plan cache entry ({reason}); recomputing it", CorruptCacheWarning,
                      stacklevel=3)
        return None


def _no_constant(name: str):
    raise ValueError(f"{name} in a cache entry (results hold finite numbers only)")


def _cluster_address(cluster: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``ray://HOST:PORT`` or ``HOST:PORT`` address; None for auto/local."""
    if cluster in ("auto", "local"):
        return None
    host, sep, port = cluster.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"cluster {cluster!r}: expected auto, local, ray://HOST:PORT or HOST:PORT")
    return host.strip("[]"), int(port)


def _run_ray(todo: list[Study], cluster: str, finish) -> None:
    try:
        import ray
    except ImportError:
        raise ClusterError(f"cluster {cluster!r}: needs Ray: pip install 'engram-planner[cluster]'") from None
    started = False
    if not ray.is_initialized():
        address = _cluster_address(cluster)
        if address is not None:  # fail in seconds, in these terms, rather than in Ray's retries
            try:
                socket.create_connection(address, timeout=5).close()
            except OSError as exc:
                raise ClusterError(f"cluster {cluster!r}: cannot reach {address[0]}:{address[1]} "
                                   f"({exc.strerror or exc}); is the Ray head running there?") from None
        try:
            if cluster == "local":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=cluster, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
            hint = (" (start one with `ray start --head`, or give its address as ray://HOST:PORT)"
                    if cluster == "auto" else "")
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ClusterError(f"cluster {cluster!r}: cannot connect to Ray{hint}: {first}") from None
        started = True
    try:
        task = ray.remote(run_study_dict)
        refs = {task.remote(s.model_dump_json()): s for s in todo}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                data = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None) or exc
                if isinstance(cause, ValueError):  # bad input found in a worker: the same message as here
                    raise ValueError(str(cause)) from None
                raise ClusterError(f"cluster {cluster!r}: study {refs[ready[0]].name!r} failed on the "
                                   f"cluster: {type(cause).__name__}: {str(cause)[:300]}") from None
            except ray.exceptions.RayError as exc:
                raise ClusterError(f"cluster {cluster!r}: study {refs[ready[0]].name!r} was lost: "
                                   f"{type(exc).__name__}: {str(exc)[:300]}") from None
            finish(refs[ready[0]], data)
    finally:
        if started:
            ray.shutdown()
