"""Server CPU per request, independent of the disk's fsync speed: starts each
given `skald` binary on a temp dir, sends 20,000 `GET /health/live` and 2,000
one-event appends on one keep-alive connection, and reads the server's CPU
time (all threads, /proc/<pid>/task/*/stat) around each batch. Alternates the
binaries, 3 rounds.

    python3 benches/cpu_per_request.py /tmp/skald-before /tmp/skald-after
"""
import socket, subprocess, sys, time, os, tempfile, json
def cpu(pid):
    tot = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        f = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")",1)[1].split()
        tot += int(f[11]) + int(f[12])
    return tot / os.sysconf("SC_CLK_TCK")
def run(binary):
    d = tempfile.mkdtemp()
    p = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", d + "/data"], stdout=subprocess.PIPE, env={**os.environ, "RUST_LOG": "warn"})
    line = p.stdout.readline().decode()
    host, port = line.strip().rsplit("/",1)[1].split(":")
    s = socket.create_connection((host, int(port))); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    def req(raw):
        s.sendall(raw)
        status = f.readline(); length = 0
        while True:
            h = f.readline()
            if h == b"\r\n": break
            if h.lower().startswith(b"content-length:"): length = int(h.split(b":")[1])
        f.read(length)
        return status
    get = b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n"
    for _ in range(2000): req(get)
    c0 = cpu(p.pid); t0 = time.time(); n = 20000
    for _ in range(n): req(get)
    g = (cpu(p.pid) - c0) / n * 1e6; gt = (time.time() - t0) / n * 1e6
    body = json.dumps({"events": [{"type": "OrderPlaced", "data": {"order_id": "ord-1", "lines": [{"sku": "A", "qty": 2}], "total": 44.48}, "metadata": {"user": "ann"}}]}).encode()
    post = b"POST /streams/s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    c0 = cpu(p.pid); m = 2000
    for _ in range(m): assert b"201" in req(post)
    a = (cpu(p.pid) - c0) / m * 1e6
    p.kill()
    return g, gt, a
for i in range(3):
    for b in sys.argv[1:]:
        g, gt, a = run(b)
        print(f"{os.path.basename(b)}: GET cpu {g:.1f} us/req (wall {gt:.1f} us), append cpu {a:.1f} us/req")
