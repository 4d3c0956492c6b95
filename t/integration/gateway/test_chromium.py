"""A real browser as a WebSocket client: headless Chromium loads a local
page that opens a WebSocket to the gateway, sends one packet (binary,
big enough to be compressed: Chromium offers permessage-deflate), and
writes the answer into the DOM, which --dump-dom prints. Skipped when
Debian's chromium is not installed (apt-get install -y chromium)."""

import html
import re
import shutil
import subprocess

import pytest

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


def test_chromium_websocket(gateway, tmp_path):
    chromium = shutil.which("chromium")
    if not chromium:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    t = gateway("function on_packet(s, r, q, d) s:reply('echo:' .. d) end\n", ws=True)
    page = tmp_path / "page.html"
    page.write_text(PAGE % t.ws_port)
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--user-data-dir=%s" % (tmp_path / "profile"),
                        "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=90)
    m = re.search(r'<pre id="out">(.*?)</pre>', r.stdout, re.S)
    assert m, r.stdout[-2000:] + r.stderr[-2000:]
    fields = html.unescape(m.group(1)).split("|")
    assert fields[0] == "RESULT", fields
    size, route, seq, ext, data = fields[1:]
    assert (route, seq) == ("1", "321")
    assert data == "echo:from chromium " + "z" * 600
    assert int(size) == 5 + len(data)
    assert ext.startswith("permessage-deflate")
