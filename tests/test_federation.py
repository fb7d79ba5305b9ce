#!/usr/bin/python3
"""End-to-end tests of the federation, with real processes on loopback over CURVE:
a coordinator and three agents (scripts/fedlab.sh), fedslimctl, real Fashion-MNIST images.

  1. a job with three agents whose results equal `fedslim compress` run centrally on the union of
     the agents' data (every round uses every sample): max weight difference <= 1e-4; every message
     an agent sent is of an allowed type and no payload grows with the number of local samples;
  2. an agent killed mid-job: the job finishes on the quorum, the report names the agent and the
     round it left;
  3. the coordinator killed with SIGKILL mid-job and restarted: the job resumes from its checkpoint
     and ends with the same model as an uninterrupted run;
  4. the notify protocol (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) on a fake NOTIFY_SOCKET;
  5. fedslimctl against a stopped coordinator, a bad job file and a job naming an unknown agent;
  6. FedAvg jobs (local_steps): E=1 with every sample and no momentum equals the FedSGD job; E=3
     completes and lowers the objective; "local" replies do not grow with the sample count.
Prints "N passed, M failed" and exits non-zero on failure.
"""
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

BIN = os.environ["FS_BIN_DIR"]
SRC = os.environ["FS_SOURCE_DIR"]
FMNIST = "/usr/share/datasets/fashion-mnist"
ROOT = tempfile.mkdtemp(prefix="fs_fed_")
ARCH = "resnet:basic:cifar:2,2:4,8"


def run(*args, check=True, env=None, timeout=600):
    p = subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d): %s %s" % (args[0], p.returncode, p.stdout, p.stderr))
    return p


def read_st(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    out = {}
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        fmt = {"F32": ("f", 4), "I8": ("b", 1), "U8": ("B", 1)}.get(t["dtype"])
        if fmt:
            out[name] = struct.unpack("<%d%s" % ((e - b) // fmt[1], fmt[0]), raw[8 + n + b:8 + n + e])
    return out


def max_diff(a, b):
    pa, pb = read_st(a), read_st(b)
    assert sorted(pa) == sorted(pb), "different tensors"
    return max(max(abs(x - y) for x, y in zip(pa[k], pb[k])) for k in pa)


def idx_concat(parts, out_prefix):
    """Union of IDX slices (images, labels) as one IDX pair."""
    imgs, labs, n = b"", b"", 0
    for p in parts:
        ri = open(p + "-images-idx3-ubyte", "rb").read()
        rl = open(p + "-labels-idx1-ubyte", "rb").read()
        k, h, w = struct.unpack(">III", ri[4:16])
        imgs += ri[16:]
        labs += rl[8:]
        n += k
    open(out_prefix + "-images-idx3-ubyte", "wb").write(struct.pack(">IIII", 0x803, n, h, w) + imgs)
    open(out_prefix + "-labels-idx1-ubyte", "wb").write(struct.pack(">II", 0x801, n) + labs)


class Lab:
    """A coordinator and agents, through scripts/fedlab.sh."""

    def __init__(self, name, data):
        self.dir = os.path.join(ROOT, name)
        os.makedirs(self.dir)
        self.data = data          # {k: idx prefix}
        self.procs = {}
        self.env = dict(os.environ)
        self.sh("fedlab_init %s %s %d %s" % (self.dir, BIN, len(data), "UNUSED"))
        self.coord_env = {}

    def sh(self, cmd):
        return run("sh", "-c", ". %s/scripts/fedlab.sh && %s" % (SRC, cmd))

    def start_coordinator(self, extra_env=None):
        ep = os.path.join(self.dir, "coordinator", "endpoint")
        if os.path.exists(ep):
            os.unlink(ep)
        env = dict(self.env)
        env.update(extra_env or {})
        log = open(os.path.join(self.dir, "logs", "coordinator.log"), "a")
        self.procs["coordinator"] = subprocess.Popen(
            [BIN + "/fedslim-coordinator", "--config", self.dir + "/coordinator.conf"],
            stdout=log, stderr=log, env=env)
        for _ in range(600):
            if os.path.exists(ep) and open(ep).read():
                self.endpoint = open(ep).read()
                return
            assert self.procs["coordinator"].poll() is None, "coordinator died: " + self.log("coordinator")
            time.sleep(0.1)
        raise AssertionError("the coordinator did not start")

    def start_agent(self, k):
        d = os.path.join(self.dir, "site-%d" % k)
        os.makedirs(d, exist_ok=True)
        open(d + "/agent.conf", "w").write(
            "[agent]\nname = site-%d\ncoordinator = %s\ncoordinator_public_key_file = %s/keys/coordinator.pub\n"
            "secret_key = %s/keys/site-%d.key\nstate_dir = %s\nthreads = 1\n[data]\ntrain = idx:%s\n"
            % (k, self.endpoint, self.dir, self.dir, k, d, self.data[k]))
        log = open(os.path.join(self.dir, "logs", "site-%d.log" % k), "a")
        self.procs["site-%d" % k] = subprocess.Popen(
            [BIN + "/fedslim-agent", "--config", d + "/agent.conf"], stdout=log, stderr=log)

    def start_all(self, extra_env=None):
        """The coordinator and the three sites, connected."""
        self.start_coordinator(extra_env)
        for k in (1, 2, 3):
            self.start_agent(k)
        self.wait_agents(3)

    def log(self, who):
        try:
            return open(os.path.join(self.dir, "logs", who + ".log")).read()[-3000:]
        except OSError:
            return ""

    def ctl(self, *args, check=True):
        return run(BIN + "/fedslimctl", "--socket", self.dir + "/control.sock", *args, check=check)

    def wait_agents(self, n):
        for _ in range(600):
            p = self.ctl("--json", "agents", check=False)
            if p.returncode == 0:
                agents = [a for a in json.loads(p.stdout)["agents"] if a["connected"]]
                if len(agents) >= n:
                    # the registry shows where each connection comes from (loopback here)
                    assert all(a["address"] == "127.0.0.1" for a in agents), agents
                    return
            time.sleep(0.1)
        raise AssertionError("agents did not connect: " + self.log("site-1"))

    def submit(self, ini):
        path = os.path.join(self.dir, "job.ini")
        open(path, "w").write(ini)
        return self.ctl("submit", path).stdout.strip()

    def status(self, job):
        return json.loads(self.ctl("--json", "status", job).stdout)["job"]

    def wait_job(self, job, timeout=600):
        t0 = time.time()
        while time.time() - t0 < timeout:
            s = self.status(job)
            if s["state"] in ("done", "failed", "canceled"):
                return s
            time.sleep(0.2)
        raise AssertionError("job %s did not finish: %s" % (job, self.log("coordinator")))

    def wait_round(self, job, n, timeout=300):
        t0 = time.time()
        while time.time() - t0 < timeout:
            s = self.status(job)
            if s["phase"] == "recover" and s["round"] >= n:
                return s
            assert s["state"] in ("queued", "running"), s
            time.sleep(0.05)
        raise AssertionError("job %s never reached round %d" % (job, n))

    def report(self, job):
        return json.load(open(os.path.join(self.dir, "coordinator", "jobs", job, "report.json")))

    def student(self, job):
        return os.path.join(self.dir, "coordinator", "jobs", job, "student.safetensors")

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def recorded_replies(rec, first_line=0):
    """What each agent sent, from the coordinator's FS_RECORD_MESSAGES file (from line
    first_line on): asserts every message is of a type agents may send, returns {agent: [(type,
    tensors, bytes)]} of their replies."""
    allowed = {"HELLO", "HEARTBEAT", "JOB_ACCEPT", "JOB_DECLINE", "MODEL_REQ",
               "COMPUTE_REPLY", "COMPUTE_HEAD", "COMPUTE_PART", "ERROR", "BYE"}
    kinds = ("COMPUTE_REPLY", "COMPUTE_HEAD", "COMPUTE_PART")
    replies = {}
    for i, line in enumerate(open(rec)):
        agent, typ, kind, ntens, nbytes = line.split()
        assert typ in allowed, line
        if i >= first_line and typ in kinds:
            replies.setdefault(agent, []).append((typ, int(ntens), int(nbytes)))
    return replies


def job_ini(teacher, drop="layer1.1", iterations=15, quorum=0, extra=""):
    return ("[job]\nname = t\nteacher = %s\nagents = site-1, site-2, site-3\nquorum = %d\n"
            "drop = %s\nrecover = mimic\niterations = %d\nbatch = 0\naugment = 0\nshots = 0\n"
            "step_timeout = 60s\nadmit_timeout = 60s\n%s" % (teacher, quorum, drop, iterations, extra))


def setup():
    data = os.path.join(ROOT, "data")
    run(BIN + "/fedslim", "split", "--data", "idx:%s/train" % FMNIST, "--sites", "3",
        "--per-site", "40", "--alpha", "0.5", "--seed", "3", "--out", data + "/a")
    run(BIN + "/fedslim", "split", "--data", "idx:%s/t10k" % FMNIST, "--sites", "1",
        "--per-site", "80", "--alpha", "0.5", "--seed", "4", "--out", data + "/b")
    parts = {1: data + "/a/site-1", 2: data + "/a/site-2", 3: data + "/b/site-1"}
    idx_concat([parts[1], parts[2], parts[3]], data + "/union")
    teacher = os.path.join(ROOT, "teacher.safetensors")
    run(BIN + "/fedslim", "train", "--arch", ARCH, "--data", "idx:" + data + "/union",
        "--epochs", "2", "--batch", "32", "--classes", "10", "--threads", "1", "-o", teacher)
    return parts, data + "/union", teacher


def test_federated_equals_central(parts, union, teacher):
    lab = Lab("equal", parts)
    rec = os.path.join(lab.dir, "messages.log")
    try:
        lab.start_all({"FS_RECORD_MESSAGES": rec})
        # 4 KiB parts: every gradient reply streams (COMPUTE_HEAD + COMPUTE_PART), so the equality
        # below also holds for sums added part by part as they arrive
        job = lab.submit(job_ini(teacher, extra="eval = idx:%s/t10k\nstream_part = 4KiB\n" % FMNIST))
        s = lab.wait_job(job)
        assert s["state"] == "done", s
        central = os.path.join(lab.dir, "central.safetensors")
        run(BIN + "/fedslim", "compress", "--model", teacher, "--data", "idx:" + union,
            "--shots", "0", "--drop", "layer1.1", "--recover", "mimic", "--iterations", "15",
            "--batch", "0", "--augment", "0", "--threads", "1", "-o", central)
        d = max_diff(lab.student(job), central)
        print("# federated vs central: max |weight difference| = %.3g" % d)
        assert d <= 1e-4, d
        rep = lab.report(job)
        assert [a["state"] for a in rep["agents"]] == ["finished"] * 3, rep["agents"]
        assert [a["samples"] for a in rep["agents"]] == [40, 40, 80], rep["agents"]
        assert 0 < rep["student_accuracy"] <= 1 and 0 < rep["teacher_accuracy"] <= 1
        # the target: the federated job's accuracy within 0.3 points of the central run
        ev = json.loads(run(BIN + "/fedslim", "eval", "--model", central, "--data",
                            "idx:%s/t10k" % FMNIST, "--json", "--threads", "1").stdout)
        print("# test accuracy: federated %.4f, central %.4f" % (rep["student_accuracy"], ev["accuracy"]))
        assert abs(rep["student_accuracy"] - ev["accuracy"]) <= 0.003, (rep["student_accuracy"], ev)
        # what the agents sent: allowed types only; no payload grows with the local sample count
        replies = recorded_replies(rec)
        assert len(replies["site-1"]) > 10
        assert any(x[0] == "COMPUTE_PART" for x in replies["site-1"]), "no reply was streamed"
        # site-3 holds twice the samples of site-1: the same messages, byte for byte the same size
        assert replies["site-1"] == replies["site-3"], (replies["site-1"][:5], replies["site-3"][:5])
    finally:
        lab.stop()


def test_fedavg(parts, union, teacher):
    """FedAvg (local_steps = E): local steps on different data are not central steps, so there is
    no central equality to check. Instead: with E = 1, every sample and no momentum a FedAvg round
    is one plain SGD step on the averaged gradient, so the job equals the FedSGD job (momentum 0);
    with E = 3 the job completes and lowers the objective (below where recovery starts, after BN
    re-estimation: a job with 0 rounds, and below the E = 1 job); the agents' "local" replies are
    sums of the size of the trainable set, the same for 40 and 80 samples."""
    lab = Lab("fedavg", parts)
    rec = os.path.join(lab.dir, "messages.log")
    try:
        lab.start_all({"FS_RECORD_MESSAGES": rec})
        common = "stream_part = 4KiB\nmomentum = 0\n"
        sgd = lab.submit(job_ini(teacher, extra=common))
        s = lab.wait_job(sgd)
        assert s["state"] == "done", s
        avg1 = lab.submit(job_ini(teacher, extra=common + "local_steps = 1\n"))
        s = lab.wait_job(avg1)
        assert s["state"] == "done", s
        d = max_diff(lab.student(sgd), lab.student(avg1))
        print("# FedAvg E=1 vs FedSGD (full batch, momentum 0): max |weight difference| = %.3g" % d)
        assert d <= 1e-4, d
        r1 = lab.report(avg1)
        assert r1["recovery"]["algorithm"] == "fedavg" and r1["recovery"]["local_steps"] == 1, r1["recovery"]
        assert lab.report(sgd)["recovery"]["algorithm"] == "fedsgd"
        # where recovery starts: the objective after BN re-estimation (0 rounds)
        base = lab.submit(job_ini(teacher, iterations=0, extra=common))
        s = lab.wait_job(base)
        assert s["state"] == "done", s
        obj0 = lab.report(base)["models"][0]["objective_after"]
        start = sum(1 for _ in open(rec))
        avg3 = lab.submit(job_ini(teacher, extra=common + "local_steps = 3\n"))
        s = lab.wait_job(avg3)
        assert s["state"] == "done", s
        r3 = lab.report(avg3)
        obj3, obj1 = r3["models"][0]["objective_after"], r1["models"][0]["objective_after"]
        print("# objective at the start of recovery %.5f; after 15 rounds: FedAvg E=1 %.5f, "
              "E=3 %.5f" % (obj0, obj1, obj3))
        assert obj3 < obj0 and obj3 < obj1, (obj0, obj1, obj3)
        assert [a["state"] for a in r3["agents"]] == ["finished"] * 3, r3["agents"]
        assert [a["samples"] for a in r3["agents"]] == [40, 40, 80], r3["agents"]
        # privacy of the new request: during the E=3 job, site-1 (40 samples) and site-3 (80)
        # sent the same messages with the same sizes; its 15 rounds were streamed "local" replies
        sizes = recorded_replies(rec, start)
        assert sizes["site-1"] == sizes["site-3"], (sizes["site-1"][:5], sizes["site-3"][:5])
        assert sum(1 for x in sizes["site-1"] if x[0] == "COMPUTE_HEAD") >= 15, sizes["site-1"][:5]
    finally:
        lab.stop()


def test_int8_federated_equals_central(parts, union, teacher):
    """int8 through the federation: the activation ranges come from histograms summed over the
    sites, so the quantized model equals the one calibrated centrally on the union."""
    lab = Lab("int8", parts)
    try:
        lab.start_all()
        job = lab.submit("[job]\nname = q\nteacher = %s\nagents = site-1, site-2, site-3\n"
                         "methods = int8\nshots = 0\nbatch = 0\naugment = 0\n"
                         "step_timeout = 60s\nadmit_timeout = 60s\neval = idx:%s/t10k\n"
                         % (teacher, FMNIST))
        s = lab.wait_job(job)
        assert s["state"] == "done", (s, lab.log("coordinator"))
        central = os.path.join(lab.dir, "central.safetensors")
        run(BIN + "/fedslim", "compress", "--model", teacher, "--data", "idx:" + union,
            "--shots", "0", "--methods", "int8", "--batch", "0", "--augment", "0",
            "--threads", "1", "-o", central)
        fed = lab.student(job)
        q = [k for k, t in read_st(fed).items() if isinstance(t[0], int)]
        assert q, "no int8 tensors in " + fed
        d = max_diff(fed, central)
        print("# int8 federated vs central: %d int8 tensors, max |difference| = %.3g" % (len(q), d))
        assert d <= 1e-6, d
        rep = lab.report(job)
        assert abs(rep["student_accuracy"] - rep["teacher_accuracy"]) < 0.05, rep
    finally:
        lab.stop()


def test_agent_killed_midjob(parts, teacher):
    lab = Lab("agentkill", parts)
    try:
        lab.start_all()
        job = lab.submit(job_ini(teacher, iterations=120, quorum=2).replace(
            "step_timeout = 60s", "step_timeout = 10s"))
        lab.wait_round(job, 10)
        lab.procs["site-2"].kill()
        s = lab.wait_job(job)
        assert s["state"] == "done", s
        rep = lab.report(job)
        a2 = [a for a in rep["agents"] if a["name"] == "site-2"][0]
        print("# site-2 left in %s round %d: %s" % (a2["left_phase"], a2["left_round"], a2["reason"]))
        assert a2["state"] == "left" and a2["left_phase"] == "recover" and a2["left_round"] > 0, a2
        assert [a["state"] for a in rep["agents"] if a["name"] != "site-2"] == ["finished"] * 2
        # the registry saw the connection close (socket monitor), not just a silence
        agents = {a["name"]: a for a in json.loads(lab.ctl("--json", "agents").stdout)["agents"]}
        assert not agents["site-2"]["connected"] and agents["site-2"]["address"] is None, agents
        assert agents["site-1"]["connected"], agents
        log = open(os.path.join(lab.dir, "logs", "coordinator.log")).read()
        assert re.search(r"agent disconnected.*AGENT=site-2", log), log[-3000:]
    finally:
        lab.stop()


def test_coordinator_killed_and_resumed(parts, teacher):
    ini = job_ini(teacher, iterations=40)
    ref = Lab("uninterrupted", parts)
    try:
        ref.start_all()
        job = ref.submit(ini)
        assert ref.wait_job(job)["state"] == "done"
    finally:
        ref.stop()
    lab = Lab("resume", parts)
    try:
        lab.start_all()
        job2 = lab.submit(ini)
        lab.wait_round(job2, 20)
        lab.procs["coordinator"].kill()
        lab.procs["coordinator"].wait()
        # the agents keep running; the restarted coordinator must be found at the same endpoint
        conf = open(lab.dir + "/coordinator.conf").read()
        open(lab.dir + "/coordinator.conf", "w").write(
            conf.replace("listen = tcp://127.0.0.1:*", "listen = " + lab.endpoint))
        lab.start_coordinator()
        s = lab.wait_job(job2)
        assert s["state"] == "done", s
        assert "resuming from the checkpoint" in lab.log("coordinator")
        assert "recovery resumed from its checkpoint" in lab.log("coordinator")
        d = max_diff(lab.student(job2), ref.student(job))
        print("# resumed vs uninterrupted: max |weight difference| = %.3g" % d)
        assert d <= 1e-6, d
    finally:
        lab.stop()


def test_agent_stops_without_coordinator(parts):
    """An agent whose coordinator is gone stops at once on SIGTERM: it knows the connection is
    down and neither says goodbye nor heartbeats into the void (each such send would block for
    the send timeout)."""
    lab = Lab("orphan", parts)
    try:
        lab.start_coordinator()
        lab.start_agent(1)
        lab.wait_agents(1)
        lab.procs["coordinator"].kill()
        lab.procs["coordinator"].wait()
        for _ in range(200):
            if "connection to the coordinator lost" in lab.log("site-1"):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the agent did not notice: " + lab.log("site-1"))
        time.sleep(1)            # let a heartbeat come due
        agent = lab.procs["site-1"]
        t0 = time.time()
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(timeout=30)
        took = time.time() - t0
        print("# agent without a coordinator stopped in %.2f s" % took)
        assert rc == 0, (rc, lab.log("site-1"))
        # nothing was sent into the void: a send there blocks for the send timeout, then fails
        after = lab.log("site-1").split("connection to the coordinator lost", 1)[1]
        assert "send failed" not in after, after
    finally:
        lab.stop()


def test_notify_protocol(parts):
    lab = Lab("notify", parts)
    sock_path = os.path.join(lab.dir, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(0.2)
    try:
        lab.start_coordinator({"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"})
        msgs = []
        t0 = time.time()
        while time.time() - t0 < 2.0:
            try:
                msgs.append(s.recv(4096).decode())
            except socket.timeout:
                pass
        lab.procs["coordinator"].send_signal(signal.SIGTERM)
        t0 = time.time()
        while time.time() - t0 < 3.0:
            try:
                msgs.append(s.recv(4096).decode())
            except socket.timeout:
                if lab.procs["coordinator"].poll() is not None:
                    break
        assert lab.procs["coordinator"].wait(timeout=10) == 0
        text = "\n".join(msgs)
        assert msgs[0].startswith("READY=1") and "STATUS=" in msgs[0], msgs[:2]
        assert sum(m == "WATCHDOG=1" for m in msgs) >= 3, msgs
        assert any(m.startswith("STOPPING=1") for m in msgs), msgs
        print("# notify: %d datagrams, %d watchdog pings" % (len(msgs), text.count("WATCHDOG=1")))
    finally:
        s.close()
        lab.stop()


def test_ctl_errors(parts, teacher):
    lab = Lab("ctlerr", parts)
    p = lab.ctl("agents", check=False)
    assert p.returncode == 1 and "cannot reach the coordinator" in p.stderr, p.stderr
    try:
        lab.start_coordinator()
        bad = os.path.join(lab.dir, "bad.ini")
        open(bad, "w").write("[job]\nteacher = %s\nagents = site-1\ncolour = blue\n" % teacher)
        p = lab.ctl("submit", bad, check=False)
        assert p.returncode == 1 and "colour" in p.stderr and ":4:" in p.stderr, p.stderr
        open(bad, "w").write("[job]\nteacher = %s\nagents = site-1, hospital-9\n" % teacher)
        p = lab.ctl("submit", bad, check=False)
        assert p.returncode == 1 and "hospital-9" in p.stderr and "allow-list" in p.stderr, p.stderr
        p = lab.ctl("status", "nosuchjob", check=False)
        assert p.returncode == 1 and "nosuchjob" in p.stderr, p.stderr
    finally:
        lab.stop()


def main():
    passed = failed = 0
    try:
        parts, union, teacher = setup()
        tests = [("federated_equals_central", lambda: test_federated_equals_central(parts, union, teacher)),
                 ("fedavg", lambda: test_fedavg(parts, union, teacher)),
                 ("int8_federated_equals_central",
                  lambda: test_int8_federated_equals_central(parts, union, teacher)),
                 ("agent_killed_midjob", lambda: test_agent_killed_midjob(parts, teacher)),
                 ("coordinator_killed_and_resumed", lambda: test_coordinator_killed_and_resumed(parts, teacher)),
                 ("agent_stops_without_coordinator", lambda: test_agent_stops_without_coordinator(parts)),
                 ("notify_protocol", lambda: test_notify_protocol(parts)),
                 ("ctl_errors", lambda: test_ctl_errors(parts, teacher))]
        only = sys.argv[1:]
        for name, fn in tests:
            if only and name not in only:
                continue
            t0 = time.time()
            try:
                fn()
                passed += 1
                print("ok   %s (%.0f s)" % (name, time.time() - t0))
            except Exception as e:   # report and go on with the others
                failed += 1
                print("FAIL %s: %s" % (name, e))
    finally:
        if failed == 0:
            shutil.rmtree(ROOT, ignore_errors=True)
        else:
            print("# logs kept in " + ROOT)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
