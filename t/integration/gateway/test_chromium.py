"""A real browser as a WebSocket client: headless Chromium loads a local
page that opens a WebSocket to the gateway, sends one packet (binary,
big enough to be compressed: Chromium offers permessage-deflate), and
writes the answer into the DOM. The test reads the DOM over the DevTools
protocol until the answer is there (bounded), so it waits for the real
exchange rather than for a virtual-time budget that can run out before the
WebSocket opens. Fails when Debian's chromium is not installed:
scripts/dev/bootstrap installs it."""

import asyncio
import html
import itertools
import json
import re
import shutil
import subprocess
import time
import urllib.request

import websockets

import tnhelp

PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
const out = document.getElementById("out");
const ws = new WebSocket("ws://127.0.0.1:%d/ws");
ws.binaryType = "arraybuffer";
ws.onopen = () => {
  const data = new TextEncoder().encode("from chromium " + "z".repeat(600));
  const buf = new Uint8Array(9 + data.length), dv = new DataView(buf.buffer);
  dv.setUint32(0, 5 + data.length); buf[4] = 0; dv.setInt16(5, 1); dv.setInt16(7, 321);
  buf.set(data, 9);
  ws.send(buf);
};
ws.onmessage = (e) => {
  const dv = new DataView(e.data), b = new Uint8Array(e.data);
  const text = new TextDecoder().decode(b.subarray(9));
  out.textContent = ["RESULT", dv.getUint32(0), dv.getInt16(5), dv.getInt16(7),
                     ws.extensions, text].join("|");
  ws.close(1000);
};
ws.onerror = () => { out.textContent = "ERROR"; };
</script></body></html>
"""


def devtools_port(log, proc, timeout=60):
    """The port from Chromium's "DevTools listening on ws://..." line."""
    deadline = time.monotonic() + tnhelp.scaled(timeout)
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", log.read_text())
        if m:
            return int(m.group(1))
        time.sleep(0.1)
    raise AssertionError("no DevTools endpoint: " + log.read_text()[-2000:])


def page_target(port, page_url):
    """The DevTools target of the page, or None while Chromium has not
    created it yet (its DevTools endpoint listens before that)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=10) as r:
        targets = json.load(r)
    return next((t for t in targets if t.get("type") == "page" and t["url"] == page_url), None)


def page_text(port, page_url, timeout=30):
    """textContent of #out once the page has it and it is no longer "pending"
    (the gateway answers slowly under valgrind: the wait is scaled)."""
    target = tnhelp.wait_for(lambda: page_target(port, page_url), 10, interval=0.1,
                             what="chromium's page target")

    async def poll():
        async with websockets.connect(target["webSocketDebuggerUrl"], max_size=None) as cdp:
            for i in itertools.count(1):
                await cdp.send(json.dumps({"id": i, "method": "Runtime.evaluate", "params": {
                    "expression": "(document.getElementById('out') || {}).textContent",
                    "returnByValue": True}}))
                while True:
                    msg = json.loads(await cdp.recv())
                    if msg.get("id") == i:
                        break
                text = msg["result"]["result"].get("value")  # None: still loading
                if text not in (None, "pending"):
                    return text
                await asyncio.sleep(0.1)
    return asyncio.run(asyncio.wait_for(poll(), tnhelp.scaled(timeout)))


def test_chromium_websocket(gateway, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "chromium not installed: run scripts/dev/bootstrap (apt-get install -y chromium)"
    t = gateway("function on_packet(s, r, q, d) s:reply('echo:' .. d) end\n", ws=True)
    page = tmp_path / "page.html"
    page.write_text(PAGE % t.ws_port)
    log = tmp_path / "chromium.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                 "--user-data-dir=%s" % (tmp_path / "profile"),
                                 "--remote-debugging-port=0", "--remote-allow-origins=*",
                                 page.as_uri()], stdout=subprocess.DEVNULL, stderr=err)
    try:
        text = page_text(devtools_port(log, proc), page.as_uri())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    fields = html.unescape(text).split("|")
    assert fields[0] == "RESULT", fields
    size, route, seq, ext, data = fields[1:]
    assert (route, seq) == ("1", "321")
    assert data == "echo:from chromium " + "z" * 600
    assert int(size) == 5 + len(data)
    assert ext.startswith("permessage-deflate")
