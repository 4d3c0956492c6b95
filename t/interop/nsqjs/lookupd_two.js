// lookupd_two.js -- consume one topic from every broker that discovery
// knows, with the real nsqjs client given only discovery's HTTP address.
// The test publishes COUNT messages beforehand, each body "<broker>-<n>"
// naming the broker it was published to, so the counts per prefix show
// that both brokers were read. Prints one JSON line: received (distinct
// bodies), perBroker (distinct bodies per prefix), duplicates (a body seen
// again on its first attempt: not a requeue), connected (host:port list).
//
// usage: node lookupd_two.js LOOKUPD_HTTP TOPIC COUNT
'use strict';
const nsq = require('nsqjs');

const [lookupd, topic, countArg] = process.argv.slice(2);
const count = Number(countArg);
const seen = new Set();
const perBroker = {};
const connected = [];
let duplicates = 0;
let finished = false;

function done(error) {
  if (finished) return;
  finished = true;
  console.log(JSON.stringify({error: error || null, received: seen.size, perBroker,
                              duplicates, connected}));
  process.exit(error ? 1 : 0);
}

const timer = setTimeout(() => done('timeout'), 40000);

const reader = new nsq.Reader(topic, 'two', {
  lookupdHTTPAddresses: [lookupd], lookupdPollInterval: 1, maxInFlight: 50,
});
reader.on('nsqd_connected', (h, p) => connected.push(h + ':' + p));
reader.on('message', (msg) => {
  const body = msg.body.toString();
  if (seen.has(body)) {
    if (msg.attempts === 1) duplicates++;
  } else {
    seen.add(body);
    const who = body.split('-')[0];
    perBroker[who] = (perBroker[who] || 0) + 1;
  }
  msg.finish();
  if (seen.size === count) {
    clearTimeout(timer);
    // a little longer, so that a late duplicate would be counted
    setTimeout(() => { reader.close(); done(); }, 500);
  }
});
reader.on('error', (err) => done('reader: ' + err));
reader.connect();
