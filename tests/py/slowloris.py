# slowloris.py - a bounded slow-loris client for tests/py/test_server_load.py: keeps --conns
# connections to a server open, each sending a request head one header line at a time (one line
# every --interval seconds per connection, so an idle timer that restarts on every line never
# fires), and reopens a connection (after --reopen seconds) whenever the server closes it, until
# --seconds have passed. Connections come from --source (a loopback address). Prints one JSON line
# of counts: opened, closed by the server, and the status codes of the answers it got.
import argparse
import json
import random
import selectors
import socket
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--source", default="127.0.0.1")
    ap.add_argument("--conns", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--reopen", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    sel = selectors.DefaultSelector()
    stats = {"opened": 0, "closed_by_server": 0, "connect_failed": 0, "statuses": {}}
    conns = {}  # socket -> [next send time, lines sent, bytes received]
    reopen_at = [0.0] * a.conns  # per slot
    slots = [None] * a.conns
    t_end = time.monotonic() + a.seconds

    def open_slot(i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((a.source, 0))
            s.connect_ex((a.host, a.port))
        except OSError:
            stats["connect_failed"] += 1
            s.close()
            reopen_at[i] = time.monotonic() + a.reopen
            return
        slots[i] = s
        conns[s] = [time.monotonic() + rng.uniform(0, a.interval), 0, b"", i]
        sel.register(s, selectors.EVENT_READ)
        stats["opened"] += 1

    def close_slot(s, by_server):
        st = conns.pop(s)
        try:
            sel.unregister(s)
        except (KeyError, ValueError):
            pass
        s.close()
        if by_server:
            stats["closed_by_server"] += 1
            head = st[2].split(b"\r\n", 1)[0].split()
            code = head[1].decode() if len(head) > 1 and head[0].startswith(b"HTTP/") else "none"
            stats["statuses"][code] = stats["statuses"].get(code, 0) + 1
        slots[st[3]] = None
        reopen_at[st[3]] = time.monotonic() + a.reopen

    while time.monotonic() < t_end:
        now = time.monotonic()
        for i in range(a.conns):
            if slots[i] is None and now >= reopen_at[i]:
                open_slot(i)
        for key, _ in sel.select(timeout=0.01):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                conns[s][2] += data
            else:
                close_slot(s, True)
        now = time.monotonic()
        for s, st in list(conns.items()):
            if now < st[0]:
                continue
            line = b"POST /v1/completions HTTP/1.1\r\n" if st[1] == 0 else b"X-Slow-%d: %d\r\n" % (st[1], st[1])
            try:
                s.send(line)
                st[1] += 1
            except BlockingIOError:
                pass
            except OSError:
                close_slot(s, True)
                continue
            st[0] = now + a.interval
    for s in list(conns):
        close_slot(s, False)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
