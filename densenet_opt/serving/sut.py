"""The system under test (SUT): a dynamic batcher in front of one engine.

LoadGen calls ``issue_query`` with query samples (one per query in SingleStream and
Server, every sample at once in Offline) from its own thread, and expects
``QuerySamplesComplete`` for each sample when its result is ready (LoadGen
``system_under_test.h``, ``loadgen.h``); a MultiStream query holds several samples, which
reach the batcher together. Here ``issue_query`` only queues the samples with
their arrival time; one thread forms batches and runs the engine, so the engine is a
single server (the M/D/1 queue of the tests, when the batch size is 1).

That thread is the caller's (``serve_during``), and LoadGen's blocking ``StartTest`` runs
on a helper thread: the engine runs on the thread the sweep timed it on. Measured on the
2-core VM (torch 2.14, GNU OpenMP): eager DenseNet-121 at batch 1 took 1.35-1.8x longer per
call on a second Python thread than on the main thread (126 vs 229 ms; the same with
MALLOC_ARENA_MAX=1, so not the allocator), about what the main thread takes with
OMP_WAIT_POLICY=passive: with two OpenMP thread teams alive, more threads than cores,
libgomp throttles its spin-waiting between parallel regions. ONNX Runtime's own pool was
not affected (43 vs 47 ms).

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

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TypeVar

from densenet_opt.serving.qsl import QuerySampleLibrary
from densenet_opt.variants import Engine

T = TypeVar("T")
# The name of the thread that runs LoadGen's StartTest (cli.loadgen looks for it).
LOADGEN_THREAD = "densenet-opt-loadgen"


class TestAbandoned(KeyboardInterrupt):
    """Ctrl-C during a LoadGen test: the test still runs on the LOADGEN_THREAD thread,
    answered without the engine (SystemUnderTest.serve_during)."""

    __test__ = False  # not a pytest test class


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
    ``serve_during(test)`` runs one test (LoadGen's StartTest) on a helper thread and the
    engine on the calling thread. An exception from the engine completes the failed
    samples (LoadGen would otherwise wait for them forever) and is raised by
    ``raise_failure``.
    """

    def __init__(self, engine: Engine | Callable, library: QuerySampleLibrary, policy: BatchPolicy, loadgen: ModuleType) -> None:
        self.engine = engine
        self.library = library
        self.policy = policy
        self.loadgen = loadgen
        self.stats = BatcherStats()
        self.failure: BaseException | None = None
        # Waiting samples (id, index, arrival time); a query's samples enter together, under
        # the condition's lock, so a batcher never sees part of a MultiStream query.
        self._pending: deque[tuple] = deque()
        self._ready = threading.Condition()
        self._stopped = False
        self._abandoned = False

    def serve_during(self, test: Callable[[], T]) -> T:
        """Run ``test`` (which issues queries and returns when they are all complete, as
        LoadGen's StartTest does) on a helper thread while this thread serves the queue
        (forms batches, runs the engine); return ``test``'s result or raise its exception
        once it has returned. The module docstring says why the engine stays on this thread.

        Raises TestAbandoned at once on Ctrl-C (KeyboardInterrupt on this thread, while
        waiting or while the engine runs): LoadGen has no call that stops a test, and a
        Server test offers its queries on a fixed schedule, so waiting for it could take
        minutes. The test is left running on the helper with this SUT answering what it
        still issues without the engine; its SUT and QSL must then not be destroyed, and
        the process must end without running C++ destructors (cli.loadgen does)."""
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["value"] = test()
            except BaseException as error:  # noqa: BLE001 - raised on the calling thread below
                outcome["error"] = error
            finally:
                with self._ready:
                    self._stopped = True
                    self._ready.notify()

        with self._ready:
            self._stopped = False
        helper = threading.Thread(target=run, name=LOADGEN_THREAD, daemon=True)
        helper.start()
        try:
            self._serve()
        except KeyboardInterrupt as interrupt:
            self._abandon()
            raise TestAbandoned("LoadGen's test was abandoned on Ctrl-C") from interrupt
        helper.join()
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["value"]  # type: ignore[return-value]

    def _abandon(self) -> None:
        """From now on every sample is completed as it is issued, without the engine, so
        that LoadGen's thread never waits on this SUT."""
        with self._ready:
            self._abandoned = True
            waiting = list(self._pending)
            self._pending.clear()
        self._complete(waiting)

    def _complete(self, items: list[tuple]) -> None:
        if items:
            lg = self.loadgen
            lg.QuerySamplesComplete([lg.QuerySampleResponse(item[0], 0, 0) for item in items])

    def reset_stats(self) -> None:
        self.stats = BatcherStats()

    def issue_query(self, samples: list) -> None:
        """LoadGen's IssueQuery callback: queue each sample (id, index) with its arrival time,
        all of them at once."""
        now = time.perf_counter()
        with self._ready:
            if not self._abandoned:
                self._pending.extend((sample.id, sample.index, now) for sample in samples)
                self._ready.notify()
                return
        self._complete([(sample.id, sample.index, now) for sample in samples])

    def flush_queries(self) -> None:
        """LoadGen's FlushQueries callback: every queued sample is served anyway."""

    def raise_failure(self) -> None:
        """Raise the engine's exception, if one happened during the last test."""
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def _next_batch(self) -> list[tuple] | None:
        """The next batch: the oldest waiting sample and those behind it, up to the max
        batch size, waiting at most until the oldest has waited the policy's delay; None
        once the test has ended and nothing waits."""
        with self._ready:
            while not self._pending and not self._stopped:
                self._ready.wait()
            if not self._pending:
                return None
            deadline = self._pending[0][2] + self.policy.delay_s
            while len(self._pending) < self.policy.max_batch_size and not self._stopped:
                wait = deadline - time.perf_counter()
                if wait <= 0:
                    break
                self._ready.wait(wait)
            return [self._pending.popleft() for _ in range(min(len(self._pending), self.policy.max_batch_size))]

    def _serve(self) -> None:
        """Serve batches until the test has ended. An engine's exception is kept for
        raise_failure (the rest of the test is answered without the engine); Ctrl-C
        (KeyboardInterrupt) propagates at once."""
        while (batch := self._next_batch()) is not None:
            if self.failure is None:
                try:
                    images, padded = self.library.batch([item[1] for item in batch], self.policy.engine_batch_size)
                    started = time.perf_counter()
                    self.engine(images)
                    self.stats.engine_seconds.append(time.perf_counter() - started)
                    self.stats.batches += 1
                    self.stats.samples += len(batch)
                    self.stats.padded += padded
                except Exception as error:  # noqa: BLE001 - re-raised by raise_failure after the test
                    self.failure = error
            self._complete(batch)


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
