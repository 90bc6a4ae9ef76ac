"""PNGs of Vega-Lite specs, and the page's Vega runtime, made in a process of their own. vl_convert holds the GIL
while it draws or bundles (measured: a Python loop beside a 5 s PNG in another thread waited the whole 5 s, and beside
a 2-6 s bundle did not run at all), so a drawing thread only took turns with the report's statistics; a process works
on the second core while they run. numpy-free, so the process starts in ~0.3 s
(Python and vl_convert) and holds only vl_convert's JavaScript runtime (~0.1-0.3 GB while it draws)."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading

# The drawing process: reads requests (4-byte big-endian length, then JSON {"spec", "scale"} or {"bundle": snippet})
# on stdin until EOF and answers each with a length and b"\0" + the PNG (or the bundle), or b"\1" + the error.
SERVE = r"""
import json, struct, sys
import vl_convert
read, write = sys.stdin.buffer.read, sys.stdout.buffer
while len(head := read(4)) == 4:
    request = json.loads(read(struct.unpack(">I", head)[0]))
    try:
        if "peak" in request:  # this process's own high-water RSS (ru_maxrss counts the parent's, from before exec)
            body = b"\0" + next(l.split()[1] for l in open("/proc/self/status", "rb") if l.startswith(b"VmHWM"))
        elif "bundle" in request:
            body = b"\0" + vl_convert.javascript_bundle(snippet=request["bundle"]).encode()
        else:
            body = b"\0" + vl_convert.vegalite_to_png(request["spec"], scale=request["scale"])
    except Exception as err:  # the spec's fault: the caller raises it; the process serves the next one
        body = b"\1" + f"{type(err).__name__}: {err}".encode()
    write.write(struct.pack(">I", len(body)) + body)
    write.flush()
"""


class DrawingProcess:
    """A process that draws PNGs (``png``) and bundles the page's Vega runtime (``bundle``), started on construction; ``close`` (or leaving a ``with`` block) ends
    it. One request at a time (a lock serialises callers); the caller waits on a pipe, GIL released."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()

    def png(self, spec: dict, scale: float = 2.0) -> bytes:
        """PNG image of a Vega-Lite spec at ``scale`` times its CSS pixel size, as ``html.png_bytes`` draws it.
        Raises ValueError when vl_convert rejects the spec, RuntimeError when the process has died (both methods)."""
        return self._ask({"spec": spec, "scale": scale})

    def bundle(self, snippet: str) -> str:
        """``vl_convert.javascript_bundle(snippet=snippet)`` (Vega, Vega-Lite, Vega-Embed and the snippet; ~2 s)."""
        return self._ask({"bundle": snippet}).decode()

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory so far (MB; Linux, from /proc/self/status VmHWM)."""
        return int(self._ask({"peak": True})) / 1024

    def _ask(self, what: dict) -> bytes:
        request = json.dumps(what).encode()
        with self.lock:
            try:
                self.proc.stdin.write(struct.pack(">I", len(request)) + request)
                self.proc.stdin.flush()
                head = self.proc.stdout.read(4)
                body = self.proc.stdout.read(struct.unpack(">I", head)[0]) if len(head) == 4 else b""
            except (BrokenPipeError, OSError):
                body = b""
        if not body:
            raise RuntimeError(f"the drawing process exited (code {self.proc.poll()})")
        if body[:1] == b"\1":
            raise ValueError(f"vl_convert failed: {body[1:].decode(errors='replace')}")
        return body[1:]

    def close(self) -> None:
        """End the process (EOF on its input) and wait for it; again: nothing more."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> DrawingProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
