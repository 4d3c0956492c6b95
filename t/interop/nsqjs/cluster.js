// cluster.js -- the consumer of the cluster test (t/integration/test_cluster.py):
// nsqjs given only one discovery's HTTP address reads a topic from every
// broker that the shared (etcd) registry lists, and rides out a broker
// that dies and comes back: connection errors are counted, not fatal.
// Prints "connected HOST:PORT" as connections come up, then one JSON line:
// bodies (distinct, sorted), duplicates (a body seen again on its first
// attempt), errors.
//
// usage: node cluster.js LOOKUPD_HTTP TOPIC COUNT TIMEOUT_MS
'use strict';
const nsq = require('nsqjs');

const [lookupd, topic, countArg, timeoutArg] = process.argv.slice(2);
const count = Number(countArg);
const seen = new Set();
let duplicates = 0;
let errors = 0;
let finished = false;

function done(error) {
  if (finished) return;
  finished = true;
  console.log(JSON.stringify({error: error || null, bodies: [...seen].sort(), duplicates,
                              errors}));
  process.exit(0);
}

const timer = setTimeout(() => done('timeout'), Number(timeoutArg));

const reader = new nsq.Reader(topic, 'cluster', {
  lookupdHTTPAddresses: [lookupd], lookupdPollInterval: 1, maxInFlight: 20,
});
reader.on('nsqd_connected', (h, p) => console.log('connected ' + h + ':' + p));
reader.on('message', (msg) => {
  const body = msg.body.toString();
  if (seen.has(body)) {
    if (msg.attempts === 1) duplicates++;
  } else {
    seen.add(body);
  }
  msg.finish();
  if (seen.size === count) {
    clearTimeout(timer);
    setTimeout(() => { reader.close(); done(); }, 500);
  }
});
reader.on('error', () => { errors++; });
reader.connect();
