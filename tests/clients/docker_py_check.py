"""docker-py (the Docker SDK for Python, from PyPI) against an engine: the calls everyday
Python tools make. Usage: docker_py_check.py SOCKET IMAGE. Exits non-zero with the first
mismatch; prints one line per check passed."""

import io
import sys
import tarfile
import time

import docker

sock, image = sys.argv[1], sys.argv[2]
client = docker.DockerClient(base_url=f"unix://{sock}", version="auto", timeout=120)
api = client.api


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}", file=sys.stderr)
        sys.exit(1)
    print(f"ok {name}")


check("ping", client.ping() is True)
v = client.version()
check("version", v["ApiVersion"] and v["Os"] == "linux", v)
info = client.info()
check("info", "Containers" in info and "Images" in info, info.keys())

img = client.images.pull(image)
check("images.pull", image in img.tags or any(t.startswith(image.split(":")[0]) for t in img.tags), img.tags)
check("images.list", any(i.id == img.id for i in client.images.list()))
check("images.get attrs", client.images.get(image).attrs["Config"]["Cmd"] is not None)
rd = client.images.get_registry_data(image)
check("get_registry_data", rd.id.startswith("sha256:") and rd.has_platform("linux/amd64"), rd.attrs)

# A build from a tar made here, with a build arg; the stream docker-py reads.
dockerfile = f"FROM {image}\nARG WHO=nobody\nENV WHO=$WHO\nRUN echo built by $WHO > /built\nCMD [\"cat\", \"/built\"]\n"
ctx = io.BytesIO()
with tarfile.open(fileobj=ctx, mode="w") as t:
    data = dockerfile.encode()
    ti = tarfile.TarInfo("Dockerfile")
    ti.size = len(data)
    t.addfile(ti, io.BytesIO(data))
ctx.seek(0)
built, logs = client.images.build(fileobj=ctx, custom_context=True, tag="py/built:1", buildargs={"WHO": "python"}, rm=True)
lines = "".join(chunk.get("stream", "") for chunk in logs)
check("images.build", "Successfully built" in lines and "py/built:1" in built.tags, lines)
out = client.containers.run("py/built:1", remove=True)
check("containers.run output", out == b"built by python\n", out)

# A failing build raises BuildError with dockerd's message.
ctx = io.BytesIO()
with tarfile.open(fileobj=ctx, mode="w") as t:
    data = f"FROM {image}\nRUN exit 4\n".encode()
    ti = tarfile.TarInfo("Dockerfile")
    ti.size = len(data)
    t.addfile(ti, io.BytesIO(data))
ctx.seek(0)
try:
    client.images.build(fileobj=ctx, custom_context=True)
    check("build error", False, "no error")
except docker.errors.BuildError as e:
    check("build error", "returned a non-zero code: 4" in str(e), str(e))

c = client.containers.run(image, ["sh", "-c", "touch /made; echo started; sleep 300"], detach=True, name="py-worker",
                          environment={"K": "v"}, labels={"app": "py"})
for _ in range(100):
    c.reload()
    if c.status == "running" and b"started" in c.logs():
        break
    time.sleep(0.1)
check("containers.run detach", c.status == "running", c.status)
check("logs", c.logs() == b"started\n", c.logs())
code, output = c.exec_run(["sh", "-c", "echo $K; exit 3"])
check("exec_run", code == 3 and output == b"v\n", (code, output))
check("containers.list filters", [x.name for x in client.containers.list(filters={"label": "app=py"})] == ["py-worker"])
c.pause()
c.reload()
check("pause", c.status == "paused", c.status)
c.unpause()
c.reload()
check("unpause", c.status == "running", c.status)
c.update(mem_limit="64m")
c.reload()
check("update", c.attrs["HostConfig"]["Memory"] == 64 << 20, c.attrs["HostConfig"]["Memory"])
check("top", any("sleep" in " ".join(p) for p in c.top()["Processes"]))
stats = c.stats(stream=False)
check("stats", "memory_stats" in stats and "cpu_stats" in stats, stats.keys())
bits, stat = c.get_archive("/etc/hostname")
check("get_archive", stat["name"] == "hostname" and len(b"".join(bits)) > 0, stat)
c.stop(timeout=1)
check("wait", c.wait()["StatusCode"] in (137, 143), c.wait())
check("diff", {"Path": "/made", "Kind": 1} in c.diff(), c.diff())
c.remove()

vol = client.volumes.create("py-vol", labels={"k": "v"})
check("volumes.create", vol.name == "py-vol" and vol.attrs["Labels"] == {"k": "v"}, vol.attrs)
out = client.containers.run(image, ["sh", "-c", "echo kept > /d/f; cat /d/f"], volumes={"py-vol": {"bind": "/d", "mode": "rw"}}, remove=True)
check("volume mount", out == b"kept\n", out)
check("volumes.list", any(x.name == "py-vol" for x in client.volumes.list()))
vol.remove()

df = client.df()
check("df", {"Images", "Containers", "Volumes", "BuildCache"} <= set(df), df.keys())
pruned = client.containers.prune()
check("containers.prune", "SpaceReclaimed" in pruned, pruned)
# Push what was built to the registry the image came from, and pull it back.
repo = image.rsplit(":", 1)[0] + "-py-pushed"
built.tag(repo, "1")
pushed = [l for l in client.images.push(repo, "1", stream=True, decode=True)]
check("images.push", any("aux" in l and l["aux"].get("Digest", "").startswith("sha256:") for l in pushed), pushed)
check("images.push error-free", not any("error" in l for l in pushed), pushed)
client.images.remove(f"{repo}:1")
check("pull what was pushed", client.images.pull(repo, tag="1").id == built.id)
client.images.remove(f"{repo}:1")
client.images.remove("py/built:1")
try:
    client.images.get("py/built:1")
    check("images.remove", False, "still there")
except docker.errors.ImageNotFound:
    check("images.remove", True)
try:
    client.containers.get("no-such-container")
    check("not found", False)
except docker.errors.NotFound:
    check("NotFound", True)
print("docker-py: all checks passed")
