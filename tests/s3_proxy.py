"""A TCP proxy on loopback in front of the S3 endpoint, to make storage slow or
failing for real: what a client sends is throttled to ``upload_bytes_per_s``,
a connection that sends more than ``cut_after_bytes`` is cut (a checkpoint
upload fails; small requests such as listings and manifests still pass), and
once ``stall_uploads()`` is called, uploads hang after a further
``stall_after_bytes`` (an upload stays in flight until its client dies).
``uploaded_bytes`` counts everything clients sent."""

from __future__ import annotations

import asyncio
import threading


class S3Proxy:
    def __init__(self, upstream_port: int, *, upload_bytes_per_s: float | None = None,
                 cut_after_bytes: int | None = None):
        self.upstream_port = upstream_port
        self.upload_bytes_per_s = upload_bytes_per_s
        self.cut_after_bytes = cut_after_bytes
        self.cut_connections = 0
        self.uploaded_bytes = 0
        self.stalled_chunks = 0  # chunks held back since stall_uploads()
        self._stall_at: int | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall_uploads(self, after_bytes: int = 256 * 1024) -> None:
        """From now on, hold every upload chunk once clients have sent ``after_bytes`` more."""
        self._stall_at = self.uploaded_bytes + after_bytes

    def __enter__(self) -> S3Proxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the S3 proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, client_r, client_w) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self._pump(client_r, up_w, upload=True), self._pump(up_r, client_w, upload=False),
                             return_exceptions=True)
        for w in (client_w, up_w):
            w.close()

    async def _pump(self, reader, writer, *, upload: bool) -> None:
        sent = 0
        try:
            while chunk := await reader.read(64 * 1024):
                if upload:
                    sent += len(chunk)
                    self.uploaded_bytes += len(chunk)
                    if self._stall_at is not None and self.uploaded_bytes > self._stall_at:
                        self.stalled_chunks += 1
                        await asyncio.Event().wait()  # never set: held until the proxy closes
                    if self.cut_after_bytes is not None and sent > self.cut_after_bytes:
                        self.cut_connections += 1
                        writer.transport.abort()
                        return
                    if self.upload_bytes_per_s:
                        await asyncio.sleep(len(chunk) / self.upload_bytes_per_s)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if writer.can_write_eof():
                try:
                    writer.write_eof()
                except (ConnectionError, OSError, RuntimeError):
                    pass
