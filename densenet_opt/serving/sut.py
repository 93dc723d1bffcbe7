"""The system under test (SUT): a dynamic batcher in front of one engine.

LoadGen calls ``issue_query`` with query samples (one per query in SingleStream and
Server, every sample at once in Offline) from its own thread, and expects
``QuerySamplesComplete`` for each sample when its result is ready (LoadGen
``system_under_test.h``, ``loadgen.h``). Here ``issue_query`` only queues the samples with
their arrival time; one worker thread forms batches and runs the engine, so the engine
is a single server (the M/D/1 queue of the tests, when the batch size is 1).

Batching: the worker takes the oldest waiting sample, then more, until the batch holds
``max_batch_size`` samples or the oldest has waited ``max_queue_delay_s`` (samples that
are already waiting join without delay). The engine is built for ``engine_batch_size``
(the policy's max batch size: the sweep's engines accept one static batch size), so a
partial batch is **padded** to it by repeating its last image, and the padded rows are
counted (``BatcherStats.padded_fraction``): padding costs a full batch's compute, which is
what serving a static-shape engine costs.

Results are not returned to LoadGen (the response carries no data: these are
performance runs, LoadGen's PerformanceOnly mode); the logits are computed and dropped.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

from densenet_opt.serving.qsl import QuerySampleLibrary
from densenet_opt.variants import Engine

_STOP = object()


@dataclass(frozen=True)
class BatchPolicy:
    """How the SUT forms batches: at most ``max_batch_size`` samples, the first waiting at
    most ``max_queue_delay_ms``; the engine is built for ``max_batch_size`` and partial
    batches are padded to it. ``max_batch_size`` 1 is no batching (no delay)."""

    max_batch_size: int
    max_queue_delay_ms: float = 0.0

    @property
    def engine_batch_size(self) -> int:
        return self.max_batch_size

    @property
    def label(self) -> str:
        """What the CSV's batch_policy column says, e.g. ``batch1`` or ``dynamic_max8_delay5ms_padded``."""
        if self.max_batch_size == 1:
            return "batch1"
        return f"dynamic_max{self.max_batch_size}_delay{self.max_queue_delay_ms:g}ms_padded"

    @property
    def delay_s(self) -> float:
        return 0.0 if self.max_batch_size == 1 else self.max_queue_delay_ms / 1000.0


@dataclass
class BatcherStats:
    """What the worker did during one test: batches run, samples answered, padded rows,
    and the engine's time per batch (seconds, perf_counter)."""

    batches: int = 0
    samples: int = 0
    padded: int = 0
    engine_seconds: list[float] = field(default_factory=list)

    @property
    def mean_batch_size(self) -> float | None:
        return self.samples / self.batches if self.batches else None

    @property
    def padded_fraction(self) -> float | None:
        """Padded rows / all rows the engine computed."""
        total = self.samples + self.padded
        return self.padded / total if total else None


class SystemUnderTest:
    """One engine behind a dynamic batcher, as LoadGen's SUT (``ConstructSUT`` callbacks).

    ``loadgen``: the ``mlperf_loadgen`` module (QuerySampleResponse, QuerySamplesComplete).
    Use as a context manager around one or more tests: the worker thread starts on
    entry and stops on exit. An exception from the engine completes the failed samples
    (LoadGen would otherwise wait for them forever) and is raised by ``raise_failure``.
    """

    def __init__(self, engine: Engine | Callable, library: QuerySampleLibrary, policy: BatchPolicy, loadgen: ModuleType) -> None:
        self.engine = engine
        self.library = library
        self.policy = policy
        self.loadgen = loadgen
        self.stats = BatcherStats()
        self.failure: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SystemUnderTest:
        self._thread = threading.Thread(target=self._serve, name="densenet-opt-sut", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join()
        self._thread = None

    def reset_stats(self) -> None:
        self.stats = BatcherStats()

    def issue_query(self, samples: list) -> None:
        """LoadGen's IssueQuery callback: queue each sample (id, index) with its arrival time."""
        now = time.perf_counter()
        for sample in samples:
            self._queue.put((sample.id, sample.index, now))

    def flush_queries(self) -> None:
        """LoadGen's FlushQueries callback: every queued sample is served anyway."""

    def raise_failure(self) -> None:
        """Raise the engine's exception, if one happened during the last test."""
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def _next_batch(self, first: tuple) -> list[tuple]:
        batch = [first]
        deadline = first[2] + self.policy.delay_s
        while len(batch) < self.policy.max_batch_size:
            wait = deadline - time.perf_counter()
            try:
                item = self._queue.get_nowait() if wait <= 0 else self._queue.get(timeout=wait)
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # seen again by the loop, after this batch
                break
            batch.append(item)
        return batch

    def _serve(self) -> None:
        lg = self.loadgen
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = self._next_batch(first)
            if self.failure is None:
                try:
                    images, padded = self.library.batch([item[1] for item in batch], self.policy.engine_batch_size)
                    started = time.perf_counter()
                    self.engine(images)
                    self.stats.engine_seconds.append(time.perf_counter() - started)
                    self.stats.batches += 1
                    self.stats.samples += len(batch)
                    self.stats.padded += padded
                except BaseException as error:  # noqa: BLE001 - re-raised by raise_failure after the test
                    self.failure = error
            lg.QuerySamplesComplete([lg.QuerySampleResponse(item[0], 0, 0) for item in batch])


@dataclass(frozen=True)
class ServiceTime:
    """An engine's time per call at its batch size, seconds: the median and the fastest of a few calls."""

    median_s: float
    fastest_s: float


def measure_service_time(engine: Engine | Callable, library: QuerySampleLibrary, batch_size: int, calls: int = 5,
                         warmup_calls: int = 2) -> ServiceTime:
    """The engine's time per call at ``batch_size`` over ``calls`` timed calls after
    ``warmup_calls`` untimed ones (first calls allocate and pick kernels). The median sizes
    LoadGen's expected latency and QPS and the search's first QPS; the fastest call tells
    whether any QPS can meet a latency bound. Estimates only: no reported figure comes
    from them."""
    images, _ = library.batch([i % len(library) for i in range(batch_size)], batch_size)
    for _ in range(warmup_calls):
        engine(images)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        engine(images)
        times.append(time.perf_counter() - started)
    return ServiceTime(sorted(times)[len(times) // 2], min(times))
