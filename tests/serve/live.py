"""A real uvicorn server on a free local port, in a thread, for tests that need a live HTTP endpoint."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from emova.eval.bench_serve import free_port


@contextlib.contextmanager
def live_uvicorn(app: Any, timeout: float = 10.0) -> Iterator[str]:
    """Serve `app` on 127.0.0.1; yields its base URL (no trailing slash) and stops it afterwards."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
