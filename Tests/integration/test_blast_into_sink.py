"""`tern blast` against `tern sink` (issue "sink and blast"): the counts on both sides agree, with and
without injected faults. The sink's side is read from its /metrics (prometheus_client's parser) and
from the summary it prints when it stops; blast's side from its --json report."""
from __future__ import annotations

from test_blast import blast_json
from test_sink import start_sink  # noqa: F401  (the fixture)


def test_counts_agree_messages_recipients_bytes(start_sink):
    sink = start_sink(["--seed", "7"])
    report = blast_json("--server", f"127.0.0.1:{sink.port}", "--messages", "400", "--concurrency", "16",
                        "--recipients", "3", "--size", "2k-6k", "--messages-per-connection", "5")
    m = report["messages"]
    assert m["attempted"] == 400 and m["accepted"] == 400 and m["failed"] == 0, m
    assert report["recipients"]["accepted"] == 1200
    assert sink.counter("tern_sink_messages_total") == 400
    assert sink.counter("tern_sink_recipients_total") == 1200
    assert sink.counter("tern_sink_message_bytes_total") == report["bytes_accepted"]
    # 5 messages per connection: 80 sessions on both sides.
    assert report["connections"]["opened"] == 80
    assert sink.counter("tern_sink_sessions_total") == 80
    summary = sink.stop()
    assert f"80 sessions (0 refused), 400 messages, 1200 recipients, {report['bytes_accepted']} bytes" in summary


def test_injected_rcpt_faults_are_what_blast_counts(start_sink):
    sink = start_sink(["--seed", "11", "--fault", "stage=rcpt,fraction=0.25,reply=451"])
    report = blast_json("--server", f"127.0.0.1:{sink.port}", "--messages", "300", "--concurrency", "10",
                        "--recipients", "2")
    faults = sink.faults("rcpt", "reply")
    rcpt = report["replies"]["rcpt"]
    assert 0 < faults < 600, faults  # a quarter of 600 RCPTs, give or take the dice
    assert rcpt["4xx"] == faults, (rcpt, faults)
    assert rcpt["2xx"] == 600 - faults
    assert rcpt["5xx"] == 0
    # A message is accepted when at least one recipient was: what the sink counted as messages.
    assert sink.counter("tern_sink_messages_total") == report["messages"]["accepted"]
    assert sink.counter("tern_sink_recipients_total") == rcpt["2xx"]


def test_magic_data_code_is_counted_at_data_end(start_sink):
    sink = start_sink(["--seed", "3"])
    report = blast_json("--server", f"127.0.0.1:{sink.port}", "--messages", "50", "--concurrency", "5",
                        "--to", "data-554@sink.test")
    assert report["messages"]["accepted"] == 0
    assert report["messages"]["perm_failed"] == 50, report["messages"]
    assert sink.counter("tern_sink_messages_total") == 0


def test_replies_on_dropped_sessions_are_counted(start_sink):
    # The sink answers MAIL, RCPT and DATA (354), then closes the connection when the message comes:
    # every transaction is lost, but each of those replies was received and counts, as the
    # latencies taken at the same replies do.
    sink = start_sink(["--seed", "5"])
    report = blast_json("--server", f"127.0.0.1:{sink.port}", "--messages", "30", "--concurrency", "3",
                        "--to", "drop@sink.test")
    assert report["messages"]["failed"] == 30, report["messages"]
    r = report["replies"]
    assert r["greeting"]["2xx"] == r["ehlo"]["2xx"] == 30, r
    assert r["mail"] == {"2xx": 30, "3xx": 0, "4xx": 0, "5xx": 0}, r
    assert r["rcpt"] == {"2xx": 30, "3xx": 0, "4xx": 0, "5xx": 0}, r
    assert r["data"] == {"2xx": 0, "3xx": 30, "4xx": 0, "5xx": 0}, r
    assert r["data_end"] == {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}, r
    lat = report["latency_ms"]
    assert lat["mail"]["count"] == r["mail"]["2xx"]
    assert lat["data"]["count"] == r["data"]["3xx"]
    assert lat["data_end"]["count"] == 0
    assert sink.faults("data", "drop") == 30


def test_starttls_counts_agree(start_sink, tmp_path, certs):
    sink = start_sink(["--tls-certificate", str(certs["cert"]), "--tls-key", str(certs["key"])])
    report = blast_json("--server", f"127.0.0.1:{sink.port}", "--messages", "120", "--concurrency", "8",
                        "--messages-per-connection", "4", "--starttls")
    assert report["messages"]["accepted"] == 120, report
    assert sink.counter("tern_sink_messages_total") == 120
    assert sink.counter("tern_sink_message_bytes_total") == report["bytes_accepted"]
    assert sink.counter("tern_sink_tls_sessions_total") == report["connections"]["opened"] == 30
    assert report["latency_ms"]["tls"]["count"] == 30


def test_bdat_counts_agree(start_sink):
    # CHUNKING on the sink (on by default): blast sends every message in chunks of at most 1,000 octets.
    sink = start_sink(["--seed", "13"])
    report = blast_json("--server", f"127.0.0.1:{sink.port}", "--messages", "200", "--concurrency", "8",
                        "--size", "2k-6k", "--messages-per-connection", "5", "--bdat", "--chunk-size", "1000")
    m = report["messages"]
    assert m["accepted"] == 200 and m["failed"] == 0, m
    assert sink.counter("tern_sink_messages_total") == 200
    assert sink.counter("tern_sink_message_bytes_total") == report["bytes_accepted"]
    # 2 to 6 chunks a message: the chunks before the last under DATA, the LAST ones under DATA end.
    r = report["replies"]
    assert 200 <= r["data"]["2xx"] <= 200 * 6 and r["data_end"]["2xx"] == 200, r


def test_bdat_falls_back_to_data_without_chunking(start_sink):
    sink = start_sink(["--seed", "17", "--disable", "chunking"])
    report = blast_json("--server", f"127.0.0.1:{sink.port}", "--messages", "50", "--concurrency", "5", "--bdat")
    assert report["messages"]["accepted"] == 50, report["messages"]
    # DATA's 354s are what DATA counts now.
    assert report["replies"]["data"]["3xx"] == 50, report["replies"]
    assert sink.counter("tern_sink_messages_total") == 50
