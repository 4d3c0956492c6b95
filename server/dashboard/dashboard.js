/*
 * dashboard.js -- ternd's admin dashboard: polls GET /stats (same origin),
 * groups the flat metric list into topics/channels, pools and gateway
 * sessions, derives rates from successive polls and draws small SVG charts.
 * No libraries and no build step: the file is embedded into ternd as is.
 */
'use strict';

(function () {
  var HISTORY = 90;                 /* points kept per chart series */
  var COLORS = ['#2f6fdf', '#e0803a', '#2e9d57', '#9b59b6', '#d64545', '#17a2b8', '#8d6e63', '#607d8b'];
  var SVGNS = 'http://www.w3.org/2000/svg';

  var prev = null;                  /* {t, values: key -> counter value} of the last poll */
  var rateHist = [];                /* [t, msg/s] */
  var depthHist = {};               /* topic -> [[t, depth]] */
  var topicRateHist = {};           /* topic -> [msg/s] for the sparklines */
  var gatewayHist = { sessions: [], 'packets in/s': [], 'packets out/s': [] };
  var timer = null;
  var actions = null;               /* the /dashboard/api/ capabilities, if any */

  /* ---- small DOM helpers ------------------------------------------------ */

  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    setAttrs(e, attrs);
    append(e, kids);
    return e;
  }

  function svg(tag, attrs, kids) {
    var e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    append(e, kids);
    return e;
  }

  function setAttrs(e, attrs) {
    for (var k in attrs || {}) {
      if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, attrs[k]);
    }
  }

  function append(e, kids) {
    if (kids === undefined || kids === null) return;
    if (!Array.isArray(kids)) kids = [kids];
    kids.forEach(function (k) {
      if (k === null || k === undefined) return;
      e.appendChild(typeof k === 'object' ? k : document.createTextNode(String(k)));
    });
  }

  function clear(e) {
    while (e.firstChild) e.removeChild(e.firstChild);
  }

  function num(v) {
    if (v === undefined || v === null || isNaN(v)) return '-';
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(2) + 'M';
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + 'k';
    if (v !== Math.floor(v)) return v.toFixed(v < 10 ? 2 : 1);
    return String(v);
  }

  function bytes(v) {
    var u = ['B', 'KiB', 'MiB', 'GiB'], i = 0;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return v.toFixed(i ? 1 : 0) + ' ' + u[i];
  }

  function duration(ms) {
    var s = Math.floor(ms / 1000), d = Math.floor(s / 86400);
    var h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) return d + 'd ' + h + 'h';
    if (h) return h + 'h ' + m + 'm';
    if (m) return m + 'm ' + (s % 60) + 's';
    return s + 's';
  }

  /* ---- the model: /stats' flat samples grouped by what they describe ------ */

  function key(m) {
    var ks = Object.keys(m.labels || {}).sort();
    return m.name + '{' + ks.map(function (k) { return k + '=' + m.labels[k]; }).join(',') + '}';
  }

  function build(stats) {
    var md = { version: stats.version, uptime: stats.uptime_ms, single: {}, topics: {},
               pools: {}, gateway: [], all: stats.metrics || [] };
    md.all.forEach(function (m) {
      var l = m.labels || {}, n = m.name, t, c;
      if (n.indexOf('ternd_broker_topic_') === 0 && l.topic !== undefined) {
        t = topic(md, l.topic);
        t[n.slice('ternd_broker_topic_'.length)] = m.value;
      } else if (n.indexOf('ternd_broker_channel_') === 0 && l.channel !== undefined) {
        t = topic(md, l.topic);
        c = t.channels[l.channel] || (t.channels[l.channel] = { name: l.channel });
        c[n.slice('ternd_broker_channel_'.length)] = m.value;
      } else if (n.indexOf('ternd_pool_') === 0 && l.pool !== undefined) {
        var p = md.pools[l.pool] || (md.pools[l.pool] = { name: l.pool });
        p[n.slice('ternd_pool_'.length)] = m.value;
      } else if (!Object.keys(l).length) {
        md.single[n] = m.value;
      }
      if (n.indexOf('ternd_gateway_') === 0) md.gateway.push(m);
    });
    return md;
  }

  function topic(md, name) {
    return md.topics[name] || (md.topics[name] = { name: name, channels: {} });
  }

  /* Per-second rates of every counter since the previous poll. */
  function rates(stats, now) {
    var values = {}, r = {};
    (stats.metrics || []).forEach(function (m) {
      if (m.type !== 'counter') return;
      var k = key(m);
      values[k] = m.value;
      if (prev && prev.values[k] !== undefined && now > prev.t) {
        r[k] = Math.max(0, (m.value - prev.values[k]) * 1000 / (now - prev.t));
      }
    });
    prev = { t: now, values: values };
    return r;
  }

  function rateOf(r, name, labels) {
    return r[key({ name: name, labels: labels })];
  }

  function push(arr, item) {
    arr.push(item);
    if (arr.length > HISTORY) arr.shift();
  }

  /* ---- rendering ------------------------------------------------------- */

  function renderCards(md, r) {
    var s = md.single, box = document.getElementById('cards');
    var rate = rateOf(r, 'ternd_broker_published_total', {});
    var cards = [
      ['uptime', duration(md.uptime)],
      ['memory (RSS)', bytes(s.ternd_resident_memory_bytes || 0)],
      ['connections', num(s.ternd_connections_open)],
      ['broker clients', num(s.ternd_broker_clients)],
      ['topics', num(Object.keys(md.topics).length)],
      ['published', num(s.ternd_broker_published_total)],
      ['publish rate', rate === undefined ? '-' : num(rate) + '/s']
    ];
    if (s.ternd_gateway_sessions !== undefined) cards.push(['gateway sessions', num(s.ternd_gateway_sessions)]);
    if (Object.keys(md.pools).length) cards.push(['pools', num(Object.keys(md.pools).length)]);
    clear(box);
    cards.forEach(function (c) {
      box.appendChild(el('div', { 'class': 'card', 'data-card': c[0] },
        [el('div', { 'class': 'label' }, c[0]), el('div', { 'class': 'value' }, c[1])]));
    });
  }

  function actionButtons(tname, cname, paused) {
    if (!actions) return null;
    var what = cname === undefined ? 'topic' : 'channel';
    var list = [[paused ? 'unpause' : 'pause', ''], ['empty', 'danger'], ['delete', 'danger']];
    return list.map(function (a) {
      var b = el('button', { 'class': a[1], 'data-action': a[0], title: a[0] + ' ' + what }, a[0]);
      b.addEventListener('click', function () { act(a[0], tname, cname); });
      return b;
    });
  }

  function act(action, tname, cname) {
    var label = cname === undefined ? 'topic ' + tname : 'channel ' + tname + '/' + cname;
    if ((action === 'delete' || action === 'empty') && !window.confirm(action + ' ' + label + '?')) return;
    var q = '?topic=' + encodeURIComponent(tname);
    if (cname !== undefined) q += '&channel=' + encodeURIComponent(cname);
    fetch('/dashboard/api/broker/' + (cname === undefined ? 'topic/' : 'channel/') + action + q, { method: 'POST', headers: { 'X-Ternd-Dashboard': '1' } }).then(function (resp) {
      if (!resp.ok) return resp.text().then(function (t) { throw new Error(t || resp.status); });
      poll();
    }).catch(function (e) { setStatus('bad', action + ' failed: ' + e.message); });
  }

  function spark(values) {
    var max = Math.max.apply(null, values.concat([1])), n = values.length;
    var d = values.map(function (v, i) {
      return (i ? 'L' : 'M') + (n > 1 ? i * 90 / (n - 1) : 0).toFixed(1) + ' ' + (19 - v / max * 18).toFixed(1);
    }).join(' ');
    return svg('svg', { 'class': 'spark', viewBox: '0 0 90 20' }, n ? svg('path', { d: d }) : null);
  }

  function renderTopics(md, r) {
    var body = document.querySelector('#topics tbody');
    var names = Object.keys(md.topics).sort();
    clear(body);
    if (!names.length) {
      body.appendChild(el('tr', null, el('td', { colspan: 10, 'class': 'muted' }, 'no topics yet')));
      return;
    }
    names.forEach(function (tn) {
      var t = md.topics[tn], tr = rateOf(r, 'ternd_broker_topic_messages_total', { topic: tn });
      var hist = topicRateHist[tn] || (topicRateHist[tn] = []);
      if (tr !== undefined) push(hist, tr);
      body.appendChild(el('tr', { 'class': 'topic', 'data-topic': tn }, [
        el('td', null, [tn, t.paused ? el('span', { 'class': 'paused' }, 'paused') : null]),
        el('td', { 'class': 'depth' }, num(t.depth)), el('td'), el('td'),
        el('td', null, num(t.messages_total)), el('td', { 'class': 'rate' }, tr === undefined ? '-' : num(tr)),
        el('td'), el('td'), el('td', null, spark(hist)), el('td', null, actionButtons(tn, undefined, t.paused))
      ]));
      Object.keys(t.channels).sort().forEach(function (cn) {
        var c = t.channels[cn];
        body.appendChild(el('tr', { 'class': 'channel', 'data-topic': tn, 'data-channel': cn }, [
          el('td', null, [cn, c.paused ? el('span', { 'class': 'paused' }, 'paused') : null]),
          el('td', { 'class': 'depth' }, num(c.depth)), el('td', null, num(c.in_flight)),
          el('td', null, num(c.deferred)), el('td'), el('td'),
          el('td', null, num(c.requeued_total)), el('td', null, num(c.timeouts_total)), el('td'),
          el('td', null, actionButtons(tn, cn, c.paused))
        ]));
      });
    });
  }

  function renderPools(md, r) {
    var names = Object.keys(md.pools).sort(), body = document.querySelector('#pools tbody');
    document.getElementById('pools-panel').hidden = !names.length;
    clear(body);
    names.forEach(function (pn) {
      var p = md.pools[pn], pr = rateOf(r, 'ternd_pool_submitted_total', { pool: pn });
      body.appendChild(el('tr', { 'data-pool': pn }, [
        el('td', null, pn), el('td', null, num(p.capacity)), el('td', null, num(p.running)),
        el('td', null, num(p.idle)), el('td', null, num(p.waiting)), el('td', null, num(p.submitted_total)),
        el('td', null, pr === undefined ? '-' : num(pr)), el('td', null, num(p.completed_total)),
        el('td', null, num(p.failed_total)), el('td', null, num(p.rejected_total))
      ]));
    });
  }

  function labelText(l) {
    return Object.keys(l || {}).map(function (k) { return k + '=' + l[k]; }).join(' ');
  }

  /* The gateway's metrics are shown as they come: any ternd_gateway_* sample. */
  function renderGateway(md, r, now) {
    var body = document.querySelector('#gateway tbody');
    document.getElementById('gateway-panel').hidden = !md.gateway.length;
    clear(body);
    if (!md.gateway.length) return;
    var s = md.single, pin = rateOf(r, 'ternd_gateway_packets_in_total', {});
    var pout = rateOf(r, 'ternd_gateway_packets_out_total', {});
    if (s.ternd_gateway_sessions !== undefined) push(gatewayHist.sessions, [now, s.ternd_gateway_sessions]);
    if (pin !== undefined) push(gatewayHist['packets in/s'], [now, pin]);
    if (pout !== undefined) push(gatewayHist['packets out/s'], [now, pout]);
    lineChart(document.getElementById('chart-gateway'), Object.keys(gatewayHist).map(function (k) {
      return { name: k, points: gatewayHist[k] };
    }));
    md.gateway.forEach(function (m) {
      var rt = m.type === 'counter' ? r[key(m)] : undefined;
      body.appendChild(el('tr', { 'data-metric': m.name }, [
        el('td', null, m.name.slice('ternd_gateway_'.length)), el('td', { 'class': 'labels' }, labelText(m.labels)),
        el('td', null, num(m.value)), el('td', null, rt === undefined ? '' : num(rt))
      ]));
    });
  }

  function renderAll(md) {
    var body = document.querySelector('#metrics tbody');
    clear(body);
    md.all.forEach(function (m) {
      body.appendChild(el('tr', null, [el('td', null, m.name), el('td', { 'class': 'labels' }, labelText(m.labels)),
        el('td', null, num(m.value))]));
    });
  }

  /* ---- charts: hand-drawn SVG in a 600x180 view box ----------------------- */

  var W = 600, H = 180, L = 48, R = 110, T = 10, B = 22;

  function niceMax(v) {
    if (v <= 0) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v))), f = v / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  }

  function frame(box, max, note) {
    clear(box);
    box.appendChild(svg('line', { 'class': 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }));
    [0, 0.5, 1].forEach(function (f) {
      var y = H - B - f * (H - B - T);
      box.appendChild(svg('line', { 'class': 'axis', x1: L, y1: y, x2: W - R, y2: y, 'stroke-dasharray': f ? '3 3' : null }));
      box.appendChild(svg('text', { 'class': 'tick', x: L - 6, y: y + 4, 'text-anchor': 'end' }, num(max * f)));
    });
    if (note) box.appendChild(svg('text', { 'class': 'tick', x: L, y: H - 6 }, note));
  }

  function empty(box, text) {
    clear(box);
    box.appendChild(svg('text', { 'class': 'empty', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, text));
  }

  /* series: [{name, points: [[t, v]]}] drawn against a shared time axis. */
  function lineChart(box, series, note) {
    var pts = [].concat.apply([], series.map(function (s) { return s.points; }));
    if (!pts.length) return empty(box, 'collecting data...');
    var t0 = Math.min.apply(null, pts.map(function (p) { return p[0]; }));
    var t1 = Math.max.apply(null, pts.map(function (p) { return p[0]; }));
    var max = niceMax(Math.max.apply(null, pts.map(function (p) { return p[1]; })));
    var span = Math.max(t1 - t0, 1);
    frame(box, max, note);
    series.forEach(function (s, i) {
      var color = COLORS[i % COLORS.length];
      var d = s.points.map(function (p, j) {
        var x = L + (p[0] - t0) / span * (W - L - R), y = H - B - p[1] / max * (H - B - T);
        return (j ? 'L' : 'M') + x.toFixed(1) + ' ' + y.toFixed(1);
      }).join(' ');
      if (s.points.length === 1) d += ' h2';
      box.appendChild(svg('path', { 'class': 'series', d: d, stroke: color, 'data-series': s.name }));
      box.appendChild(svg('rect', { x: W - R + 10, y: T + i * 16, width: 10, height: 10, fill: color }));
      box.appendChild(svg('text', { 'class': 'legend', x: W - R + 24, y: T + 9 + i * 16 }, s.name));
    });
  }

  /* bars: [{name, values: [v, ...]}], groups of side-by-side bars. */
  function barChart(box, bars, keys) {
    if (!bars.length) return empty(box, 'nothing to show');
    var all = [].concat.apply([], bars.map(function (b) { return b.values; }));
    var max = niceMax(Math.max.apply(null, all));
    var slot = (W - L - R) / bars.length, bw = Math.min(28, slot * 0.8 / keys.length);
    frame(box, max);
    bars.forEach(function (b, i) {
      var x0 = L + i * slot + (slot - bw * keys.length) / 2;
      b.values.forEach(function (v, k) {
        var h = v / max * (H - B - T);
        box.appendChild(svg('rect', { 'class': 'bar', x: x0 + k * bw, y: H - B - h, width: bw - 2,
          height: Math.max(h, 0.5), fill: COLORS[k % COLORS.length], 'data-label': b.name + ':' + keys[k] },
          svg('title', null, b.name + ' ' + keys[k] + ': ' + v)));
      });
      var label = b.name.length > 18 ? b.name.slice(0, 17) + '\u2026' : b.name;
      box.appendChild(svg('text', { 'class': 'tick', x: L + i * slot + slot / 2, y: H - 6, 'text-anchor': 'middle' }, label));
    });
    keys.forEach(function (k, i) {
      box.appendChild(svg('rect', { x: W - R + 10, y: T + i * 16, width: 10, height: 10, fill: COLORS[i % COLORS.length] }));
      box.appendChild(svg('text', { 'class': 'legend', x: W - R + 24, y: T + 9 + i * 16 }, k));
    });
  }

  function renderCharts(md, r, now) {
    var rate = rateOf(r, 'ternd_broker_published_total', {});
    if (rate !== undefined) push(rateHist, [now, rate]);
    if (md.single.ternd_broker_published_total === undefined) empty(document.getElementById('chart-rate'), 'no broker module');
    else lineChart(document.getElementById('chart-rate'), [{ name: 'published', points: rateHist }]);

    var names = Object.keys(md.topics).sort();
    names.forEach(function (tn) {
      push(depthHist[tn] || (depthHist[tn] = []), [now, md.topics[tn].depth || 0]);
    });
    Object.keys(depthHist).forEach(function (tn) {
      if (md.topics[tn]) return;
      delete depthHist[tn];
      delete topicRateHist[tn];
    });
    lineChart(document.getElementById('chart-depth'), names.slice(0, COLORS.length).map(function (tn) {
      return { name: tn, points: depthHist[tn] };
    }));

    var chans = [];
    names.forEach(function (tn) {
      Object.keys(md.topics[tn].channels).sort().forEach(function (cn) {
        var c = md.topics[tn].channels[cn];
        chans.push({ name: tn + '/' + cn, values: [c.depth || 0, c.in_flight || 0] });
      });
    });
    barChart(document.getElementById('chart-channels'), chans.slice(0, 16), ['depth', 'in flight']);

    barChart(document.getElementById('chart-pools'), Object.keys(md.pools).sort().map(function (pn) {
      var p = md.pools[pn];
      return { name: pn, values: [(p.running || 0) - (p.idle || 0), p.idle || 0, p.capacity || 0] };
    }), ['busy', 'idle', 'capacity']);
  }

  /* ---- polling ----------------------------------------------------------- */

  function setStatus(cls, text) {
    var s = document.getElementById('status');
    s.className = 'status ' + cls;
    s.textContent = text;
  }

  function render(stats) {
    var now = Date.now(), r = rates(stats, now), md = build(stats);
    document.getElementById('version').textContent = 'v' + md.version;
    renderCards(md, r);
    renderCharts(md, r, now);
    renderTopics(md, r);
    renderPools(md, r);
    renderGateway(md, r, now);
    renderAll(md);
    setStatus('ok', 'live ' + new Date(now).toLocaleTimeString());
  }

  function poll() {
    return fetch('/stats', { cache: 'no-store' }).then(function (resp) {
      if (!resp.ok) throw new Error('HTTP ' + resp.status);
      return resp.json();
    }).then(render).catch(function (e) {
      setStatus('bad', '/stats unavailable: ' + e.message);
    });
  }

  function schedule() {
    var ms = Number(document.getElementById('interval').value);
    if (timer) clearTimeout(timer);
    timer = null;
    if (!ms) return;
    timer = setTimeout(function () { poll().then(schedule); }, ms);
  }

  function probeActions() {
    return fetch('/dashboard/api/broker', { cache: 'no-store' }).then(function (resp) {
      actions = resp.ok ? true : null;
    }).catch(function () { actions = null; }).then(function () {
      document.getElementById('actions-note').textContent = actions ? '' :
        'Pause, empty and delete need the broker module (not running here).';
    });
  }

  document.getElementById('interval').addEventListener('change', schedule);
  probeActions().then(poll).then(schedule);
}());
