"""stats_file: every metric written to a file, replaced atomically every
interval (Prometheus text for node_exporter's textfile collector, or the
/stats JSON)."""

import json
import re

import nsqwire as nw
import tnhelp


def prom_value(text, name):
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else None


def test_stats_file_written_and_updated(plugged):
    t = plugged(plugins=("stats_file",), broker={}, start=False)
    out = t.tmp / "textfile" / "ternd.prom"
    out.parent.mkdir()
    t.sections["stats_file"] = {"path": str(out), "interval": "100ms"}
    t.write_conf()
    t.start()
    tnhelp.wait_for(out.exists, 5, what="the stats file")
    text = out.read_text()
    assert "# TYPE ternd_uptime_seconds gauge" in text
    assert text.endswith("\n")
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    nw.publish(t.tcp_port, "sf", [b"1", b"2"])
    name = 'ternd_broker_topic_messages_total{topic="sf"}'
    tnhelp.wait_for(lambda: prom_value(out.read_text(), name) == 2, 5,
                    what="the published count in the file")
    up = prom_value(out.read_text(), "ternd_uptime_seconds")
    tnhelp.wait_for(lambda: prom_value(out.read_text(), "ternd_uptime_seconds") > up, 5,
                    what="a newer file")
    # only the target: the temporary file was renamed over it
    assert [p.name for p in out.parent.iterdir()] == ["ternd.prom"]
    assert t.metrics()["ternd_stats_file_writes_total"] >= 2

    # JSON after a reload, written at once
    t.sections["stats_file"]["format"] = "json"
    t.reload()
    doc = tnhelp.wait_for(lambda: out.read_text().startswith("{") and json.loads(out.read_text()),
                          5, what="the JSON file")
    names = {m["name"] for m in doc["metrics"]}
    assert "ternd_broker_topic_messages_total" in names and "ternd_uptime_seconds" in names


def test_stats_file_unwritable_path_warns_once(plugged):
    t = plugged(plugins=("stats_file",), start=False)
    t.sections["stats_file"] = {"path": str(t.tmp / "missing" / "x.prom"), "interval": "50ms"}
    t.write_conf()
    t.start()
    tnhelp.wait_for(lambda: t.metrics().get("ternd_stats_file_errors_total", 0) >= 3, 5,
                    what="failed writes counted")
    warns = [ln for ln in t.log_lines("stats_file") if ln[0] == "warn"]
    assert len(warns) == 1 and "No such file or directory" in warns[0][2], warns
