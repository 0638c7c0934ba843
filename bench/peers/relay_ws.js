// Peer relay for the benchmark: docs/protocol.md part 1 on Node.js with the `ws` package.
// Written the way a Node developer would write this relay (node:http plus a `ws` server,
// per-message deflate off, 64 MiB message cap, bufferutil when installed), so that
// bench/relay_bench.py can set relay_server against a fair, idiomatic alternative.
//
//     node bench/peers/relay_ws.js --port 0    # prints "listening on HOST:PORT"
'use strict';

const http = require('node:http');
const crypto = require('node:crypto');
const { parseArgs } = require('node:util');
const { WebSocketServer } = require('ws');

const VERSION = '0.1.0';
const SERVICE = 'Segmentation Suite Relay';
const CODE_ALPHABET = 'ABCDEFGHJKLMNPQRSTUVWXYZ23456789';
const CODE_LENGTH = 6;
const RESERVATION_MS = 120 * 1000;
const MAX_MESSAGE_SIZE = 64 * 1024 * 1024;
const MAX_USER_ID_BYTES = 128;
const MAX_DISPLAY_NAME_BYTES = 256;

const rooms = new Map(); // code -> Map(socket -> member), insertion order = joining order
const reserved = new Map(); // code -> deadline (ms), from POST /api/create-room
const members = new Map(); // socket -> { userId, displayName, code }

class FieldError extends Error {
  constructor(field, why) {
    super(`${field} ${why}`);
    this.field = field;
  }
}

function expireReservations() {
  const now = Date.now();
  for (const [code, deadline] of reserved) if (deadline < now) reserved.delete(code);
}

function newCode() {
  expireReservations();
  for (;;) {
    let code = '';
    for (let i = 0; i < CODE_LENGTH; i++) code += CODE_ALPHABET[crypto.randomInt(CODE_ALPHABET.length)];
    if (!rooms.has(code) && !reserved.has(code)) return code;
  }
}

function send(sockets, type, payload) {
  const text = JSON.stringify({ type, payload });
  for (const socket of sockets) socket.send(text);
}

function usersOf(room) {
  return [...room.values()].map((m) => ({ user_id: m.userId, display_name: m.displayName }));
}

function leave(socket) {
  const member = members.get(socket);
  if (!member) return;
  members.delete(socket);
  const room = rooms.get(member.code);
  room.delete(socket);
  if (room.size === 0) {
    rooms.delete(member.code);
    return;
  }
  send(room.keys(), 'user_left', {
    user_id: member.userId,
    display_name: member.displayName,
    users: usersOf(room),
  });
}

function identity(payload) {
  const userId = payload.user_id;
  const name = payload.display_name;
  if (typeof userId !== 'string' || userId.length === 0 || Buffer.byteLength(userId) > MAX_USER_ID_BYTES)
    throw new FieldError('user_id', `must be a string of 1 to ${MAX_USER_ID_BYTES} bytes`);
  if (typeof name !== 'string' || Buffer.byteLength(name) > MAX_DISPLAY_NAME_BYTES)
    throw new FieldError('display_name', `must be a string of at most ${MAX_DISPLAY_NAME_BYTES} bytes`);
  return [userId, name];
}

function enter(socket, code, userId, displayName) {
  const member = { userId, displayName, code };
  rooms.get(code).set(socket, member);
  members.set(socket, member);
}

function createRoom(socket, payload) {
  const [userId, name] = identity(payload);
  leave(socket);
  const code = newCode();
  rooms.set(code, new Map());
  enter(socket, code, userId, name);
  send([socket], 'room_created', { room_code: code });
}

function joinRoom(socket, payload) {
  if (typeof payload.room_code !== 'string') throw new FieldError('room_code', 'must be a string');
  const [userId, name] = identity(payload);
  const code = payload.room_code.toUpperCase();
  expireReservations();
  if (!rooms.has(code) && reserved.has(code)) {
    reserved.delete(code);
    rooms.set(code, new Map());
  }
  if (!rooms.has(code)) {
    send([socket], 'error', { error: 'Room not found', code: 'ROOM_NOT_FOUND' });
    return;
  }
  const room = rooms.get(code);
  leave(socket);
  if (!rooms.has(code)) rooms.set(code, room); // leaving emptied the room we were already in
  const others = [...room.keys()];
  enter(socket, code, userId, name);
  const users = usersOf(room);
  send([socket], 'room_joined', { room_code: code, users });
  send(others, 'user_joined', { user_id: userId, display_name: name, users });
}

function forward(socket, data, isBinary) {
  const member = members.get(socket);
  if (!member) return;
  for (const other of rooms.get(member.code).keys()) {
    if (other !== socket) other.send(data, { binary: isBinary });
  }
}

function onText(socket, data) {
  let message;
  try {
    message = JSON.parse(data.toString());
  } catch (err) {
    send([socket], 'error', { error: 'Invalid message format', details: err.message, code: 'INVALID_JSON' });
    return;
  }
  const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (!isObject(message) || typeof message.type !== 'string' || !isObject(message.payload)) {
    send([socket], 'error', {
      error: 'A message must be an object with a string type and an object payload',
      code: 'INVALID_MESSAGE',
    });
    return;
  }
  try {
    if (message.type === 'create_room') createRoom(socket, message.payload);
    else if (message.type === 'join_room') joinRoom(socket, message.payload);
    else if (message.type === 'leave_room') leave(socket);
    else {
      const member = members.get(socket);
      if (!member) return;
      message.sender_id = member.userId;
      message.sender_name = member.displayName;
      forward(socket, JSON.stringify(message), false);
    }
  } catch (err) {
    if (!(err instanceof FieldError)) throw err;
    send([socket], 'error', { error: `Invalid field: ${err.message}`, code: 'INVALID_FIELD', field: err.field });
  }
}

function answer(res, status, type, body) {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function isWebSocketPath(path) {
  return path === '/ws' || path.startsWith('/room/');
}

function onRequest(req, res) {
  const path = req.url.split('?')[0];
  if ((path === '/' || path === '/health') && req.method === 'GET') {
    answer(res, 200, 'application/json', JSON.stringify({ status: 'ok', service: SERVICE, version: VERSION }));
  } else if (path === '/api/create-room' && req.method === 'POST') {
    const code = newCode();
    reserved.set(code, Date.now() + RESERVATION_MS);
    answer(res, 200, 'application/json', JSON.stringify({ room_code: code }));
  } else if (isWebSocketPath(path)) {
    answer(res, 426, 'text/plain', 'Expected WebSocket');
  } else {
    answer(res, 404, 'text/plain', 'Not Found');
  }
}

function main() {
  const { values } = parseArgs({
    options: { port: { type: 'string', default: '8787' }, listen: { type: 'string', default: '127.0.0.1' } },
  });
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: MAX_MESSAGE_SIZE });
  wss.on('connection', (socket) => {
    socket.on('message', (data, isBinary) => (isBinary ? forward(socket, data, true) : onText(socket, data)));
    socket.on('close', () => leave(socket));
    socket.on('error', () => {}); // the close event that follows does the clean-up
  });
  const server = http.createServer(onRequest);
  server.on('upgrade', (req, sock, head) => {
    if (!isWebSocketPath(req.url.split('?')[0])) {
      sock.end('HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nNot Found');
      return;
    }
    wss.handleUpgrade(req, sock, head, (socket) => wss.emit('connection', socket, req));
  });
  server.listen({ port: Number(values.port), host: values.listen, backlog: 1024 }, () => {
    const { address, port } = server.address();
    console.log(`listening on ${address}:${port}`);
  });
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
}

main();
