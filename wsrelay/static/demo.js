/* The demo page (/): a multi-room chat on wsrelay.js, and the server's ticker. */
(function () {
  'use strict';

  var CHANNEL = /^[A-Za-z0-9_.:-]{1,128}$/;
  var TICKER = 'ticker';
  var PRESENCE_EVERY_MS = 3000;
  var MAX_MESSAGES = 500;   // per room
  var STRIP = 15;           // cells of the ticker's strip

  function $(id) { return document.getElementById(id); }
  var els = {
    transport: $('transport'), transportSelect: $('transport-select'), state: $('state'),
    nick: $('nick'), rooms: $('rooms'),
    joinForm: $('join-form'), roomInput: $('room-input'), roomError: $('room-error'),
    tickerValue: $('ticker-value'), tickerMeta: $('ticker-meta'), tickerStrip: $('ticker-strip'),
    roomTitle: $('room-title'), online: $('online'), log: $('log'), sendForm: $('send-form'),
    message: $('message')
  };

  var HISTORY = 50;         // messages shown of a room when it is joined
  var params = new URLSearchParams(location.search);
  var forced = params.get('transport');
  var options = forced ? { transports: [forced] } : {};
  if (params.get('share') === '1') options.share = true;  // one connection for every tab
  var relayPath = document.body.getAttribute('data-relay');  // WSRELAY_URL_PREFIX, if any
  if (relayPath) options.url = location.origin + relayPath;
  var client = wsrelay.connect(options);
  var rooms = new Map();    // name -> {name, entries: [], unread, online, item}
  var current = null;
  var wasOpen = false;
  var ticks = 0;

  // -------------------------------------------------------------- rendering

  function clock(date) {
    return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  }

  function colour(name) {
    var hash = 0;
    for (var i = 0; i < name.length; i++) hash = (hash * 31 + name.charCodeAt(i)) | 0;
    return 'hsl(' + (Math.abs(hash) % 360) + ', 55%, 48%)';
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function render(entry) {
    if (entry.kind !== 'msg') {
      return el('li', 'notice' + (entry.kind === 'notice' ? '' : ' ' + entry.kind), entry.text);
    }
    var li = el('li', 'msg' + (entry.nick === nickname() ? ' mine' : '') +
      (entry.pending ? ' pending' : '') + (entry.failed ? ' failed' : '') + (entry.past ? ' past' : ''));
    if (entry.id) li.setAttribute('data-id', entry.id);
    var avatar = el('span', 'avatar', (entry.nick || '?').slice(0, 1).toUpperCase());
    avatar.style.background = colour(entry.nick || '?');
    var who = el('div', 'who');
    who.appendChild(el('b', 'nick', entry.nick || '(raw)'));
    if (entry.sender) {  // who the server says sent it, not what the message claims
      var sender = el('span', 'sender', entry.sender);
      sender.title = 'sender stamped by the server';
      who.appendChild(sender);
    }
    var time = el('time', 'time', clock(entry.time));
    time.dateTime = entry.time.toISOString();
    time.title = entry.serverTime ? 'published at (server time)' : 'received at (this browser)';
    who.appendChild(time);
    if (entry.pending) who.appendChild(el('span', 'status', 'sending…'));
    else if (entry.failed) who.appendChild(el('span', 'status', 'not sent: ' + entry.failed));
    else who.appendChild(el('span', 'id', '#' + entry.id));
    li.appendChild(avatar);
    li.appendChild(who);
    li.appendChild(el('span', 'data', entry.text));
    return li;
  }

  function show(room, entry) {
    if (entry.key) forget(room, entry.key);  // our own message is back: no longer pending
    room.entries.push(entry);
    if (room.entries.length > MAX_MESSAGES) room.entries.shift();
    if (room !== current) {
      if (entry.kind === 'msg') room.unread++;
      renderRooms();
      return;
    }
    var log = els.log;
    var stick = log.scrollHeight - log.scrollTop - log.clientHeight < 60;
    log.appendChild(render(entry));
    while (log.children.length > MAX_MESSAGES) log.removeChild(log.firstElementChild);
    if (stick) log.scrollTop = log.scrollHeight;
  }

  function forget(room, key) {
    var at = room.entries.findIndex(function (each) { return each.local && each.key === key; });
    if (at === -1) return;
    room.entries.splice(at, 1);
    if (room === current) renderCurrent();
  }

  // Older messages (history) go before everything shown so far.
  function prepend(room, entries) {
    var shown = {};
    room.entries.forEach(function (each) { if (each.id) shown[each.id] = true; });
    var older = entries.filter(function (each) { return !shown[each.id]; });
    room.entries = older.concat(room.entries).slice(-MAX_MESSAGES);
    if (room === current) renderCurrent();
    else renderRooms();
  }

  function notice(room, text, kind) {
    show(room, { kind: kind || 'notice', text: text });
  }

  function renderRooms() {
    els.rooms.textContent = '';
    rooms.forEach(function (room) {
      var li = el('li', room === current ? 'active' : '');
      li.setAttribute('data-room', room.name);
      if (room.live) li.setAttribute('data-live', '');
      if (room.history) li.setAttribute('data-history', '');
      var select = el('button', 'select');
      select.type = 'button';
      select.appendChild(el('span', 'name', room.name));
      select.appendChild(el('span', 'unread', room.unread ? String(room.unread) : ''));
      select.appendChild(onlineBadge(room.online));
      select.addEventListener('click', function () { enter(room.name); });
      var leaveButton = el('button', 'leave', '×');
      leaveButton.type = 'button';
      leaveButton.title = 'leave ' + room.name;
      leaveButton.setAttribute('aria-label', 'leave ' + room.name);
      leaveButton.addEventListener('click', function () { leave(room.name); });
      li.appendChild(select);
      li.appendChild(leaveButton);
      els.rooms.appendChild(li);
    });
  }

  function onlineBadge(count, node) {
    node = node || el('span', 'online');
    var known = typeof count === 'number';
    node.setAttribute('data-count', known ? String(count) : '-');
    node.textContent = known ? count + ' online' : '-';
    node.title = known ? 'online now' : 'the online count needs the WebSocket transport';
    return node;
  }

  function renderCurrent() {
    els.roomTitle.textContent = current ? current.name : '-';
    onlineBadge(current ? current.online : null, els.online);
    els.log.textContent = '';
    if (current) current.entries.forEach(function (entry) { els.log.appendChild(render(entry)); });
    els.log.scrollTop = els.log.scrollHeight;
  }

  function renderStatus() {
    els.transport.textContent = client.transport || '-';
    els.state.textContent = client.state;
    els.state.setAttribute('data-state', client.state);
    document.documentElement.setAttribute('data-state', client.state);
  }

  // ------------------------------------------------------------------ rooms

  function nickname() {
    return els.nick.value.trim() || 'anonymous';
  }

  // Chat messages are JSON {"nick", "text", "key"?}; anything else on the channel (curl, a
  // service, binary) is shown as it is. "key" lets the sender find its pending copy.
  function parse(data) {
    if (typeof data !== 'string') return { nick: '', text: '[binary ' + data.length + ' bytes]' };
    try {
      var value = JSON.parse(data);
      if (value && typeof value.text === 'string') {
        return { nick: String(value.nick || 'anonymous'), text: value.text,
                 key: typeof value.key === 'string' ? value.key : null };
      }
    } catch (error) { /* not chat JSON */ }
    return { nick: '', text: data, key: null };
  }

  // A message as the log shows it: the server's time when it gives one.
  function entryOf(data, meta, past) {
    var message = parse(data);
    return { kind: 'msg', id: meta.id, nick: message.nick, text: message.text, key: message.key,
             sender: meta.sender || null, past: !!past,
             time: meta.time ? new Date(meta.time) : new Date(), serverTime: !!meta.time };
  }

  function join(name) {
    if (!CHANNEL.test(name) || name === TICKER) return false;
    if (!rooms.has(name)) {
      var room = { name: name, entries: [], unread: 0, online: null, live: false };
      rooms.set(name, room);
      client.subscribe(name, function (data, meta) {
        show(room, entryOf(data, meta));
      }, {
        onReset: function () {
          notice(room, 'Some messages were missed: the server no longer holds them.', 'gap');
        }
      }).then(function (cursor) {
        room.live = true;  // from now on nothing published to the room is missed
        renderRooms();
        // What the room said before: the server keeps it; up to where live delivery began.
        return client.history(name, { limit: HISTORY, before: cursor }).then(function (items) {
          if (rooms.get(name) !== room) return;
          room.history = true;
          prepend(room, items.map(function (item) { return entryOf(item.data, item.meta, true); }));
          renderRooms();
        }, function (error) { notice(room, 'No history: ' + error.message, 'error'); });
      }, function () { /* refused: the 'error' listener shows why */ });
      refreshPresence(room);
    }
    enter(name);
    return true;
  }

  function leave(name) {
    var room = rooms.get(name);
    if (!room) return false;
    client.unsubscribe(name);
    rooms.delete(name);
    if (current === room) current = rooms.values().next().value || null;
    renderRooms();
    renderCurrent();
    updateUrl();
    return true;
  }

  function enter(name) {
    current = rooms.get(name) || current;
    if (current) current.unread = 0;
    renderRooms();
    renderCurrent();
    updateUrl();
  }

  // Shown at once, marked pending until the server has it (while disconnected it waits).
  function send(text) {
    if (!current) return Promise.reject(new Error('join a room first'));
    var room = current;
    var key = Math.random().toString(36).slice(2, 12);
    var entry = { kind: 'msg', local: true, pending: true, key: key, nick: nickname(), text: text, time: new Date() };
    show(room, entry);
    return client.publish(room.name, JSON.stringify({ nick: nickname(), text: text, key: key })).then(function (id) {
      if (entry.pending) {  // acknowledged before it came back: keep it, with its id
        entry.pending = false;
        entry.id = id;
        if (room === current) renderCurrent();
      }
      return id;
    }, function (error) {
      entry.pending = false;
      entry.failed = error.message;
      if (room === current) renderCurrent();
      notice(room, 'Not sent: ' + error.message, 'error');
      throw error;
    });
  }

  function updateUrl() {
    var url = new URL(location.href);
    url.searchParams.set('rooms', Array.from(rooms.keys()).join(','));
    if (current) url.searchParams.set('room', current.name);
    else url.searchParams.delete('room');
    history.replaceState(history.state, '', url.href);
  }

  // --------------------------------------------------------------- presence

  function refreshPresence(room) {
    if (client.transport !== 'websocket' || client.state !== 'open') {
      setOnline(room, null);
      return;
    }
    client.presence(room.name).then(function (count) { setOnline(room, count); },
      function () { setOnline(room, null); });
  }

  function setOnline(room, count) {
    if (room.online === count || rooms.get(room.name) !== room) return;
    room.online = count;
    if (room === current) onlineBadge(count, els.online);
    renderRooms();
  }

  setInterval(function () { rooms.forEach(refreshPresence); }, PRESENCE_EVERY_MS);

  // ----------------------------------------------------------------- ticker

  for (var i = 0; i < STRIP; i++) els.tickerStrip.appendChild(el('span'));
  client.subscribe(TICKER, function (data, meta) {
    ticks++;
    els.tickerValue.textContent = typeof data === 'string' ? data : '[binary]';
    els.tickerMeta.textContent = 'tick ' + clock(meta.time ? new Date(meta.time) : new Date()) + ' · #' +
      meta.id.split('-')[1].replace(/^0+(?=.)/, '');
    var cells = els.tickerStrip.children;
    for (var k = 0; k < cells.length; k++) {
      var on = k < Math.min(ticks, STRIP);
      cells[k].className = on ? 'on' + (k === (ticks - 1) % STRIP ? ' fresh' : '') : '';
    }
  });

  // ------------------------------------------------------------- connection

  client.on('state', function (state) {
    renderStatus();
    if (state === 'open') {
      if (wasOpen && current) notice(current, 'Reconnected over ' + client.transport + '.');
      wasOpen = true;
      rooms.forEach(refreshPresence);
    } else if (state === 'connecting' && wasOpen && current) {
      notice(current, 'Connection lost, reconnecting…');
    }
  });
  client.on('transport', renderStatus);
  client.on('error', function (error) {
    var room = (error.channel && rooms.get(error.channel)) || current;
    if (room) notice(room, error.message, 'error');
  });

  // --------------------------------------------------------------- controls

  els.transportSelect.value = forced || '';
  els.transportSelect.addEventListener('change', function () {
    // A new client for the new choice: reload, keeping the rooms and the nickname.
    var url = new URL(location.href);
    if (els.transportSelect.value) url.searchParams.set('transport', els.transportSelect.value);
    else url.searchParams.delete('transport');
    url.searchParams.set('nick', nickname());
    location.assign(url.href);
  });

  els.nick.value = params.get('nick') || localStorage.getItem('wsrelay-nick') ||
    'guest-' + Math.floor(1000 + Math.random() * 9000);
  els.nick.addEventListener('change', function () {
    localStorage.setItem('wsrelay-nick', nickname());
  });

  els.joinForm.addEventListener('submit', function (event) {
    event.preventDefault();
    var name = els.roomInput.value.trim();
    var problem = !name ? 'Type a room name.' : name === TICKER ? '"ticker" is the ticker’s channel.'
      : !CHANNEL.test(name) ? 'A room name is 1-128 letters, digits and _ . : - only.' : '';
    els.roomError.textContent = problem;
    els.roomError.hidden = !problem;
    if (problem) {
      els.roomInput.setAttribute('aria-invalid', 'true');
      return;
    }
    els.roomInput.removeAttribute('aria-invalid');
    els.roomInput.value = '';
    join(name);
  });

  els.sendForm.addEventListener('submit', function (event) {
    event.preventDefault();
    var text = els.message.value;
    if (!text.trim() || !current) return;
    els.message.value = '';
    send(text).catch(function () {
      if (!els.message.value) els.message.value = text;
    });
  });

  window.demo = {
    client: client,
    join: join,
    leave: leave,
    enter: enter,
    send: send,
    get room() { return current ? current.name : null; },
    get rooms() { return Array.from(rooms.keys()); },
    get nick() { return nickname(); }
  };

  // ------------------------------------------------------------------ start

  var initial = (params.get('rooms') || 'lobby').split(',').filter(function (name) {
    return CHANNEL.test(name) && name !== TICKER;
  });
  initial.forEach(join);
  enter(params.get('room') && rooms.has(params.get('room')) ? params.get('room') : initial[0]);
  renderStatus();
})();
