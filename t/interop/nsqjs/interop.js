// interop.js -- publish and consume N messages through a ternd broker with
// the real nsqjs client; prints one JSON line with what happened.
//
// usage: node interop.js HOST:PORT TOPIC COUNT [deflate|tls|tls+deflate]
//
// Every 100th message is requeued once by the consumer, so a second
// delivery of exactly those (with attempts == 2) is expected; any other
// repeat is a duplicate and any missing body is a loss. `compressed` counts
// the connections that started deflate (2 with `deflate`, else 0), `tls`
// those that upgraded to TLS after IDENTIFY (tlsVerification off: the test
// certificate is self-signed).
'use strict';
const nsq = require('nsqjs');
const {NSQDConnection} = require('nsqjs/lib/nsqdconnection');

// Count the connections that switched to compression after IDENTIFY (the
// writer's and the reader's when deflate was negotiated), so that a server
// ignoring `deflate` cannot pass the deflate run.
let compressed = 0;
const startCompression = NSQDConnection.prototype.startCompression;
NSQDConnection.prototype.startCompression = function (...args) {
  compressed++;
  return startCompression.apply(this, args);
};

let tlsStarted = 0;
const startTLS = NSQDConnection.prototype.startTLS;
NSQDConnection.prototype.startTLS = function (...args) {
  tlsStarted++;
  return startTLS.apply(this, args);
};

const [addr, topic, countArg, mode = ''] = process.argv.slice(2);
const [host, portText] = addr.split(':');
const port = Number(portText);
const count = Number(countArg);
const deflate = mode.includes('deflate');
const tls = mode.includes('tls');
const tlsVerification = false;
const channel = 'interop';

const seen = new Map();       // body -> deliveries
let requeued = 0;
let duplicates = 0;
let badAttempts = 0;
let finished = 0;
let published = 0;

function done(error) {
  const missing = [];
  for (let i = 0; i < count; i++)
    if (!seen.has('msg-' + i)) missing.push(i);
  console.log(JSON.stringify({
    error: error || null, published, finished, distinct: seen.size, requeued,
    duplicates, badAttempts, missing: missing.length, firstMissing: missing.slice(0, 5),
    compressed, tls: tlsStarted,
  }));
  process.exit(error ? 1 : 0);
}

const timer = setTimeout(() => done('timeout'), 90000);

const reader = new nsq.Reader(topic, channel, {
  nsqdTCPAddresses: [addr], maxInFlight: 200, deflate, tls, tlsVerification, requeueDelay: 0,
  maxAttempts: 0,
});
reader.on('message', (msg) => {
  const body = msg.body.toString();
  const n = (seen.get(body) || 0) + 1;
  seen.set(body, n);
  const idx = Number(body.slice(4));
  if (idx % 100 === 0 && msg.attempts === 1) {
    requeued++;
    msg.requeue(0, false);
    return;
  }
  const expected = idx % 100 === 0 ? 2 : 1;
  if (msg.attempts !== expected) badAttempts++;
  if (n > expected) duplicates++;
  msg.finish();
  finished++;
  if (finished === count) {
    clearTimeout(timer);
    // let the last FINs reach the broker before leaving
    setTimeout(() => { reader.close(); done(); }, 200);
  }
});
reader.on('error', (err) => done('reader: ' + err));

const writer = new nsq.Writer(host, port, { deflate, tls, tlsVerification });
writer.on('error', (err) => done('writer: ' + err));
writer.on('ready', () => {
  // half single PUBs, half MPUB batches of 100
  let i = 0;
  const next = () => {
    if (i >= count) {
      reader.connect();
      return;
    }
    if (i < count / 2) {
      const body = 'msg-' + i++;
      writer.publish(topic, body, (err) => {
        if (err) return done('publish: ' + err);
        published++;
        next();
      });
    } else {
      const batch = [];
      while (batch.length < 100 && i < count) batch.push('msg-' + i++);
      writer.publish(topic, batch, (err) => {
        if (err) return done('mpub: ' + err);
        published += batch.length;
        next();
      });
    }
  };
  next();
});
writer.connect();
