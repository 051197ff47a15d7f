/*!
 * wsrelay.js: the browser client of wsrelay. No dependencies, no build step.
 *
 *   const client = wsrelay.connect({ token: '...' });         // url, transports, token, share
 *   client.subscribe('room', (data, meta) => {...});           // meta.id, .channel, .time, .sender
 *   client.publish('room', 'hello').then((id) => {...});
 *   client.history('room', { limit: 20 }).then((items) => {...});
 *   client.on('state', (state) => {...});                      // connecting | open | closed
 *
 * One WebSocket speaking the `wsrelay.v1` subprotocol carries every channel;
 * where WebSocket is missing or blocked the client falls back to Server-Sent
 * Events, then to long-polling (one stream per channel, publishing by POST),
 * with the same API. Each channel remembers the id of its last message, so a
 * reconnect (with jittered exponential backoff) resumes every channel where it
 * was: nothing the server still holds is lost, and no id reaches a handler twice.
 * A subscription the server refuses for now (its broker is down, a rate) is
 * retried with the same backoff; one it refuses for good is dropped and reported.
 * With `share: true` the tabs of one origin share one connection (a SharedWorker,
 * or a leader tab elected over Web Locks and talking over a BroadcastChannel).
 *
 * A classic script (it defines `wsrelay` on the global object) that also runs as
 * the SharedWorker of share mode; `wsrelay.mjs` loads it as an ES module.
 */
(function (global) {
  'use strict';

  const SUBPROTOCOL = 'wsrelay.v1';
  const TRANSPORTS = ['websocket', 'sse', 'poll'];
  const CHANNEL = /^[A-Za-z0-9_.:-]{1,128}$/;
  const DEFAULTS = {
    minDelay: 500,        // ms before the first reconnect (then doubling, jittered)
    maxDelay: 10000,      // ms, the longest wait between reconnects
    openTimeout: 10000,   // ms a connection may take to open before it counts as failed
    pollTimeout: 25       // s a long-poll is held by the server
  };
  const STABLE_MS = 5000;   // a connection open this long resets the backoff
  const FALLBACK_AFTER = 2; // failures to open, on a transport that never worked, before falling back
  const SEEN_IDS = 1000;    // ids remembered per channel to drop duplicates
  const HISTORY_LIMIT = 1000;

  // The script's own URL, for the SharedWorker of share mode (wsrelay.mjs sets it too).
  const SCRIPT_URL = global.document && global.document.currentScript
    ? global.document.currentScript.src : null;

  const supported = {
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
    const error = new Error(reason);
    error.code = code;
    Object.assign(error, extra || {});
    return error;
  }

  /** An error as structured clone carries it between tabs, and back. */
  function errorData(error) {
    return { message: error.message, code: error.code, channel: error.channel,
             status: error.status, retryable: error.retryable };
  }
  function errorFrom(data) {
    return relayError(data.message, data.code, { channel: data.channel, status: data.status,
                                                 retryable: data.retryable });
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

  function utf8Length(text) { return new TextEncoder().encode(text).length; }

  function toBase64(bytes) {
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  }

  function fromBase64(text) {
    const raw = atob(text);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  // A message item of the JSON transports: {id, data, encoding?, time?, sender?}.
  function itemData(item) {
    return item.encoding === 'base64' ? fromBase64(item.data) : item.data;
  }

  /** What a handler learns besides the data: the server's time (ms) and sender, if told. */
  function metaOf(channel, item) {
    const meta = { id: item.id === undefined || item.id === null ? '' : String(item.id), channel: channel };
    if (typeof item.time === 'number') meta.time = item.time;
    if (item.sender !== undefined && item.sender !== null) meta.sender = item.sender;
    return meta;
  }

  // Ids are "<epoch>-<seq>", both decimal; they order by epoch, then seq.
  function parseId(id) {
    const parts = String(id).split('-');
    return [Number(parts[0]), Number(parts[1])];
  }
  function compareIds(a, b) {
    const x = parseId(a), y = parseId(b);
    return x[0] - y[0] || x[1] - y[1];
  }
  function formatId(epoch, seq) {
    return String(epoch).padStart(13, '0') + '-' + String(seq).padStart(10, '0');
  }

  function backoff(options, attempt) {
    const base = Math.min(options.maxDelay, options.minDelay * Math.pow(2, Math.min(attempt, 30)));
    return base / 2 + Math.random() * base / 2;
  }

  function baseUrl(url) {
    return String(url || global.location.origin).replace(/^ws/, 'http').replace(/\/+$/, '');
  }

  function query(params, token) {
    const search = new URLSearchParams();
    for (const key in params) if (params[key] !== null && params[key] !== undefined) search.set(key, params[key]);
    if (token) search.set('token', token);
    const text = search.toString();
    return text ? '?' + text : '';
  }

  function randomId() {
    return Math.random().toString(36).slice(2) + Date.now().toString(36);
  }

  /** Read an HTTP answer: its JSON body, or throw the error it carries. */
  function readAnswer(response, channel) {
    return response.json().catch(function () { return {}; }).then(function (body) {
      if (response.ok) return body;
      throw relayError(body.message || 'HTTP ' + response.status, body.error || 'http_' + response.status,
        { channel: channel, status: response.status });
    });
  }

  /** Publish by POST: the HTTP transports always, the WebSocket for a frame over its limit. */
  function postPublish(ctx, request) {
    ctx.token().then(function (token) {
      const headers = { 'Content-Type': request.bytes ? 'application/octet-stream' : 'text/plain; charset=utf-8' };
      if (token) headers.Authorization = 'Bearer ' + token;
      return fetch(ctx.base + '/publish/' + request.channel, {
        method: 'POST', headers: headers, body: request.bytes || request.text, cache: 'no-store'
      }).then(function (response) {
        return readAnswer(response, request.channel).then(function (body) { request.resolve(body.id); });
      }, function (error) {
        request.reject(relayError('publish failed: ' + error.message, 'connection_lost',
          { channel: request.channel }));
      });
    }).catch(function (error) { request.reject(error); });
  }

  // ------------------------------------------------------- what both clients share

  /**
   * Subscriptions, handlers and the once-and-in-order rule, for a client with its own
   * connection (Client) and for a tab sharing one (SharedClient).
   */
  class BaseClient {
    constructor(options) {
      options = options || {};
      this._options = Object.assign({}, DEFAULTS, options);
      this._base = baseUrl(options.url);
      this._tokenOption = options.token;
      this._subs = new Map();  // channel -> subscription (see subscribe)
      this._listeners = { state: [], transport: [], error: [] };
      this._state = 'connecting';
      this._transport = null;
    }

    /** 'websocket' | 'sse' | 'poll': the transport in use (or being tried). */
    get transport() { return this._transport; }
    /** 'connecting' | 'open' | 'closed'. */
    get state() { return this._state; }
    /** The channels subscribed to (a channel refused for good is no longer one). */
    get channels() { return Array.from(this._subs.keys()); }

    /**
     * Receive every message of `channel`: handler(data, meta), data a string for text and a
     * Uint8Array for binary, meta {id, channel, time, sender?}: time is when the server
     * accepted the message (ms since the epoch), sender who it says sent it, if it says.
     * options.onReset(channel, cursor) is told when messages were missed that history no
     * longer holds; options.since starts after a known id. Subscribing again to a channel
     * replaces its handler and keeps its position.
     *
     * Returns a promise of the channel's position once the subscription is live (everything
     * published from then on reaches the handler). A refusal that may pass (the broker is
     * down) is retried with the reconnect backoff and reported once on the 'error' event;
     * a refusal for good (a token, a name) rejects the promise, is reported, and drops the
     * channel.
     */
    subscribe(channel, handler, options) {
      checkChannel(channel);
      if (typeof handler !== 'function') throw new TypeError('wsrelay: handler must be a function');
      options = options || {};
      let sub = this._subs.get(channel);
      if (sub) {
        sub.handler = handler;
        sub.onReset = options.onReset || null;
        return sub.live;
      }
      sub = { channel: channel, handler: handler, onReset: options.onReset || null,
              lastId: options.since ? String(options.since) : null, seen: new Set(),
              attempts: 0, retry: null, failing: false };
      sub.live = new Promise(function (resolve, reject) {
        sub.settle = function (error) {
          if (error) reject(error);
          else resolve(sub.lastId);
        };
      });
      sub.live.catch(function () { /* reported on the 'error' event */ });
      this._subs.set(channel, sub);
      if (this._state === 'closed') sub.settle(relayError('client closed', 'closed'));
      else this._added(sub);
      return sub.live;
    }

    /** Stop receiving `channel`. */
    unsubscribe(channel) {
      const sub = this._subs.get(channel);
      if (!sub) return this;
      this._subs.delete(channel);
      clearTimeout(sub.retry);
      sub.settle(relayError('unsubscribed from ' + channel, 'unsubscribed', { channel: channel }));
      this._removed(sub);
      return this;
    }

    /**
     * Publish text (a string) or binary (ArrayBuffer, Uint8Array...); resolves to the message's
     * id. While the connection is down it waits, and is sent once it is back. Rejects with the
     * server's code (error.retryable says whether the same publish may succeed later), with
     * 'request_entity_too_large' before sending anything over the server's size limit, and
     * with 'connection_lost' when the connection is lost before the server answered (it may
     * or may not have been accepted: a retry could publish it twice).
     */
    publish(channel, data) {
      checkChannel(channel);
      const bytes = bytesOf(data);
      if (bytes === null && typeof data !== 'string') {
        return Promise.reject(new TypeError('wsrelay: publish a string or binary data'));
      }
      return this._request({ type: 'publish', channel: channel, text: bytes ? null : data, bytes: bytes });
    }

    /**
     * How many subscribers `channel` has, over every worker: a number over WebSocket; null on
     * SSE and long-poll, which cannot ask.
     */
    presence(channel) {
      checkChannel(channel);
      return this._request({ type: 'presence', channel: channel });
    }

    /**
     * The last messages of `channel` the server still holds: a promise of [{data, meta}],
     * oldest first. options.limit (default 50, at most 1000); options.before: an id, to get
     * those up to it (the position a subscribe resolved with: its history, and nothing the
     * handler gets as well). Read over HTTP (a long-poll that answers at once) whatever the
     * transport.
     */
    history(channel, options) {
      checkChannel(channel);
      options = options || {};
      const limit = Math.max(0, Math.min(options.limit === undefined ? 50 : options.limit, HISTORY_LIMIT));
      const self = this;
      const before = options.before ? Promise.resolve(String(options.before))
        : this._read(channel, null).then(function (body) { return body.cursor; });
      return before.then(function (until) {
        const end = parseId(until);
        if (!limit || !end[1]) return [];
        return self._read(channel, formatId(end[0], Math.max(end[1] - limit, 0))).then(function (body) {
          return (body.messages || []).filter(function (item) {
            return compareIds(item.id, until) <= 0;
          }).slice(-limit).map(function (item) {
            return { data: itemData(item), meta: metaOf(channel, item) };
          });
        });
      });
    }

    /** on('state' | 'transport' | 'error', fn): returns a function that removes fn. */
    on(event, fn) {
      const list = this._listeners[event];
      if (!list) throw new TypeError('wsrelay: unknown event ' + JSON.stringify(event));
      list.push(fn);
      return function () {
        const at = list.indexOf(fn);
        if (at !== -1) list.splice(at, 1);
      };
    }

    // -- inside --------------------------------------------------------------

    _emit(event) {
      const args = Array.prototype.slice.call(arguments, 1);
      const list = this._listeners[event].slice();
      if (event === 'error' && !list.length && global.console) global.console.warn('wsrelay:', args[0]);
      for (let i = 0; i < list.length; i++) {
        try { list[i].apply(this, args); } catch (error) { report(error); }
      }
    }

    _setState(state) {
      if (this._state === state) return;
      this._state = state;
      this._emit('state', state);
    }

    /**
     * The token option: a string, or a function asked at each connect (tokens expire)
     * returning a string or a promise of one (a fetch of the application's token endpoint).
     * A promise of the token; it rejects with code 'token_unavailable' when the function
     * fails, and 'invalid_token_option' when it gives something else than a string.
     */
    _token() {
      const option = this._tokenOption;
      let value;
      try {
        value = Promise.resolve(typeof option === 'function' ? option() : option);
      } catch (error) {
        value = Promise.reject(error);
      }
      return value.then(function (token) {
        if (token === undefined || token === null || token === '') return null;
        if (typeof token !== 'string') {
          throw relayError('the token option gave ' + Object.prototype.toString.call(token) +
            ': it must be a string, or a function returning a string or a Promise of one',
          'invalid_token_option');
        }
        return token;
      }, function (error) {
        throw relayError('the token function failed: ' + (error && error.message || error),
          'token_unavailable', { cause: error });
      });
    }

    /** One long-poll that answers at once: the channel's messages after `since`. */
    _read(channel, since) {
      const self = this;
      return this._token().then(function (token) {
        return fetch(self._base + '/poll/' + channel + query({ since: since, timeout: 0 }, token),
          { cache: 'no-store' });
      }).then(function (response) { return readAnswer(response, channel); });
    }

    /** Hand one message to its channel's handler, once per id, in order. */
    _deliver(channel, item) {
      const sub = this._subs.get(channel);
      if (!sub) return;  // unsubscribed meanwhile
      const meta = metaOf(channel, item);
      if (meta.id) {
        if (sub.seen.has(meta.id)) return;
        sub.seen.add(meta.id);
        if (sub.seen.size > SEEN_IDS) sub.seen.delete(sub.seen.values().next().value);
        sub.lastId = meta.id;
      }
      try { sub.handler.call(this, itemData(item), meta); } catch (error) { report(error); }
    }

    /** The server knows where the subscription stands: from here on nothing is missed. */
    _live(channel, cursor) {
      const sub = this._subs.get(channel);
      if (!sub) return;
      if (sub.lastId === null && cursor) sub.lastId = String(cursor);
      sub.attempts = 0;
      sub.failing = false;
      sub.settle();
    }

    /** Where the channel stands after a long-poll answer that brought nothing newer. */
    _advance(channel, cursor) {
      const sub = this._subs.get(channel);
      if (sub && cursor) sub.lastId = String(cursor);
    }

    /** History could not fill a gap: the channel goes on from `cursor`. */
    _reset(channel, cursor) {
      const sub = this._subs.get(channel);
      if (!sub) return;
      if (cursor) sub.lastId = String(cursor);
      if (sub.onReset) {
        try { sub.onReset.call(this, sub.channel, sub.lastId); } catch (error) { report(error); }
      }
    }

    /** The id of the last message `channel` delivered (or where it went live); null if none. */
    _position(channel) {
      const sub = this._subs.get(channel);
      return sub ? sub.lastId : null;
    }

    /** The server refused the channel for good: drop it, say why. */
    _dropped(channel, error) {
      const sub = this._subs.get(channel);
      if (!sub) return;
      this._subs.delete(channel);
      clearTimeout(sub.retry);
      sub.settle(error);
      this._emit('error', error);
    }

    _closeSubs() {
      this._subs.forEach(function (sub) {
        clearTimeout(sub.retry);
        sub.settle(relayError('client closed', 'closed'));
      });
    }
  }

  // ------------------------------------------------------------------- client

  /** One logical connection to a wsrelay server, over the best transport that works. */
  class Client extends BaseClient {
    constructor(options) {
      super(options);
      options = options || {};
      this._transports = (options.transports || TRANSPORTS).filter(function (name) {
        return TRANSPORTS.indexOf(name) !== -1 && supported[name]();
      });
      this._outbox = [];          // requests waiting for a connection that can carry them
      this._worked = {};          // transports that opened once here: never fallen back from
      this._failures = 0;         // consecutive failures to open on the current transport
      this._attempt = 0;          // consecutive reconnects (the backoff's exponent)
      this._conn = null;
      this._timer = null;
      this._openTimer = null;
      this._probe = null;         // the reachability check before a fallback
      this._settings = null;      // GET /client.json: size limits, retryable codes
      this._settingsLoad = null;
      this._settled = null;       // requests wait for the first settings load
      this._transport = this._transports[0] || null;
      this._online = this._reconnectNow.bind(this);
      if (!this._transport) {
        this._state = 'closed';
        const self = this;
        setTimeout(function () {
          self._emit('error', relayError('no transport available: none of ' +
            (options.transports || TRANSPORTS).join(', ') + ' works in this browser', 'no_transport'));
        });
        return;
      }
      if (global.addEventListener) global.addEventListener('online', this._online);
      this._connect();
    }

    /** Close for good; pending publishes are rejected. */
    close() {
      if (this._state === 'closed') return;
      if (global.removeEventListener) global.removeEventListener('online', this._online);
      clearTimeout(this._timer);
      const waiting = this._drop(this._conn).concat(this._outbox.splice(0));
      for (let i = 0; i < waiting.length; i++) waiting[i].reject(relayError('client closed', 'closed'));
      this._closeSubs();
      this._setState('closed');
    }

    // -- inside --------------------------------------------------------------

    _added(sub) { if (this._conn) this._conn.add(sub.channel); }
    _removed(sub) { if (this._conn) this._conn.remove(sub.channel); }

    /** Whether a refusal may pass by itself: the server's table (/client.json), else its status. */
    _retryable(code, status) {
      if (this._settings && Array.isArray(this._settings.retryable)) {
        return this._settings.retryable.indexOf(code) !== -1;
      }
      return status === undefined || status >= 500 || status === 429 || status === 408;
    }

    _loadSettings() {
      if (this._settings || this._settingsLoad || typeof global.fetch !== 'function') return;
      const self = this;
      this._settingsLoad = fetch(this._base + '/client.json', { cache: 'no-cache' }).then(function (response) {
        return response.ok ? response.json() : null;
      }).then(function (body) {
        if (body && typeof body.max_message_size === 'number') self._settings = body;
      }, function () { /* down, or an older server: the server's own checks still answer */ })
        .then(function () { self._settingsLoad = null; });
      if (!this._settled) {  // however slow the server is to answer, not longer than a connect
        const timeout = this._options.openTimeout;
        this._settled = Promise.race([this._settingsLoad, new Promise(function (resolve) {
          setTimeout(resolve, timeout);
        })]);
      }
    }

    /** What a transport may ask of its client, and tell it. */
    _context() {
      const self = this;
      return {
        base: this._base,
        options: this._options,
        token: function () {
          return self._token().catch(function (error) {
            self._emit('error', error);
            throw error;
          });
        },
        settings: function () { return self._settings; },
        channels: function () { return self.channels; },
        position: function (channel) { return self._position(channel); }
      };
    }

    _events(conn) {
      const self = this;
      const mine = function (fn) {
        return function () { if (conn() === self._conn) return fn.apply(self, arguments); };
      };
      return {
        opened: mine(function () { this._opened(); }),
        proven: mine(function () { this._proven(); }),
        lost: function (reason, kind) { self._lost(conn(), reason, kind); },
        message: mine(this._deliver),
        live: mine(this._live),
        advance: mine(this._advance),
        reset: mine(this._reset),
        refused: mine(this._refused),
        error: mine(function (error) { this._emit('error', error); })
      };
    }

    _connect() {
      this._setState('connecting');  // before the connection exists: a listener may subscribe
      this._loadSettings();
      let conn = null;
      conn = new CONNECTIONS[this._transport](this._context(), this._events(function () { return conn; }));
      this._conn = conn;
      const self = this;
      this._openTimer = setTimeout(function () {
        self._lost(conn, 'not open after ' + self._options.openTimeout + ' ms');
      }, this._options.openTimeout);
      conn.start();
    }

    _reconnectNow() {
      if (this._timer === null) return;
      clearTimeout(this._timer);
      this._timer = null;
      this._attempt = 0;
      this._connect();
    }

    // The connection can carry requests: send what waited.
    _opened() {
      const conn = this._conn;
      clearTimeout(this._openTimer);
      conn.openedAt = Date.now();
      const waiting = this._outbox.splice(0);
      for (let i = 0; i < waiting.length; i++) conn.send(waiting[i]);
      this._setState('open');
    }

    // The connection carried traffic: its transport works here.
    _proven() {
      const conn = this._conn;
      if (conn.proven) return;
      conn.proven = true;
      this._worked[conn.name] = true;
      this._failures = 0;
    }

    /** Close the connection; returns the requests it sent that got no answer. */
    _drop(conn) {
      clearTimeout(this._openTimer);
      this._subs.forEach(function (sub) {  // a new connection subscribes every channel anew
        clearTimeout(sub.retry);
        sub.retry = null;
      });
      if (!conn) return [];
      if (conn === this._conn) this._conn = null;
      return conn.close();
    }

    /**
     * The connection failed or was lost: reconnect after a backoff, or fall back. `kind`:
     * 'unsupported' (the transport cannot work here), 'token' (the token option failed:
     * nothing to blame the transport for), or nothing.
     */
    _lost(conn, reason, kind) {
      if (!conn || conn !== this._conn) return;
      const unanswered = this._drop(conn);
      for (let i = 0; i < unanswered.length; i++) {
        const request = unanswered[i];
        if (request.type === 'presence') this._outbox.push(request);  // harmless to ask again
        else request.reject(relayError('connection lost before the server answered (' + reason + ')',
          'connection_lost', { channel: request.channel }));
      }
      if (conn.proven) {
        if (Date.now() - conn.openedAt >= STABLE_MS) this._attempt = 0;
      } else if (kind !== 'token') {
        this._failures += kind === 'unsupported' ? FALLBACK_AFTER : 1;
      }
      this._setState('connecting');
      const next = this._transports[this._transports.indexOf(this._transport) + 1];
      if (next && !this._worked[this._transport] && this._failures >= FALLBACK_AFTER) {
        this._fallBackIfReachable(next, reason);
      } else {
        this._retry();
      }
    }

    _retry() {
      const self = this;
      this._timer = setTimeout(function () {
        self._timer = null;
        self._connect();
      }, backoff(this._options, this._attempt++));
    }

    /**
     * The transport failed to open again and again, and never worked here. If the server
     * answers plain HTTP, the transport is what is missing or blocked (by a proxy, say): fall
     * back to the next one. If not, the server is down: wait for it on this transport.
     */
    _fallBackIfReachable(next, reason) {
      const self = this;
      const probe = this._probe = typeof global.fetch !== 'function' ? Promise.resolve(true)
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
    }

    _request(request) {
      const self = this;
      return new Promise(function (resolve, reject) {
        request.resolve = resolve;
        request.reject = function (error) {
          if (error.code && error.retryable === undefined) error.retryable = self._retryable(error.code, error.status);
          reject(error);
        };
        Promise.resolve(self._settled).then(function () { self._send(request); });
      });
    }

    _send(request) {
      if (this._state === 'closed') return request.reject(relayError('client closed', 'closed'));
      const limits = this._settings;
      if (limits && request.type === 'publish') {
        const size = request.bytes ? request.bytes.length : utf8Length(request.text);
        if (size > limits.max_message_size) {
          return request.reject(relayError('a message is at most ' + limits.max_message_size +
            ' bytes; this one has ' + size, 'request_entity_too_large', { channel: request.channel }));
        }
      }
      if (this._conn && this._conn.ready) this._conn.send(request);
      else this._outbox.push(request);
    }

    /**
     * The server refused the channel. For now (the broker is down, a rate): ask again after
     * the backoff, on this connection, until it is live. For good: drop it.
     */
    _refused(channel, error) {
      const sub = this._subs.get(channel);
      if (!sub) return;
      error.retryable = this._retryable(error.code, error.status);
      if (!error.retryable) return this._dropped(channel, error);
      if (!sub.failing) {
        sub.failing = true;
        this._emit('error', error);
      }
      const self = this;
      const conn = this._conn;
      clearTimeout(sub.retry);
      sub.retry = setTimeout(function () {
        sub.retry = null;
        if (self._subs.get(channel) === sub && self._conn === conn) conn.add(channel);
      }, backoff(this._options, sub.attempts++));
    }

    /** Start `channel` again from an older position (a tab of share mode needs it). */
    _rewind(channel, since) {
      const sub = this._subs.get(channel);
      if (!sub) return;
      sub.lastId = since;
      sub.seen.clear();
      if (this._conn) this._conn.add(channel);
    }
  }

  // ---------------------------------------------------------------- WebSocket

  /** One socket speaking wsrelay.v1 for every channel. */
  class SocketConnection {
    constructor(ctx, on) {
      this.ctx = ctx;
      this.on = on;
      this.name = 'websocket';
      this.ready = false;
      this.proven = false;
      this.closed = false;
      this.pending = new Map();   // ack -> request
      this.acks = 0;
      this.ws = null;
    }

    start() {
      const self = this;
      this.ctx.token().then(function (token) {
        if (!self.closed) self.open(token);
      }, function (error) { self.on.lost(error.message, 'token'); });
    }

    open(token) {
      const self = this;
      const url = this.ctx.base.replace(/^http/, 'ws') + '/ws' + query({}, token);
      try {
        this.ws = new global.WebSocket(url, [SUBPROTOCOL]);
      } catch (error) {
        setTimeout(function () { self.on.lost(error.message); });
        return;
      }
      const ws = this.ws;
      ws.onopen = function () {
        if (ws.protocol !== SUBPROTOCOL) {
          self.on.lost('the server does not speak ' + SUBPROTOCOL, 'unsupported');
          return;
        }
        self.ready = true;
        self.on.proven();  // the handshake went through: nothing blocks WebSocket here
        self.ctx.channels().forEach(function (channel) { self.add(channel); });
        self.on.opened();
      };
      ws.onmessage = function (event) { self.receive(event.data); };
      ws.onclose = function (event) {
        self.on.lost('closed with ' + event.code + (event.reason ? ': ' + event.reason : ''));
      };
    }

    request(envelope, request) {
      if (request) {
        envelope.ack = ++this.acks;
        this.pending.set(envelope.ack, request);
      }
      this.ws.send(typeof envelope === 'string' ? envelope : JSON.stringify(envelope));
    }

    add(channel) {
      if (!this.ready) return;  // every channel is subscribed once the socket opens
      const envelope = { type: 'subscribe', channel: channel };
      const since = this.ctx.position(channel);
      if (since) envelope.since = since;
      this.request(envelope, { type: 'subscribe', channel: channel });
    }

    remove(channel) {
      if (this.ready) this.request({ type: 'unsubscribe', channel: channel });
    }

    send(request) {
      const envelope = { type: request.type, channel: request.channel };
      if (request.type === 'publish') {
        if (request.bytes) {
          envelope.data = toBase64(request.bytes);
          envelope.encoding = 'base64';
        } else {
          envelope.data = request.text;
        }
        // Text whose JSON escapes make the frame larger than the server reads (but whose
        // data is within the limit, which publish checked) goes by POST, as on HTTP.
        const limits = this.ctx.settings();
        if (limits && request.text !== null &&
            utf8Length(JSON.stringify(envelope)) + 32 > limits.max_request_size) {
          postPublish(this.ctx, request);
          return;
        }
      }
      this.request(envelope, request);
    }

    receive(text) {
      let envelope;
      try {
        envelope = JSON.parse(text);
      } catch (error) {
        this.on.error(relayError('unreadable envelope from the server', 'invalid_envelope'));
        return;
      }
      if (envelope.type === 'message') this.on.message(envelope.channel, envelope);
      else if (envelope.type === 'reset') this.on.reset(envelope.channel, envelope.cursor);
      else if (envelope.type === 'ack') this.answer(envelope);
      else if (envelope.type === 'error') this.refused(envelope);
      else if (envelope.type === 'unsubscribed') {
        // The application ended this subscription (relay.unsubscribe): it is not resumed.
        this.on.refused(envelope.channel, relayError(envelope.reason || 'unsubscribed',
          'unsubscribed', { channel: envelope.channel }));
      }
    }

    answer(envelope) {
      const request = this.pending.get(envelope.ack);
      if (!request) return;
      this.pending.delete(envelope.ack);
      if (request.type === 'publish') request.resolve(envelope.id);
      else if (request.type === 'presence') request.resolve(envelope.count);
      else if (request.type === 'subscribe') this.on.live(request.channel, envelope.cursor);
    }

    refused(envelope) {
      const asked = envelope.request || {};
      const request = asked.ack !== undefined ? this.pending.get(asked.ack) : undefined;
      const error = relayError(envelope.reason || envelope.code, envelope.code,
        { channel: asked.channel, request: asked });
      if (request) this.pending.delete(asked.ack);
      if (request && request.type === 'subscribe') this.on.refused(request.channel, error);
      else if (request && request.reject) request.reject(error);
      else this.on.error(error);
    }

    close() {
      this.closed = true;
      this.ready = false;
      const ws = this.ws;
      if (ws) {
        ws.onopen = ws.onmessage = ws.onclose = null;
        try { ws.close(1000); } catch (error) { /* already closed */ }
      }
      const pending = Array.from(this.pending.values()).filter(function (request) {
        return request.reject;
      });
      this.pending.clear();
      return pending;
    }
  }

  // -------------------------------------------------------- SSE and long-poll

  /**
   * HTTP transports: one stream per channel (an EventSource, or a loop of long-polls), each
   * with its own cursor; publishing is a POST. Open once every stream it started with is.
   */
  class HttpConnection {
    constructor(ctx, on, name) {
      this.ctx = ctx;
      this.on = on;
      this.name = name;
      this.ready = false;
      this.proven = false;
      this.streams = new Map();   // channel -> stream
      this.starting = new Set();  // streams not open yet, while the connection is not
      this.closed = false;
    }

    start() {
      const self = this;
      this.ctx.channels().forEach(function (channel) { self.add(channel); });
      // Without channels there is nothing to wait for; but a page usually subscribes right
      // after connect(), so only once the current script has run.
      Promise.resolve().then(function () { self.check(); });
    }

    add(channel) {
      if (this.streams.has(channel)) this.end(this.streams.get(channel));  // again, from its position
      const stream = new (this.name === 'sse' ? EventStream : PollStream)(this, channel);
      this.streams.set(channel, stream);
      if (!this.ready) this.starting.add(stream);
      stream.run();
    }

    remove(channel) {
      const stream = this.streams.get(channel);
      if (!stream) return;
      this.end(stream);
      this.check();
    }

    end(stream) {
      stream.stop();
      this.streams.delete(stream.channel);
      this.starting.delete(stream);
    }

    current(stream) {
      return !this.closed && this.streams.get(stream.channel) === stream;
    }

    check() {
      if (this.ready || this.closed || this.starting.size) return;
      this.ready = true;
      this.on.opened();
    }

    opened(stream) {
      if (!this.current(stream)) return;
      this.on.proven();
      this.starting.delete(stream);
      this.check();
    }

    /** A stream failed: the server is down or unreachable. Reconnect everything. */
    failed(stream, reason, kind) {
      if (this.current(stream)) this.on.lost(reason, kind);
    }

    /** The server refused the channel: the client retries or drops it. */
    refused(stream, error) {
      if (!this.current(stream)) return;
      this.end(stream);
      this.on.refused(stream.channel, error);
      this.check();
    }

    send(request) {
      if (request.type === 'presence') request.resolve(null);
      else postPublish(this.ctx, request);
    }

    close() {
      this.closed = true;
      this.ready = false;
      this.streams.forEach(function (stream) { stream.stop(); });
      this.streams.clear();
      this.starting.clear();
      return [];  // a POST in flight settles by itself
    }
  }

  /** One channel's loop of long-polls, each from the channel's cursor. */
  class PollStream {
    constructor(conn, channel) {
      this.conn = conn;
      this.channel = channel;
      this.stopped = false;
      this.abort = function () {};
    }

    /**
     * One long-poll from the channel's cursor. Resolves to the answer's body; rejects with
     * the server's error (error.status set) when it refused.
     */
    pollOnce(timeout) {
      const self = this;
      const ctx = this.conn.ctx;
      return ctx.token().then(function (token) {
        const controller = new AbortController();
        self.abort = controller.abort.bind(controller);
        const timer = setTimeout(self.abort, (timeout + 10) * 1000);  // a silently dead connection
        const url = ctx.base + '/poll/' + self.channel +
          query({ since: ctx.position(self.channel), timeout: timeout }, token);
        return fetch(url, { cache: 'no-store', signal: controller.signal }).then(function (response) {
          return readAnswer(response, self.channel);
        }).finally(function () { clearTimeout(timer); });
      });
    }

    /**
     * What both HTTP streams do first: a long-poll that answers at once, from the channel's
     * cursor. It learns the cursor of a new subscription (an EventSource opened without one
     * could miss what is published before its first event), replays what a reconnect missed,
     * and tells a refusal (which an EventSource cannot read) from an outage. Then `follow`.
     */
    async run() {
      const conn = this.conn;
      const on = conn.on;
      let timeout = 0;
      try {
        while (!this.stopped) {
          const body = await this.pollOnce(timeout);
          if (this.stopped) return;
          if (body.reset) on.reset(this.channel, body.cursor);
          const messages = body.messages || [];
          for (let i = 0; i < messages.length && !this.stopped; i++) on.message(this.channel, messages[i]);
          on.advance(this.channel, body.cursor);
          on.live(this.channel, body.cursor);
          if (this.follow()) return;
          conn.opened(this);
          timeout = conn.ctx.options.pollTimeout;
        }
      } catch (error) {
        if (this.stopped) return;
        if (error.status) conn.refused(this, error);  // the client tells a passing refusal from a final one
        else if (error.code === 'token_unavailable' || error.code === 'invalid_token_option') {
          conn.failed(this, error.message, 'token');
        } else conn.failed(this, error.message);
      }
    }

    follow() { return false; }

    stop() {
      this.stopped = true;
      this.abort();
    }
  }

  /** One channel's EventSource, after the first long-poll; `?format=json`: every event an item. */
  class EventStream extends PollStream {
    follow() {
      const self = this;
      this.conn.ctx.token().then(function (token) {
        if (!self.stopped) self.listen(token);
      }, function (error) { self.conn.failed(self, error.message, 'token'); });
      return true;
    }

    listen(token) {
      const self = this;
      const ctx = this.conn.ctx;
      const on = this.conn.on;
      const channel = this.channel;
      const source = new global.EventSource(ctx.base + '/sse/' + channel +
        query({ since: ctx.position(channel), format: 'json' }, token));
      this.source = source;
      source.onopen = function () { self.conn.opened(self); };
      // A server without ?format=json sends text as the event's data.
      source.onmessage = function (event) { on.message(channel, { id: event.lastEventId, data: event.data }); };
      source.addEventListener('json', function (event) {
        const item = JSON.parse(event.data);
        if (event.lastEventId) item.id = event.lastEventId;
        on.message(channel, item);
      });
      source.addEventListener('reset', function (event) {
        on.reset(channel, JSON.parse(event.data).cursor);
      });
      // Both the server's `event: error` (broker unavailable, token expired: the stream ends
      // after it) and the browser's own error event (the stream broke) land here. Either
      // way the client reconnects with its backoff, from a long-poll that reads the cause
      // (a 503 retried, a 401 reported) and asks the token function anew.
      source.onerror = function (event) {
        self.stop();
        self.conn.failed(self, typeof event.data === 'string' ? event.data : 'event stream failed');
      };
    }

    stop() {
      super.stop();
      if (this.source) {
        this.source.onopen = this.source.onmessage = this.source.onerror = null;
        this.source.close();
      }
    }
  }

  const CONNECTIONS = {
    websocket: SocketConnection,
    sse: class extends HttpConnection { constructor(ctx, on) { super(ctx, on, 'sse'); } },
    poll: class extends HttpConnection { constructor(ctx, on) { super(ctx, on, 'poll'); } }
  };

  // --------------------------------------------------------------- share mode

  /**
   * The one real Client of every tab that shares: in the SharedWorker, or in the leader tab.
   * Tabs talk to it by messages ({op: ...}); `post(tab, message)` reaches one.
   */
  class ShareHub {
    constructor() {
      this.client = null;
      this.tabs = new Map();      // tab id -> {post, channels: Set, tokens: bool}
      this.channels = new Map();  // channel -> {tabs: Set of tab ids, live: bool}
      this.asks = new Map();      // token request id -> {resolve, reject}
      this.asked = 0;
    }

    attach(id, post) {
      if (!this.tabs.has(id)) this.tabs.set(id, { id: id, post: post, channels: new Set(), tokens: false });
    }

    /** This hub ends (its leader tab closes): tell the tabs nothing more, not even 'closed'. */
    stop() {
      this.tabs.clear();
      if (this.client) this.client.close();
      this.client = null;
    }

    detach(id) {
      const tab = this.tabs.get(id);
      if (!tab) return;
      const self = this;
      tab.channels.forEach(function (channel) { self.leave(tab, channel); });
      this.tabs.delete(id);
      if (!this.tabs.size && this.client) {
        this.client.close();
        this.client = null;
        this.channels.clear();
      }
    }

    receive(id, message) {
      const tab = this.tabs.get(id);
      if (!tab) return;
      const self = this;
      if (message.op === 'hello') {
        tab.tokens = !!message.options.tokenFunction;
        tab.token = message.options.token || null;
        if (!this.client) this.start(message.options);
        tab.post({ op: 'state', state: this.client.state, transport: this.client.transport });
        message.subs.forEach(function (sub) { self.join(tab, sub.channel, sub.since); });
      } else if (!this.client) {
        return;
      } else if (message.op === 'subscribe') {
        this.join(tab, message.channel, message.since);
      } else if (message.op === 'unsubscribe') {
        this.leave(tab, message.channel);
      } else if (message.op === 'request') {
        const client = this.client;
        const answer = message.type === 'publish' ? client.publish(message.channel, message.data)
          : client.presence(message.channel);
        answer.then(function (value) {
          tab.post({ op: 'reply', rid: message.rid, value: value });
        }, function (error) {
          tab.post({ op: 'reply', rid: message.rid, error: errorData(error) });
        });
      } else if (message.op === 'token') {
        const ask = this.asks.get(message.rid);
        if (!ask) return;
        this.asks.delete(message.rid);
        if (message.error) ask.reject(new Error(message.error));
        else ask.resolve(message.token);
      }
    }

    start(options) {
      const self = this;
      const settings = Object.assign({}, options);
      settings.token = function () { return self.askToken(); };
      this.client = new Client(settings);
      this.client.on('state', function (state) { self.all({ op: 'state', state: state, transport: self.client.transport }); });
      this.client.on('transport', function (transport, why) { self.all({ op: 'transport', transport: transport, why: why }); });
      this.client.on('error', function (error) {
        if (error.channel && self.channels.has(error.channel)) self.fan(error.channel, { op: 'error', error: errorData(error) });
        else self.all({ op: 'error', error: errorData(error) });
      });
    }

    /** A token: from a tab with a token function (they are alike), else a tab's own string. */
    askToken() {
      const tabs = Array.from(this.tabs.values());
      const tab = tabs.filter(function (each) { return each.tokens; })[0];
      if (!tab) {
        const given = tabs.filter(function (each) { return each.token; })[0];
        return Promise.resolve(given ? given.token : null);
      }
      const rid = ++this.asked;
      const self = this;
      return new Promise(function (resolve, reject) {
        self.asks.set(rid, { resolve: resolve, reject: reject });
        tab.post({ op: 'token', rid: rid });
      });
    }

    all(message) { this.tabs.forEach(function (tab) { tab.post(message); }); }

    fan(channel, message) {
      const entry = this.channels.get(channel);
      const tabs = this.tabs;
      if (entry) entry.tabs.forEach(function (id) { if (tabs.has(id)) tabs.get(id).post(message); });
    }

    join(tab, channel, since) {
      tab.channels.add(channel);
      const client = this.client;
      let entry = this.channels.get(channel);
      if (!entry) {
        entry = { tabs: new Set([tab.id]), live: false };
        this.channels.set(channel, entry);
        const self = this;
        client.subscribe(channel, function (data, meta) {
          self.fan(channel, { op: 'message', channel: channel,
            item: { id: meta.id, data: data, time: meta.time, sender: meta.sender } });
        }, {
          since: since,
          onReset: function (name, cursor) { self.fan(channel, { op: 'reset', channel: channel, cursor: cursor }); }
        }).then(function (cursor) {
          entry.live = true;
          self.fan(channel, { op: 'live', channel: channel, cursor: cursor });
        }, function (error) {
          if (self.channels.get(channel) !== entry) return;
          self.fan(channel, { op: 'refused', channel: channel, error: errorData(error) });
          self.channels.delete(channel);
          self.tabs.forEach(function (each) { each.channels.delete(channel); });
        });
        return;
      }
      entry.tabs.add(tab.id);
      const position = client._position(channel);
      if (since && position && compareIds(since, position) < 0) {
        client._rewind(channel, since);  // this tab is behind the others: replay for it
        tab.post({ op: 'live', channel: channel, cursor: since });
      } else if (entry.live) {
        tab.post({ op: 'live', channel: channel, cursor: position });
      }
    }

    leave(tab, channel) {
      tab.channels.delete(channel);
      const entry = this.channels.get(channel);
      if (!entry) return;
      entry.tabs.delete(tab.id);
      if (!entry.tabs.size) {
        this.channels.delete(channel);
        if (this.client) this.client.unsubscribe(channel);
      }
    }
  }

  /**
   * The client of one tab in share mode: the same API as Client, over a link to the hub.
   * Each tab keeps its own positions and seen ids, so a message reaches its handlers once
   * and in order however the hub changes.
   */
  class SharedClient extends BaseClient {
    constructor(options, makeLink) {
      super(options);
      this.tab = randomId();
      this._pending = new Map();  // rid -> request sent to the hub, unanswered
      this._rid = 0;
      const self = this;
      this._pagehide = function (event) { if (!event.persisted) self.close(); };
      global.addEventListener('pagehide', this._pagehide);
      this._link = makeLink(this);
    }

    /** Whether this tab holds the shared connection (the leader, where there is no SharedWorker). */
    get leading() { return this._link.leading(); }

    /** Leave the shared connection; what waits is rejected. */
    close() {
      if (this._state === 'closed') return;
      global.removeEventListener('pagehide', this._pagehide);
      this._link.close();
      const pending = Array.from(this._pending.values());
      this._pending.clear();
      pending.forEach(function (request) { request.reject(relayError('client closed', 'closed')); });
      this._closeSubs();
      this._setState('closed');
    }

    /** What the hub needs to serve this tab: its options, and its channels with positions. */
    hello() {
      const options = this._options;
      const subs = [];
      this._subs.forEach(function (sub) { subs.push({ channel: sub.channel, since: sub.lastId }); });
      return { op: 'hello', subs: subs, options: {
        url: this._base, transports: options.transports, minDelay: options.minDelay,
        maxDelay: options.maxDelay, openTimeout: options.openTimeout, pollTimeout: options.pollTimeout,
        token: typeof this._tokenOption === 'function' ? undefined : this._tokenOption,
        tokenFunction: typeof this._tokenOption === 'function'
      } };
    }

    /** The hub changed (a leader tab closed): what it had not answered is lost with it. */
    rehome() {
      const self = this;
      this._setState('connecting');
      const pending = Array.from(this._pending.entries());
      this._pending.clear();
      pending.forEach(function (entry) {
        const request = entry[1];
        if (request.type === 'presence') self._sendRequest(request);
        else request.reject(relayError('connection lost before the server answered (the leader tab closed)',
          'connection_lost', { channel: request.channel }));
      });
    }

    _added(sub) { this._link.post({ op: 'subscribe', channel: sub.channel, since: sub.lastId }); }
    _removed(sub) { this._link.post({ op: 'unsubscribe', channel: sub.channel }); }

    _request(request) {
      const self = this;
      return new Promise(function (resolve, reject) {
        request.resolve = resolve;
        request.reject = reject;
        if (self._state === 'closed') reject(relayError('client closed', 'closed'));
        else self._sendRequest(request);
      });
    }

    _sendRequest(request) {
      const rid = ++this._rid;
      this._pending.set(rid, request);
      this._link.post({ op: 'request', rid: rid, type: request.type, channel: request.channel,
                        data: request.bytes || request.text });
    }

    receive(message) {
      if (this._state === 'closed') return;
      const op = message.op;
      if (op === 'message') this._deliver(message.channel, message.item);
      else if (op === 'live') this._live(message.channel, message.cursor);
      else if (op === 'reset') this._reset(message.channel, message.cursor);
      else if (op === 'refused') this._dropped(message.channel, errorFrom(message.error));
      else if (op === 'error') this._emit('error', errorFrom(message.error));
      else if (op === 'state') {
        this._transport = message.transport;
        // The shared connection closed (its last tab left it): this tab is not closed.
        this._setState(message.state === 'closed' ? 'connecting' : message.state);
      } else if (op === 'transport') {
        this._transport = message.transport;
        this._emit('transport', message.transport, message.why);
      } else if (op === 'reply') {
        const request = this._pending.get(message.rid);
        if (!request) return;
        this._pending.delete(message.rid);
        if (message.error) request.reject(errorFrom(message.error));
        else request.resolve(message.value);
      } else if (op === 'token') {
        const link = this._link;
        this._token().then(function (token) {
          link.post({ op: 'token', rid: message.rid, token: token });
        }, function (error) {
          link.post({ op: 'token', rid: message.rid, error: error.message });
        });
      }
    }
  }

  /**
   * Hold a Web Lock until the returned function is called, or this context ends; `then` runs
   * once it is held. Whoever waits for the same lock learns so that its holder is gone.
   */
  function holdLock(name, then) {
    let release = null;
    let released = false;
    global.navigator.locks.request(name, function () {
      if (released) return null;
      then();
      return new Promise(function (resolve) { release = resolve; });
    });
    return function () {
      released = true;
      if (release) release();
    };
  }

  /** A tab's link to the hub in a SharedWorker (one per origin, url and transports). */
  function workerLink(key, url) {
    return function (client) {
      const worker = new global.SharedWorker(url, { name: 'wsrelay ' + key });
      const port = worker.port;
      const queue = [];
      let ready = false;
      port.onmessage = function (event) { client.receive(event.data); };
      port.start();
      function hello() {  // once this tab's lock is held, so the worker can watch it
        port.postMessage({ tab: client.tab, message: client.hello() });
        ready = true;
        queue.splice(0).forEach(function (message) { port.postMessage({ tab: client.tab, message: message }); });
      }
      const release = global.navigator.locks ? holdLock('wsrelay tab ' + client.tab, hello) : hello();
      return {
        post: function (message) {
          if (ready) port.postMessage({ tab: client.tab, message: message });
          else queue.push(message);
        },
        leading: function () { return false; },
        close: function () {
          port.postMessage({ tab: client.tab, message: { op: 'bye' } });
          if (release) release();  // the worker detaches this tab, bye or not
        }
      };
    };
  }

  /** The SharedWorker's side: one hub for every tab's port. */
  function serveTabs(scope) {
    const hub = new ShareHub();
    scope.onconnect = function (event) {
      const port = event.ports[0];
      port.onmessage = function (e) {
        const tab = e.data.tab;
        const message = e.data.message;
        if (message.op === 'bye') return hub.detach(tab);
        if (message.op === 'hello' && !hub.tabs.has(tab)) {
          hub.attach(tab, function (out) { port.postMessage(out); });
          if (scope.navigator.locks) {  // granted when the tab is gone, however it went
            scope.navigator.locks.request('wsrelay tab ' + tab, function () { hub.detach(tab); });
          }
        }
        hub.receive(tab, message);
      };
      port.start();
    };
  }

  /**
   * A tab's link where there is no SharedWorker: the tabs elect a leader with a Web Lock (the
   * next in line takes over when it closes), which runs the hub; the others reach it over a
   * BroadcastChannel.
   */
  function leaderLink(key) {
    return function (client) {
      const bus = new global.BroadcastChannel('wsrelay ' + key);
      const me = client.tab;
      let leader = null;    // the leader's tab id, once known
      let hub = null;       // this tab's hub, while it leads
      let closed = false;
      const queue = [];

      function toLeader(message) {
        if (leader === me) Promise.resolve().then(function () { if (hub) hub.receive(me, message); });
        else bus.postMessage({ to: 'leader', from: me, message: message });
      }
      function following(id) {
        const moved = leader !== null;
        leader = id;
        if (moved) client.rehome();
        toLeader(client.hello());
        queue.splice(0).forEach(toLeader);
      }
      bus.onmessage = function (event) {
        const data = event.data;
        if (closed) return;
        if (data.to === 'leader') {
          if (!hub) return;
          if (data.message.op === 'ping') return bus.postMessage({ to: data.from, from: me, message: { op: 'leader' } });
          if (data.message.op === 'bye') return hub.detach(data.from);
          if (data.message.op === 'hello' && !hub.tabs.has(data.from)) {
            const tab = data.from;
            hub.attach(tab, function (out) { bus.postMessage({ to: tab, from: me, message: out }); });
            global.navigator.locks.request('wsrelay tab ' + key + ' ' + tab, function () { if (hub) hub.detach(tab); });
          }
          hub.receive(data.from, data.message);
        } else if (data.to === me || data.to === '*') {
          if (data.message.op === 'leader') {
            if (data.from !== leader) following(data.from);
          } else if (data.from === leader) {
            client.receive(data.message);
          }
        }
      };
      let abdicate = null;
      const release = holdLock('wsrelay tab ' + key + ' ' + me, function () {
        bus.postMessage({ to: 'leader', from: me, message: { op: 'ping' } });  // who leads?
        abdicate = holdLock('wsrelay leader ' + key, function () {
          if (closed) return;
          hub = new ShareHub();
          hub.attach(me, function (out) { Promise.resolve().then(function () { client.receive(out); }); });
          bus.postMessage({ to: '*', from: me, message: { op: 'leader' } });
          following(me);
        });
      });
      return {
        post: function (message) {
          if (leader === null) queue.push(message);
          else toLeader(message);
        },
        leading: function () { return hub !== null; },
        close: function () {
          if (leader !== null && leader !== me) toLeader({ op: 'bye' });
          closed = true;
          if (hub) hub.stop();
          hub = null;
          bus.close();
          release();
          if (abdicate) abdicate();  // the next tab in line leads
        }
      };
    };
  }

  /** The URL of this script, for a SharedWorker of the same origin as the page. */
  function workerUrl(options, base) {
    const url = options.workerUrl || wsrelay.workerUrl || SCRIPT_URL || base + '/static/wsrelay.js';
    return new URL(url, global.location.href).origin === global.location.origin ? url : null;
  }

  function connect(options) {
    options = options || {};
    if (options.share) {
      const base = baseUrl(options.url);
      const key = base + ' ' + (options.transports || TRANSPORTS).join(',');
      const url = workerUrl(options, base);
      if (typeof global.SharedWorker === 'function' && url) {
        return new SharedClient(options, workerLink(key, url));
      }
      if (typeof global.BroadcastChannel === 'function' && global.navigator && global.navigator.locks) {
        return new SharedClient(options, leaderLink(key));
      }
    }
    return new Client(options);
  }

  const wsrelay = {
    /** wsrelay.connect({url, transports, token, minDelay, maxDelay, share}) -> client */
    connect: connect,
    Client: Client,
    SharedClient: SharedClient,
    SUBPROTOCOL: SUBPROTOCOL,
    TRANSPORTS: TRANSPORTS.slice(),
    /** The script's URL for share mode's SharedWorker (wsrelay.mjs sets it from import.meta). */
    workerUrl: null
  };
  global.wsrelay = wsrelay;

  if (typeof global.SharedWorkerGlobalScope === 'function' && global instanceof global.SharedWorkerGlobalScope) {
    serveTabs(global);
  }
})(typeof self !== 'undefined' ? self : globalThis);
