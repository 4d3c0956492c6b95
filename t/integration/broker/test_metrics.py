"""The broker's numbers on the core's admin endpoint (/metrics, Prometheus
text): per topic and per channel depth, in flight, deferred, requeues."""

import nsqwire as nw


def test_metrics(broker):
    b = broker(http=False)
    c = nw.consumer(b.tcp_port, "met", "ch", rdy=1)
    nw.publish(b.tcp_port, "met", [b"a", b"b", b"c"])
    m = c.read_message()
    c.req(m.id, 60000)
    c.read_message()
    c.nop()
    mt = b.metrics()
    assert mt['ternd_broker_topic_messages_total{topic="met"}'] == 3
    assert mt['ternd_broker_channel_depth{topic="met",channel="ch"}'] == 1
    assert mt['ternd_broker_channel_in_flight{topic="met",channel="ch"}'] == 1
    assert mt['ternd_broker_channel_deferred{topic="met",channel="ch"}'] == 1
    assert mt['ternd_broker_channel_requeued_total{topic="met",channel="ch"}'] == 1
    assert mt["ternd_broker_published_total"] == 3
    assert mt["ternd_broker_clients"] == 1  # the publisher has gone
