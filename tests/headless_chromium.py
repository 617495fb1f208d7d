"""Drive Debian's ``chromium`` headless over the DevTools protocol (``--remote-debugging-pipe``:
JSON messages on file descriptors 3 and 4, standard library only): open a page, record every
request it makes (file:// included), evaluate JavaScript in it."""

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",  # running as root in CI containers
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--remote-debugging-pipe",
]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """One browser process; ``open(url)`` loads a page in a fresh tab."""

    def __init__(self, binary: str, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:  # the protocol's fixed descriptors: 3 in, 4 out
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            preexec_fn=wire,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None):
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        return self._wait(lambda m: m.get("id") == self._next_id)

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _wait(self, done) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = self._read()
            if "method" in message:
                self.events.append(message)
            if done(message):
                if "error" in message:
                    raise RuntimeError(f"DevTools error: {message['error']}")
                return message
        raise TimeoutError("chromium did not answer in time")

    def open(self, url: str) -> "Page":
        target = self._send("Target.createTarget", {"url": "about:blank"})["result"]["targetId"]
        session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "result"
        ]["sessionId"]
        for domain in ("Network.enable", "Page.enable", "Runtime.enable"):
            self._send(domain, session=session)
        self.events.clear()
        self._send("Page.navigate", {"url": url}, session=session)
        self._wait(lambda m: m.get("method") == "Page.loadEventFired")
        return Page(self, session)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser, self.session = browser, session
        # Requests made while loading, copied now: later navigations add their own.
        self.requests = [
            e["params"]["request"]["url"]
            for e in browser.events
            if e["method"] == "Network.requestWillBeSent" and e.get("sessionId") == session
        ]

    def evaluate(self, expression: str) -> Any:
        reply = self.browser._send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session,
        )["result"]
        if "exceptionDetails" in reply:
            raise RuntimeError(f"JavaScript error: {reply['exceptionDetails']}")
        return reply["result"].get("value")


def requests_outside(requests: list[str], directory: Path) -> list[str]:
    """The requested URLs that are not files inside ``directory`` (or inline data)."""
    inside = directory.resolve().as_uri() + "/"
    return [u for u in requests if not (u.startswith(inside) or u.startswith("data:"))]
