#!/usr/bin/env python3
"""A docker-compose project brought up and taken down on two engines, what it made compared
field by field: its containers, networks and volumes as inspect shows them, and the events
the engine sent meanwhile.

Usage: compose_diff.py BERTH_SOCKET DOCKERD_SOCKET IMAGE PROJECT_DIR PORT

Both engines must have IMAGE; PROJECT_DIR's compose file takes ${IMG} and ${PORT}. Prints one
line per difference, as docker_py_diff.py does (whose comparison this shares).
"""

import os
import subprocess
import sys
import time

import docker

from docker_py_diff import event_of, shape, walk

PROJECT = "cdiff"


def compose(sock, image, project_dir, port, *args):
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}", IMG=image, PORT=port)
    out = subprocess.run(
        ["docker-compose", "-p", PROJECT, *args], cwd=project_dir, env=env, capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise SystemExit(f"docker-compose {' '.join(args)} failed on {sock}:\n{out.stdout}{out.stderr}")


def run(sock, image, project_dir, port):
    c = docker.APIClient(base_url=f"unix://{sock}", version="1.41", timeout=120)
    root = c.info().get("DockerRootDir", "")
    label = f"com.docker.compose.project={PROJECT}"
    since = time.time()
    compose(sock, image, project_dir, port, "up", "-d")
    got = {"containers": {}, "networks": {}, "volumes": {}}
    for ctr in c.containers(all=True, filters={"label": label}):
        info = c.inspect_container(ctr["Id"])
        # compose 1.29 gives a container's aliases from a Python set: their order is its own.
        for ep in (info["NetworkSettings"]["Networks"] or {}).values():
            if ep.get("Aliases"):
                ep["Aliases"] = sorted(ep["Aliases"], key=lambda a: (len(a) == 12, a))
        got["containers"][info["Config"]["Labels"]["com.docker.compose.service"]] = info
    for net in c.networks(filters={"label": label}):
        info = c.inspect_network(net["Id"])
        # By name: their IDs are each run's own.
        info["Containers"] = {v["Name"]: v for v in (info.get("Containers") or {}).values()}
        got["networks"][net["Name"]] = info
    for vol in c.volumes(filters={"label": label}).get("Volumes") or []:
        got["volumes"][vol["Name"]] = c.inspect_volume(vol["Name"])
    compose(sock, image, project_dir, port, "down", "-v")
    got["left"] = {
        "containers": len(c.containers(all=True, filters={"label": label})),
        "networks": len(c.networks(filters={"label": label})),
        "volumes": len(c.volumes(filters={"label": label}).get("Volumes") or []),
    }
    until = time.time() + 1
    time.sleep(1.1)
    events = [event_of(e) for e in c.events(since=since, until=until, decode=True)]
    # Per action, as counts: compose starts services in parallel where it may, so the order
    # between services is its own.
    counts = {}
    for e in events:
        key = f"{e['Type']} {e['Action'].split(':')[0]}"
        counts[key] = counts.get(key, 0) + 1
    got["events"] = counts
    return shape(got, root)


def main():
    berth, dockerd, image, project_dir, port = sys.argv[1:6]
    out = []
    walk("", run(berth, image, project_dir, port), run(dockerd, image, project_dir, port), out)
    for line in sorted(out):
        print(line)


if __name__ == "__main__":
    main()
