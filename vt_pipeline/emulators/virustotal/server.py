"""A VirusTotal API v3 emulator: a real HTTP server that vt-py talks to as to VirusTotal.

``vt.Client(key, host=emulator.url)`` works unchanged against it. It serves a deterministic
synthetic corpus (or a fixture folder) and injects latency, quotas and faults on demand, for
the integration tests, the demo and the benchmarks. In tests::

    with VirusTotalEmulator(generate_corpus(1, 100, start, end)).serve() as url:
        client = vt.Client("demo", host=url)

From a shell: ``vt-pipeline emulate virustotal --port 8080 --seed 1 --notifications 1000``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from vt_pipeline.emulators.virustotal.api import VirusTotalAPI
from vt_pipeline.emulators.virustotal.corpus import Corpus, generate_corpus
from vt_pipeline.emulators.virustotal.faults import parse_fault_spec
from vt_pipeline.emulators.virustotal.fixtures import FixtureError, load_fixtures
from vt_pipeline.emulators.virustotal.keys import PUBLIC, ApiKey

_SHUTDOWN_TIMEOUT = 0.25  # seconds given to in-flight requests (e.g. a held timeout fault)


class VirusTotalEmulator:
    """Serves a ``VirusTotalAPI`` on 127.0.0.1, in a background thread or in the running loop.

    ``api_keys`` maps each accepted key to its privileges, an ``ApiKey(premium=, gti=)`` or
    True (premium and licensed for Google Threat Intelligence) / False (a public key); default:
    ``{"demo": True}``.
    ``clock`` drives quotas and submission dates, so tests can move time without sleeping.
    """

    def __init__(
        self,
        corpus: Corpus,
        *,
        api_keys: Mapping[str, bool | ApiKey] | None = None,
        latency_ms: float = 0.0,
        faults: str = "",
        fault_seed: int = 0,
        fault_timeout_seconds: float = 30.0,
        quota_per_minute: int = 0,
        quota_per_day: int = 0,
        quota_per_hour: int = 0,
        quota_per_month: int = 0,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
        analysis_polls: int = 2,
        analysis_seconds: float = 0.0,
    ) -> None:
        self.api = VirusTotalAPI(
            corpus,
            api_keys=api_keys,
            latency_ms=latency_ms,
            faults=faults,
            fault_seed=fault_seed,
            fault_timeout_seconds=fault_timeout_seconds,
            quota_per_minute=quota_per_minute,
            quota_per_day=quota_per_day,
            quota_per_hour=quota_per_hour,
            quota_per_month=quota_per_month,
            clock=clock,
            analysis_polls=analysis_polls,
            analysis_seconds=analysis_seconds,
        )
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def corpus(self) -> Corpus:
        return self.api.corpus

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash), what ``vt.Client(host=...)`` wants."""
        if self._url is None:
            raise RuntimeError("the emulator is not running")
        return self._url

    # -- in the running event loop -----------------------------------------------------------

    async def start_async(self) -> str:
        runner = web.AppRunner(
            self.api.application(),
            access_log=None,  # the access log would show request headers, API keys included
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            handler_cancellation=True,  # a client that gives up frees its held request
        )
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        self._url = f"http://{self.host}:{runner.addresses[0][1]}"
        return self._url

    async def stop_async(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._url = None

    # -- in a background thread --------------------------------------------------------------

    def start(self) -> str:
        """Serve from a background thread with its own event loop; returns the URL."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="vt-emulator", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            return asyncio.run_coroutine_threadsafe(self.start_async(), loop).result(timeout=30)
        except BaseException:
            self._stop_thread()
            raise

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop_async(), self._loop).result(timeout=30)
        finally:
            self._stop_thread()

    def _stop_thread(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(_cancel_leftovers(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()

    @contextmanager
    def serve(self) -> Iterator[str]:
        """``with emulator.serve() as url:`` -- started in a background thread, then stopped."""
        url = self.start()
        try:
            yield url
        finally:
            self.stop()

    # -- controls, also reachable over HTTP under /_emulator/ ---------------------------------

    def set_faults(self, spec: str, seed: int = 0) -> None:
        """Replace the fault rules (see ``faults``); ValueError on a bad spec."""
        self.api.set_faults(spec, seed)

    def set_analysis_time(self, polls: int = 2, seconds: float = 0.0) -> None:
        """Polls and seconds an upload / URL submission needs before its analysis completes."""
        self.api.set_analysis_time(polls, seconds)

    def set_latency(self, ms: float) -> None:
        self.api.set_latency(ms)

    def stats(self) -> dict[str, dict[str, int]]:
        """``{endpoint: {status code as string: count}}``."""
        return self.api.stats()

    def count(self, endpoint: str, status: int | None = None) -> int:
        """Requests to ``endpoint`` (with ``status`` when given)."""
        return self.api.count(endpoint, status)

    def reset_stats(self) -> None:
        """Forget the counts and the request log."""
        self.api.reset_stats()

    def requests(self) -> list[dict[str, Any]]:
        """The request log, oldest first (see ``VirusTotalAPI.requests``); the same as
        ``GET /_emulator/requests``, for a benchmark rebuilding a run's round trips."""
        return self.api.requests()

    @property
    def requests_dropped(self) -> int:
        """Requests not logged, the log being full (``REQUEST_LOG_LIMIT``)."""
        return self.api.requests_dropped

    def spend(self, key: str, count: int) -> int:
        """Another client spends ``count`` requests of ``key``'s quota (accepted ones)."""
        return self.api.spend(key, count)

    @property
    def deleted_notifications(self) -> frozenset[str]:
        """Notification ids deleted through ``DELETE /ioc_stream_notifications/{id}``."""
        return self.api.deleted_notifications


async def _cancel_leftovers() -> None:
    """Cancel what the server left running (requests of gone clients) before the loop closes."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- command line ----------------------------------------------------------------------------


def _utc(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.removesuffix("Z"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _fault_spec(text: str) -> str:
    try:
        parse_fault_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``emulate virustotal``."""
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed")
    parser.add_argument("--notifications", type=int, default=1000, help="corpus size")
    parser.add_argument("--start", type=_utc, help="first notification date (default: end - 24h)")
    parser.add_argument("--end", type=_utc, help="end of the notification range (default: now)")
    parser.add_argument("--fixtures", type=Path, help="serve this fixture folder instead")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay of every request")
    parser.add_argument("--faults", type=_fault_spec, default="", help="ENDPOINT:KIND:RATE[:N],...")
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--fault-timeout", type=float, default=30.0, help="seconds a timeout holds")
    parser.add_argument(
        "--api-key", default="demo", help="the premium API key (licensed for GTI, see --no-gti)"
    )
    parser.add_argument(
        "--no-gti",
        action="store_true",
        help="the --api-key is not licensed for Google Threat Intelligence: no gti_assessment",
    )
    parser.add_argument(
        "--public-key", action="append", default=[], help="a non-premium API key (repeatable)"
    )
    parser.add_argument("--quota-per-minute", type=int, default=0, help="per key; 0: unlimited")
    parser.add_argument("--quota-per-day", type=int, default=0, help="per key; 0: unlimited")


def build_emulator(args: argparse.Namespace) -> VirusTotalEmulator:
    """The emulator the parsed options describe (the corpus generated or loaded)."""
    if args.fixtures:
        corpus = load_fixtures(args.fixtures)
    else:
        end = args.end or datetime.now(UTC).replace(microsecond=0)
        start = args.start or end - timedelta(hours=24)
        corpus = generate_corpus(args.seed, args.notifications, start, end)
    keys: dict[str, ApiKey] = {key: PUBLIC for key in args.public_key}
    keys[args.api_key] = ApiKey(premium=True, gti=not args.no_gti)
    return VirusTotalEmulator(
        corpus,
        api_keys=keys,
        latency_ms=args.latency_ms,
        faults=args.faults,
        fault_seed=args.fault_seed,
        fault_timeout_seconds=args.fault_timeout,
        quota_per_minute=args.quota_per_minute,
        quota_per_day=args.quota_per_day,
        port=args.port,
    )


async def _serve_until_signalled(emulator: VirusTotalEmulator) -> None:
    url = await emulator.start_async()
    print(f"VirusTotal emulator listening on {url}", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        await emulator.stop_async()


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM."""
    try:
        emulator = build_emulator(args)
    except FixtureError as err:  # a bad fixture folder: say which file and why, no traceback
        raise SystemExit(f"vt-pipeline emulate virustotal: bad fixtures: {err}") from None
    asyncio.run(_serve_until_signalled(emulator))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vt-pipeline emulate virustotal", description="Serve a VirusTotal API v3 emulator."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
