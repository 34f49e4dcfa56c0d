//! The VM's lifecycle and settings, through the `berth` command itself.
//!
//! The app does not link a second copy of the daemon logic (pid files, a crashed daemon's
//! leftover QEMU, the guest image build, config validation): it runs `berth start`, `stop`,
//! `status --json` and `config`, the code paths the CLI's users run, and reads their output.
//! The daemon it starts is the CLI's own detached `berth daemon`, so quitting or crashing the
//! app never takes the VM with it.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The `berth` program: `BERTH_BIN`, else the one installed beside this app, else `PATH`'s.
pub fn program() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_BIN") {
        return PathBuf::from(p);
    }
    let name = if cfg!(windows) { "berth.exe" } else { "berth" };
    if let Some(beside) = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join(name)))
        && beside.is_file()
    {
        return beside;
    }
    PathBuf::from(name)
}

fn command() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program());
    // Errors are for people here: without stack traces, even where RUST_BACKTRACE is set.
    cmd.stdin(Stdio::null()).kill_on_drop(true).env("RUST_LIB_BACKTRACE", "0");
    cmd
}

/// Runs `berth ARGS`, returning its stdout; a failure carries what it printed on stderr.
async fn run(args: &[&str]) -> anyhow::Result<String> {
    let out = command()
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {} (set BERTH_BIN to the berth program)", program().display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("`berth {}` failed ({}): {}", args.join(" "), out.status, err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `berth status --json`: the report the CLI prints (state, daemon, vm, disk, agent, problems).
pub async fn status() -> anyhow::Result<Value> {
    let out = run(&["status", "--json"]).await?;
    serde_json::from_str(&out).context("reading `berth status --json`")
}

/// `berth start`, calling `line` with each line of its progress (guest image build, boot).
/// On failure the error holds the whole of what it said, the daemon log's tail included.
pub async fn start(mut line: impl FnMut(String)) -> anyhow::Result<()> {
    let mut child = command()
        .arg("start")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} (set BERTH_BIN to the berth program)", program().display()))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let mut said = Vec::new();
    let mut out = BufReader::new(stdout).lines();
    let mut err = BufReader::new(stderr).lines();
    let (mut out_done, mut err_done) = (false, false);
    while !(out_done && err_done) {
        let next = tokio::select! {
            l = out.next_line(), if !out_done => l.map(|l| l.or_else(|| { out_done = true; None })),
            l = err.next_line(), if !err_done => l.map(|l| l.or_else(|| { err_done = true; None })),
        };
        if let Some(l) = next.context("reading `berth start`")? {
            said.push(l.clone());
            line(l);
        }
    }
    let status = child.wait().await?;
    if !status.success() {
        bail!("the VM did not start ({status}):\n{}", said.join("\n"));
    }
    Ok(())
}

/// `berth stop`: containers stopped, data synced, the VM powered off.
pub async fn stop() -> anyhow::Result<()> {
    run(&["stop"]).await.map(drop)
}

/// `berth config --json`: the file's values, what is in force, and the defaults.
pub async fn config() -> anyhow::Result<Value> {
    let out = run(&["config", "--json"]).await?;
    serde_json::from_str(&out).context("reading `berth config --json`")
}

/// `berth config set KEY=VALUE...` (`KEY=` unsets): checked by the CLI before it writes.
pub async fn set_config(pairs: &[String]) -> anyhow::Result<()> {
    let mut args = vec!["config", "set"];
    args.extend(pairs.iter().map(String::as_str));
    run(&args).await.map(drop)
}
