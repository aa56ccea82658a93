"""The supervisor's side of the worker pipes never waits for one worker: a worker frozen half-way
through a message, or one that reads nothing, holds up no other (finpulse/link.py)."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import struct
import time

from finpulse.link import Links, WorkerLink

BIG = 8 << 20  # far more than a pipe's buffer: the sender blocks in write() until it is read


def _sends_big_messages_for_ever(conn) -> None:
    link = WorkerLink(conn, 0)
    while link.tell("stats", b"x" * BIG):
        pass


def _writes_half_a_message_and_hangs(conn) -> None:
    os.write(conn.fileno(), struct.pack("!i", 100_000) + b"y" * 50_000)  # a header, half the body
    time.sleep(600)


def _says_hello(conn) -> None:
    WorkerLink(conn, 1).tell("stats", "hello")
    time.sleep(600)  # stays alive: its pipe stays open


def _reads_nothing(conn) -> None:
    time.sleep(600)


def _answers(conn) -> None:
    link = WorkerLink(conn, 1)
    answer = link.receive(30)
    link.tell("stats", ("got", answer))
    time.sleep(600)


def _spawn(links: Links, worker: int, target) -> mp.process.BaseProcess:
    end = links.connect(worker)
    p = mp.get_context("spawn").Process(target=target, args=(end,), daemon=True)
    p.start()
    end.close()
    return p


def _next_event(links: Links, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kind, worker, _, payload = links.events.get(timeout=0.1)
        except queue.Empty:
            continue
        if payload != b"x" * BIG:  # the frozen sender's earlier whole messages
            return worker, payload
    return None


def test_a_worker_frozen_half_way_through_a_message_holds_up_no_other_worker():
    links = Links(mp.get_context("spawn"))
    frozen = [_spawn(links, 0, _sends_big_messages_for_ever), _spawn(links, 2, _writes_half_a_message_and_hangs)]
    try:
        time.sleep(2)  # the big sender is mid-message nearly all the time
        os.kill(frozen[0].pid, signal.SIGSTOP)
        hello = _spawn(links, 1, _says_hello)
        assert _next_event(links, 10) == (1, "hello"), "a frozen worker's half message held up the others"
        hello.kill()
    finally:
        os.kill(frozen[0].pid, signal.SIGCONT)
        for p in frozen:
            p.kill()
        links.close(timeout=1)


def test_answers_to_a_worker_that_reads_nothing_never_block_the_sender():
    """The committer answers a worker frozen with a full pipe: it must not wait for that worker."""
    links = Links(mp.get_context("spawn"))
    deaf = _spawn(links, 0, _reads_nothing)
    listener = _spawn(links, 1, _answers)
    try:
        began = time.monotonic()
        for _ in range(20):
            links.reply(0, b"z" * (1 << 20))  # 20 MiB to a pipe of 64 KiB that nobody reads
        assert time.monotonic() - began < 5
        links.reply(1, "ok")
        assert _next_event(links, 10) == (1, ("got", "ok"))
    finally:
        deaf.kill()
        listener.kill()
        links.close(timeout=1)
