"""Inference off the event loop: one thread per model, a bounded queue in front of each, the dynamic batcher that
gathers concurrent embedding requests into one encode call, and the continuous batcher whose decoding steps
concurrent generations share.

The kernels release the GIL, so the event loop keeps accepting, parsing and answering while a model computes.
Each model's calls run one after another on its own thread (its arrays and KV caches are not shared between
threads); two models may compute at once and then share the cores."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Deque, Dict, List, Optional, Tuple, TypeVar

import numpy as np

from .. import _core
from ..generation.continuous import ContinuousBatcher, Request
from .errors import ApiError, overloaded
from .metrics import Metrics

log = logging.getLogger("pyattn.serve")
T = TypeVar("T")
IDLE_TRIM_SECONDS = 1.0


async def _cancelled(task: Optional[asyncio.Task]) -> None:
    """Cancels a batcher's loop task (if started) and waits until it has ended. Cancelled again until it ends: before
    Python 3.12, `asyncio.wait_for` whose awaitable completes in the same turn as the cancellation returns its result
    and drops the cancellation (a request answered just as the server stops: its batcher then waited for the next job
    forever)."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
    if not task.cancelled() and task.exception() is not None:
        log.error("the batcher ended with %r", task.exception())


class ModelThread:
    """The one thread a model computes on: `await run(fn, *args)` runs fn(*args) there and returns its result."""

    def __init__(self, name: str):
        self.name = name
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pyattn-{name}")

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Gate:
    """A model that serves one request at a time (transcription): the others wait in a bounded,
    first-come queue; one more than ``limit`` waiting is refused with 503 and Retry-After."""

    def __init__(self, model: str, limit: int, metrics: Metrics):
        self.model, self.limit, self.metrics = model, limit, metrics
        self._lock = asyncio.Lock()
        self.waiting = 0

    def check(self) -> None:
        """503 now if the queue is full (a streamed answer checks before its status line goes out)."""
        if self.waiting >= self.limit:
            self.metrics.rejected.labels("queue_full").inc()
            raise overloaded(self.model)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        self.check()
        t0 = time.perf_counter()
        self.waiting += 1
        self.metrics.queue_depth.labels(self.model).set(self.waiting)
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1
            self.metrics.queue_depth.labels(self.model).set(self.waiting)
        self.metrics.queue_seconds.labels(self.model).observe(time.perf_counter() - t0)
        try:
            yield
        finally:
            self._lock.release()


@dataclass
class _Job:
    encodings: list  # the request's sentences, tokenized (SentenceEncoder.tokenize)
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class EmbeddingBatcher:
    """Gathers the sentences of concurrent requests (tokenized by the request handler) into one
    `encoder.encode_tokens` call on the model's thread, or, with several lanes, on the first free lane's thread.

    While the model computes a batch, requests queue; when it is free it takes every waiting request up to
    ``max_batch_size`` sentences (a single larger request goes alone). When it is free and finds the queue short of
    a full batch while requests being handled have not all been queued (``handling``), it first waits up to
    ``batch_wait_ms`` for more; when every request in the handler is already queued it starts at once (a lone client
    never waits). Inside the batch encode_tokens sorts the sentences by length and runs forward passes of
    ``encode_batch_size``; each request gets its own rows back. Requests whose caller gave up (timeout, disconnect)
    before their batch started are dropped from it. ``max_batch_size == 0``: no gathering, one request per encode
    call (the baseline the benchmark compares with).

    ``thread`` may be a list of threads, the lanes. A batch that finds no other batch computing and nothing left in
    the queue runs "wide", on all of ``threads`` threads (a lone client's request, quickly), and the other lanes wait
    for it. Otherwise it runs "narrow", on ``threads // lanes``, and the other lanes take the rest of the queue into
    their own batches beside it: under load each lane computes its batch on its share of the cores. Only the first
    lane starts work when none is running (so that light load stays on one thread's team of OpenMP workers: each
    lane's thread has its own, and alternating between them cost 9% at 1 and 8 clients). A team of
    threads waits at every barrier for its slowest member, and in a server the slowest is the one whose core the
    clients' and the event loop's work took; lanes of one thread share no barrier (docs/serve.md: 10-15% more
    sentences per second at 32 clients on 2 cores)."""

    def __init__(
        self,
        encoder,
        thread,
        model: str,
        metrics: Metrics,
        *,
        max_batch_size: int,
        batch_wait_ms: float,
        encode_batch_size: int,
        max_queue: int,
        threads: int = 0,
    ):
        self.lanes: List[ModelThread] = list(thread) if isinstance(thread, (list, tuple)) else [thread]
        self.thread = self.lanes[0]  # where the heap is trimmed
        self.encoder, self.model, self.metrics = encoder, model, metrics
        self.max_batch_size, self.wait = max_batch_size, batch_wait_ms / 1000
        self.encode_batch_size, self.max_queue = encode_batch_size, max_queue
        self._jobs: Deque[_Job] = collections.deque()
        self.queued = 0  # sentences in self._jobs
        self.active = 0  # requests inside `handling`
        self.computing = 0  # requests in batches being computed (by other lanes, when one gathers)
        self.running = 0  # batches being computed
        self.wide = False  # one of them on all the threads: the other lanes wait
        self.threads = threads or _core.get_num_threads()
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task] = None
        self._dirty = False  # batches ran since the heap was last trimmed
        for m in (metrics.batch_size, metrics.batch_requests, metrics.batch_seconds, metrics.queue_seconds):
            m.labels(model)  # the series exist, at zero, before the first batch
        metrics.lanes.labels(model).set(len(self.lanes))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve(), name=f"batcher-{self.model}")

    async def stop(self) -> None:
        await _cancelled(self._task)
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(ApiError(503, "the server is shutting down", code="shutting_down"))

    @contextmanager
    def handling(self):
        """Around the whole handling of a request (reading, tokenizing, `submit`, its answer). A free model short of a
        full batch waits (up to the wait limit) while some request in the handler is not queued: one on its way in, or
        one whose answer is being written and whose client may send the next at once. Starting a batch in the middle
        of that work instead cost 10% at 8 clients on 2 cores (bench_serve, a Zen 4): the event loop's burst of
        answers and requests then ran beside the model's threads."""
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._wake.set()  # the gatherer looks again

    def submit(self, encodings: list) -> asyncio.Future:
        """Queues sentences tokenized by the encoder's `tokenize` (503 when the queue is full); the future gets their
        (len(encodings), dim) float32 rows once the batch holding them has run. Cancelling it (a timeout, a client gone)
        drops them if their batch has not started."""
        if self.queued and self.queued + len(encodings) > self.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise overloaded(self.model)
        job = _Job(list(encodings), asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self.queued += len(encodings)
        self.metrics.queue_depth.labels(self.model).set(self.queued)
        self._wake.set()
        return job.future

    async def embed(self, encodings: list) -> np.ndarray:
        """`submit`, then its rows."""
        return await self.submit(encodings)  # cancelling this cancels the future: the batcher then skips the job

    def _take(self) -> List[_Job]:
        taken: List[_Job] = []
        size = 0
        while self._jobs:
            job = self._jobs[0]
            if job.future.done():  # its caller is gone
                self._jobs.popleft()
                self.queued -= len(job.encodings)
                continue
            if taken and (not self.max_batch_size or size + len(job.encodings) > self.max_batch_size):
                break
            self._jobs.popleft()
            self.queued -= len(job.encodings)
            taken.append(job)
            size += len(job.encodings)
        self.metrics.queue_depth.labels(self.model).set(self.queued)
        return taken

    async def _gather(self, lane: int = 0) -> None:
        """Waits until work is queued, then up to the wait limit for a full batch. A model idle for
        IDLE_TRIM_SECONDS after work returns the heap pages its batches freed to the system (the peak of a large
        batch would otherwise stay resident)."""
        while not self._jobs or self.wide or (lane > 0 and not self.running):
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_TRIM_SECONDS if self._dirty else None)
            except asyncio.TimeoutError:
                if self._dirty:  # (another lane may have trimmed meanwhile)
                    self._dirty = False
                    await self.thread.run(_core.trim_heap)
        if not self.max_batch_size or self.wait <= 0:
            return
        deadline = time.perf_counter() + self.wait
        while self.queued < self.max_batch_size and self.active - self.computing > len(self._jobs):
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return

    def _encode(self, encodings: list, threads: int) -> np.ndarray:
        """On a lane's thread: the batch on `threads` threads (0: the thread's own setting)."""
        if threads:
            _core.set_thread_limit(threads)
        return self.encoder.encode_tokens(encodings, batch_size=self.encode_batch_size)

    async def _serve(self) -> None:
        """One loop per lane, gathering from the one queue; cancelled together."""
        lanes = [asyncio.ensure_future(self._lane(i)) for i in range(len(self.lanes))]
        try:
            await asyncio.gather(*lanes)
        finally:
            for lane in lanes:
                lane.cancel()
            await asyncio.wait(lanes)

    async def _lane(self, lane: int) -> None:
        while True:
            try:
                await self._batch(lane)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not leave every later request waiting for its timeout
                log.exception("the embedding batcher failed; it goes on")
                await asyncio.sleep(0.01)

    async def _batch(self, lane: int) -> None:
        """Gathers one batch, runs it on the lane's thread and hands each request its rows."""
        await self._gather(lane)
        if self.wide:  # another lane started a batch on all the threads while this one gathered
            return
        jobs = self._take()
        if not jobs:
            return
        encodings = [e for job in jobs for e in job.encodings]
        start = time.perf_counter()
        for job in jobs:
            self.metrics.queue_seconds.labels(self.model).observe(start - job.arrived)
        wide = len(self.lanes) == 1 or (self.running == 0 and not self._jobs)
        threads = self.threads if wide else max(1, self.threads // len(self.lanes))
        self.computing += len(jobs)
        self.running += 1
        self.wide = wide
        if not wide:
            self._wake.set()  # the other lanes may start beside it
        try:
            rows = await self.lanes[lane].run(self._encode, encodings, 0 if len(self.lanes) == 1 else threads)
        except asyncio.CancelledError:
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(ApiError(503, "the server is shutting down", code="shutting_down"))
            raise
        except Exception as e:  # the batcher outlives any batch
            log.exception("embedding batch of %d sentences failed", len(encodings))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        finally:
            self.computing -= len(jobs)
            self.running -= 1
            self.wide = False
            self._wake.set()  # lanes waiting for a wide batch go on
        self._dirty = True
        self.metrics.batch_seconds.labels(self.model).observe(time.perf_counter() - start)
        self.metrics.batch_size.labels(self.model).observe(len(encodings))
        self.metrics.batch_requests.labels(self.model).observe(len(jobs))
        self.metrics.sentences.labels(self.model).inc(len(encodings))
        at = 0
        for job in jobs:
            n = len(job.encodings)
            if not job.future.done():
                job.future.set_result(rows[at : at + n])
            at += n


class GenerationBatcher:
    """Continuous batching of generations (pyattn.generation.continuous) on the model's thread: one loop steps the
    batch, every running request gets a token per step, requests waiting join at the next step while fewer than
    ``max_batch_size`` run, and each request receives its tokens through its own asyncio queue as they come.

    ``submit`` queues a request (503 when ``max_queue`` already wait for a row to free); ``cancel`` drops it (a
    client that left, a timeout): a waiting one at once, a running one before the next step. ``max_batch_size == 1``
    serves one generation at a time, in arrival order (the baseline the benchmark compares with)."""

    def __init__(
        self,
        model,
        thread: ModelThread,
        name: str,
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_queue: int,
        prefill_chunk: Optional[int] = 128,
    ):
        self.batcher = ContinuousBatcher(model, max_batch_size, prefill_chunk)
        self.thread, self.model, self.metrics, self.max_queue = thread, name, metrics, max_queue
        self._queues: Dict[Request, asyncio.Queue] = {}  # requests not yet ended: where their tokens go
        self._arrived: Dict[Request, float] = {}  # requests not yet started: when they came
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task] = None
        for m in (metrics.generation_batch_size, metrics.queue_seconds):
            m.labels(name)  # the series exist, at zero, before the first step

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve(), name=f"generation-{self.model}")

    async def stop(self) -> None:
        await _cancelled(self._task)
        gone = ApiError(503, "the server is shutting down", code="shutting_down")
        for request, queue in list(self._queues.items()):
            self.batcher.cancel(request)
            queue.put_nowait((None, True, gone))
        self._queues.clear()

    def check(self, n: int = 1) -> None:
        """503 now if the queue cannot take `n` more: ``max_queue`` requests already wait for a row beyond those the
        next step admits, or would with these (a streamed answer checks before its status line goes out)."""
        b = self.batcher
        if b.backlog >= self.max_queue or b.waiting + n - b.room > self.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise overloaded(self.model)

    def submit(self, ids: List[int], options: dict) -> Tuple[Request, asyncio.Queue]:
        """Queues a generation; returns it and the queue of its steps: (token or None, ended, error or None)
        tuples. `options`: generate's, and `logprobs` (ContinuousBatcher.submit). ValueError for options the model
        refuses, 503 when the queue is full."""
        self.check()
        request = self.batcher.submit(np.asarray(ids, np.int64), **options)
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request], self._arrived[request] = queue, time.perf_counter()
        self.metrics.queue_depth.labels(self.model).set(self.batcher.waiting)
        self._wake.set()
        return request, queue

    def cancel(self, request: Request) -> None:
        self.batcher.cancel(request)
        self._queues.pop(request, None)
        self._arrived.pop(request, None)
        self.metrics.queue_depth.labels(self.model).set(self.batcher.waiting)

    async def _serve(self) -> None:
        while True:
            if not self.batcher.busy:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                events = await self.thread.run(self.batcher.step)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not leave every request waiting for its timeout
                log.exception("the generation batcher failed; it goes on")
                await asyncio.sleep(0.01)
                continue
            self._deliver(events)

    def _deliver(self, events) -> None:
        now = time.perf_counter()
        if self.batcher.last_rows:
            self.metrics.generation_batch_size.labels(self.model).observe(self.batcher.last_rows)
        for request, token in events:
            arrived = self._arrived.pop(request, None)
            if arrived is not None:
                self.metrics.queue_seconds.labels(self.model).observe(now - arrived)
            queue = self._queues.get(request)
            if queue is None:  # cancelled meanwhile
                continue
            queue.put_nowait((token, request.done, request.error))
            if request.done:
                del self._queues[request]
        self.metrics.queue_depth.labels(self.model).set(self.batcher.waiting)
