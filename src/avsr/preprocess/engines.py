"""Where `avsr prepare-corpus` runs its groups of files: this process, a local process pool, or the
tasks of a Ray cluster. Each engine runs the same function on the same groups; the results are
put back in the groups' order, so what is written afterwards does not depend on the engine.

Ray (`pip install avsr[ray]`): the driver joins a cluster started with `ray start` (`--ray-address`
or RAY_ADDRESS); a group is a task of one CPU, retried on another worker when its worker dies
(files finished before the death are kept: each is done only once its outputs are written).
The source and output folders must be shared storage seen at the same path on every node;
that is checked on each node before any work.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from avsr.errors import AvsrError

ENGINES = ("local", "ray")
RAY_RETRIES = 3  # a group whose worker dies is run again up to this many times


def _stop(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _quiet_worker() -> None:
    """Pool workers leave Ctrl-C to the parent (which stops them), and turn its SIGTERM into an
    exception, so a file being written is cleaned up (its temporary name removed)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)


def _call(job: tuple[Callable, tuple, int]) -> tuple[int, list]:
    fn, args, k = job
    return k, fn(*args)


def run_local(fn: Callable, groups: list[tuple], workers: int) -> Iterator[tuple[int, list]]:
    """(group number, fn(*group)) as groups finish: in this process (workers 1) or a pool of
    `workers` processes (spawned: nothing of this process's state, threads or locks, is inherited)."""
    if workers <= 1:
        for k, group in enumerate(groups):
            yield k, fn(*group)
        return
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_quiet_worker)
    try:
        yield from pool.imap_unordered(_call, [(fn, group, k) for k, group in enumerate(groups)])
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def ray_address(address: str | None) -> str:
    """The cluster to join: `--ray-address`, else RAY_ADDRESS; its head must answer on host:port."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise AvsrError("--engine ray joins a running Ray cluster: pass --ray-address HOST:PORT or set RAY_ADDRESS "
                        "(start one with `ray start --head`, see docs/preprocess.md)")
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except (OSError, ValueError) as err:
        raise AvsrError(f"--ray-address {address}: no Ray cluster answers there ({err})") from None
    return address


def _sees(out: str, token: str, src: str) -> tuple[bool, bool]:
    """On one node: does it see the output folder (the driver's probe file) and the source folder?"""
    probe = Path(out) / token
    return probe.is_file() and probe.read_text() == token, Path(src).is_dir()


def _on_node(fn: Callable, *args) -> tuple[str, list]:
    """A Ray task: fn's result and the address of the node that ran it."""
    import ray

    return ray.util.get_node_ip_address(), fn(*args)


def _check_storage(ray, src: Path, out: Path) -> int:
    """Every node sees the source and output folders at the same paths; returns the node count."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = f".avsr-storage-check-{uuid.uuid4().hex}"
    probe = out / token
    probe.write_text(token)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        sees = ray.remote(num_cpus=0)(_sees)
        refs = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(out), token, str(src)) for n in nodes]
        answers = ray.get(refs, timeout=300)
    finally:
        probe.unlink(missing_ok=True)
    blind = [f"{n['NodeManagerAddress']} ({'output' if not o else 'source'} folder)"
             for n, (o, s) in zip(nodes, answers) if not (o and s)]
    if blind:
        raise AvsrError(f"--engine ray needs the source and output folders on storage shared by every node, at the "
                        f"same paths ({src}, {out}); these nodes do not see them: {', '.join(blind)}")
    return len(nodes)


def run_ray(fn: Callable, groups: list[tuple], address: str, src: Path, out: Path,
            failed: Callable[[tuple, str], list]) -> Iterator[tuple[int, list]]:
    """(group number, fn(*group)) as the cluster's tasks finish. A group whose task fails for good
    (its worker died RAY_RETRIES + 1 times) gives `failed(group, reason)` instead."""
    try:
        import ray
    except ImportError:
        raise AvsrError("--engine ray needs Ray: pip install avsr[ray]") from None
    import logging

    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)
    try:
        nodes = _check_storage(ray, src, out)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        print(f"[avsr prepare-corpus] ray cluster at {address}: {nodes} node(s), {cpus} CPU(s)", flush=True)
        task = ray.remote(num_cpus=1, max_retries=RAY_RETRIES)(_on_node)
        pending = {task.remote(fn, *group): k for k, group in enumerate(groups)}
        by_node: dict[str, int] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(done[0])
            try:
                node, result = ray.get(done[0])
                by_node[node] = by_node.get(node, 0) + 1
                yield k, result
            except ray.exceptions.RayError as err:  # a worker that kept dying, a node lost
                yield k, failed(groups[k], f"its Ray task failed ({type(err).__name__}): "
                                           f"{str(err).strip().splitlines()[0]}")
        print("[avsr prepare-corpus] groups per node: " + ", ".join(f"{n} {c}" for n, c in sorted(by_node.items())),
              flush=True)
    finally:
        ray.shutdown()
