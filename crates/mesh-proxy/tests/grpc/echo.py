"""A proxyless gRPC workload of the mesh, in Python (grpcio): no sidecar,
its routing, endpoints and mTLS from the control plane over xDS, found
through the bootstrap in GRPC_XDS_BOOTSTRAP (written by `mesh-proxy agent`).

    echo.py serve ADDR NAME
        An xDS-enabled server on ADDR answering /mesh.test.Echo/Hello with
        NAME and the caller's SANs; prints "serving ADDR" once it listens.
    echo.py tls ADDR NAME CERTDIR [--fail-first N]
        A plain TLS gRPC server (not xDS) on ADDR presenting the SVID in
        CERTDIR (cert.pem, key.pem): a workload holding another identity at
        a mesh address (secure naming), or a server that fails calls with a
        status and no message, which an xDS server of grpcio 1.85 cannot do
        (it dies on an internal check, pipe.h "has_value()").
    echo.py call TARGET COUNT [--payload P] [--plain] [--warmup SECS] [--header K=V] [--wait]
        COUNT unary calls to TARGET (xds:///host:port), prints one JSON line:
        {"answers": {NAME: n, ...}, "errors": {CODE: n, ...}, "details": [...]}
        With --plain, a channel without the mesh's credentials (insecure);
        with --header, each call carries that metadata; with --wait, each call
        waits for its backend to be ready (gRPC's wait_for_ready: an xDS
        server listens before its listener arrives) instead of failing.
        With --warmup, first calls until one succeeds, for up to SECS (the
        servers serve once the control plane gave them their listener), not
        counted.
    echo.py until TARGET NAME SECS
        Calls TARGET on one channel until 20 answers in a row come from NAME
        (a change the control plane pushes to a running client); exit 0 if
        they did within SECS, else 1 with what was seen. Prints
        {"started": true} once a first call succeeded.

No generated code: the methods take and return raw bytes.
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc
import grpc.experimental

METHOD = "/mesh.test.Echo/Hello"


def handler(name, fail_first):
    seen = {}
    lock = threading.Lock()

    def hello(request, context):
        with lock:
            n = seen.get(request, 0)
            seen[request] = n + 1
        if n < fail_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")
        peer = context.auth_context().get("x509_subject_alternative_name", [])
        answer = {"name": name, "peer": [p.decode() for p in peer]}
        return json.dumps(answer).encode()

    return grpc.method_handlers_generic_handler(
        "mesh.test.Echo", {"Hello": grpc.unary_unary_rpc_method_handler(hello)}
    )


def serve(addr, name):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), xds=True)
    server.add_generic_rpc_handlers((handler(name, 0),))
    creds = grpc.xds_server_credentials(grpc.insecure_server_credentials())
    server.add_secure_port(addr, creds)
    server.start()
    print(f"serving {addr}", flush=True)
    server.wait_for_termination()


def tls(addr, name, certdir, fail_first):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler(name, fail_first),))
    with open(f"{certdir}/key.pem", "rb") as k, open(f"{certdir}/cert.pem", "rb") as c:
        creds = grpc.ssl_server_credentials([(k.read(), c.read())])
    server.add_secure_port(addr, creds)
    server.start()
    print(f"serving {addr}", flush=True)
    server.wait_for_termination()


def channel_to(target, plain):
    if plain:
        return grpc.insecure_channel(target)
    # The fallback is used only where the control plane asks for no TLS.
    creds = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
    return grpc.secure_channel(target, creds)


def warm_up(hello, secs):
    deadline = time.monotonic() + secs
    last = None
    while time.monotonic() < deadline:
        try:
            hello(b"warmup", timeout=2, wait_for_ready=True)
            return None
        except grpc.RpcError as e:
            last = f"{e.code().name}: {e.details()}"
            time.sleep(0.1)
    return last


def call(target, count, payload, plain, warmup, metadata, wait):
    channel = channel_to(target, plain)
    hello = channel.unary_unary(METHOD)
    answers, errors, details = {}, {}, []
    if warmup:
        failed = warm_up(hello, warmup)
        if failed:
            details.append({"warmup": failed})
    for i in range(count):
        try:
            body = hello(
                f"{payload}{i}".encode(), timeout=10, metadata=metadata, wait_for_ready=wait
            )
            answer = json.loads(body)
            answers[answer["name"]] = answers.get(answer["name"], 0) + 1
            if i == 0:
                details.append({"peer": answer["peer"]})
        except grpc.RpcError as e:
            code = e.code().name
            errors[code] = errors.get(code, 0) + 1
            if len(details) < 5:
                details.append({"code": code, "details": e.details()})
    print(json.dumps({"answers": answers, "errors": errors, "details": details}), flush=True)
    channel.close()


def until(target, name, secs):
    channel = channel_to(target, False)
    hello = channel.unary_unary(METHOD)
    failed = warm_up(hello, secs)
    if failed:
        print(json.dumps({"reached": False, "warmup": failed}), flush=True)
        return 1
    # The channel has its configuration: the caller may change it now.
    print(json.dumps({"started": True}), flush=True)
    deadline = time.monotonic() + secs
    run, seen = 0, {}
    while time.monotonic() < deadline:
        try:
            got = json.loads(hello(b"until", timeout=5))["name"]
        except grpc.RpcError as e:
            got = e.code().name
        seen[got] = seen.get(got, 0) + 1
        run = run + 1 if got == name else 0
        if run >= 20:
            print(json.dumps({"reached": True, "seen": seen}), flush=True)
            return 0
        time.sleep(0.02)
    print(json.dumps({"reached": False, "seen": seen}), flush=True)
    return 1


def main(argv):
    if argv[1] == "serve":
        serve(argv[2], argv[3])
    elif argv[1] == "tls":
        fail_first = int(argv[argv.index("--fail-first") + 1]) if "--fail-first" in argv else 0
        tls(argv[2], argv[3], argv[4], fail_first)
    elif argv[1] == "call":
        payload = argv[argv.index("--payload") + 1] if "--payload" in argv else "hello"
        warmup = float(argv[argv.index("--warmup") + 1]) if "--warmup" in argv else 0
        metadata = [tuple(argv[argv.index("--header") + 1].split("=", 1))] if "--header" in argv else None
        call(argv[2], int(argv[3]), payload, "--plain" in argv, warmup, metadata, "--wait" in argv)
    elif argv[1] == "until":
        sys.exit(until(argv[2], argv[3], float(argv[4])))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
