"""What a person sees of the relays' web pages: headless Chromium on the lab's client host.

Each call starts a fresh browser with its own empty profile in the client's network
namespace, so it finds the relays through the lab's DNS and reaches them as a phone on the
network would. Chromium does not know the lab's CA, hence --ignore-certificate-errors; the
certificates themselves are checked by test_web. Screenshots are PNG files, read here with
zlib alone (the shared environment has no imaging library), and the invite's QR code is
decoded from them with zbar, the way a camera would read it off the screen.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from hosts import CLIENT, STATE, in_host

PHONE = (390, 844)
DESKTOP = (1280, 900)


def chromium(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess:
    """Run headless Chromium on the client host with a throw-away profile."""
    STATE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-", dir=STATE) as profile:
        cmd = in_host(CLIENT, ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--ignore-certificate-errors", "--hide-scrollbars", f"--user-data-dir={profile}",
                               *args])
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=True)


@dataclass
class Page:
    """The parts of a rendered DOM the tests look at."""

    lang: str | None = None
    title: str = ""
    viewport: str | None = None
    links: list[str] = field(default_factory=list)
    # (tag, attribute, URL) of everything the page loads: style sheets, images, scripts.
    loads: list[tuple[str, str, str]] = field(default_factory=list)
    scripts: int = 0
    text: str = ""


class _DomReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._in_title = False
        self._skip = 0
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "html":
            self.page.lang = a.get("lang")
        elif tag == "title":
            self._in_title = True
        elif tag == "meta" and a.get("name") == "viewport":
            self.page.viewport = a.get("content")
        elif tag == "a" and "href" in a:
            self.page.links.append(a["href"])
        elif tag == "link" and {"stylesheet", "icon"} & set(a.get("rel", "").split()):
            self.page.loads.append((tag, "href", a.get("href", "")))
        elif tag in ("img", "script", "iframe", "source", "video", "audio") and "src" in a:
            self.page.loads.append((tag, "src", a["src"]))
        if tag == "script":
            self.page.scripts += 1
        if tag in ("script", "style", "title"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in ("script", "style", "title"):
            self._skip = max(0, self._skip - 1)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.page.title += data
        elif not self._skip:
            self._text.append(data)

    def close(self) -> None:
        super().close()
        self.page.title = " ".join(self.page.title.split())
        self.page.text = " ".join(" ".join(self._text).split())


def parse(html: str) -> Page:
    reader = _DomReader()
    reader.feed(html)
    reader.close()
    return reader.page


def dom(url: str) -> Page:
    """The page as Chromium has built it (after its style sheets and images loaded)."""
    return parse(chromium(["--dump-dom", url]).stdout.decode())


@dataclass(frozen=True)
class Picture:
    width: int
    height: int
    rows: list[bytes]  # 3 or 4 bytes per pixel
    channels: int

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = x * self.channels
        r, g, b = self.rows[y][i:i + 3]
        return r, g, b

    def luminance(self, x: int, y: int) -> float:
        """Relative luminance (0 black .. 1 white), close enough for light versus dark."""
        r, g, b = self.pixel(x, y)
        return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def read_png(path: Path) -> Picture:
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes)."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, chunk = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
    if header is None:
        raise ValueError(f"{path}: no IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"{path}: PNG depth {depth}, colour type {colour}, interlace {interlace}: not handled")
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = prev[i]
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                upleft = prev[i - bpp] if i >= bpp else 0
                p = left + up - upleft
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else upleft)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return Picture(width, height, rows, bpp)


def screenshot(url: str, path: Path, size: tuple[int, int], dark: bool = False) -> Path:
    """A screenshot (PNG) of the visible part of a page in a window of `size`, with the
    reader's colour preference set to dark or light (what CSS's prefers-color-scheme sees;
    Blink numbers it 0 for dark, 1 for light)."""
    path.unlink(missing_ok=True)
    chromium([f"--window-size={size[0]},{size[1]}", f"--blink-settings=preferredColorScheme={0 if dark else 1}",
              f"--screenshot={path}", url])
    if not path.exists():
        raise AssertionError(f"Chromium wrote no screenshot of {url}")
    return path


def on_phone(url: str, expression: str, size: tuple[int, int] = PHONE, timeout: float = 60):
    """The value of a JavaScript expression on a page loaded as a phone shows it: Chromium's
    mobile emulation, in which the page's viewport meta decides the layout width (without
    one, a page is laid out 980 px wide and shrunk). Spoken over the DevTools protocol on a
    pipe (--remote-debugging-pipe: Chromium reads commands on fd 3 and answers on fd 4,
    each message JSON ending in a NUL byte)."""
    to_chrome, from_us = os.pipe()
    to_us, from_chrome = os.pipe()

    def wire() -> None:  # in the child, before exec: the two pipe ends at fd 3 and 4
        os.dup2(to_chrome, 3)
        os.dup2(from_chrome, 4)

    STATE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-", dir=STATE) as profile:
        cmd = in_host(CLIENT, ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--ignore-certificate-errors", "--remote-debugging-pipe",
                               f"--user-data-dir={profile}", "about:blank"])
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=wire, pass_fds=(3, 4))
        os.close(to_chrome)
        os.close(from_chrome)
        deadline = time.monotonic() + timeout
        buffer = b""
        ids = iter(range(1, 1000))

        def receive() -> dict:
            nonlocal buffer
            while b"\0" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"Chromium did not answer within {timeout} s on {url}")
                if not select.select([to_us], [], [], min(left, 1))[0]:
                    if proc.poll() is not None:
                        raise AssertionError(f"Chromium exited ({proc.returncode}) on {url}")
                    continue
                chunk = os.read(to_us, 65536)
                if not chunk:
                    raise AssertionError(f"Chromium closed the pipe on {url}")
                buffer += chunk
            message, buffer = buffer.split(b"\0", 1)
            return json.loads(message)

        def call(method: str, params: dict | None = None, session: str | None = None) -> dict:
            msg_id = next(ids)
            msg = {"id": msg_id, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            os.write(from_us, json.dumps(msg).encode() + b"\0")
            while True:
                answer = receive()
                if answer.get("id") == msg_id:
                    if "error" in answer:
                        raise AssertionError(f"{method}: {answer['error']}")
                    return answer["result"]

        try:
            target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            call("Emulation.setDeviceMetricsOverride",
                 {"width": size[0], "height": size[1], "deviceScaleFactor": 3, "mobile": True}, session)
            call("Page.enable", {}, session)
            call("Page.navigate", {"url": url}, session)
            while True:
                event = receive()
                if event.get("method") == "Page.loadEventFired" and event.get("sessionId") == session:
                    break
            result = call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
            if "exceptionDetails" in result:
                raise AssertionError(f"{expression!r} on {url}: {result['exceptionDetails']}")
            return result["result"].get("value")
        finally:
            try:
                os.write(from_us, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            except OSError:
                pass
            os.close(from_us)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_us)


# What a phone reader meets on a page: the width the page is laid out at (a page without a
# viewport meta gets 980 px), how wide its content is (wider: sideways scrolling), the body's
# font size and the smallest font size of any text shown.
PHONE_LAYOUT = """(() => {
  let smallest = Infinity;
  for (const el of document.body.querySelectorAll('*')) {
    const shown = el.getClientRects().length > 0;
    const text = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (shown && text) smallest = Math.min(smallest, parseFloat(getComputedStyle(el).fontSize));
  }
  return {layoutWidth: window.innerWidth, contentWidth: document.documentElement.scrollWidth,
          bodyFont: parseFloat(getComputedStyle(document.body).fontSize), smallestFont: smallest};
})()"""


def qr_codes(path: Path) -> list[str]:
    """The QR codes zbar reads in an image (none: an empty list)."""
    r = subprocess.run(["zbarimg", "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", str(path)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode == 4:  # zbarimg: "no symbols found"
        return []
    r.check_returncode()
    return r.stdout.splitlines()
