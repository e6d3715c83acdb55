// Runs seed-join-example.js — the WebSocket join example of AgentSpace's
// original design, section 6, byte for byte — with the `ws` npm package as
// its WebSocket. The example connects to ws://localhost:3001/ws; when
// AGENTSPACE_WS_URL is set, that address is pointed at it (the test server
// listens on a free port). The example never closes its socket, so this
// harness ends the process once a room message has been printed (exit 0),
// or after WAIT_MS without one (exit 1).
'use strict';
const fs = require('fs');
const path = require('path');
const vm = require('vm');
const RealWebSocket = require('ws');

const target = process.env.AGENTSPACE_WS_URL;
const waitMs = Number(process.env.WAIT_MS || 30000);

class WebSocket extends RealWebSocket {
  constructor(url, ...rest) {
    super(target && url === 'ws://localhost:3001/ws' ? target : url, ...rest);
    this.on('message', (data) => {
      let frame;
      try { frame = JSON.parse(data.toString()); } catch { return; }
      if (frame.type === 'message') {
        // Let the example's own onmessage print it first.
        setTimeout(() => process.exit(0), 50);
      }
    });
    this.on('close', (code, reason) => {
      console.error(`closed: ${code} ${reason}`);
      process.exit(2);
    });
  }
}
globalThis.WebSocket = WebSocket; // Node 22 has a WebSocket of its own: use ws

setTimeout(() => {
  console.error(`no room message within ${waitMs} ms`);
  process.exit(1);
}, waitMs);

const file = path.join(__dirname, 'seed-join-example.js');
vm.runInThisContext(fs.readFileSync(file, 'utf8'), { filename: file });
