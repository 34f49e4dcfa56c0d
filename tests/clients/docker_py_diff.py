#!/usr/bin/env python3
"""The same calls through docker-py's low-level and high-level clients (API 1.41, Docker
Engine 20.10's) on two engines, their answers and the events they caused compared field by
field.

Usage: docker_py_diff.py BERTH_SOCKET DOCKERD_SOCKET IMAGE

Both engines must have IMAGE. Values that differ by nature (IDs, times, addresses, the
engines' own paths and versions) are replaced by what they are before comparing. Prints one
line per difference, "PATH: berth=VALUE dockerd=VALUE" (a missing field shows as <absent>),
sorted, and nothing else on stdout.
"""

import json
import re
import sys
import time

import docker

HEX64 = re.compile(r"^(sha256:)?[0-9a-f]{64}$")
HEX12 = re.compile(r"^[0-9a-f]{12}$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+(/\d+)?$")
MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


# Numbers that are the run's own: process IDs, creation times, ports the engine chose.
OWN_NUMBERS = {"Pid", "Created", "HostPort", "PublicPort", "time", "timeNano", "execDuration"}
ID_INSIDE = re.compile(r"[0-9a-f]{64}|(?<=/)[0-9a-f]{12}(?=$|/)")


def shape(v, root, key=None):
    """What a value is, where its exact text is the engine's own."""
    if isinstance(v, dict):
        return {("<id>" if HEX64.match(k) else k): shape(x, root, k) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(x, root, key) for x in v]
    if key in OWN_NUMBERS and isinstance(v, (int, str)) and not isinstance(v, bool):
        return "<n>"
    if isinstance(v, str):
        if HEX64.match(v) or HEX12.match(v):
            return "<id>"
        if TIME.match(v) and not v.startswith("0001-"):
            return "<time>"
        if IPV4.match(v):
            return "<ipv4" + ("/n>" if "/" in v else ">")
        if MAC.match(v):
            return "<mac>"
        if root and root in v:
            v = v.replace(root, "<root>")
        return ID_INSIDE.sub("<id>", v)
    return v


def walk(path, ours, theirs, out):
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for k in sorted(set(ours) | set(theirs)):
            a = ours.get(k, "<absent>")
            b = theirs.get(k, "<absent>")
            walk(f"{path}.{k}", a, b, out)
    elif isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            walk(f"{path}[{i}]", a, b, out)
    elif ours != theirs:
        out.append(f"{path}: berth={json.dumps(ours)} dockerd={json.dumps(theirs)}")


def error_of(call):
    """An API error's status code, and its message with the engine's names taken out."""
    try:
        call()
    except docker.errors.APIError as e:
        return {"status": e.response.status_code, "explanation": re.sub(r"[0-9a-f]{12,64}", "<id>", str(e.explanation))}
    return {"status": "no error"}


def event_of(e):
    """An event as a client watching the stream acts on it."""
    return {
        "Type": e.get("Type"),
        "Action": e.get("Action"),
        "status": e.get("status"),
        "scope": e.get("scope"),
        "Attributes": e.get("Actor", {}).get("Attributes", {}),
    }


def high_level(sock, image):
    """docker-py's objects: what `docker.from_env()` programs see."""
    hl = docker.DockerClient(base_url=f"unix://{sock}", version="1.41", timeout=120)
    got = {}
    ctr = hl.containers.run(image, ["sh", "-c", "echo hl"], name="pydiff-hl", detach=True, labels={"hl": "1"})
    got["run.wait"] = ctr.wait()
    got["run.logs"] = ctr.logs()
    ctr.reload()
    got["run.status"] = ctr.status
    got["run.image.tags"] = ctr.image.tags
    got["run.labels"] = ctr.labels
    got["list"] = [x.name for x in hl.containers.list(all=True, filters={"label": "hl=1"})]
    got["get.by.short.id"] = hl.containers.get(ctr.short_id).name
    img = hl.images.get(image)
    got["image.tags"] = img.tags
    got["image.labels"] = img.labels
    got["images.list.names"] = [t for i in hl.images.list(name=image.split(":")[0]) for t in i.tags]
    got["networks.builtin"] = sorted(n.name for n in hl.networks.list(names=["bridge", "host", "none"]))
    vol = hl.volumes.create("pydiff-hlvol", labels={"x": "y"})
    got["volume.attrs"] = vol.attrs
    got["volumes.list"] = [v.name for v in hl.volumes.list(filters={"label": "x=y"})]
    vol.remove()
    ctr.remove()
    try:
        hl.containers.run(image, ["sh", "-c", "exit 3"], name="pydiff-hl2", remove=True)
        got["run.failing"] = "no error"
    except docker.errors.ContainerError as e:
        got["run.failing"] = {"exit_status": e.exit_status, "stderr": e.stderr}
    got["system.df.keys"] = sorted(hl.df().keys())
    got["info.keys"] = sorted(hl.info().keys())
    got["version.keys"] = sorted(hl.version().keys())
    return got


def run(sock, image):
    c = docker.APIClient(base_url=f"unix://{sock}", version="1.41", timeout=120)
    root = c.info().get("DockerRootDir", "")
    since = time.time()
    got = {}
    names = ("pydiff-a", "pydiff-b", "pydiff-c")
    for n in names:
        try:
            c.remove_container(n, force=True)
        except docker.errors.APIError:
            pass
    for n in ("pydiff-net",):
        try:
            c.remove_network(n)
        except docker.errors.APIError:
            pass
    net = c.create_network("pydiff-net", driver="bridge", labels={"l": "1"}, options={"o": "v"})
    c.create_volume("pydiff-vol", labels={"v": "1"})
    hc = c.create_host_config(
        binds={"pydiff-vol": {"bind": "/data", "mode": "rw"}},
        port_bindings={80: None},
        restart_policy={"Name": "on-failure", "MaximumRetryCount": 2},
        mem_limit="64m",
        cap_add=["NET_ADMIN"],
        network_mode="pydiff-net",
        log_config={"Type": "json-file", "Config": {"max-size": "1m"}},
    )
    a = c.create_container(
        image,
        command=["sleep", "300"],
        name="pydiff-a",
        hostname="hosta",
        environment={"E": "1"},
        labels={"k": "v"},
        ports=[80],
        volumes=["/data"],
        working_dir="/tmp",
        host_config=hc,
        networking_config=c.create_networking_config({"pydiff-net": c.create_endpoint_config(aliases=["alias-a"])}),
    )
    got["create"] = a
    got["inspect.created"] = c.inspect_container("pydiff-a")
    c.start("pydiff-a")
    got["inspect.running"] = c.inspect_container("pydiff-a")
    got["ps"] = c.containers(filters={"name": "pydiff-a"})
    got["top.titles"] = c.top("pydiff-a").get("Titles")
    e = c.exec_create("pydiff-a", ["sh", "-c", "echo out; echo err >&2; exit 3"], environment={"X": "1"})
    got["exec.output"] = c.exec_start(e["Id"], demux=True)
    got["exec.inspect"] = c.exec_inspect(e["Id"])
    got["network.inspect"] = c.inspect_network(net["Id"])
    got["volume.inspect"] = c.inspect_volume("pydiff-vol")
    got["image.inspect"] = c.inspect_image(image)
    got["image.history.count"] = len(c.history(image))
    got["diff"] = sorted(c.diff("pydiff-a"), key=lambda d: d["Path"])
    got["archive.stat"] = c.get_archive("pydiff-a", "/etc/hostname")[1]
    committed = c.commit("pydiff-a", repository="pydiff-committed", tag="1", changes=["ENV C=1"])
    got["commit.config"] = c.inspect_image(committed["Id"])["Config"]
    c.remove_image("pydiff-committed:1")
    c.create_container(image, command=["sh", "-c", "echo hi; exit 7"], name="pydiff-b")
    c.start("pydiff-b")
    got["wait"] = c.wait("pydiff-b")
    got["logs"] = c.logs("pydiff-b")
    got["inspect.exited"] = c.inspect_container("pydiff-b")
    c.stop("pydiff-a", timeout=1)
    got["inspect.stopped"] = c.inspect_container("pydiff-a")
    got["errors"] = {
        "inspect missing": error_of(lambda: c.inspect_container("pydiff-nosuch")),
        "start missing": error_of(lambda: c.start("pydiff-nosuch")),
        "create bad image": error_of(lambda: c.create_container("pydiff-no/such:image", name="pydiff-c")),
        "create same name": error_of(lambda: c.create_container(image, name="pydiff-b")),
        "remove running": error_of(lambda: (c.start("pydiff-a"), c.remove_container("pydiff-a"))),
        "network missing": error_of(lambda: c.inspect_network("pydiff-nosuch")),
        "volume missing": error_of(lambda: c.inspect_volume("pydiff-nosuch")),
        "image missing": error_of(lambda: c.inspect_image("pydiff-no/such:image")),
        "exec stopped": error_of(lambda: (c.stop("pydiff-b"), c.exec_create("pydiff-b", ["true"]))),
        "kill stopped": error_of(lambda: c.kill("pydiff-b")),
    }
    for n in names:
        try:
            c.remove_container(n, force=True)
        except docker.errors.APIError:
            pass
    c.remove_network(net["Id"])
    c.remove_volume("pydiff-vol")
    # What a client watching the stream saw, in order (the engine's own image and exec events
    # are left out for the next run's).
    until = time.time() + 1
    time.sleep(1.1)
    events = [event_of(e) for e in c.events(since=since, until=until, decode=True)]
    got["events"] = {
        # In order, but for volume mounts: dockerd mounts a running container's volumes again
        # for each `docker cp` (compared below, by action).
        "order": [
            f"{e['Type']} {e['Action'].split(':')[0]}"
            for e in events
            if e["Type"] != "volume" or e["Action"] not in ("mount", "unmount")
        ],
        "by action": {},
    }
    for e in events:
        got["events"]["by action"].setdefault(f"{e['Type']} {e['Action']}", []).append(e)
    got["hl"] = high_level(sock, image)
    return shape(json.loads(json.dumps(got, default=lambda b: b.decode(errors="replace") if isinstance(b, bytes) else str(b))), root)


def main():
    berth, dockerd, image = sys.argv[1:4]
    out = []
    walk("", run(berth, image), run(dockerd, image), out)
    for line in sorted(out):
        print(line)


if __name__ == "__main__":
    main()
