/*!
 * wsrelay.js: the browser client of wsrelay. No dependencies, no build step.
 *
 *   var client = wsrelay.connect({ token: '...' });          // url, transports, token
 *   client.subscribe('room', function (data, meta) {...});   // meta.id, meta.channel
 *   client.publish('room', 'hello').then(function (id) {...});
 *   client.on('state', function (state) {...});              // connecting | open | closed
 *
 * One WebSocket speaking the `wsrelay.v1` subprotocol carries every channel;
 * where WebSocket is missing or blocked the client falls back to Server-Sent
 * Events, then to long-polling (one stream per channel, publishing by POST),
 * with the same API. Each channel remembers the id of its last message, so a
 * reconnect (with jittered exponential backoff) resumes every channel where it
 * was: nothing the server still holds is lost, and no id reaches a handler twice.
 */
(function (global) {
  'use strict';

  var SUBPROTOCOL = 'wsrelay.v1';
  var TRANSPORTS = ['websocket', 'sse', 'poll'];
  var CHANNEL = /^[A-Za-z0-9_.:-]{1,128}$/;
  var DEFAULTS = {
    minDelay: 500,        // ms before the first reconnect (then doubling, jittered)
    maxDelay: 10000,      // ms, the longest wait between reconnects
    openTimeout: 10000,   // ms a connection may take to open before it counts as failed
    pollTimeout: 25       // s a long-poll is held by the server
  };
  var STABLE_MS = 5000;   // a connection open this long resets the backoff
  var FALLBACK_AFTER = 2; // failures to open, on a transport that never worked, before falling back
  var SEEN_IDS = 1000;    // ids remembered per channel to drop duplicates
  var FATAL_STATUS = [400, 401, 403, 404, 405, 413];

  var supported = {
    websocket: function () { return typeof global.WebSocket === 'function'; },
    sse: function () { return typeof global.EventSource === 'function'; },
    poll: function () { return typeof global.fetch === 'function'; }
  };

  // ------------------------------------------------------------------ helpers

  function checkChannel(channel) {
    if (typeof channel !== 'string' || !CHANNEL.test(channel)) {
      throw new TypeError('wsrelay: invalid channel name ' + JSON.stringify(channel) +
        ' (1-128 letters, digits and _ . : -)');
    }
  }

  function relayError(reason, code, extra) {
    var error = new Error(reason);
    error.code = code;
    for (var key in extra || {}) error[key] = extra[key];
    return error;
  }

  function report(error) {  // a handler's exception must not stop delivery to the others
    if (typeof global.reportError === 'function') global.reportError(error);
    else setTimeout(function () { throw error; });
  }

  function bytesOf(data) {
    if (data instanceof ArrayBuffer) return new Uint8Array(data);
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return null;
  }

  function toBase64(bytes) {
    var text = '';
    for (var i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  }

  function fromBase64(text) {
    var raw = atob(text);
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  // A message item of the JSON transports: {"id", "data", "encoding"?}; binary is base64.
  function itemData(item) {
    return item.encoding === 'base64' ? fromBase64(item.data) : item.data;
  }

  function backoff(options, attempt) {
    var base = Math.min(options.maxDelay, options.minDelay * Math.pow(2, Math.min(attempt, 30)));
    return base / 2 + Math.random() * base / 2;
  }

  // ------------------------------------------------------------------- client

  /** One logical connection to a wsrelay server, over the best transport that works. */
  function Client(options) {
    options = options || {};
    this._options = Object.assign({}, DEFAULTS, options);
    this._base = String(options.url || global.location.origin).replace(/^ws/, 'http').replace(/\/+$/, '');
    this._token = options.token;
    this._transports = (options.transports || TRANSPORTS).filter(function (name) {
      return TRANSPORTS.indexOf(name) !== -1 && supported[name]();
    });
    this._subs = new Map();      // channel -> {channel, handler, onReset, lastId, seen, live}
    this._listeners = { state: [], transport: [], error: [] };
    this._outbox = [];           // requests waiting for a connection that can carry them
    this._ack = 0;
    this._worked = {};           // transports that opened once here: never fallen back from
    this._failures = 0;          // consecutive failures to open on the current transport
    this._attempt = 0;           // consecutive reconnects (the backoff's exponent)
    this._conn = null;
    this._timer = null;
    this._openTimer = null;
    this._probe = null;          // the reachability check before a fallback
    this._state = 'connecting';
    this._transport = this._transports[0] || null;
    this._online = this._reconnectNow.bind(this);
    if (!this._transport) {
      this._state = 'closed';
      var self = this;
      setTimeout(function () {
        self._emit('error', relayError('no transport available: none of ' +
          (options.transports || TRANSPORTS).join(', ') + ' works in this browser', 'no_transport'));
      });
      return;
    }
    global.addEventListener('online', this._online);
    this._connect();
  }

  Object.defineProperties(Client.prototype, {
    /** 'websocket' | 'sse' | 'poll': the transport in use (or being tried). */
    transport: { get: function () { return this._transport; } },
    /** 'connecting' | 'open' | 'closed'. */
    state: { get: function () { return this._state; } },
    /** The channels subscribed to. */
    channels: { get: function () { return Array.from(this._subs.keys()); } }
  });

  /**
   * Receive every message of `channel`: handler(data, {id, channel}), where data is a
   * string for text and a Uint8Array for binary. options.onReset(channel, cursor) is told
   * when messages were missed that history no longer holds; options.since starts after a
   * known id. Subscribing again to a channel replaces its handler and keeps its position.
   *
   * Returns a promise of the channel's position once the subscription is live (everything
   * published from then on reaches the handler); it rejects if the server refuses the
   * channel, which the 'error' event also reports, so it need not be awaited.
   */
  Client.prototype.subscribe = function (channel, handler, options) {
    checkChannel(channel);
    if (typeof handler !== 'function') throw new TypeError('wsrelay: handler must be a function');
    options = options || {};
    var sub = this._subs.get(channel);
    if (sub) {
      sub.handler = handler;
      sub.onReset = options.onReset || null;
      return sub.live;
    }
    sub = { channel: channel, handler: handler, onReset: options.onReset || null,
            lastId: options.since ? String(options.since) : null, seen: new Set() };
    sub.live = new Promise(function (resolve, reject) {
      sub.settle = function (error) {
        if (error) reject(error);
        else resolve(sub.lastId);
      };
    });
    sub.live.catch(function () { /* reported on the 'error' event */ });
    this._subs.set(channel, sub);
    if (this._state === 'closed') sub.settle(relayError('client closed', 'closed'));
    else if (this._conn) this._conn.add(sub);
    return sub.live;
  };

  /** Stop receiving `channel`. */
  Client.prototype.unsubscribe = function (channel) {
    var sub = this._subs.get(channel);
    if (!sub) return this;
    this._subs.delete(channel);
    sub.settle(relayError('unsubscribed from ' + channel, 'unsubscribed', { channel: channel }));
    if (this._conn) this._conn.remove(sub);
    return this;
  };

  /**
   * Publish text (a string) or binary (ArrayBuffer, Uint8Array...); resolves to the message's
   * id. While the connection is down it waits, and is sent once it is back. Rejects with the
   * server's reason when refused, and when the connection is lost before the server answered
   * (it may or may not have been accepted: a retry could publish it twice).
   */
  Client.prototype.publish = function (channel, data) {
    checkChannel(channel);
    var bytes = bytesOf(data);
    if (bytes === null && typeof data !== 'string') {
      return Promise.reject(new TypeError('wsrelay: publish a string or binary data'));
    }
    return this._request({ type: 'publish', channel: channel, text: bytes ? null : data, bytes: bytes });
  };

  /**
   * How many subscribers `channel` has, over every worker: a number over WebSocket; null on
   * SSE and long-poll, which cannot ask.
   */
  Client.prototype.presence = function (channel) {
    checkChannel(channel);
    return this._request({ type: 'presence', channel: channel });
  };

  /** on('state' | 'transport' | 'error', fn): returns a function that removes fn. */
  Client.prototype.on = function (event, fn) {
    var list = this._listeners[event];
    if (!list) throw new TypeError('wsrelay: unknown event ' + JSON.stringify(event));
    list.push(fn);
    return function () {
      var at = list.indexOf(fn);
      if (at !== -1) list.splice(at, 1);
    };
  };

  /** Close for good; pending publishes are rejected. */
  Client.prototype.close = function () {
    if (this._state === 'closed') return;
    global.removeEventListener('online', this._online);
    clearTimeout(this._timer);
    var waiting = this._drop(this._conn).concat(this._outbox.splice(0));
    for (var i = 0; i < waiting.length; i++) waiting[i].reject(relayError('client closed', 'closed'));
    this._subs.forEach(function (sub) { sub.settle(relayError('client closed', 'closed')); });
    this._setState('closed');
  };

  // -- inside ----------------------------------------------------------------

  Client.prototype._emit = function (event) {
    var args = Array.prototype.slice.call(arguments, 1);
    var list = this._listeners[event].slice();
    if (event === 'error' && !list.length && global.console) global.console.warn('wsrelay:', args[0]);
    for (var i = 0; i < list.length; i++) {
      try { list[i].apply(this, args); } catch (error) { report(error); }
    }
  };

  Client.prototype._setState = function (state) {
    if (this._state === state) return;
    this._state = state;
    this._emit('state', state);
  };

  /** The token option: a string, or a function asked each time (tokens expire). */
  Client.prototype._currentToken = function () {
    return typeof this._token === 'function' ? this._token() : this._token;
  };

  Client.prototype._query = function (params) {
    var query = new URLSearchParams();
    for (var key in params) if (params[key] !== null && params[key] !== undefined) query.set(key, params[key]);
    var token = this._currentToken();
    if (token) query.set('token', token);
    var text = query.toString();
    return text ? '?' + text : '';
  };

  Client.prototype._connect = function () {
    this._setState('connecting');  // before the connection exists: a listener may subscribe
    var conn = CONNECTIONS[this._transport](this);
    this._conn = conn;
    var self = this;
    this._openTimer = setTimeout(function () {
      self._lost(conn, 'not open after ' + self._options.openTimeout + ' ms');
    }, this._options.openTimeout);
    conn.start();
  };

  Client.prototype._reconnectNow = function () {
    if (this._timer === null) return;
    clearTimeout(this._timer);
    this._timer = null;
    this._attempt = 0;
    this._connect();
  };

  // The connection can carry requests: send what waited.
  Client.prototype._opened = function (conn) {
    if (conn !== this._conn) return;
    clearTimeout(this._openTimer);
    conn.openedAt = Date.now();
    var waiting = this._outbox.splice(0);
    for (var i = 0; i < waiting.length; i++) conn.send(waiting[i]);
    this._setState('open');
  };

  // The connection carried traffic: its transport works here.
  Client.prototype._proven = function (conn) {
    if (conn !== this._conn || conn.proven) return;
    conn.proven = true;
    this._worked[conn.name] = true;
    this._failures = 0;
  };

  /** Close the connection; returns the requests it sent that got no answer. */
  Client.prototype._drop = function (conn) {
    clearTimeout(this._openTimer);
    if (!conn) return [];
    if (conn === this._conn) this._conn = null;
    return conn.close();
  };

  /** The connection failed or was lost: reconnect after a backoff, or fall back. */
  Client.prototype._lost = function (conn, reason, unsupported) {
    if (conn !== this._conn) return;
    var unanswered = this._drop(conn);
    for (var i = 0; i < unanswered.length; i++) {
      var request = unanswered[i];
      if (request.type === 'presence') this._outbox.push(request);  // harmless to ask again
      else request.reject(relayError('connection lost before the server answered (' + reason + ')',
        'connection_lost', { channel: request.channel }));
    }
    if (conn.proven) {
      if (Date.now() - conn.openedAt >= STABLE_MS) this._attempt = 0;
    } else {
      this._failures += unsupported ? FALLBACK_AFTER : 1;
    }
    this._setState('connecting');
    var next = this._transports[this._transports.indexOf(this._transport) + 1];
    if (next && !this._worked[this._transport] && this._failures >= FALLBACK_AFTER) {
      this._fallBackIfReachable(next, reason);
    } else {
      this._retry();
    }
  };

  Client.prototype._retry = function () {
    var self = this;
    this._timer = setTimeout(function () {
      self._timer = null;
      self._connect();
    }, backoff(this._options, this._attempt++));
  };

  /**
   * The transport failed to open again and again, and never worked here. If the server
   * answers plain HTTP, the transport is what is missing or blocked (by a proxy, say): fall
   * back to the next one. If not, the server is down: wait for it on this transport.
   */
  Client.prototype._fallBackIfReachable = function (next, reason) {
    var self = this;
    var probe = this._probe = typeof global.fetch !== 'function' ? Promise.resolve(true)
      : fetch(this._base + '/healthz', { mode: 'no-cors', cache: 'no-store' }).then(
        function () { return true; }, function () { return false; });
    probe.then(function (reachable) {
      if (self._probe !== probe || self._state === 'closed') return;
      self._probe = null;
      if (!reachable) {
        self._retry();
        return;
      }
      self._transport = next;
      self._failures = 0;
      self._attempt = 0;
      self._emit('transport', next, reason);
      self._connect();
    });
  };

  Client.prototype._request = function (request) {
    var self = this;
    return new Promise(function (resolve, reject) {
      request.resolve = resolve;
      request.reject = reject;
      if (self._state === 'closed') reject(relayError('client closed', 'closed'));
      else if (self._conn && self._conn.ready) self._conn.send(request);
      else self._outbox.push(request);
    });
  };

  Client.prototype._nextAck = function () { return ++this._ack; };

  /** Hand one message to its channel's handler, once per id. */
  Client.prototype._deliver = function (sub, id, data) {
    if (this._subs.get(sub.channel) !== sub) return;  // unsubscribed meanwhile
    id = id === undefined || id === null ? '' : String(id);
    if (id) {
      if (sub.seen.has(id)) return;
      sub.seen.add(id);
      if (sub.seen.size > SEEN_IDS) sub.seen.delete(sub.seen.values().next().value);
      sub.lastId = id;
    }
    try { sub.handler.call(this, data, { id: id, channel: sub.channel }); } catch (error) { report(error); }
  };

  /** The server knows where the subscription stands: from here on nothing is missed. */
  Client.prototype._live = function (sub, cursor) {
    if (sub.lastId === null && cursor) sub.lastId = String(cursor);
    sub.settle();
  };

  /** The server refused the channel (bad token, origin...): no retry helps. */
  Client.prototype._refused = function (sub, error) {
    sub.settle(error);
    this._emit('error', error);
  };

  /** History could not fill a gap: the channel goes on from `cursor`. */
  Client.prototype._reset = function (sub, cursor) {
    if (this._subs.get(sub.channel) !== sub) return;
    if (cursor) sub.lastId = String(cursor);
    if (sub.onReset) {
      try { sub.onReset.call(this, sub.channel, sub.lastId); } catch (error) { report(error); }
    }
  };

  /** A long-poll answer: {channel, cursor, messages: [...], reset?}. */
  Client.prototype._page = function (sub, body) {
    if (body.reset) this._reset(sub, body.cursor);
    var messages = body.messages || [];
    for (var i = 0; i < messages.length; i++) this._deliver(sub, messages[i].id, itemData(messages[i]));
    if (body.cursor && this._subs.get(sub.channel) === sub) sub.lastId = String(body.cursor);
  };

  // ---------------------------------------------------------------- WebSocket

  /** One socket speaking wsrelay.v1 for every channel. */
  function SocketConnection(client) {
    this.client = client;
    this.name = 'websocket';
    this.ready = false;
    this.proven = false;
    this.pending = new Map();   // ack -> request
    this.ws = null;
  }

  SocketConnection.prototype.start = function () {
    var client = this.client;
    var self = this;
    var url = client._base.replace(/^http/, 'ws') + '/ws' + client._query({});
    try {
      this.ws = new global.WebSocket(url, [SUBPROTOCOL]);
    } catch (error) {
      setTimeout(function () { client._lost(self, error.message); });
      return;
    }
    var ws = this.ws;
    ws.onopen = function () {
      if (ws.protocol !== SUBPROTOCOL) {
        client._lost(self, 'the server does not speak ' + SUBPROTOCOL, true);
        return;
      }
      self.ready = true;
      client._proven(self);  // the handshake went through: nothing blocks WebSocket here
      client._subs.forEach(function (sub) { self.add(sub); });
      client._opened(self);
    };
    ws.onmessage = function (event) { self.receive(event.data); };
    ws.onclose = function (event) {
      client._lost(self, 'closed with ' + event.code + (event.reason ? ': ' + event.reason : ''));
    };
  };

  SocketConnection.prototype.request = function (envelope, request) {
    if (request) {
      envelope.ack = this.client._nextAck();
      this.pending.set(envelope.ack, request);
    }
    this.ws.send(JSON.stringify(envelope));
  };

  SocketConnection.prototype.add = function (sub) {
    if (!this.ready) return;  // every channel is subscribed once the socket opens
    var envelope = { type: 'subscribe', channel: sub.channel };
    if (sub.lastId) envelope.since = sub.lastId;
    this.request(envelope, { type: 'subscribe', sub: sub });
  };

  SocketConnection.prototype.remove = function (sub) {
    if (this.ready) this.request({ type: 'unsubscribe', channel: sub.channel });
  };

  SocketConnection.prototype.send = function (request) {
    var envelope = { type: request.type, channel: request.channel };
    if (request.type === 'publish') {
      if (request.bytes) {
        envelope.data = toBase64(request.bytes);
        envelope.encoding = 'base64';
      } else {
        envelope.data = request.text;
      }
    }
    this.request(envelope, request);
  };

  SocketConnection.prototype.receive = function (text) {
    var client = this.client;
    var envelope;
    try {
      envelope = JSON.parse(text);
    } catch (error) {
      client._emit('error', relayError('unreadable envelope from the server', 'invalid_envelope'));
      return;
    }
    var sub = envelope.channel !== undefined ? client._subs.get(envelope.channel) : null;
    if (envelope.type === 'message') {
      if (sub) client._deliver(sub, envelope.id, itemData(envelope));
    } else if (envelope.type === 'reset') {
      if (sub) client._reset(sub, envelope.cursor);
    } else if (envelope.type === 'ack') {
      this.answer(envelope);
    } else if (envelope.type === 'error') {
      this.refused(envelope);
    }
  };

  SocketConnection.prototype.answer = function (envelope) {
    var request = this.pending.get(envelope.ack);
    if (!request) return;
    this.pending.delete(envelope.ack);
    if (request.type === 'publish') request.resolve(envelope.id);
    else if (request.type === 'presence') request.resolve(envelope.count);
    else if (request.type === 'subscribe') this.client._live(request.sub, envelope.cursor);
  };

  SocketConnection.prototype.refused = function (envelope) {
    var asked = envelope.request || {};
    var request = asked.ack !== undefined ? this.pending.get(asked.ack) : undefined;
    var error = relayError(envelope.reason || envelope.code, envelope.code,
      { channel: asked.channel, request: asked });
    if (request) this.pending.delete(asked.ack);
    if (request && request.type === 'subscribe') this.client._refused(request.sub, error);
    else if (request && request.reject) request.reject(error);
    else this.client._emit('error', error);
  };

  SocketConnection.prototype.close = function () {
    this.ready = false;
    var ws = this.ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try { ws.close(1000); } catch (error) { /* already closed */ }
    }
    var pending = Array.from(this.pending.values()).filter(function (request) {
      return request.reject;
    });
    this.pending.clear();
    return pending;
  };

  // -------------------------------------------------------- SSE and long-poll

  /**
   * HTTP transports: one stream per channel (an EventSource, or a loop of long-polls), each
   * with its own cursor; publishing is a POST. Open once every stream it started with is.
   */
  function HttpConnection(client, name) {
    this.client = client;
    this.name = name;
    this.ready = false;
    this.proven = false;
    this.streams = new Map();   // channel -> stream
    this.starting = new Set();  // streams not open yet, while the connection is not
    this.closed = false;
  }

  HttpConnection.prototype.start = function () {
    var self = this;
    this.client._subs.forEach(function (sub) { self.add(sub); });
    // Without channels there is nothing to wait for; but a page usually subscribes right
    // after connect(), so only once the current script has run.
    Promise.resolve().then(function () { self.check(); });
  };

  HttpConnection.prototype.add = function (sub) {
    var stream = new (this.name === 'sse' ? EventStream : PollStream)(this, sub);
    this.streams.set(sub.channel, stream);
    if (!this.ready) this.starting.add(stream);
    stream.run();
  };

  HttpConnection.prototype.remove = function (sub) {
    var stream = this.streams.get(sub.channel);
    if (!stream) return;
    this.end(stream);
    this.check();
  };

  HttpConnection.prototype.end = function (stream) {
    stream.stop();
    this.streams.delete(stream.sub.channel);
    this.starting.delete(stream);
  };

  HttpConnection.prototype.check = function () {
    if (this.ready || this.closed || this.starting.size) return;
    this.ready = true;
    this.client._opened(this);
  };

  HttpConnection.prototype.opened = function (stream) {
    if (this.closed || this.streams.get(stream.sub.channel) !== stream) return;
    this.client._proven(this);
    this.starting.delete(stream);
    this.check();
  };

  /** A stream failed: the server is down or unreachable. Reconnect everything. */
  HttpConnection.prototype.failed = function (stream, reason) {
    if (!this.closed && this.streams.get(stream.sub.channel) === stream) {
      this.client._lost(this, reason);
    }
  };

  /** The server refused a channel (bad name, token, origin): no retry helps. */
  HttpConnection.prototype.refused = function (stream, error) {
    if (this.closed || this.streams.get(stream.sub.channel) !== stream) return;
    this.end(stream);
    this.client._refused(stream.sub, error);
    this.check();
  };

  HttpConnection.prototype.send = function (request) {
    if (request.type === 'presence') {
      request.resolve(null);
      return;
    }
    var client = this.client;
    var token = client._currentToken();
    var headers = { 'Content-Type': request.bytes ? 'application/octet-stream' : 'text/plain; charset=utf-8' };
    if (token) headers.Authorization = 'Bearer ' + token;
    fetch(client._base + '/publish/' + request.channel, {
      method: 'POST', headers: headers, body: request.bytes || request.text, cache: 'no-store'
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (response.ok && body.id) request.resolve(body.id);
        else request.reject(relayError(body.message || 'HTTP ' + response.status,
          body.error || 'http_' + response.status, { channel: request.channel, status: response.status }));
      });
    }, function (error) {
      request.reject(relayError('publish failed: ' + error.message, 'connection_lost',
        { channel: request.channel }));
    });
  };

  HttpConnection.prototype.close = function () {
    this.closed = true;
    this.ready = false;
    this.streams.forEach(function (stream) { stream.stop(); });
    this.streams.clear();
    this.starting.clear();
    return [];  // a POST in flight settles by itself
  };

  /**
   * One long-poll request from the channel's cursor. Resolves to the answer's body; rejects
   * with error.fatal set when the server refused the channel.
   */
  function pollOnce(stream, timeout) {
    var client = stream.conn.client;
    var sub = stream.sub;
    var controller = new AbortController();
    stream.abort = controller.abort.bind(controller);
    var timer = setTimeout(stream.abort, (timeout + 10) * 1000);  // a silently dead connection
    var url = client._base + '/poll/' + sub.channel +
      client._query({ since: sub.lastId, timeout: timeout });
    return fetch(url, { cache: 'no-store', signal: controller.signal }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (response.ok) return body;
        throw relayError(body.message || 'HTTP ' + response.status, body.error || 'http_' + response.status,
          { channel: sub.channel, status: response.status,
            fatal: FATAL_STATUS.indexOf(response.status) !== -1 });
      });
    }).finally(function () { clearTimeout(timer); });
  }

  /**
   * What both HTTP streams do first: a long-poll that answers at once, from the channel's
   * cursor. It learns the cursor of a new subscription (an EventSource opened without one
   * could miss what is published before its first event), replays what a reconnect missed,
   * and tells a refusal (which an EventSource cannot read) from an outage. Then `follow`.
   */
  async function runStream(stream, follow) {
    var conn = stream.conn;
    var timeout = 0;
    try {
      while (!stream.stopped) {
        var body = await pollOnce(stream, timeout);
        if (stream.stopped) return;
        conn.client._page(stream.sub, body);
        conn.client._live(stream.sub);
        if (follow) return follow();
        conn.opened(stream);
        timeout = conn.client._options.pollTimeout;
      }
    } catch (error) {
      if (stream.stopped) return;
      if (error.fatal) conn.refused(stream, error);
      else conn.failed(stream, error.message);
    }
  }

  function PollStream(conn, sub) {
    this.conn = conn;
    this.sub = sub;
    this.stopped = false;
    this.abort = function () {};
  }

  PollStream.prototype.run = function () { runStream(this, null); };

  PollStream.prototype.stop = function () {
    this.stopped = true;
    this.abort();
  };

  function EventStream(conn, sub) {
    PollStream.call(this, conn, sub);
    this.source = null;
  }

  EventStream.prototype.run = function () { runStream(this, this.listen.bind(this)); };

  EventStream.prototype.listen = function () {
    var self = this;
    var client = this.conn.client;
    var sub = this.sub;
    var source = new global.EventSource(client._base + '/sse/' + sub.channel +
      client._query({ since: sub.lastId }));
    this.source = source;
    source.onopen = function () { self.conn.opened(self); };
    // Text is the event's data; binary, and text holding \r, come as `event: json`.
    source.onmessage = function (event) { client._deliver(sub, event.lastEventId, event.data); };
    source.addEventListener('json', function (event) {
      var item = JSON.parse(event.data);
      client._deliver(sub, event.lastEventId || item.id, itemData(item));
    });
    source.addEventListener('reset', function (event) {
      client._reset(sub, JSON.parse(event.data).cursor);
    });
    // Both the server's `event: error` (broker unavailable, token expired; the stream ends
    // after it) and the browser's own error event (the stream broke) land here.
    source.onerror = function (event) {
      if (typeof event.data === 'string') {
        client._emit('error', relayError(event.data, 'stream_error', { channel: sub.channel }));
        return;
      }
      self.stop();
      self.conn.failed(self, 'event stream failed');
    };
  };

  EventStream.prototype.stop = function () {
    PollStream.prototype.stop.call(this);
    if (this.source) {
      this.source.onopen = this.source.onmessage = this.source.onerror = null;
      this.source.close();
    }
  };

  var CONNECTIONS = {
    websocket: function (client) { return new SocketConnection(client); },
    sse: function (client) { return new HttpConnection(client, 'sse'); },
    poll: function (client) { return new HttpConnection(client, 'poll'); }
  };

  global.wsrelay = {
    /** wsrelay.connect({url, transports, token, minDelay, maxDelay}) -> client */
    connect: function (options) { return new Client(options); },
    SUBPROTOCOL: SUBPROTOCOL,
    TRANSPORTS: TRANSPORTS.slice()
  };
})(window);
