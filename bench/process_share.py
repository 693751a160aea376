"""Target 1, the processes of a run: each one's CPU a request, and how much of the sending the loop had a CPU.

The throughput ratio mixes two things: the CPU distill's own code adds to a request, and the share of the sending
time the event loop gets a CPU at all beside the processes it shares the machine with (the teacher, the cache's
writer, the reading process). This script separates them with the kernel's own accounting (Linux ``/proc``).

The bench teacher runs in its own process. Each round measures the bare aiohttp loop (the throughput baseline: 64
requests open, in this process, as ``bench.throughput`` runs it) and then ``distill run`` over single-turn
conversations (between the moments the teacher had received 5% and 95% of them, so that start-up and the last
stragglers stay out). For each: every process's user and system CPU a request (``/proc/PID/stat``: the loop's
process, its writer and reading process, the teacher), and for the client's event-loop thread and the teacher's
main thread the share of the time on a CPU and waiting for one (``/proc/PID/task/TID/schedstat``).

    python -m bench.process_share [--tiny] [--json PATH] [--conversations N] [--rounds R]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from bench import common
from distill.servers.teacher.loadgen import plain_client_load, process_cpu_times

POLL = 0.05  # seconds between two looks at the teacher's count while `distill run` sends (each costs both a little)
ROLES = {b"distill.cache_writer": "writer", b"formats.reading_process": "reader"}


@dataclass(slots=True)
class Snapshot:
    """What the kernel had counted at one moment: CPU seconds by process role, and two threads' scheduling."""

    at: float
    requests: int
    cpu: dict[str, tuple[float, float]]  # role -> (user, system) seconds, summed over its processes
    loop: tuple[float, float]  # the client's event-loop thread: seconds on a CPU, seconds waiting for one
    teacher: tuple[float, float]  # the teacher's main thread, the same


THREADS = ("loop", "teacher")  # the two threads whose time is split into on a CPU and waiting for one


@dataclass(slots=True)
class Share:
    """One measured stretch of sending: its rate, CPU a request by role, and each thread's shares of the time."""

    client: str
    requests: int
    seconds: float
    us_per_request: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> {"user", "system"}
    time_shares: dict[str, dict[str, float]] = field(default_factory=dict)  # thread -> {"on_cpu", "waiting"}

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        cpu = "; ".join(
            f"{role} {c['user']:.1f} user + {c['system']:.1f} system"
            for role, c in self.us_per_request.items()
        )
        shares = "; ".join(
            f"{thread} on a CPU {t['on_cpu']:.3f}, waiting {t['waiting']:.3f}"
            for thread, t in self.time_shares.items()
        )
        return f"{self.client}: {self.per_second:,.0f} requests/s; us CPU a request: {cpu}; {shares}"


def between(client: str, a: Snapshot, b: Snapshot) -> Share:
    requests, seconds = b.requests - a.requests, b.at - a.at
    share = Share(client, requests, seconds)
    for role, (user, system) in b.cpu.items():
        user0, system0 = a.cpu.get(role, (0.0, 0.0))
        share.us_per_request[role] = {
            "user": round((user - user0) / requests * 1e6, 1),
            "system": round((system - system0) / requests * 1e6, 1),
        }
    for thread in THREADS:
        (on_cpu0, waiting0), (on_cpu, waiting) = getattr(a, thread), getattr(b, thread)
        share.time_shares[thread] = {
            "on_cpu": round((on_cpu - on_cpu0) / seconds, 3),
            "waiting": round((waiting - waiting0) / seconds, 3),
        }
    return share


# -- what /proc says ---------------------------------------------------------------------------------------


def scheduled(pid: int, tid: int) -> tuple[float, float]:
    """Seconds thread ``tid`` of ``pid`` has spent on a CPU and runnable but waiting for one."""
    try:
        on_cpu, waiting, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def family(root: int) -> dict[int, str]:
    """``root`` and every process descended from it, each with its role: loop, writer, reader, or its name."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    roles, todo = {}, [root]
    while todo:
        pid = todo.pop()
        roles[pid] = "loop" if pid == root else role_of(pid)
        todo.extend(children.get(pid, []))
    return roles


def role_of(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "gone"
    return next(
        (role for marker, role in ROLES.items() if marker in command), command.split(b"\0")[0].decode()
    )


def snapshot(served, roles: dict[int, str], loop: tuple[int, int]) -> Snapshot:
    cpu: dict[str, tuple[float, float]] = {}
    for pid, role in roles.items():
        user, system = process_cpu_times(pid)
        before = cpu.get(role, (0.0, 0.0))
        cpu[role] = (before[0] + user, before[1] + system)
    cpu["teacher"] = process_cpu_times(served.pid)
    return Snapshot(
        time.perf_counter(),
        served.stats(with_hashes=False)["requests"],
        cpu,
        scheduled(*loop),
        scheduled(served.pid, served.pid),
    )


# -- the two clients ---------------------------------------------------------------------------------------


def bare_loop(served, seconds: float) -> Share:
    """The throughput baseline in this process, for ``seconds``, measured from its start to its end."""
    me, loop_thread = os.getpid(), threading.get_native_id()
    roles = {me: "loop"}
    served.reset_stats()
    before = snapshot(served, roles, (me, loop_thread))
    asyncio.run(plain_client_load(served.base_url, in_flight=64, seconds=seconds, model=common.MODEL))
    return between("bare aiohttp loop", before, snapshot(served, roles, (me, loop_thread)))


def distill_run(served, root: Path, source: Path, expected: int, name: str) -> Share:
    """``distill run`` over ``source``, measured between 5% and 95% of its requests at the teacher."""
    command = common.distill_command(
        source, root / f"{name}.out.jsonl", root / f"{name}.sqlite", served.base_url
    )
    served.reset_stats()
    process = subprocess.Popen(command, cwd=common.REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    marks: list[Snapshot] = []
    try:
        for threshold in (0.05 * expected, 0.95 * expected):
            while served.stats(with_hashes=False)["requests"] < threshold:
                if process.poll() is not None:
                    raise SystemExit(
                        f"distill run ended (exit status {process.returncode}) before the window"
                    )
                time.sleep(POLL)
            marks.append(snapshot(served, family(process.pid), (process.pid, process.pid)))
        if process.wait() != 0:
            raise SystemExit(f"distill run failed with exit status {process.returncode}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return between("distill run", *marks)


def summary(shares: list[Share]) -> dict:
    """The median of each figure over rounds (a process role only where every round saw it), and every round."""
    roles = {role for s in shares for role in s.us_per_request}
    return {
        "per_second": round(statistics.median(s.per_second for s in shares), 1),
        "us_per_request": {
            role: medians([s.us_per_request[role] for s in shares], 1)
            for role in sorted(roles)
            if all(role in s.us_per_request for s in shares)
        },
        "time_shares": {thread: medians([s.time_shares[thread] for s in shares], 3) for thread in THREADS},
        "rounds": [asdict(s) for s in shares],
    }


def medians(rounds: list[dict[str, float]], digits: int) -> dict[str, float]:
    return {name: round(statistics.median(r[name] for r in rounds), digits) for name in rounds[0]}


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--conversations", type=int, help="single-turn conversations a run (default 30,000)")
    p.add_argument("--rounds", type=int, help="bare loop and run, alternating (default 3)")
    args = p.parse_args(argv)
    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat").exists():
        print("process_share needs Linux's /proc/PID/task/TID/schedstat; nothing measured", file=sys.stderr)
        return 1
    conversations = args.conversations or (2_000 if args.tiny else 30_000)
    rounds = args.rounds or (1 if args.tiny else 3)
    bare_seconds = 1.0 if args.tiny else 3.0
    bare: list[Share] = []
    run: list[Share] = []
    with common.workdir() as root, common.teacher() as served:
        source = common.write_conversations(root / "in.jsonl", conversations)
        for n in range(rounds):
            bare.append(bare_loop(served, bare_seconds))
            print(bare[-1].line(), flush=True)
            run.append(distill_run(served, root, source, conversations, f"run-{n}"))
            print(run[-1].line(), flush=True)
    results = {"machine": common.machine(), "bare": summary(bare), "distill": summary(run)}
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
