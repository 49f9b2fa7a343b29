"""Run the gateway under uvicorn: in process (``start``) or as the program (``run``).

srv = await start(settings)      # port 0 -> a free port; srv.url is the real one
...
await srv.stop()

uvicorn runs with the HTTP edge's limits: deadlines on request heads and on refused
bodies (gateway/http_timeouts.py), an explicit keep-alive, and secrets redacted from its logs
(gateway/log_filters.py). Its loggers get no handlers of their own: their records go to the
root logger, which streams/logs.py sets up (JSON lines like every Morgan process).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import uvicorn

from gateway import log_filters
from gateway.app import create_app
from gateway.http_timeouts import with_timeouts
from gateway.ws_protocol import ClosingAwareWebSocket
from streams import tracing
from streams.settings import Settings


@dataclass
class RunningGateway:
    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    async def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        try:
            await asyncio.wait_for(self.task, timeout)
        except TimeoutError:
            self.server.force_exit = True
            await self.task


def config(settings: Settings) -> uvicorn.Config:
    cfg = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        http=with_timeouts(
            header_s=settings.http_header_timeout_s, discard_s=settings.http_body_timeout_s
        ),
        ws=ClosingAwareWebSocket,
        lifespan="on",
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's records propagate to the root logger (streams/logs.py)
        ws_max_size=max(settings.max_frame_bytes * 2, 1 << 20),
        timeout_keep_alive=settings.http_keep_alive_s,
        limit_concurrency=settings.http_max_connections,
    )
    log_filters.install()  # after Config, which (re)configures uvicorn's loggers
    return cfg


async def start(settings: Settings, *, timeout: float = 15.0) -> RunningGateway:
    """Serve in this event loop; returns once the socket listens. Traces are recorded as
    ``morgan-gateway`` (streams/tracing.py; exported when MORGAN_OTEL_ENDPOINT is set)."""
    tracing.setup(settings, "morgan-gateway")
    server = uvicorn.Server(config(settings))
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + timeout
    while not server.started:  # uvicorn has no start event: poll with a deadline
        if task.done():
            await task
            raise RuntimeError("the gateway stopped during start-up")
        if asyncio.get_running_loop().time() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the gateway did not start in {timeout} s")
        await asyncio.sleep(0.01)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return RunningGateway(server, task, settings.http_host or host, port)


async def run(settings: Settings) -> None:
    """Serve until interrupted, printing the page's URL."""
    srv = await start(settings)
    print(f"Morgan gateway: {srv.url}/  (WebSocket {srv.ws_url})", flush=True)
    await srv.task
