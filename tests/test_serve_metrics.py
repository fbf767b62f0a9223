"""The Prometheus text of ``elmo serve``'s ``GET /metrics``, written by hand."""

from __future__ import annotations

from elmo.serve.metrics import Counter, Gauge, Histogram, Registry, ThroughputWindow


def test_the_text_format_of_each_kind():
    registry = Registry()
    requests = Counter("req_total", "Requests.", ("path", "code"))
    requests.inc(1, "/v1/embed", "200")
    requests.inc(2, "/v1/embed", "429")
    plain = Counter("plain_total", "Never incremented.")
    latency = Histogram("lat_seconds", "Latency.", (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        latency.observe(value)
    for series in (requests, plain, latency, Gauge("depth", "Queue depth.", lambda: 7)):
        registry.add(series)
    assert registry.render() == (
        "# HELP req_total Requests.\n"
        "# TYPE req_total counter\n"
        'req_total{path="/v1/embed",code="200"} 1\n'
        'req_total{path="/v1/embed",code="429"} 2\n'
        "# HELP plain_total Never incremented.\n"
        "# TYPE plain_total counter\n"
        "plain_total 0\n"
        "# HELP lat_seconds Latency.\n"
        "# TYPE lat_seconds histogram\n"
        'lat_seconds_bucket{le="0.1"} 2\n'  # a value on a bound counts in that bucket
        'lat_seconds_bucket{le="1"} 3\n'
        'lat_seconds_bucket{le="+Inf"} 4\n'
        "lat_seconds_sum 3.65\n"
        "lat_seconds_count 4\n"
        "# HELP depth Queue depth.\n"
        "# TYPE depth gauge\n"
        "depth 7\n"
    )


def test_label_values_are_escaped():
    c = Counter("c_total", "C.", ("path",))
    c.inc(1, 'a"b\\c\nd')
    assert c.samples() == ['c_total{path="a\\"b\\\\c\\nd"} 1']


def test_throughput_counts_the_last_window_only():
    window = ThroughputWindow(seconds=10)
    window.add(100, now=0.0)
    window.add(50, now=5.0)
    assert window.rate(now=9.0) == 15.0
    assert window.rate(now=12.0) == 5.0  # the first 100 tokens are older than 10 s
    assert window.rate(now=30.0) == 0.0
