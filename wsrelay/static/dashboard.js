/* The dashboard (/dashboard): /dashboard/stats every second, drawn. No inline code: the
   page is served with a Content-Security-Policy that allows only its own files. */
(function () {
  'use strict';

  var EVERY_MS = 1000;
  var HISTORY_S = 300;
  var CLOSES = { 1000: 'normal', 1001: 'going away', 1002: 'protocol error', 1003: 'unsupported data',
                 1006: 'no close frame', 1007: 'invalid data', 1008: 'policy', 1009: 'too big',
                 1011: 'server error', 1012: 'restart', 1013: 'try again later' };

  function $(id) { return document.getElementById(id); }
  var statsUrl = document.body.getAttribute('data-stats');
  var token = new URLSearchParams(location.search).get('token');
  var headers = token ? { Authorization: 'Bearer ' + token } : {};
  var RATE_S = 10;   // the tiles' rates: the average of the last seconds (0.5/s, not 0 or 1)
  var samples = new Map();   // t (server seconds) -> a second summed over the workers
  var points = [];   // {t, websocket, sse, poll, published, delivered}: from samples, in order
  var previous = null;
  var newest = null;         // the last answer's server time (s): "now" on the graphs
  var answered = null;       // when the server last answered (Date), for the stale mark

  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  var connectionSeries = [['websocket', '--accent'], ['sse', '--ok'], ['poll', '--warn']];
  var messageSeries = [['published', '--accent'], ['delivered', '--ok']];

  function number(n, digits) {
    if (n === null || n === undefined || !isFinite(n)) return '-';
    var abs = Math.abs(n);
    if (abs >= 1e6) return (n / 1e6).toFixed(1) + 'M';
    if (abs >= 1e4) return (n / 1e3).toFixed(1) + 'k';
    return n.toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 1 : digits });
  }
  function bytes(n) {
    if (n === null || !isFinite(n)) return '-';
    var units = ['B', 'KB', 'MB', 'GB', 'TB'], i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(1) : Math.round(n)) + ' ' + units[i];
  }
  function latencyText(seconds) {
    if (seconds === null) return '-';
    if (seconds < 0.01) return (seconds * 1000).toFixed(2) + ' ms';
    return seconds < 1 ? (seconds * 1000).toFixed(0) + ' ms' : seconds.toFixed(1) + ' s';
  }

  // The q quantile of cumulative buckets [[le, count]], interpolated as histogram_quantile does.
  function quantile(buckets, q) {
    var total = buckets.length ? buckets[buckets.length - 1][1] : 0;
    if (total <= 0) return null;
    var rank = q * total, lower = 0, below = 0;
    for (var i = 0; i < buckets.length; i++) {
      var le = buckets[i][0], count = buckets[i][1];
      if (count >= rank) {
        if (le === '+Inf') return lower;
        var upper = parseFloat(le);
        return lower + (upper - lower) * (rank - below) / Math.max(count - below, 1);
      }
      lower = parseFloat(le); below = count;
    }
    return lower;
  }

  // The server keeps five minutes of per-second samples: the first answer brings them all,
  // the next ones the last few seconds, merged by their time.
  function remember(list, now) {
    list.forEach(function (sample) { samples.set(sample.t, sample); });
    samples.forEach(function (sample, t) { if (t < now - HISTORY_S - 5) samples.delete(t); });
    points = Array.from(samples.values()).sort(function (a, b) { return a.t - b.t; }).map(function (s) {
      return { t: s.t, websocket: s.connections.websocket || 0, sse: s.connections.sse || 0,
               poll: s.connections.poll || 0, published: s.published, delivered: s.delivered };
    });
  }

  // Per second, over the last RATE_S seconds the server sampled.
  function rate(key) {
    if (!samples.size) return null;
    var last = Math.max.apply(null, Array.from(samples.keys()));
    var sum = 0;
    samples.forEach(function (sample, t) { if (t > last - RATE_S) sum += sample[key]; });
    return sum / Math.min(RATE_S, samples.size);
  }

  // ------------------------------------------------------------------ graphs

  function niceMax(value) {
    if (value <= 1) return 1;
    var step = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * step >= value) return steps[i] * step;
    return 10 * step;
  }

  function draw(canvas, series, now) {
    var ratio = window.devicePixelRatio || 1;
    var width = canvas.clientWidth, height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
    }
    var ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    var left = 46, right = 8, top = 8, bottom = 20;
    var plotW = width - left - right, plotH = height - top - bottom;
    var start = now - HISTORY_S;
    var visible = points.filter(function (p) { return p.t >= start; });
    var max = 0;
    visible.forEach(function (p) {
      series.forEach(function (s) { if (p[s[0]] !== null) max = Math.max(max, p[s[0]]); });
    });
    max = niceMax(max);
    function x(t) { return left + (t - start) / HISTORY_S * plotW; }
    function y(v) { return top + plotH - v / max * plotH; }

    ctx.font = '11px ' + css('--mono');
    ctx.lineWidth = 1;
    ctx.strokeStyle = css('--border');
    ctx.fillStyle = css('--muted');
    ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
    for (var i = 0; i <= 4; i++) {
      var value = max * i / 4, py = Math.round(y(value)) + 0.5;
      ctx.beginPath(); ctx.moveTo(left, py); ctx.lineTo(width - right, py); ctx.stroke();
      ctx.fillText(number(value, 2), left - 6, py);
    }
    ctx.textAlign = 'center'; ctx.textBaseline = 'top';
    var every = plotW < 360 ? 2 : 1;  // minutes between labels: fewer on a phone
    for (var m = 0; m <= HISTORY_S / 60; m += every) {
      var label = m === 0 ? 'now' : '-' + m + ' min';
      ctx.fillText(label, Math.min(Math.max(x(now - m * 60), left + 16), width - right - 16), top + plotH + 5);
    }

    ctx.lineWidth = 2; ctx.lineJoin = 'round';
    series.forEach(function (s) {
      ctx.strokeStyle = css(s[1]);
      ctx.beginPath();
      var last = null;
      visible.forEach(function (p) {
        var v = p[s[0]];
        if (v === null) { last = null; return; }
        if (last === null || p.t - last > 3 * EVERY_MS / 1000) ctx.moveTo(x(p.t), y(v));
        else ctx.lineTo(x(p.t), y(v));
        last = p.t;
      });
      ctx.stroke();
    });
  }

  function legend(element, series, point) {
    element.textContent = '';
    series.forEach(function (s) {
      var item = document.createElement('span');
      item.style.setProperty('--c', css(s[1]));
      item.appendChild(document.createTextNode(s[0]));
      var value = document.createElement('b');
      value.textContent = point ? number(point[s[0]]) : '-';
      item.appendChild(value);
      element.appendChild(item);
    });
  }

  function redraw() {
    var now = newest || Date.now() / 1000, point = points.length ? points[points.length - 1] : null;
    draw($('connections-chart'), connectionSeries, now);
    draw($('messages-chart'), messageSeries, now);
    legend($('connections-legend'), connectionSeries, point);
    legend($('messages-legend'), messageSeries, point);
  }

  // ------------------------------------------------------------------ tables

  function row(cells) {
    var tr = document.createElement('tr');
    cells.forEach(function (cell) {
      var td = document.createElement('td');
      if (cell.className) td.className = cell.className;
      if (cell.bar !== undefined) {
        var bar = document.createElement('span');
        bar.style.width = (cell.bar * 100).toFixed(1) + '%';
        td.appendChild(bar);
      } else {
        td.textContent = cell.text;
      }
      tr.appendChild(td);
    });
    return tr;
  }

  function fill(tbody, rows) { tbody.replaceChildren.apply(tbody, rows); }

  function showTables(body) {
    var seconds = body.busiest_window || 1;
    var top = body.busiest.length ? body.busiest[0].messages : 1;
    fill($('busiest'), body.busiest.map(function (entry) {
      return row([{ text: entry.channel, className: 'name' },
                  { text: number(entry.messages / seconds), className: 'num' },
                  { bar: entry.messages / top, className: 'bar' }]);
    }));
    $('busiest-title').textContent = 'Busiest channels · pid ' + body.pid;
    fill($('closes'), Object.keys(body.totals.closes).map(function (code) {
      var name = CLOSES[code] ? code + ' ' + CLOSES[code] : code;
      return row([{ text: name }, { text: number(body.totals.closes[code], 0), className: 'num' }]);
    }));
    var details = Object.assign({}, body.broker, body.counts, { draining: body.draining });
    fill($('broker-table'), Object.keys(details).map(function (key) {
      var value = details[key];
      return row([{ text: key }, { text: value === null ? '-' : String(value), className: 'num' }]);
    }));
  }

  // ------------------------------------------------------------------ updates

  function show(body) {
    var totals = body.totals;
    var conns = totals.connections;
    var total = Object.keys(conns).reduce(function (sum, key) { return sum + conns[key]; }, 0);
    newest = body.time;
    answered = new Date();
    remember(body.samples || [], body.time);
    var published = rate('published');
    var delivered = rate('delivered');
    var sent = rate('bytes_sent');
    stale(false);

    var state = body.draining ? 'draining' : body.broker.ok ? 'ok' : 'degraded';
    $('state').textContent = state; $('state').setAttribute('data-state', state);
    $('broker').textContent = body.broker.broker || '-';
    $('processes').textContent = totals.processes;
    $('pid').textContent = body.pid;
    $('connections').textContent = number(total, 0);
    $('connections-meta').textContent = 'websocket ' + number(conns.websocket || 0, 0) +
      ' · sse ' + number(conns.sse || 0, 0) + ' · poll ' + number(conns.poll || 0, 0);
    $('published').textContent = number(published);
    $('published-meta').textContent = number(totals.published, 0) + ' since start';
    $('delivered').textContent = number(delivered);
    $('delivered-meta').textContent = number(totals.delivered, 0) + ' since start';
    $('sent').textContent = sent === null ? '-' : bytes(sent) + '/s';
    $('sent-meta').textContent = bytes(totals.bytes_sent) + ' since start';
    var buckets = totals.latency.buckets;   // since start; since the last answer when there is one
    if (previous) {
      var old = {};
      previous.totals.latency.buckets.forEach(function (b) { old[b[0]] = b[1]; });
      buckets = buckets.map(function (b) { return [b[0], b[1] - (old[b[0]] || 0)]; });
    }
    $('latency').textContent = latencyText(quantile(buckets, 0.5)) + ' · ' + latencyText(quantile(buckets, 0.99));
    $('faults').textContent = number(totals.slow_consumer_closes, 0) + ' · ' + number(totals.broker_errors, 0);
    showTables(body);
    $('alert').hidden = true;
    previous = body;
  }

  // While the server does not answer, the numbers shown are old: say so, and since when.
  function stale(on) {
    var app = document.querySelector('.app');
    if (on) app.setAttribute('data-stale', '');
    else app.removeAttribute('data-stale');
    $('stale').hidden = !on;
    if (on) $('stale').textContent = answered ? 'as of ' + answered.toLocaleTimeString([], { hour12: false }) : 'no data yet';
  }

  function failed(message, state) {
    $('state').textContent = state; $('state').setAttribute('data-state', state);
    $('alert').textContent = message; $('alert').hidden = false;
    stale(true);
    previous = null;
  }

  function refresh() {
    var url = statsUrl + (samples.size ? '?samples=' + (RATE_S + 5) : '');  // all of them at first
    fetch(url, { headers: headers, cache: 'no-store' }).then(function (response) {
      return response.json().then(function (body) {
        if (response.ok) return show(body);
        var hint = response.status === 401 ? ' Open this page with ?token=<WSRELAY_ADMIN_TOKEN>.' : '';
        failed('HTTP ' + response.status + ': ' + body.message + '.' + hint, 'refused');
      });
    }).catch(function () {
      failed('The server does not answer; retrying every second.', 'unreachable');
    }).then(function () {
      redraw();
      setTimeout(refresh, EVERY_MS);
    });
  }

  window.addEventListener('resize', redraw);
  refresh();
})();
