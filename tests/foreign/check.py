"""A foreign client's check of kv.proto's status-code table.

A Python gRPC client generated from kv.proto (nothing else of kv) sends, to a real local
cluster, the inputs that kv.proto's header says produce each status code, and checks the code,
the `kv-node` metadata, the `kv-not-applied` metadata where promised, and that every message
stays short. Run by tests/foreign/run.sh, which starts the cluster and generates the client.

Exit status: 0 when every check passed, 1 when one failed (each failure is listed), 2 on a
usage or setup error.
"""

import argparse
import json
import subprocess
import sys
import time

import grpc

# The generated modules live in the folder given with --gen (added to sys.path in main()).
kv_pb2 = None
kv_pb2_grpc = None

# kv.proto: "a message of at most about 1 KiB".
MAX_MESSAGE_BYTES = 1024 + 64
# kv.proto: the value limit a cluster started with default flags has.
MAX_VALUE_BYTES = 1024 * 1024
MAX_KEY_BYTES = 1024
MAX_KEYSPACE_NAME_BYTES = 64
# Deadline of ordinary requests: generous, the machine may be loaded.
TIMEOUT_S = 20.0
# Deadline of requests sent to a cut-off node: long enough for its refusal (it keeps part of the
# deadline for the answer's way back), short enough to keep the check quick.
CUT_OFF_TIMEOUT_S = 3.0
# How long anything that must eventually happen may take.
EVENTUALLY_S = 60.0


class Checks:
    """Collects results; every check records a name and, on failure, what was seen."""

    def __init__(self):
        self.passed = []
        self.failed = []

    def record(self, name, ok, detail=""):
        (self.passed if ok else self.failed).append((name, detail))
        print(("ok   " if ok else "FAIL ") + name + ("" if ok else ": " + detail), flush=True)

    def status(self, name, call, code, not_applied=None, from_node=True):
        """Runs `call`, which must fail with `code`; checks the metadata and message length.

        `not_applied`: True/False requires the `kv-not-applied` header present/absent; None
        does not look. `from_node`: whether the status must carry `kv-node` (a deadline that
        the client's own timer ends carries none)."""
        try:
            call()
        except grpc.RpcError as e:
            self.record(name, *judge(e, code, not_applied, from_node))
            return e
        self.record(name, False, "succeeded; expected " + code.name)
        return None


def judge(e, code, not_applied, from_node):
    """(ok, detail) for the failure `e` against what is expected of it."""
    meta = dict(e.trailing_metadata() or ())
    problems = []
    if e.code() != code:
        problems.append("got %s (%r), expected %s" % (e.code().name, (e.details() or "")[:200], code.name))
    if from_node and "kv-node" not in meta:
        problems.append("no kv-node metadata")
    if len((e.details() or "").encode()) > MAX_MESSAGE_BYTES:
        problems.append("message is %d bytes" % len(e.details().encode()))
    if not_applied is True and meta.get("kv-not-applied") != "true":
        problems.append("no kv-not-applied: true metadata")
    if not_applied is False and "kv-not-applied" in meta:
        problems.append("kv-not-applied metadata on a request that may have applied")
    return (not problems, "; ".join(problems))


def self_test():
    """The judge must reject what it should: a wrong code, a missing header, a long message."""

    class Fake(grpc.RpcError):
        def __init__(self, code, details, meta):
            self._c, self._d, self._m = code, details, meta

        def code(self):
            return self._c

        def details(self):
            return self._d

        def trailing_metadata(self):
            return self._m

    node = (("kv-node", "n1"),)
    good = Fake(grpc.StatusCode.NOT_FOUND, "no such keyspace", node)
    assert judge(good, grpc.StatusCode.NOT_FOUND, None, True)[0]
    assert not judge(good, grpc.StatusCode.INVALID_ARGUMENT, None, True)[0]
    assert not judge(Fake(grpc.StatusCode.NOT_FOUND, "x", ()), grpc.StatusCode.NOT_FOUND, None, True)[0]
    assert not judge(Fake(grpc.StatusCode.NOT_FOUND, "x" * 5000, node), grpc.StatusCode.NOT_FOUND, None, True)[0]
    assert not judge(good, grpc.StatusCode.NOT_FOUND, True, True)[0]
    flagged = Fake(grpc.StatusCode.UNAVAILABLE, "x", node + (("kv-not-applied", "true"),))
    assert judge(flagged, grpc.StatusCode.UNAVAILABLE, True, True)[0]
    assert not judge(flagged, grpc.StatusCode.UNAVAILABLE, False, True)[0]
    assert key_hash(b"a") == 0x5DFBFBBA93504B78 and partition_for_key(b"a", 32) == 11
    assert key_hash(b"foobar") == 0xFD9322526E431F44 and partition_for_key(b"foobar", 32) == 31


def key_hash(key):
    """kv's placement hash: FNV-1a 64, then murmur3's fmix64 (kv.proto, RingResponse)."""
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for b in key:
        h = ((h ^ b) * 0x100000001B3) & mask
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & mask
    h ^= h >> 33
    h = (h * 0xC4CEB9A34FE9A1B9) & mask
    h ^= h >> 33
    return h


def partition_for_key(key, partitions):
    bits = partitions.bit_length() - 1
    return 0 if bits == 0 else key_hash(key) >> (64 - bits)


def stub(addr):
    # Large enough to send requests over the node's message limit and see it refuse them.
    options = [("grpc.max_send_message_length", 8 * 1024 * 1024), ("grpc.max_receive_message_length", 8 * 1024 * 1024)]
    channel = grpc.insecure_channel(addr, options=options)
    return channel, kv_pb2_grpc.KvStub(channel)


def raw(channel, method, body, timeout=TIMEOUT_S):
    """Sends `body` as the request bytes of `method`, whatever they are."""
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    return call(body, timeout=timeout)


def eventually(what, f):
    start = time.monotonic()
    while True:
        try:
            return f()
        except grpc.RpcError as e:
            if time.monotonic() - start > EVENTUALLY_S:
                raise SystemExit("setup: %s still failing after %ds: %s" % (what, EVENTUALLY_S, e))
            time.sleep(0.2)


def kv_cli(args, kv, cluster_dir):
    out = subprocess.run([kv, "--dir", cluster_dir] + args, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit("setup: kv %s failed: %s%s" % (" ".join(args), out.stdout, out.stderr))
    return out.stdout


def check_inputs(c, ch, s):
    """Every refusal that needs only one node."""
    req = kv_pb2

    # OK: a missing key is found = false.
    got = s.Get(req.GetRequest(keyspace="cp", key=b"never-written"), timeout=TIMEOUT_S)
    c.record("OK: get of a missing key is found=false", not got.found, str(got))

    # NOT_FOUND: unknown keyspace; the message lists those that exist.
    e = c.status("NOT_FOUND: unknown keyspace",
                 lambda: s.Get(req.GetRequest(keyspace="nope", key=b"k"), timeout=TIMEOUT_S),
                 grpc.StatusCode.NOT_FOUND)
    if e is not None:
        c.record("NOT_FOUND lists the keyspaces that exist", "cp" in e.details() and "ap" in e.details(), e.details())

    # INVALID_ARGUMENT, each limit named in kv.proto.
    inv = grpc.StatusCode.INVALID_ARGUMENT
    c.status("INVALID_ARGUMENT: empty key",
             lambda: s.Put(req.PutRequest(keyspace="cp", key=b"", value=b"v"), timeout=TIMEOUT_S), inv)
    c.status("INVALID_ARGUMENT: key over 1024 bytes",
             lambda: s.Put(req.PutRequest(keyspace="cp", key=b"k" * (MAX_KEY_BYTES + 1), value=b"v"), timeout=TIMEOUT_S), inv)
    e = c.status("INVALID_ARGUMENT: value one byte over the limit",
                 lambda: s.Put(req.PutRequest(keyspace="ap", key=b"big", value=b"v" * (MAX_VALUE_BYTES + 1)), timeout=TIMEOUT_S), inv)
    if e is not None:
        c.record("the value refusal names the limit and the flag",
                 "max-value-bytes" in e.details(), e.details())
    c.status("INVALID_ARGUMENT: message over the node's message limit (5 MiB value)",
             lambda: s.Put(req.PutRequest(keyspace="ap", key=b"huge", value=b"v" * (5 * MAX_VALUE_BYTES)), timeout=TIMEOUT_S), inv)
    for size in (MAX_KEYSPACE_NAME_BYTES + 1, 10_000, 20_000):
        name = "n" * size
        c.status("INVALID_ARGUMENT: keyspace name of %d bytes (get)" % size,
                 lambda: s.Get(req.GetRequest(keyspace=name, key=b"k"), timeout=TIMEOUT_S), inv)
        ks = req.Keyspace(name=name, mode=req.MODE_AP)
        c.status("INVALID_ARGUMENT: keyspace name of %d bytes (create)" % size,
                 lambda: s.CreateKeyspace(req.CreateKeyspaceRequest(keyspace=ks), timeout=TIMEOUT_S), inv)
    c.status("INVALID_ARGUMENT: R larger than the replica count",
             lambda: s.Get(req.GetRequest(keyspace="ap", key=b"k", options=req.RequestOptions(read_replicas=9)), timeout=TIMEOUT_S), inv)
    # Bytes that are not a kv.proto message, sent raw.
    get = "/kv.v1.Kv/Get"
    for what, body in [
        ("garbage bytes", b"\xff\xff\xff\xff\xff"),
        ("a truncated message", b"\x0a\x05cp"),
        ("invalid UTF-8 in a string field", b"\x0a\x02\xff\xfe\x12\x01k"),
        ("a field with an impossible wire type", b"\x0f"),
    ]:
        c.status("INVALID_ARGUMENT: %s" % what, lambda: raw(ch, get, body), inv)

    # FAILED_PRECONDITION: compare-and-swap on an AP keyspace.
    c.status("FAILED_PRECONDITION: compare-and-swap on an AP keyspace",
             lambda: s.CompareAndSwap(req.CompareAndSwapRequest(keyspace="ap", key=b"k", expect_absent=True, new_value=b"v"), timeout=TIMEOUT_S),
             grpc.StatusCode.FAILED_PRECONDITION)

    # A CAS mismatch is an answer (OK, succeeded = false, with the current value), not an error.
    key = b"foreign-cas-%d" % time.time_ns()
    put = s.Put(req.PutRequest(keyspace="cp", key=key, value=b"one"), timeout=TIMEOUT_S)
    miss = s.CompareAndSwap(req.CompareAndSwapRequest(keyspace="cp", key=key, expected_value=b"other", new_value=b"two"), timeout=TIMEOUT_S)
    c.record("CAS mismatch: OK with succeeded=false and the current value and revision",
             (not miss.succeeded) and miss.found and miss.current_value == b"one" and miss.version.revision == put.version.revision,
             str(miss))
    hit = s.CompareAndSwap(req.CompareAndSwapRequest(keyspace="cp", key=key, expected_version=put.version.revision, new_value=b"two"), timeout=TIMEOUT_S)
    c.record("CAS on the current revision swaps", hit.succeeded, str(hit))

    # ALREADY_EXISTS: redefining a built-in keyspace; nothing changes.
    for name, mode in (("cp", req.MODE_AP), ("ap", req.MODE_CP)):
        ks = req.Keyspace(name=name, mode=mode)
        c.status("ALREADY_EXISTS: redefining the built-in %s keyspace" % name,
                 lambda: s.CreateKeyspace(req.CreateKeyspaceRequest(keyspace=ks), timeout=TIMEOUT_S),
                 grpc.StatusCode.ALREADY_EXISTS)
    got = s.Get(req.GetRequest(keyspace="cp", key=key), timeout=TIMEOUT_S)
    c.record("after the refused redefinition cp still holds its data", got.found and got.value == b"two", str(got))
    modes = {k.name: k.mode for k in s.ListKeyspaces(req.ListKeyspacesRequest(), timeout=TIMEOUT_S).keyspaces}
    c.record("after the refused redefinitions cp and ap keep their modes",
             modes.get("cp") == req.MODE_CP and modes.get("ap") == req.MODE_AP, str(modes))

    # DEADLINE_EXCEEDED: a tiny deadline, never CANCELLED (or UNAVAILABLE naming a healthy node).
    # The client's own timer may end the call first: then the status carries no kv-node.
    def outcomes(prefix, tries, timeout):
        seen = {}
        for i in range(tries):
            try:
                s.Put(req.PutRequest(keyspace="cp", key=b"%s-%d" % (prefix, i), value=b"v"), timeout=timeout)
                seen.setdefault("OK", "")
            except grpc.RpcError as e:
                seen.setdefault(e.code().name, (e.details() or "")[:300])
        return seen

    seen = outcomes(b"tiny", 20, 0.001)
    c.record("DEADLINE_EXCEEDED: a 1 ms deadline (20 tries)",
             set(seen) <= {"DEADLINE_EXCEEDED", "OK"} and "DEADLINE_EXCEEDED" in seen, str(seen))
    # A short deadline that reaches the node (grpc-timeout: 30 ms) on a write needing Raft.
    seen = outcomes(b"short", 10, 0.03)
    c.record("a 30 ms deadline is OK or DEADLINE_EXCEEDED (10 tries)", set(seen) <= {"DEADLINE_EXCEEDED", "OK"}, str(seen))

    # UNIMPLEMENTED: a method this server does not have (gRPC's own answer).
    c.status("UNIMPLEMENTED: unknown method", lambda: raw(ch, "/kv.v1.Kv/Nope", b""),
             grpc.StatusCode.UNIMPLEMENTED, from_node=False)


def check_cut_off(c, kv, cluster_dir, addrs):
    """UNAVAILABLE on a node cut off from the others (kv chaos partition)."""
    req = kv_pb2
    n3 = addrs[2]
    ch, s = stub(n3)
    partitions = s.Ring(req.RingRequest(), timeout=TIMEOUT_S).partition_count
    kv_cli(["chaos", "partition", "n3"], kv, cluster_dir)
    try:
        # A cut-off node never gains leadership: a partition it does not lead now, it will not.
        led = set(s.ClusterStatus(req.ClusterStatusRequest(), timeout=TIMEOUT_S).leader_of)
        key = next(k for k in (b"cut-%d" % i for i in range(10_000)) if partition_for_key(k, partitions) not in led)
        c.status("UNAVAILABLE + kv-not-applied: CP write on a cut-off node that leads nothing of it",
                 lambda: s.Put(req.PutRequest(keyspace="cp", key=key, value=b"minority"), timeout=CUT_OFF_TIMEOUT_S),
                 grpc.StatusCode.UNAVAILABLE, not_applied=True)
        c.status("UNAVAILABLE: CP linearizable read on a cut-off node",
                 lambda: s.Get(req.GetRequest(keyspace="cp", key=key), timeout=CUT_OFF_TIMEOUT_S),
                 grpc.StatusCode.UNAVAILABLE)
        all_ = req.RequestOptions(consistency=req.CONSISTENCY_ALL)
        c.status("UNAVAILABLE: AP write at consistency all on a cut-off node",
                 lambda: s.Put(req.PutRequest(keyspace="ap", key=key, value=b"v", options=all_), timeout=CUT_OFF_TIMEOUT_S),
                 grpc.StatusCode.UNAVAILABLE)
        one = req.RequestOptions(consistency=req.CONSISTENCY_ONE)
        s.Put(req.PutRequest(keyspace="ap", key=key, value=b"v", options=one), timeout=TIMEOUT_S)
        c.record("OK: AP write at consistency one on a cut-off node", True)
    finally:
        kv_cli(["chaos", "heal"], kv, cluster_dir)
    # The refused CP write was not applied: read through a majority node after the heal.
    _, s1 = stub(addrs[0])
    got = eventually("a CP read after the heal", lambda: s1.Get(req.GetRequest(keyspace="cp", key=key), timeout=TIMEOUT_S))
    c.record("the refused CP write was not applied", not got.found, str(got))
    ch.close()


def main():
    global kv_pb2, kv_pb2_grpc
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gen", required=True, help="folder holding kv_pb2.py and kv_pb2_grpc.py")
    p.add_argument("--kv", required=True, help="the kv binary")
    p.add_argument("--dir", required=True, help="the local cluster's folder (kv local up --dir)")
    a = p.parse_args()
    sys.path.insert(0, a.gen)
    import kv_pb2 as pb  # noqa: E402 (generated at run time)
    import kv_pb2_grpc as pb_grpc  # noqa: E402
    kv_pb2, kv_pb2_grpc = pb, pb_grpc
    self_test()

    endpoints = kv_cli(["local", "endpoints"], kv=a.kv, cluster_dir=a.dir).strip().split(",")
    if len(endpoints) != 3:
        print("setup: expected 3 endpoints, got %r" % endpoints, file=sys.stderr)
        return 2
    ch, s = stub(endpoints[0])
    eventually("a first CP write", lambda: s.Put(kv_pb2.PutRequest(keyspace="cp", key=b"ready", value=b"1"), timeout=TIMEOUT_S))

    c = Checks()
    check_inputs(c, ch, s)
    check_cut_off(c, a.kv, a.dir, endpoints)
    ch.close()

    print("\n%d checks passed, %d failed" % (len(c.passed), len(c.failed)))
    print(json.dumps({"passed": len(c.passed), "failed": [f[0] + ": " + f[1] for f in c.failed]}))
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
