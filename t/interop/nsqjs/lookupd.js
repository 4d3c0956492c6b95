// lookupd.js -- consume through discovery with the real nsqjs client: the
// Reader is given only the discovery module's HTTP address, asks its
// /lookup which brokers have the topic (nsqlookupd's v1 answer) and
// connects to them. Prints one JSON line with what happened.
//
// usage: node lookupd.js LOOKUPD_HTTP BROKER_TCP TOPIC COUNT
'use strict';
const nsq = require('nsqjs');

const [lookupd, broker, topic, countArg] = process.argv.slice(2);
const [host, portText] = broker.split(':');
const count = Number(countArg);
const seen = new Set();
const connected = [];

function done(error) {
  console.log(JSON.stringify({error: error || null, received: seen.size, connected}));
  process.exit(error ? 1 : 0);
}

const timer = setTimeout(() => done('timeout'), 30000);

const reader = new nsq.Reader(topic, 'via_lookupd', {
  lookupdHTTPAddresses: [lookupd], lookupdPollInterval: 1, maxInFlight: 100,
});
reader.on('nsqd_connected', (h, p) => connected.push(h + ':' + p));
reader.on('message', (msg) => {
  seen.add(msg.body.toString());
  msg.finish();
  if (seen.size === count) {
    clearTimeout(timer);
    setTimeout(() => { reader.close(); done(); }, 200);
  }
});
reader.on('error', (err) => done('reader: ' + err));

const writer = new nsq.Writer(host, Number(portText));
writer.on('error', (err) => done('writer: ' + err));
writer.on('ready', () => {
  const bodies = [];
  for (let i = 0; i < count; i++) bodies.push('m' + i);
  writer.publish(topic, bodies, (err) => {
    if (err) return done('publish: ' + err);
    reader.connect();
  });
});
writer.connect();
