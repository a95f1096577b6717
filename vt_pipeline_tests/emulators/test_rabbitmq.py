"""The private RabbitMQ the tests and the demo start: real broker, isolated, cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pytest

from vt_pipeline.emulators import rabbitmq as rabbitmq_module
from vt_pipeline.emulators.rabbitmq import AMQPConnectionInfo, RabbitMQ, RabbitMQError
from vt_pipeline_tests.processes import cwd_of, family, live_processes

pytestmark = pytest.mark.integration


def roundtrip(broker: RabbitMQ, queue: str, body: bytes) -> bytes | None:
    connection = pika.BlockingConnection(broker.connection_parameters())
    try:
        channel = connection.channel()
        channel.queue_declare(queue)
        channel.basic_publish("", queue, body)
        channel.confirm_delivery()
        _, _, received = channel.basic_get(queue, auto_ack=True)
        return received
    finally:
        connection.close()


def pids_of(broker: RabbitMQ) -> list[int]:
    """Processes of the broker and its epmd (by their private ports in the command line)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    markers = (broker.nodename.split("@")[0], f"-port {broker.epmd_port}")
    return [
        int(line.split()[0]) for line in out.splitlines()[1:] if any(m in line for m in markers)
    ]


def test_session_broker_carries_messages(rabbitmq: RabbitMQ) -> None:
    assert rabbitmq.running
    assert rabbitmq.amqp_url == f"amqp://guest:guest@127.0.0.1:{rabbitmq.port}/%2F"
    assert roundtrip(rabbitmq, "test-roundtrip", b"hello") == b"hello"
    info = AMQPConnectionInfo.from_url(rabbitmq.amqp_url)
    assert (info.host, info.port, info.vhost) == ("127.0.0.1", rabbitmq.port, "/")


def test_two_brokers_run_side_by_side_and_leave_nothing_behind() -> None:
    brokers = [RabbitMQ(), RabbitMQ()]
    threads = [threading.Thread(target=b.start) for b in brokers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    try:
        assert all(b.running for b in brokers), brokers
        first, second = brokers
        assert len({first.port, second.port, first.epmd_port, second.epmd_port}) == 4
        assert first.startup_seconds is not None and first.startup_seconds < 60
        # Separate nodes: a queue declared on one does not exist on the other.
        assert roundtrip(first, "only-on-first", b"1") == b"1"
        connection = pika.BlockingConnection(second.connection_parameters())
        try:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):
                connection.channel().queue_declare("only-on-first", passive=True)
        finally:
            connection.close()
        directories = [Path(str(b.directory)) for b in brokers]
        processes = [pids_of(b) for b in brokers]
        assert all(processes)
    finally:
        for broker in brokers:
            broker.stop()
    assert not any(d.exists() for d in directories)
    for pids in processes:
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), pid
    assert not any(b.running for b in brokers)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_a_missing_install_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rabbitmq_module, "_SERVER_CANDIDATES", ("/nonexistent/rabbitmq-server",))
    monkeypatch.setenv("PATH", os.devnull)
    with pytest.raises(RabbitMQError, match="apt-get install rabbitmq-server"):
        RabbitMQ().start()


OWNER_ARGS = ("--start-rabbitmq", "--port", "0")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_the_opencti_emulators_broker_stops_with_its_owner(signum: signal.Signals) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-m", "vt_pipeline.cli", "emulate", "opencti", *OWNER_ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert owner.stdout is not None
        lines = []
        for line in owner.stdout:
            lines.append(line)
            if "OpenCTI emulator listening" in line:
                break
        assert any("RabbitMQ listening" in line for line in lines), lines
        owned = family(owner.pid)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in owned}
        assert {"epmd", "beam.smp"} <= names, names
        directories = {d for pid in owned if "vt-pipeline-rabbitmq-" in (d := cwd_of(pid))}
        assert len(directories) == 1, directories

        owner.send_signal(signum)
        owner.wait(timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = owned & set(live_processes())
            if not left and not any(Path(d).exists() for d in directories):
                break
            time.sleep(0.5)
        assert not (owned & set(live_processes())), f"survivors after {signum.name}"
        assert not any(Path(d).exists() for d in directories)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def test_a_restarted_broker_keeps_its_port_and_persistent_messages() -> None:
    with RabbitMQ() as broker:
        connection = pika.BlockingConnection(broker.connection_parameters())
        channel = connection.channel()
        channel.queue_declare("durable-one", durable=True)
        channel.basic_publish("", "durable-one", b"kept", pika.BasicProperties(delivery_mode=2))
        connection.close()
        port = broker.port
        broker.restart(down_seconds=0.5)
        assert broker.port == port and broker.running
        connection = pika.BlockingConnection(broker.connection_parameters())
        try:
            _, _, body = connection.channel().basic_get("durable-one", auto_ack=True)
        finally:
            connection.close()
        assert body == b"kept"
