"""`musicgen serve`: uvicorn around `create_app`, with our own SIGTERM handling.

Uvicorn alone closes the listening socket as soon as it gets SIGTERM. Here the first SIGTERM
(or Ctrl+C) starts a drain instead: the server keeps answering (POST /generate says 503,
/ready says not ready), running jobs get `MUSICGEN_SHUTDOWN_GRACE` seconds to finish, jobs not
started stay queued for the next start; then uvicorn is told to exit. A second SIGTERM ends
the grace period at once; a second Ctrl+C exits at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import uvicorn

from musicgen_server.api.app import create_app
from musicgen_server.api.logs import configure_logging
from musicgen_server.config import Settings

log = logging.getLogger(__name__)

# Seconds uvicorn waits for open connections (event streams) after the drain, before closing them.
CONNECTION_GRACE_SECONDS = 3


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app):
        super().__init__(config)
        self.app = app
        self._drain_thread: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        service = getattr(self.app.state, "service", None)
        if service is None or not self.started:
            super().handle_exit(sig, frame)  # still starting: plain uvicorn behaviour
            return
        if self._drain_thread is None:
            log.info(
                "received %s: draining (up to %gs)", signal.Signals(sig).name, service.settings.shutdown_grace
            )
            self._drain_thread = threading.Thread(
                target=self._drain, args=(service,), name="drain", daemon=True
            )
            self._drain_thread.start()
        elif sig == signal.SIGINT:
            log.info("second interrupt: exiting now")
            service.worker.hurry()
            self.should_exit = True
            self.force_exit = True
        else:
            log.info("received %s again: ending the grace period", signal.Signals(sig).name)
            service.worker.hurry()

    def _drain(self, service) -> None:
        try:
            service.drain()
        except Exception:
            log.exception("drain failed")
        finally:
            service.stopping = True
            self.should_exit = True


def run(settings: Settings) -> None:
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # RequestLog writes one line per request
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=CONNECTION_GRACE_SECONDS,
    )
    log.info(
        "starting musicgen-server on http://%s:%d (default model %s, data in %s)",
        settings.host,
        settings.port,
        settings.model,
        settings.data_dir,
    )
    _Server(config, app).run()
