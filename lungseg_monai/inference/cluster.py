"""Run the execute step of ``lungseg infer`` on a Ray cluster: ``lungseg infer SOURCES -o OUT --ray [ADDRESS]``.

This process (the driver) plans and records as a single-process run does
(:mod:`lungseg_monai.inference.runner`); only the jobs left travel. They become a Ray Data dataset,
``map_batches`` hands them in shards of :attr:`ClusterOptions.films_per_task` to a pool of actors,
and each actor loads the model once and runs a :class:`~lungseg_monai.inference.execute.FilmPipeline`
on its shard: it reads the films, runs the network and writes every output itself, atomically, to
``OUT`` (a folder every node must see). Each film's :class:`~lungseg_monai.inference.execute.FilmOutcome`
streams back to the driver, which records it (measurements, manifest, QC summary) as it arrives. Jobs
and outcomes travel as JSON (:meth:`Job.to_json`, :meth:`FilmOutcome.to_json`), never as pickles.

Faults: Ray restarts an actor whose process or node died and retries its shard, up to
:data:`TASK_RETRIES` times; a shard that fails more often (a film that kills every worker that reads
it) is reported as failed films, named, while the other shards go on. A retried shard writes the
same content under the same names, atomically, so no film ends with two sets of outputs; the
temporary files a killed writer left are removed at the end of the run
(:func:`~lungseg_monai.utils.atomic.remove_leftover_temporaries`). A film that cannot be read or
written is an outcome with its reason, never an exception. A driver killed mid-run leaves a manifest
saved a few seconds before: the rerun does only what it does not vouch for.

A worker whose model or settings differ from the driver's (another file under the model's path on
that node, another precision on its hardware) refuses to start: outputs are never recorded under
settings they were not made with.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungseg_monai.inference.execute import FAILED, FilmOutcome, FilmPipeline, Job, RunOptions
from lungseg_monai.inference.predictor import LungSegmenter
from lungseg_monai.pretrained import resolve_model

__all__ = ["LOCAL", "ClusterOptions", "WorkerSettingsError", "run_on_cluster"]

logger = logging.getLogger(__name__)

# --ray without an address: start a Ray instance on this machine for the run, and stop it after.
LOCAL = "local"
FILMS_PER_TASK = 32
# A task whose worker died (killed, out of memory, node lost) is redone on a restarted actor this many
# times; then its films are reported failed and the other tasks go on (a film that kills every worker
# that reads it must not hold the run forever).
TASK_RETRIES = 3


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how wide a Ray run goes.

    Attributes:
        address: ``"local"`` (start Ray on this machine for the run), ``"auto"`` (the cluster this
            machine belongs to, e.g. after ``ray start``), or ``"ray://HOST:10001"`` (Ray Client).
        actors: model copies working at once; default: as many as the cluster's GPUs, or its CPUs
            divided by ``cpus_per_actor``.
        cpus_per_actor: CPUs (and torch threads) each actor holds; on a GPU cluster each actor holds one GPU.
        films_per_task: films per shard (one actor call); a dead actor's shard is redone whole.
    """

    address: str = LOCAL
    actors: int | None = None
    cpus_per_actor: int = 1
    films_per_task: int = FILMS_PER_TASK

    def __post_init__(self) -> None:
        if self.cpus_per_actor < 1 or self.films_per_task < 1 or (self.actors is not None and self.actors < 1):
            raise ValueError(
                f"actors, cpus_per_actor and films_per_task must be at least 1, got {self.actors}, "
                f"{self.cpus_per_actor} and {self.films_per_task}"
            )


class WorkerSettingsError(RuntimeError):
    """A worker would make outputs under other settings than the driver records."""


def _settings_difference(mine: dict[str, Any], driver: dict[str, Any]) -> str:
    keys = sorted(k for k in set(mine) | set(driver) if mine.get(k) != driver.get(k))
    return ", ".join(f"{k}: {mine.get(k)!r} here, {driver.get(k)!r} on the driver" for k in keys)


class FilmWorker:
    """A Ray Data actor: one model, loaded once; each call runs a :class:`FilmPipeline` on a shard of jobs.

    Args:
        model: the model file (resolved on the driver; every node must see it).
        device: ``"cpu"`` or ``"cuda"``.
        postprocess: the driver's mask clean-up.
        precision: the driver's resolved precision name.
        options: the driver's run options (settings, output folder).
        batch_size: images per network call.
        workers: read and write threads.
        threads: torch threads (the CPUs this actor holds).

    Raises:
        WorkerSettingsError: this worker's model or settings differ from the driver's.
    """

    def __init__(
        self,
        model: str,
        device: str,
        postprocess: Any,
        precision: str,
        options: RunOptions,
        batch_size: int,
        workers: int,
        threads: int,
    ) -> None:
        torch.set_num_threads(threads)
        self.segmenter = LungSegmenter.from_model(model, device, postprocess=postprocess, precision=precision)
        mine = self.segmenter.result_settings(options.write_rejected)
        if mine != options.settings:
            raise WorkerSettingsError(
                f"the worker on {socket.gethostname()} (pid {os.getpid()}) would make outputs under other settings "
                f"than the driver records ({_settings_difference(mine, options.settings)}); give every node the same "
                "model file and pass --precision explicitly"
            )
        self.options, self.batch_size, self.workers = options, batch_size, workers

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        jobs = [Job.from_json(str(text)) for text in batch["job"]]
        outcomes: dict[str, str] = {}

        def done(job: Job, outcome: FilmOutcome) -> None:
            outcomes[job.item.name] = outcome.to_json()

        pipeline = FilmPipeline(self.segmenter, self.options, self.batch_size, self.workers, done)
        try:
            pipeline.run(jobs)
        finally:
            pipeline.close()
        return {"outcome": np.array([outcomes[job.item.name] for job in jobs], dtype=object)}


def _settings_error(error: BaseException) -> str | None:
    """The message of a :class:`WorkerSettingsError` that Ray wrapped (an actor that refused to start), or None."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, WorkerSettingsError):
            return str(current)
        text = str(current)
        if "WorkerSettingsError" in text:
            tail = text.split("WorkerSettingsError:", 1)[-1].strip()
            return tail.splitlines()[0] if tail else text
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


def _import_ray() -> Any:
    """``ray`` and ``ray.data``, or SystemExit naming the extra to install."""
    from lungseg_monai.extras import EXIT_MISSING_EXTRA, missing_extra

    problem = missing_extra("ray")
    if problem:
        logger.error("--ray: %s", problem)
        raise SystemExit(EXIT_MISSING_EXTRA)
    import ray
    import ray.data

    return ray


def _pool(ray: Any, cluster: ClusterOptions) -> tuple[int, float, float, str]:
    """(actors, CPUs per actor, GPUs per actor, device) for this cluster."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return cluster.actors or gpus, 1.0, 1.0, "cuda"
    cpus = int(resources.get("CPU", 1))
    return cluster.actors or max(1, cpus // cluster.cpus_per_actor), float(cluster.cpus_per_actor), 0.0, "cpu"


def run_on_cluster(
    cluster: ClusterOptions,
    jobs: Sequence[Job],
    model: str | os.PathLike | None,
    segmenter: LungSegmenter,
    options: RunOptions,
    batch_size: int,
    workers: int,
    on_done: Callable[[Job, FilmOutcome], None],
) -> None:
    """Execute ``jobs`` on the Ray cluster; each outcome goes to ``on_done`` in this process as it arrives.

    Args:
        cluster: where and how wide.
        jobs: the planned jobs (paths absolute: workers do not share this process's directory).
        model: the model file or a shipped model's name (as the driver's ``segmenter`` was loaded from).
        segmenter: the driver's model: its post-processing and precision are the workers'.
        options: run options; the workers must reach exactly ``options.settings``.
        batch_size: images per network call.
        workers: read and write threads per actor.
        on_done: the driver's recorder.

    Raises:
        SystemExit: Ray is not installed (the message names the extra).
        WorkerSettingsError: a worker's model or settings differ from the driver's.
    """
    if not jobs:
        return
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        address = None if cluster.address == LOCAL else cluster.address
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own bar counts films
        context.max_errored_blocks = -1  # a shard that keeps failing is reported below; the others go on
        actors, cpus, gpus, device = _pool(ray, cluster)
        logger.info(
            "Ray cluster %s: %d actor(s), %g CPU(s)%s each, %d film(s) per task",
            ray.get_runtime_context().gcs_address,
            actors,
            cpus,
            " and 1 GPU" if gpus else "",
            cluster.films_per_task,
        )
        model_file = str(Path(resolve_model(model)).resolve())
        shards = math.ceil(len(jobs) / cluster.films_per_task)
        dataset = ray.data.from_items([{"job": job.to_json()} for job in jobs], override_num_blocks=shards)
        dataset = dataset.map_batches(
            FilmWorker,
            fn_constructor_kwargs={
                "model": model_file,
                "device": device,
                "postprocess": segmenter.postprocess,
                "precision": segmenter.precision.name,
                "options": options,
                "batch_size": batch_size,
                "workers": workers,
                "threads": max(1, int(cpus)),
            },
            batch_size=cluster.films_per_task,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus,
            num_gpus=gpus,
            max_restarts=-1,
            max_task_retries=TASK_RETRIES,
        )
        by_name = {job.item.name: job for job in jobs}
        seen: set[str] = set()
        failure = f"its Ray task failed {TASK_RETRIES + 1} times (the worker died or raised; see the Ray logs)"
        try:
            for row in dataset.iter_rows():
                outcome = FilmOutcome.from_json(str(row["outcome"]))
                if outcome.name in seen:  # a retried shard's film reported twice: recorded once
                    continue
                seen.add(outcome.name)
                on_done(by_name[outcome.name], outcome)
        except Exception as e:  # noqa: BLE001 - the cluster gave up: the films it did not finish fail, named
            settings = _settings_error(e)
            if settings is not None:
                raise WorkerSettingsError(settings) from e
            failure = f"the Ray run stopped ({type(e).__name__}: {str(e).splitlines()[0][:300]})"
            logger.error("--ray: %s; %d film(s) not done", failure, len(jobs) - len(seen))
        for job in jobs:
            if job.item.name not in seen:
                on_done(job, FilmOutcome(job.item.name, job.item.path, FAILED, failure))
    finally:
        if started:
            ray.shutdown()
