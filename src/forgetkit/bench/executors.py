"""Where a bench's cells run: one after another in this process (``serial``, the default), as Ray tasks
over a local runtime or a cluster (``ray``), or one slice of the grid per scheduler job (``--cells I/N``).

Cells are independent and content-addressed (``cells/<id>/result.json``, written last and atomically),
so an executor only decides who computes which missing cell. The Ray executor:

- computes first the cells others read: each split's oracle reference (its evaluation is every other
  cell's Forget Quality reference) and the shard sets of ``sharded_exact`` cells; then every other cell;
- runs each cell in a fresh worker process (``max_calls=1``): nothing an earlier cell left behind in a
  process (peak-memory readings, caches) reaches a later one, and each cell seeds itself;
- gives each cell the resources of ``resources_per_cell`` (default: 1 GPU when the cluster has GPUs,
  else 1 CPU) and keeps each cell's output in ``cells/<id>/cell.log``;
- records a cell that crashes (an unexpected error, or its worker dying) as ``crashed`` with the reason,
  in ``cells/<id>/crash.json``, and goes on; a crashed cell has no ``result.json``, so a rerun computes
  it again (refused and diverged cells are outcomes, kept like done ones);
- needs the bench directory on storage every worker sees: each node is checked before any cell runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from pathlib import Path

from tqdm.auto import tqdm

from forgetkit.checks import cached_object
from forgetkit.errors import ConfigError, ForgetkitError, first_line
from forgetkit.io import write_json

EXECUTORS = ("serial", "ray")
CELL_LOG = "cell.log"
CRASH = "crash.json"
VISIBILITY_FILE = ".forgetkit-bench-token"


def parse_slice(text: str) -> tuple[int, int]:
    """``"I/N"`` (1 ≤ I ≤ N) as ``(I, N)``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--cells: expected I/N (slice I of N, e.g. 2/4), got '{text}'") from None
    if not 1 <= index <= count:
        raise ConfigError(f"--cells: slice I/N needs 1 ≤ I ≤ N, got '{text}'")
    return index, count


def in_slice(cell, index: int, count: int) -> bool:
    """Stable assignment by cell id. Every slice takes the oracle references: the others need their logs."""
    if cell.kind == "reference" and cell.method == "oracle":
        return True
    return int(hashlib.sha256(cell.id.encode()).hexdigest(), 16) % count == index - 1


def run_serial(bench, cells: list) -> list[dict]:
    """Every cell in this process, in grid order (the oracle references first)."""
    results = []
    with tqdm(total=len(cells), desc=f"bench {bench.config.name}", unit="cell", disable=bench.quiet) as bar:
        for cell in cells:
            bar.set_postfix_str(cell.id)
            results.append(bench.result_of(cell))
            bar.update()
    return results


def crashed(cell_dir: Path, cell_id: str, exc: BaseException) -> dict:
    """The record of a crashed cell (``crash.json``; no ``result.json``: a rerun computes the cell again)."""
    reason = f"{type(exc).__name__}: {first_line(exc)}"
    record = {"cell": {"id": cell_id}, "status": "crashed", "reason": reason, "log": str(cell_dir / CELL_LOG)}
    write_json(cell_dir / CRASH, record)
    return record


def _can_see(path: str, token: str) -> bool:
    try:
        return Path(path).read_text(encoding="utf-8") == token
    except OSError:
        return False


def run_ray(bench, cells: list, address: str | None, worker: dict) -> list[dict]:
    """The cells as Ray tasks (``address``: ``auto`` or a cluster's; None starts a local runtime).

    ``worker`` holds what a task runs: ``config`` (the bench config a worker rebuilds its bench from),
    ``cell`` (config, cell id -> result) and ``shard_set`` (config, cell id -> the trained shard set)."""
    try:
        import ray
    except ImportError:
        raise ForgetkitError("--executor ray needs Ray: pip install 'forgetkit[ray]'") from None
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except ConnectionError as exc:
            raise ForgetkitError(f"--ray-address {address}: no Ray cluster reached ({exc})") from None
    try:
        options = _task_options(bench.config.resources_per_cell, ray.cluster_resources())
        _check_visible(ray, NodeAffinitySchedulingStrategy, bench.out)
        config = worker["config"]
        cell_task = ray.remote(max_calls=1, max_retries=0)(worker["cell"]).options(**options)
        shard_task = ray.remote(max_calls=1, max_retries=0)(worker["shard_set"]).options(**options)
        results = {c.id: result for c in cells if (result := bench.cached_result(c)) is not None}
        pending = [c for c in cells if c.id not in results]
        with tqdm(total=len(cells), initial=len(results), desc=f"bench {bench.config.name} (ray)", unit="cell",
                  disable=bench.quiet) as bar:
            first = [c for c in pending if c.kind == "reference" and c.method == "oracle"]
            shard_sets = {bench.shard_set_dir(c)[0]: c for c in pending if c.method == "sharded_exact"}
            setup = [shard_task.remote(config, c.id) for c in shard_sets.values()]
            _gather(ray, {cell_task.remote(config, c.id): c for c in first}, bench, results, bar)
            for ref in setup:  # a shard set that fails to train fails its cells, recorded there
                with contextlib.suppress(Exception):
                    ray.get(ref)
            _gather(ray, {cell_task.remote(config, c.id): c for c in pending if c not in first}, bench, results, bar)
        return [results[c.id] for c in cells]
    finally:
        if started:
            ray.shutdown()


def _gather(ray, refs: dict, bench, results: dict, bar) -> None:
    """Wait for the tasks in ``refs`` (object ref -> cell) as they finish, recording each result."""
    waiting = list(refs)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        cell = refs[done[0]]
        try:
            result = ray.get(done[0])
        except Exception as exc:  # the worker died (killed, out of memory) before it could record anything
            result = crashed(bench.out / "cells" / cell.id, cell.id, exc)
        if result.get("status") == "crashed":
            result["cell"] = cell.describe()
        results[cell.id] = result
        bar.set_postfix_str(cell.id)
        bar.update()


def _task_options(resources, cluster: dict) -> dict:
    """Ray task options from ``resources_per_cell`` (unset: 1 GPU when the cluster has GPUs, else 1 CPU)."""
    gpus = resources.gpus if resources.gpus is not None else (1 if cluster.get("GPU", 0) >= 1 else 0)
    cpus = resources.cpus if resources.cpus is not None else (0 if gpus else 1)
    if cpus > cluster.get("CPU", 0) or gpus > cluster.get("GPU", 0):
        raise ForgetkitError(f"resources_per_cell ({cpus} CPUs, {gpus} GPUs) exceeds what the Ray cluster has "
                             f"({cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs)")
    return {"num_cpus": cpus, "num_gpus": gpus}


def _check_visible(ray, affinity, out: Path) -> None:
    """Every alive node must read the bench directory (written by this driver): else one clear error."""
    out.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    marker = out.resolve() / VISIBILITY_FILE
    marker.write_text(token, encoding="utf-8")
    probe = ray.remote(num_cpus=0)(_can_see)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    seen = ray.get([probe.options(scheduling_strategy=affinity(n["NodeID"], soft=False)).remote(str(marker), token)
                    for n in nodes])
    blind = [n.get("NodeManagerAddress", n["NodeID"]) for n, ok in zip(nodes, seen, strict=True) if not ok]
    if blind:
        raise ForgetkitError(f"{out}: the bench directory is not visible from Ray node(s) {', '.join(blind)}; put it "
                             "on storage every worker sees (a shared filesystem) and give its path as out:")


def read_crash(cell_dir: Path) -> dict | None:
    return cached_object(cell_dir / CRASH)

