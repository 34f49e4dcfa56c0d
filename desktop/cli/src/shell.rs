//! The rest of the user's machine: a docker context named `berth` (as Docker Desktop registers
//! its own), `berth env` for shells, `berth docker ...` for the real docker CLI, and shell
//! completion.
//!
//! The context is written where the docker CLI keeps them (`$DOCKER_CONFIG`, else
//! `~/.docker`): `contexts/meta/<sha256 of the name>/meta.json`, the docker CLI's own format,
//! so this works whether or not the docker CLI is installed yet.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::Digest;

/// The context's name.
pub const CONTEXT: &str = "berth";

fn docker_config() -> anyhow::Result<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
        _ => Ok(dirs::home_dir().context("no home directory for ~/.docker")?.join(".docker")),
    }
}

/// The Docker endpoint Berth serves, as a `DOCKER_HOST` value.
fn docker_host(home: &Path) -> String {
    crate::host::docker_host(&crate::host::docker_endpoint(home))
}

/// Writes (or refreshes) the `berth` docker context, pointing at `home`'s socket.
pub fn register_context(home: &Path) -> anyhow::Result<PathBuf> {
    let dir = docker_config()?.join("contexts/meta").join(hex::encode(sha2::Sha256::digest(CONTEXT.as_bytes())));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let meta = serde_json::json!({
        "Name": CONTEXT,
        "Metadata": {"Description": "Berth: Linux containers in a small VM"},
        "Endpoints": {"docker": {"Host": docker_host(home), "SkipTLSVerify": false}},
    });
    let path = dir.join("meta.json");
    std::fs::write(&path, serde_json::to_vec(&meta)?).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `berth context use [NAME]`: makes `berth` (registered anew) or another context, such as
/// `default`, the docker CLI's current one, keeping the rest of its config.json.
pub fn use_context(home: &Path, name: &str) -> anyhow::Result<()> {
    if name == CONTEXT {
        register_context(home)?;
    }
    let path = docker_config()?.join("config.json");
    let mut config: serde_json::Value = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let obj = config.as_object_mut().with_context(|| format!("{} is not a JSON object", path.display()))?;
    if name == "default" {
        obj.remove("currentContext");
    } else {
        obj.insert("currentContext".into(), name.into());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{name}");
    eprintln!("Current context is now \"{name}\"");
    Ok(())
}

/// The shells `berth env` speaks.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Powershell,
}

/// `berth env`: the line that points a shell's docker tools at Berth.
pub fn env(home: &Path, shell: Option<Shell>) {
    let shell = shell.unwrap_or_else(|| {
        let name = std::env::var("SHELL").unwrap_or_default();
        if name.ends_with("fish") { Shell::Fish } else { Shell::Bash }
    });
    let host = docker_host(home);
    match shell {
        Shell::Bash | Shell::Zsh => {
            println!("export DOCKER_HOST={host}\n# eval \"$(berth env)\" in your shell's startup file")
        }
        Shell::Fish => println!("set -gx DOCKER_HOST {host}\n# berth env --shell fish | source"),
        Shell::Powershell => println!("$Env:DOCKER_HOST = \"{host}\""),
    }
}

/// `berth docker ARGS...`: the docker CLI, pointed at Berth (replaces this process on Unix;
/// on Windows runs it and leaves with its exit code).
pub fn docker(home: &Path, args: &[String]) -> anyhow::Result<()> {
    let host = match std::env::var("BERTH_DOCKER_HOST") {
        Ok(h) if !h.is_empty() => crate::host::docker_host(&crate::host::endpoint_of(&h)),
        _ => docker_host(home),
    };
    let mut cmd = std::process::Command::new("docker");
    cmd.args(args).env("DOCKER_HOST", host).env_remove("DOCKER_CONTEXT");
    #[cfg(unix)]
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    #[cfg(windows)]
    let err = match cmd.status() {
        Ok(st) => std::process::exit(st.code().unwrap_or(1)),
        Err(e) => e,
    };
    if err.kind() == std::io::ErrorKind::NotFound {
        anyhow::bail!("the docker CLI is not installed: use berth's own verbs (`berth --help`), or install docker");
    }
    Err(err).context("running docker")
}
