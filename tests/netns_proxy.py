#!/usr/bin/python3
"""A small TCP proxy for the multi-host rehearsal (tests/test_netns.sh): one agent connects to it
and it connects on to the coordinator, so the test can stall that agent's traffic and cut its
connection on command.

  netns_proxy.py serve --listen IP:PORT --upstream IP:PORT --control PATH
      Forwards every accepted connection to the upstream address, byte for byte, both ways.
      Logs one line per event on stdout ("netns_proxy: ..."). Stops on SIGTERM or SIGINT.
  netns_proxy.py ctl PATH COMMAND [ARG]
      Sends one command to a running proxy's control socket and prints its answer:
        stall SECONDS   stop reading from every connection (both directions, new ones too) for
                        SECONDS; the kernel's buffers fill and the senders' TCP windows close
        cut             reset every open connection (SO_LINGER 0: RST to both ends), once
        stats           connections accepted / open / cut, bytes each way, stalls so far
      Exits 1 with the proxy's message if the command was refused, 2 if the proxy is unreachable.
"""
import errno
import os
import selectors
import signal
import socket
import struct
import sys
import time

BUF = 65536


def log(msg):
    t = time.time()
    stamp = time.strftime("%H:%M:%S", time.gmtime(t)) + ".%03d" % int((t % 1) * 1000)
    sys.stdout.write("netns_proxy: %s %s\n" % (stamp, msg))
    sys.stdout.flush()


def parse_addr(text, what):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit("netns_proxy: %s '%s' is not IP:PORT" % (what, text))
    return host, int(port)


class Pair:
    """One proxied connection: the client side (agent) and the upstream side (coordinator)."""

    def __init__(self, num, client, peer, upstream):
        self.num = num
        self.client = client
        self.peer = peer
        self.upstream = upstream
        self.connected = False           # upstream connect() completed
        self.out = {client: b"", upstream: b""}   # bytes waiting to be written TO that socket
        self.other = {client: upstream, upstream: client}
        self.up_bytes = 0                 # client -> upstream
        self.down_bytes = 0               # upstream -> client


class Proxy:
    def __init__(self, listen, upstream, control):
        self.sel = selectors.DefaultSelector()
        self.upstream = upstream
        self.pairs = {}                   # socket -> Pair
        self.n_accepted = self.n_cut = self.n_stalls = 0
        self.up_total = self.down_total = 0
        self.stall_until = 0.0
        self.stopping = False
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(listen)
        self.lsock.listen(16)
        self.lsock.setblocking(False)
        self.sel.register(self.lsock, selectors.EVENT_READ, "listen")
        self.control_path = control
        if os.path.exists(control):
            os.unlink(control)
        self.csock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.csock.bind(control)
        self.csock.listen(4)
        self.csock.setblocking(False)
        self.sel.register(self.csock, selectors.EVENT_READ, "control")
        log("listening on %s:%d, forwarding to %s:%d, control %s"
            % (listen[0], listen[1], upstream[0], upstream[1], control))

    def stalled(self):
        return time.monotonic() < self.stall_until

    # -- selector bookkeeping -------------------------------------------------------------------
    def want(self, pair, sock):
        """Registers `sock` for what it needs now: read unless stalled (and its peer's outgoing
        buffer is not too full), write while bytes wait for it or its connect is pending."""
        ev = 0
        if sock is pair.upstream and not pair.connected:
            ev = selectors.EVENT_WRITE
        else:
            if not self.stalled() and len(pair.out[pair.other[sock]]) < 4 * BUF and (
                    pair.connected or sock is not pair.client):
                ev |= selectors.EVENT_READ
            if pair.out[sock] and not self.stalled():
                ev |= selectors.EVENT_WRITE
        key = self.sel.get_map().get(sock.fileno()) if sock.fileno() >= 0 else None
        if ev == 0:
            if key:
                self.sel.unregister(sock)
        elif key:
            if key.events != ev:
                self.sel.modify(sock, ev, pair)
        else:
            self.sel.register(sock, ev, pair)

    def refresh(self):
        for pair in set(self.pairs.values()):
            for s in (pair.client, pair.upstream):
                if s.fileno() >= 0:
                    self.want(pair, s)

    def close_pair(self, pair, why, reset=False):
        for s in (pair.client, pair.upstream):
            self.pairs.pop(s, None)
            if s.fileno() < 0:
                continue
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        log("connection %d from %s closed (%s); %d bytes up, %d bytes down"
            % (pair.num, pair.peer, why, pair.up_bytes, pair.down_bytes))

    # -- events ---------------------------------------------------------------------------------
    def on_accept(self):
        try:
            client, addr = self.lsock.accept()
        except BlockingIOError:
            return
        self.n_accepted += 1
        client.setblocking(False)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setblocking(False)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = Pair(self.n_accepted, client, "%s:%d" % addr, up)
        self.pairs[client] = pair
        self.pairs[up] = pair
        rc = up.connect_ex(self.upstream)
        if rc not in (0, errno.EINPROGRESS):
            log("connection %d from %s: connect to upstream failed: %s"
                % (pair.num, pair.peer, os.strerror(rc)))
            self.close_pair(pair, "upstream unreachable")
            return
        log("connection %d accepted from %s" % (pair.num, pair.peer))
        self.want(pair, up)
        self.want(pair, client)

    def on_io(self, sock, pair, events):
        if sock is pair.upstream and not pair.connected:
            rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if rc:
                self.close_pair(pair, "upstream connect failed: " + os.strerror(rc))
                return
            pair.connected = True
            self.want(pair, pair.client)
            self.want(pair, sock)
            return
        other = pair.other[sock]
        if events & selectors.EVENT_READ and not self.stalled():
            try:
                data = sock.recv(BUF)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as e:
                self.close_pair(pair, "%s side: %s" % ("agent" if sock is pair.client else
                                                       "upstream", e.strerror))
                return
            if data == b"":
                self.close_pair(pair, "%s closed" % ("agent" if sock is pair.client else
                                                     "upstream"))
                return
            if data:
                pair.out[other] += data
                if sock is pair.client:
                    pair.up_bytes += len(data)
                    self.up_total += len(data)
                else:
                    pair.down_bytes += len(data)
                    self.down_total += len(data)
        if pair.out[other] and not self.stalled() and other.fileno() >= 0:
            self.flush(pair, other)
            if other not in self.pairs:
                return
        if events & selectors.EVENT_WRITE and pair.out[sock] and not self.stalled():
            self.flush(pair, sock)
            if sock not in self.pairs:
                return
        for s in (sock, other):
            if s.fileno() >= 0 and s in self.pairs:
                self.want(pair, s)

    def flush(self, pair, sock):
        try:
            n = sock.send(pair.out[sock])
            pair.out[sock] = pair.out[sock][n:]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            self.close_pair(pair, "write to %s: %s" % ("agent" if sock is pair.client else
                                                       "upstream", e.strerror))

    def on_control(self):
        try:
            conn, _ = self.csock.accept()
        except BlockingIOError:
            return
        conn.settimeout(2.0)
        try:
            line = conn.recv(256).decode("utf-8", "replace").strip()
            conn.sendall((self.command(line) + "\n").encode())
        except OSError:
            pass
        finally:
            conn.close()

    def command(self, line):
        words = line.split()
        if words[:1] == ["stall"] and len(words) == 2:
            try:
                secs = float(words[1])
            except ValueError:
                secs = -1
            if not 0 < secs <= 600:
                return "error: stall: '%s' is not a number of seconds in (0, 600]" % words[1]
            self.n_stalls += 1
            self.stall_until = time.monotonic() + secs
            held = sum(len(b) for p in set(self.pairs.values()) for b in p.out.values())
            log("stalling every connection for %.1f s (%d open, %d bytes held)"
                % (secs, len(set(self.pairs.values())), held))
            self.refresh()
            return "ok stalled %.1f s" % secs
        if words == ["cut"]:
            pairs = set(self.pairs.values())
            for p in pairs:
                self.close_pair(p, "cut on command", reset=True)
            self.n_cut += len(pairs)
            log("cut %d connection(s)" % len(pairs))
            return "ok cut %d" % len(pairs)
        if words == ["stats"]:
            return ("ok accepted=%d open=%d cut=%d stalls=%d up_bytes=%d down_bytes=%d stalled=%d"
                    % (self.n_accepted, len(set(self.pairs.values())), self.n_cut, self.n_stalls,
                       self.up_total, self.down_total, int(self.stalled())))
        return "error: unknown command '%s' (stall SECONDS, cut, stats)" % line[:60]

    def run(self):
        was_stalled = False
        while not self.stopping:
            timeout = None
            if self.stalled():
                timeout = max(0.0, self.stall_until - time.monotonic())
            try:
                events = self.sel.select(timeout if timeout is not None else 1.0)
            except InterruptedError:
                continue
            for key, ev in events:
                if key.data == "listen":
                    self.on_accept()
                elif key.data == "control":
                    self.on_control()
                elif key.fileobj in self.pairs:
                    self.on_io(key.fileobj, key.data, ev)
            now_stalled = self.stalled()
            if was_stalled and not now_stalled:
                log("stall over: forwarding again")
                self.refresh()
            was_stalled = now_stalled
        for p in set(self.pairs.values()):
            self.close_pair(p, "proxy stopping")
        try:
            os.unlink(self.control_path)
        except OSError:
            pass
        log("stopped: %d connection(s) accepted, %d cut, %d stall(s)"
            % (self.n_accepted, self.n_cut, self.n_stalls))


def serve(argv):
    opts = {}
    i = 0
    while i < len(argv):
        if argv[i] in ("--listen", "--upstream", "--control") and i + 1 < len(argv):
            opts[argv[i][2:]] = argv[i + 1]
            i += 2
        else:
            raise SystemExit("netns_proxy: unknown argument '%s'" % argv[i])
    for k in ("listen", "upstream", "control"):
        if k not in opts:
            raise SystemExit("netns_proxy: --%s is required" % k)
    p = Proxy(parse_addr(opts["listen"], "--listen"), parse_addr(opts["upstream"], "--upstream"),
              opts["control"])

    def stop(signo, _frame):
        p.stopping = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    p.run()
    return 0


def ctl(argv):
    if len(argv) < 2:
        raise SystemExit("usage: netns_proxy.py ctl PATH COMMAND [ARG]")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5.0)
    try:
        s.connect(argv[0])
        s.sendall((" ".join(argv[1:]) + "\n").encode())
        answer = s.recv(512).decode("utf-8", "replace").strip()
    except OSError as e:
        sys.stderr.write("netns_proxy: cannot reach the proxy at %s: %s\n" % (argv[0], e))
        return 2
    finally:
        s.close()
    print(answer)
    return 0 if answer.startswith("ok") else 1


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "serve":
        return serve(sys.argv[2:])
    if len(sys.argv) >= 2 and sys.argv[1] == "ctl":
        return ctl(sys.argv[2:])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
