//! `docker build` through the classic builder, with the real docker CLI (which picks the
//! classic builder from `/_ping`'s `Builder-Version: 1`) and raw API requests: every
//! instruction, multi-stage builds, `.dockerignore`, the layer cache, dockerd's progress lines
//! and errors (also compared with dockerd's own), and the cache in `system df` and `builder
//! prune`.

use std::path::Path;
use std::process::Command;

use berth_tests::{Agent, RefEngine, registry};

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

const APP: &str = r#"# syntax=docker/dockerfile:1
ARG REG
FROM $REG/busybox:latest AS build
WORKDIR /src
COPY . .
RUN test ! -e x.secret && echo "built $(cat hello.txt)" > /out.txt \
    && echo made > /made.secret && echo building on stdout && echo and on stderr >&2
FROM ${REG}/busybox:latest
ARG GREETING=hi
ENV APP_HOME=/app SPACED="a b"
LABEL org.example.k="v 1"
WORKDIR $APP_HOME
COPY --from=build /out.txt /made.secret ./
COPY --chown=1000:1001 sub/ ./sub/
ADD archive.tar.gz /unpacked/
RUN echo "$GREETING from $(pwd)" > greeting
USER 1000
EXPOSE 8080/tcp 53/udp
VOLUME /data
HEALTHCHECK --interval=5s --retries=2 CMD true
STOPSIGNAL SIGTERM
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat greeting out.txt"]
"#;

fn app_context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("Dockerfile", APP),
            ("hello.txt", "hello"),
            ("x.secret", "never sent"),
            (".dockerignore", "*.secret\n"),
            ("sub/a.txt", "a"),
            ("sub/deeper/b.txt", "b"),
            ("tree/inside.txt", "from the archive"),
        ],
    );
    let made = Command::new("tar")
        .arg("czf")
        .arg(dir.path().join("archive.tar.gz"))
        .arg("-C")
        .arg(dir.path().join("tree"))
        .arg(".")
        .status()
        .unwrap();
    assert!(made.success());
    dir
}

fn build(a: &Agent, ctx: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    let ctx = ctx.to_str().unwrap();
    all.push(ctx);
    a.docker(&all)
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn every_instruction_builds_as_on_docker_engine() {
    let a = Agent::start();
    let ctx = app_context();
    let reg = format!("REG={}", registry().addr);
    let out = build(&a, ctx.path(), &["--build-arg", &reg, "-t", "mine/app:v1", "-t", "mine/app:latest"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}\nagent: {}", berth_tests::tail(&a.log(), 30));
    // dockerd's lines: steps, the base image's pull, RUN's output, the end.
    for want in [
        "Step 1/21 : ARG REG",
        "Step 3/21 : WORKDIR /src",
        "Step 21/21 : CMD [\"cat greeting out.txt\"]",
        ": Pulling from ",
        " ---> Running in ",
        "building on stdout",
        "and on stderr",
        "Removing intermediate container ",
        "Successfully built ",
        "Successfully tagged mine/app:v1",
        "Successfully tagged mine/app:latest",
    ] {
        assert!(log.contains(want), "{want:?} in:\n{log}");
    }
    assert_eq!(a.ok(&["run", "--rm", "mine/app:v1"]), "hi from /app\nbuilt hello\n");
    let v: serde_json::Value = serde_json::from_str(&a.ok(&["image", "inspect", "mine/app:v1"])).unwrap();
    let c = &v[0]["Config"];
    assert!(c["Env"].as_array().unwrap().iter().any(|e| e == "SPACED=a b"), "{c}");
    assert!(c["Env"].as_array().unwrap().iter().any(|e| e == "APP_HOME=/app"), "{c}");
    assert!(
        !c["Env"].as_array().unwrap().iter().any(|e| e.as_str().unwrap().starts_with("GREETING")),
        "ARGs stay out: {c}"
    );
    assert_eq!(c["Labels"]["org.example.k"], "v 1");
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["User"], "1000");
    assert_eq!(c["StopSignal"], "SIGTERM");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object() && c["ExposedPorts"]["53/udp"].is_object(), "{c}");
    assert!(c["Volumes"]["/data"].is_object(), "{c}");
    assert_eq!(c["Healthcheck"]["Test"], serde_json::json!(["CMD-SHELL", "true"]));
    assert_eq!(c["Healthcheck"]["Interval"], 5_000_000_000u64);
    assert_eq!(c["Healthcheck"]["Retries"], 2);
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    // COPY --chown, a directory's contents, ADD's unpacking, ownership of what was created.
    // .dockerignore is the context's: it does not filter what COPY --from takes from a stage.
    assert_eq!(a.ok(&["run", "--rm", "mine/app:v1", "cat made.secret"]), "made\n");
    let files = a.ok(&["run", "--rm", "mine/app:v1", "ls -ln sub sub/deeper; cat /unpacked/inside.txt"]);
    assert!(files.contains("1000     1001") && files.contains("a.txt") && files.contains("b.txt"), "{files}");
    assert!(files.ends_with("from the archive"), "{files}");
    // `docker history` shows each step; the intermediate images are hidden from `images`.
    let history = a.ok(&["history", "--no-trunc", "--format", "{{.CreatedBy}}", "mine/app:v1"]);
    assert!(history.contains("|1 GREETING=hi /bin/sh -c echo \"$GREETING from $(pwd)\" > greeting"), "{history}");
    assert!(history.contains("#(nop) COPY dir:"), "{history}");
    // Only the first stage's result is dangling, as with dockerd's classic builder.
    let listed = a.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert_eq!(listed.matches("<none>").count(), 2, "intermediate images listed: {listed}");
    assert!(a.ok(&["images", "-a", "--format", "{{.Repository}}"]).matches("<none>").count() > 15);
    assert_eq!(a.ok(&["images", "-q", "--filter", "dangling=true"]).lines().count(), 1);

    // --target stops at a stage; -f names another file; build args reach RUN.
    write(
        ctx.path(),
        &[("other.Dockerfile", "ARG REG\nFROM $REG/busybox:latest\nARG WHO=nobody\nRUN echo \"$WHO\" > /who\n")],
    );
    let out = build(&a, ctx.path(), &["--build-arg", &reg, "--target", "build", "-t", "mine/stage"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Step 5/5 : RUN") && !text(&out).contains("Step 6/"), "{}", text(&out));
    assert_eq!(a.ok(&["run", "--rm", "mine/stage", "cat", "/out.txt"]), "built hello\n");
    let other = ctx.path().join("other.Dockerfile");
    let out = build(
        &a,
        ctx.path(),
        &[
            "--build-arg",
            &reg,
            "--build-arg",
            "WHO=me",
            "--build-arg",
            "UNUSED=1",
            "-f",
            other.to_str().unwrap(),
            "-t",
            "mine/who",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("[Warning] One or more build-args [UNUSED] were not consumed"), "{}", text(&out));
    assert_eq!(a.ok(&["run", "--rm", "mine/who", "cat", "/who"]), "me\n");

    // The build cache in system df, and builder prune.
    let df = a.ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    let cache_line = df.lines().find(|l| l.starts_with("Build Cache")).unwrap_or_default().to_owned();
    assert!(cache_line != "Build Cache 0" && !cache_line.is_empty(), "{df}");
    let pruned = a.ok(&["builder", "prune", "-f"]);
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
    assert_eq!(a.ok(&["run", "--rm", "mine/app:v1"]), "hi from /app\nbuilt hello\n", "prune took a tagged image");
    let again = build(&a, ctx.path(), &["--build-arg", &reg, "-t", "mine/app:v1"]);
    assert!(
        again.status.success() && !text(&again).contains("Using cache"),
        "cache outlived its prune: {}",
        text(&again)
    );
}

#[test]
fn unchanged_rebuilds_come_from_the_cache_and_changes_bust_it() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let dir = tempfile::tempdir().unwrap();
    let df = format!(
        "FROM {img}\nARG V=1\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b.txt; echo \"$V\" >> /b.txt\nCMD [\"cat\", \"/b.txt\"]\n"
    );
    write(dir.path(), &[("Dockerfile", &df), ("a.txt", "one\n")]);
    let first = build(&a, dir.path(), &["-t", "cached"]);
    assert!(first.status.success(), "{}", text(&first));
    let id = a.ok(&["image", "inspect", "-f", "{{.Id}}", "cached"]);
    let second = build(&a, dir.path(), &["-t", "cached"]);
    assert_eq!(text(&second).matches(" ---> Using cache").count(), 4, "{}", text(&second));
    assert_eq!(a.ok(&["image", "inspect", "-f", "{{.Id}}", "cached"]), id, "an unchanged rebuild made a new image");
    // A touched file with the same bytes stays cached; new bytes rerun COPY and what follows.
    let f = std::fs::File::options().write(true).open(dir.path().join("a.txt")).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    assert_eq!(text(&build(&a, dir.path(), &["-t", "cached"])).matches("Using cache").count(), 4);
    write(dir.path(), &[("a.txt", "two\n")]);
    let changed = build(&a, dir.path(), &["-t", "cached"]);
    assert_eq!(text(&changed).matches("Using cache").count(), 1, "{}", text(&changed));
    assert_eq!(a.ok(&["run", "--rm", "cached"]), "two\n1\n");
    // A build arg's new value reruns the RUN that sees it.
    let arg = build(&a, dir.path(), &["--build-arg", "V=2", "-t", "cached"]);
    assert_eq!(text(&arg).matches("Using cache").count(), 2, "{}", text(&arg));
    assert_eq!(a.ok(&["run", "--rm", "cached"]), "two\n2\n");
    let fresh = build(&a, dir.path(), &["--no-cache", "-t", "cached"]);
    assert!(fresh.status.success() && !text(&fresh).contains("Using cache"), "{}", text(&fresh));
    // Removing the image takes its chain of intermediate images with it, as dockerd does.
    let rmi = a.ok(&["rmi", "cached"]);
    assert!(rmi.matches("Deleted:").count() >= 4, "{rmi}");
}

#[test]
fn failures_are_dockerds_errors_and_leave_the_store_whole() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let dir = tempfile::tempdir().unwrap();
    let case = |df: &str| {
        write(dir.path(), &[("Dockerfile", df)]);
        let out = build(&a, dir.path(), &["-t", "broken"]);
        (out.status.code(), text(&out))
    };
    let (code, log) = case(&format!("FROM {img}\nRUN echo partial; exit 3\n"));
    assert_eq!(code, Some(3), "{log}");
    assert!(
        log.contains("partial")
            && log.contains("The command '/bin/sh -c echo partial; exit 3' returned a non-zero code: 3"),
        "{log}"
    );
    let (code, log) = case(&format!("FROM {img}\nCOPY missing.txt /\n"));
    assert_ne!(code, Some(0));
    assert!(log.contains("COPY failed: file not found in build context or excluded by .dockerignore: stat missing.txt: file does not exist"), "{log}");
    let (_, log) = case(&format!("FROM {img}\nCOPY ../../etc/passwd /\n"));
    assert!(log.contains("forbidden path outside the build context"), "{log}");
    let (_, log) = case(&format!("FROM {img}\nFOO bar\n"));
    assert!(log.contains("dockerfile parse error line 2: unknown instruction: FOO"), "{log}");
    let (_, log) = case("RUN true\n");
    assert!(log.contains("no build stage in current context"), "{log}");
    let (_, log) = case(&format!("FROM {}/nothing-here:latest\n", registry().addr));
    assert!(log.contains("manifest unknown") || log.contains("not found"), "{log}");
    assert!(a.ok(&["images", "-q", "broken"]).is_empty(), "a failed build was tagged");
    // A tar whose member climbs out of the context is refused; nothing lands outside.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    let body = b"FROM scratch\n";
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, "Dockerfile", &body[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    let name = b"../../escaped";
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    tar.append(&h, &b"x"[..]).unwrap();
    let (status, body) = a.request("POST", "/build?t=escape", &tar.into_inner().unwrap());
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("build context"), "{}", String::from_utf8_lossy(&body));
    assert!(!a.data_root().join("escaped").exists() && !a.dir.path().join("escaped").exists());
    // The engine still builds.
    let (code, log) = case(&format!("FROM {img}\nRUN echo fine\n"));
    assert_eq!(code, Some(0), "{log}");
}

/// A client that sends its whole context (not filtered by the CLI), as a raw tar: the engine
/// applies `.dockerignore` itself; `FROM scratch` with a COPY makes a one-layer image.
#[test]
fn raw_api_builds_honour_dockerignore_and_scratch() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let mut tar = tar::Builder::new(Vec::new());
    let add = |tar: &mut tar::Builder<Vec<u8>>, name: &str, body: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, body.as_bytes()).unwrap();
    };
    add(&mut tar, "Dockerfile", "FROM scratch\nCOPY . /ctx/\n");
    add(&mut tar, ".dockerignore", "secret*\nlogs/\n!logs/keep\n");
    add(&mut tar, "public.txt", "public");
    add(&mut tar, "secret.key", "private");
    add(&mut tar, "logs/a.log", "noise");
    add(&mut tar, "logs/keep", "kept");
    let context = tar.into_inner().unwrap();
    let (status, body) = a.request("POST", "/build?t=scratchy&q=1", &context);
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{body}");
    // Sent again: the COPY on scratch comes from the cache, the same image.
    let (_, again) = a.request("POST", "/build?t=scratchy", &context);
    let again = String::from_utf8_lossy(&again).into_owned();
    assert!(again.contains("Using cache"), "{again}");
    let id = |text: &str| {
        text.split("\"stream\":\"").filter_map(|s| s.strip_prefix("sha256:")).map(|s| s[..12].to_owned()).next()
    };
    assert!(id(&body).is_some_and(|i| again.contains(&format!("Successfully built {i}"))), "{body}\n{again}");
    assert!(!body.contains("Step 1/2"), "q=1 prints only the ID: {body}");
    assert!(body.contains("\"stream\":\"sha256:"), "{body}");
    let v: serde_json::Value = serde_json::from_str(&a.ok(&["image", "inspect", "scratchy"])).unwrap();
    assert_eq!(v[0]["RootFS"]["Layers"].as_array().unwrap().len(), 1, "{v}");
    a.ok(&["create", "--name", "holder", "scratchy", "none"]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    a.ok(&["cp", "holder:/ctx", dest.to_str().unwrap()]);
    let mut names: Vec<String> = walk(&dest);
    names.sort();
    assert_eq!(names, [".dockerignore", "Dockerfile", "logs/keep", "public.txt"], "{names:?}");
    let _ = img;
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

/// The same Dockerfile through dockerd's classic builder and Berth's: the same steps, the
/// same outcome, the same error for a failing RUN.
#[test]
fn steps_and_errors_match_docker_engine() {
    let a = Agent::start();
    let r = RefEngine::start();
    let img = format!("{}/busybox:latest", registry().addr);
    let dir = tempfile::tempdir().unwrap();
    let df = format!(
        "FROM {img}\nENV A=1\nWORKDIR /w\nCOPY f.txt .\nRUN cat f.txt\nLABEL x=y\nCMD [\"cat\", \"/w/f.txt\"]\n"
    );
    write(dir.path(), &[("Dockerfile", &df), ("f.txt", "same\n")]);
    let ctx = dir.path().to_str().unwrap();
    let ours = a.docker(&["build", "--network", "none", "-t", "cmp", ctx]);
    let theirs = r.docker(&["build", "--network", "none", "-t", "cmp", ctx]);
    assert!(ours.status.success(), "{}", text(&ours));
    assert!(theirs.status.success(), "dockerd: {}", text(&theirs));
    let steps = |o: &std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("Step ") || l.starts_with("Successfully tagged"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(steps(&ours), steps(&theirs));
    assert_eq!(a.ok(&["run", "--rm", "cmp"]), r.ok(&["run", "--rm", "--network", "none", "cmp"]));
    write(dir.path(), &[("Dockerfile", &format!("FROM {img}\nRUN exit 7\n"))]);
    let ours = a.docker(&["build", "--network", "none", ctx]);
    let theirs = r.docker(&["build", "--network", "none", ctx]);
    assert_eq!(ours.status.code(), theirs.status.code());
    let last = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| l.contains("returned a non-zero code"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(last(&ours), last(&theirs));
    assert!(!last(&ours).is_empty(), "{}", text(&ours));
}
