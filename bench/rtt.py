"""The worker's drain with PostgreSQL and Redis across a network: 1 ms each way.

    sudo .venv/bin/python bench/rtt.py --jobs 20000 --rounds 3

Needs root (a network namespace, a veth pair). The worker processes (``--processes``,
default 2) run in a namespace of their own, ``modalkit-rtt``, joined to the host by a veth
pair (10.231.0.1/30 on the host, .2 inside), and reach PostgreSQL and Redis through a
relay on the host side of the pair (10.231.0.1:5432 and :6379 to 127.0.0.1): the shared
services listen on loopback only and are not touched, and the relay connects from
loopback, where they trust it. ``iptables`` DNAT to 127.0.0.1 (with ``route_localnet``)
would avoid the relay's own cost, but changes the host's firewall for everyone and
reaches PostgreSQL from 10.231.0.2, which its ``pg_hba.conf`` need not trust.

The delay: ``tc netem delay 1ms`` on both ends of the pair where the kernel has
``sch_netem``; where it does not (``--delay-by auto`` finds out), the relay holds every
chunk ``--delay-ms`` in each direction before passing it on, a delay line with no
bandwidth limit (the same as netem's delay with no rate). A timed ``SELECT 1`` and a Redis
``PING`` from inside the namespace print the round trip the workers see.

Each round drains ``--jobs`` queued jobs (filled and timed as bench/throughput.py does)
three times: on loopback (the workers on the host, as throughput.py runs them); in the
namespace through the relay with no delay (what the relay itself costs); and in the
namespace with the delay. It prints the medians, each ratio against the relay with no
delay (the honest one: the same path, only the delay differs) and against loopback,
the load average, and what the workers' round trips were for: the relay counts each time
a client sends after it has received (a *turn*, one round trip whatever it pipelines) and
names it by its first statement or command. ``--worker-env BENCH_TRACE=DIR`` has each
worker process write how long its database steps queued for their thread and ran on it
(bench/trace.py); ``--paths delay`` drains only the delayed path.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAMESPACE = "modalkit-rtt"
HOST_END, INNER_END = "mkrtt-h", "mkrtt-n"  # at most 15 characters, as Linux wants
HOST_IP, INNER_IP = "10.231.0.1", "10.231.0.2"
DATABASE = "modalkit_bench_rtt"
FORWARDS = {"postgres": (5432, 5432), "redis": (6379, 6379)}  # name: (port on HOST_IP, port on 127.0.0.1)


# --- The relay: a process of its own on the host side of the pair -----------------------


def _label(service: str, data: bytes) -> str:
    """What a turn is for: the first statement (PostgreSQL) or command (Redis) it sends."""
    if service == "redis":
        parts = data.split(b"\r\n", 3)
        return parts[2].decode(errors="replace").upper() if len(parts) > 2 and data[:1] == b"*" else "?"
    kind = data[:1]
    if kind == b"Q":
        sql = data[5:].split(b"\0", 1)[0]
    elif kind == b"P":  # Parse: a statement name, then the statement
        sql = data[5:].split(b"\0", 2)[1] if data.count(b"\0") >= 2 else b""
    else:
        return "connect" if kind == b"\0" else f"message {kind!r}"
    return " ".join(sql.decode(errors="replace").split())[:48]


class _Connection:
    def __init__(self, client: socket.socket, service: str, target: int, relay: Relay) -> None:
        self.service, self.relay = service, relay
        self.client, self.server = client, socket.create_connection(("127.0.0.1", target))
        for sock in (self.client, self.server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_from_client = False
        for source, target_sock, from_client in ((client, self.server, True), (self.server, client, False)):
            line: queue.SimpleQueue[tuple[float, bytes] | None] = queue.SimpleQueue()
            threading.Thread(target=self._read, args=(source, line, from_client), daemon=True).start()
            threading.Thread(target=self._write, args=(target_sock, line), daemon=True).start()

    def _read(
        self, source: socket.socket, line: queue.SimpleQueue[tuple[float, bytes] | None], from_client: bool
    ) -> None:
        try:
            while data := source.recv(1 << 18):
                if from_client and not self.last_from_client:
                    self.relay.count(self.service, data)
                self.last_from_client = from_client
                line.put((time.monotonic() + self.relay.delays[self.service], data))
        except OSError:
            pass
        line.put(None)

    def _write(self, target: socket.socket, line: queue.SimpleQueue[tuple[float, bytes] | None]) -> None:
        # A delay line: each chunk leaves ``delay`` after it came, in order, however many
        # are on their way (netem's delay with no rate limit).
        try:
            while (item := line.get()) is not None:
                due, data = item
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Relay:
    """Forwards ``HOST_IP:port`` to ``127.0.0.1:port``, ``delay`` seconds each way; counts turns."""

    def __init__(self, delay: float) -> None:
        self.delays = dict.fromkeys(FORWARDS, delay)
        self.turns: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def count(self, service: str, data: bytes) -> None:
        with self._lock:
            self.turns[(service, _label(service, data))] += 1

    def serve(self, service: str, port: int, target: int) -> None:
        listener = socket.create_server((HOST_IP, port), reuse_port=False)
        threading.Thread(target=self._accept, args=(listener, service, target), daemon=True).start()

    def _accept(self, listener: socket.socket, service: str, target: int) -> None:
        while True:
            client, _ = listener.accept()
            try:
                _Connection(client, service, target, self)
            except OSError:
                client.close()


def relay_main(delay_ms: float) -> None:
    """Commands on stdin, one a line: ``delay MS``, ``turns`` (print them as JSON, and start
    again from zero). Exits when stdin closes: with the benchmark, however it ended."""
    relay = Relay(delay_ms / 1000)
    for service, (port, target) in FORWARDS.items():
        relay.serve(service, port, target)
    print("ready", flush=True)
    for command in sys.stdin:
        match command.split():
            case ["delay", ms, *services]:
                for service in services or FORWARDS:
                    relay.delays[service] = float(ms) / 1000
            case ["turns"]:
                with relay._lock:
                    turns, relay.turns = relay.turns, Counter()
                print(json.dumps([[service, label, n] for (service, label), n in turns.most_common()]), flush=True)
        print("ok", flush=True)


class RelayProcess:
    def __init__(self, delay_ms: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "relay", "--delay-ms", str(delay_ms)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        if self._reply() != "ready":
            raise RuntimeError("the relay did not start")

    def _reply(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def set_delay(self, ms: float, services: list[str]) -> None:
        self._send("delay 0")
        assert self._reply() == "ok"
        self._send(f"delay {ms} {' '.join(services)}")
        assert self._reply() == "ok"

    def turns(self) -> list[tuple[str, str, int]]:
        self._send("turns")
        turns = json.loads(self._reply())
        assert self._reply() == "ok"
        return [tuple(turn) for turn in turns]

    def cpu_seconds(self) -> float:
        """The relay's CPU time so far (user and system), from /proc."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --- The namespace ------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def teardown() -> None:
    """Remove the namespace and the pair, whatever is left of them (a crashed run's too).
    Deleting the namespace deletes its end of the pair, the pair with it, and the qdiscs on both."""
    if NAMESPACE in _ip("netns", "list").stdout.split():
        _ip("netns", "del", NAMESPACE)
    # The pair goes with the namespace, though not always before ``ip netns del`` returns.
    _ip("link", "del", HOST_END, check=False)


def setup_namespace() -> None:
    teardown()
    _ip("netns", "add", NAMESPACE)
    _ip("-n", NAMESPACE, "link", "set", "lo", "up")
    _ip("link", "add", HOST_END, "type", "veth", "peer", "name", INNER_END, "netns", NAMESPACE)
    _ip("addr", "add", f"{HOST_IP}/30", "dev", HOST_END)
    _ip("link", "set", HOST_END, "up")
    _ip("-n", NAMESPACE, "addr", "add", f"{INNER_IP}/30", "dev", INNER_END)
    _ip("-n", NAMESPACE, "link", "set", INNER_END, "up")


def netem(delay_ms: float | None) -> bool:
    """Put ``netem delay`` on both ends of the pair (None: take it off); False if the
    kernel has no netem."""
    for prefix in ([], ["-n", NAMESPACE]):
        end = HOST_END if not prefix else INNER_END
        subprocess.run(["tc", *prefix, "qdisc", "del", "dev", end, "root"], capture_output=True)
        if delay_ms is not None:
            done = subprocess.run(
                ["tc", *prefix, "qdisc", "add", "dev", end, "root", "netem", "delay", f"{delay_ms}ms"],
                capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode != 0:
                return False
    return True


def round_trips_inside() -> dict[str, float]:
    """Median milliseconds of a ``SELECT 1`` and a Redis ``PING``, from inside the namespace."""
    probe = (
        "import json, statistics, time, psycopg, redis\n"
        f"pg = psycopg.connect(host='{HOST_IP}', user='postgres', dbname='postgres', autocommit=True)\n"
        f"r = redis.Redis(host='{HOST_IP}')\n"
        "def ms(call):\n"
        "    times = []\n"
        "    for _ in range(50):\n"
        "        start = time.perf_counter(); call(); times.append((time.perf_counter() - start) * 1000)\n"
        "    return round(statistics.median(times), 2)\n"
        "print(json.dumps({'SELECT 1': ms(lambda: pg.execute('SELECT 1').fetchone()), 'PING': ms(r.ping)}))\n"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", NAMESPACE, sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(out))


# --- The benchmark ------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3, help="each round drains once per path; medians shown")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--delay-ms", type=float, default=1.0, help="added each way (the round trip gains twice it)")
    parser.add_argument("--delay-by", choices=["auto", "netem", "relay"], default="auto")
    parser.add_argument(
        "--delay-services", default="postgres,redis", help="which services the relay delays (not with netem)"
    )
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="KEY=VALUE",
        help="for the workers of every path, e.g. BENCH_BATCH_SIZE=200",
    )  # fmt: skip
    parser.add_argument(
        "--paths", default="loopback,relay,delay", help="which to drain each round (loopback, relay, delay)"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "rtt.json", help="where to write the figures")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root: it makes a network namespace and a veth pair")

    os.environ["BENCH_DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DATABASE}"
    os.environ["BENCH_KEY_PREFIX"] = "bench-rtt:"  # results of its own, whatever else runs on this Redis
    from bench.throughput import bench_modalkit

    inside_env = {
        "BENCH_DATABASE_URL": f"postgres://postgres@{HOST_IP}:{FORWARDS['postgres'][0]}/{DATABASE}",
        "REDIS_URL": f"redis://{HOST_IP}:{FORWARDS['redis'][0]}/0",
        "INFERENCE": "local",
    }
    extra = dict(pair.split("=", 1) for pair in args.worker_env)
    inside_env.update(extra)
    services = args.delay_services.split(",")
    inside = ["ip", "netns", "exec", NAMESPACE]
    relay: RelayProcess | None = None
    names = {"loopback": "loopback", "relay": "relay, no delay", "delay": "relay and delay"}
    rows: dict[str, list[float]] = {names[path]: [] for path in args.paths.split(",")}
    loads: list[tuple[float, float, float]] = []
    turns: dict[str, Counter[tuple[str, str]]] = {name: Counter() for name in rows}
    try:
        setup_namespace()
        relay = RelayProcess(0)
        by_netem = args.delay_by != "relay" and netem(args.delay_ms)
        if args.delay_by == "netem" and not by_netem:
            raise SystemExit("tc netem is not available in this kernel (no sch_netem); try --delay-by relay")
        netem(None)
        delay_by = "netem on both ends of the veth pair" if by_netem else "the relay, each way"
        print(f"delay {args.delay_ms:g} ms each way, by {delay_by}; workers' settings {extra}", flush=True)

        def delay(on: bool) -> None:
            if by_netem:
                netem(args.delay_ms if on else None)
            else:
                relay.set_delay(args.delay_ms if on else 0, services)  # type: ignore[union-attr]

        print("round trips from inside, no delay:", round_trips_inside(), flush=True)
        delay(True)
        print("round trips from inside, with the delay:", round_trips_inside(), flush=True)
        delay(False)
        relay.turns()  # the probes' turns are not the workers'

        for number in range(1, args.rounds + 1):
            for name in rows:
                delay(name == "relay and delay")
                env = {"INFERENCE": "local", **extra} if name == "loopback" else inside_env
                prefix = () if name == "loopback" else inside
                cpu = relay.cpu_seconds()
                rate, details = bench_modalkit(args.jobs, None, env, args.processes, prefix)
                details["relay CPU s"] = round(relay.cpu_seconds() - cpu, 2)
                rows[name].append(rate)
                loads.append(os.getloadavg())
                for service, label, n in relay.turns():
                    turns[name][(service, label)] += n
                print(f"round {number}  {name:16} {rate:7.0f} jobs/s  {details}  load {loads[-1][0]:.2f}", flush=True)
            delay(False)
    finally:
        if relay is not None:
            relay.stop()
        teardown()

    medians = {name: statistics.median(rates) for name, rates in rows.items()}
    print(f"\n{args.processes} worker processes, {args.jobs} jobs, {args.rounds} rounds (medians):")
    for name, rate in medians.items():
        print(f"  {name:16} {rate:7.0f} jobs/s   rounds {[round(r) for r in rows[name]]}")
    delayed = rows.get("relay and delay", [])
    ratios = {
        against: sorted(d / b for d, b in zip(delayed, rows[against], strict=True))
        for against in ("relay, no delay", "loopback")
        if delayed and against in rows
    }
    for against, values in ratios.items():
        print(
            f"  with the delay / {against:16} {statistics.median(values):.2f} (rounds {[round(v, 2) for v in values]})"
        )
    ones = [load[0] for load in loads]
    print(f"  load average (1 min) over the run: {min(ones):.2f}-{max(ones):.2f}")
    jobs = args.jobs * args.rounds
    print("\nround trips per 100 jobs (relay and delay), by what each was for:")
    per_100: dict[str, Any] = {}
    for (service, label), n in turns.get("relay and delay", Counter()).most_common():
        per_100[f"{service}: {label}"] = round(100 * n / jobs, 2)
        print(f"  {100 * n / jobs:8.2f}  {service:8} {label}")
    args.json.write_text(
        json.dumps(
            {"jobs": args.jobs, "rounds": args.rounds, "processes": args.processes, "delay_ms": args.delay_ms,
             "delay_by": delay_by, "rates": rows, "medians": medians, "ratios": ratios, "worker_env": extra,
             "load_averages": loads,
             "round_trips_per_100_jobs": per_100},
            indent=2,
        )
    )  # fmt: skip
    print(f"wrote {args.json}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["relay"]:
        relay_args = argparse.ArgumentParser()
        relay_args.add_argument("--delay-ms", type=float, default=0)
        relay_main(relay_args.parse_args(sys.argv[2:]).delay_ms)
    else:
        main()
