"""The in-process write-pass measurement, on real loopback sockets at a small size."""

from wsrelay.bench import flush_cost


def test_one_pass_writes_each_socket_once_whatever_it_has_queued():
    row = flush_cost.measure(subscribers=20, messages=3, rounds=5)
    assert row["deliveries"] == 20 * 3 * 5
    assert row["sends"] == 20 * 5, "one send per socket per pass"
    assert row["messages_per_send"] == 3
    assert row["us_per_delivery"] > 0


def test_the_command_prints_a_row_per_batch_size_and_the_bare_send_floor(capsys):
    flush_cost.main(["--subscribers", "10", "--rounds", "3", "--messages", "1", "4"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split("|")[1].strip() for line in lines if line.startswith("| ")]
    assert rows == ["messages per send", "1.0", "4.0", "bare `send` loop"]


def test_sse_streams_are_measured_the_same_way_their_sends_counted():
    """SSE streams' writes count in ``writes`` as WebSockets' do (they were left out)."""
    row = flush_cost.measure(subscribers=20, messages=3, rounds=5, transport="sse")
    assert row["deliveries"] == 20 * 3 * 5
    assert row["sends"] == 20 * 5, "one send per stream per pass"
