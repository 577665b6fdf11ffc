// A unix-socket relay in front of the daemon, to make the transport fail the way a reset or a
// restart does: it can start listening late, and it can cut the first connection just as the
// daemon's answer to the first request arrives (the request was served, the answer is lost).
import net from 'node:net';
import { rmSync } from 'node:fs';

export class Relay {
  connections = 0;
  answersLost = 0;

  constructor(upstream, path, { listenAfterMs = 0, loseFirstAnswer = false } = {}) {
    this.upstream = upstream;
    this.path = path;
    this.loseFirstAnswer = loseFirstAnswer;
    this.sockets = new Set();
    this.server = net.createServer((client) => this.#relay(client));
    this.started = new Promise((resolve) => {
      this.timer = setTimeout(() => this.server.listen(path, resolve), listenAfterMs);
    });
  }

  #relay(client) {
    this.connections += 1;
    const cut = this.loseFirstAnswer && this.connections === 1;
    const up = net.connect(this.upstream);
    for (const s of [client, up]) {
      this.sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => { client.destroy(); up.destroy(); });
    }
    client.pipe(up);
    if (!cut) {
      up.pipe(client);
      return;
    }
    // HTTP/2 frames (9-byte header: length, type, flags, stream id): connection-level frames
    // (stream 0: SETTINGS, WINDOW_UPDATE…) pass; the first frame of a stream is the answer.
    let buf = Buffer.alloc(0);
    up.on('data', (data) => {
      buf = Buffer.concat([buf, data]);
      while (buf.length >= 9) {
        const len = buf.readUIntBE(0, 3);
        const stream = buf.readUInt32BE(5) & 0x7fffffff;
        if (stream !== 0) {
          this.answersLost += 1;
          client.destroy();
          up.destroy();
          return;
        }
        if (buf.length < 9 + len) break;
        client.write(buf.subarray(0, 9 + len));
        buf = buf.subarray(9 + len);
      }
    });
  }

  close() {
    clearTimeout(this.timer);
    for (const s of this.sockets) s.destroy();
    this.server.close();
    rmSync(this.path, { force: true });
  }
}
