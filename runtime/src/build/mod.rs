//! The classic builder, as dockerd's (`POST /build` without BuildKit): each instruction of the
//! Dockerfile is a step on the image the last one made. `RUN` runs in a real container of the
//! engine, committed as a layer; `COPY` and `ADD` write into a created (never started)
//! container's root, confined to it, and commit that; the other instructions change the
//! config only. Every step's image is kept (untagged: the intermediate images `docker images`
//! hides) and recorded in the layer cache ([`cache`]), so an unchanged rebuild is a chain of
//! lookups.
//!
//! What the client sees is dockerd's JSON stream: `Step 1/5 : FROM busybox`, ` ---> 1a2b3c4d5e6f`,
//! ` ---> Running in ...`, `Removing intermediate container ...`, ` ---> Using cache`,
//! `Successfully built ...`, `Successfully tagged ...`, and dockerd's errors.

pub mod cache;
pub mod context;
pub mod dockerfile;
pub mod words;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::container::rootfs::{self, RootView};
use crate::engine::io_ctx;
use crate::engine::{CreateRequest, WaitCondition};
use crate::image::pull::{Credentials, Progress};
use crate::image::{ImageRecord, archive, familiar, parse_reference, tagged};
use crate::model::{ContainerConfig, History, HostConfig, ImageConfig, now_rfc3339};
use crate::{Engine, EngineError};
use context::{Context, Rewrite, Source};
use dockerfile::{Args, Instruction};

/// What `POST /build` asks for.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The Dockerfile's path in the context (`Dockerfile` when empty).
    pub dockerfile: String,
    pub tags: Vec<String>,
    /// `--build-arg`: a name alone takes its value from the client's environment, which the
    /// docker CLI sends; `None` leaves it unset.
    pub build_args: BTreeMap<String, Option<String>>,
    pub labels: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    /// Pull base images even when they are here.
    pub pull: bool,
    /// Remove intermediate containers of steps that succeed (dockerd's default).
    pub remove: bool,
    /// Remove them always, also after a failed step.
    pub force_remove: bool,
    pub quiet: bool,
    pub network_mode: String,
    pub credentials: BTreeMap<String, Credentials>,
}

/// What a build says while it runs.
#[derive(Debug, Clone)]
pub enum BuildEvent {
    /// Text for the terminal (`{"stream": ...}`).
    Stream(String),
    /// A base image's pull progress.
    Pull(Progress),
    /// The built image's ID (`{"aux": {"ID": ...}}`).
    Aux(String),
}

/// Build args dockerd lets through without an `ARG` (and leaves out of the cache key).
const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A stage as it is being built.
#[derive(Debug, Clone)]
struct Stage {
    name: Option<String>,
    /// The image the last step made; `None` for `FROM scratch` before any step.
    image: Option<ImageRecord>,
    config: ImageConfig,
    /// `ARG`s declared in this stage, with their values.
    args: BTreeMap<String, Option<String>>,
    /// Whether a CMD of this stage's own has been seen.
    cmd_set: bool,
}

impl Stage {
    fn id(&self) -> &str {
        self.image.as_ref().map(|i| i.id.as_str()).unwrap_or("")
    }
}

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument(msg.into())
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

fn joined<T>(e: Result<Result<T, EngineError>, tokio::task::JoinError>) -> Result<T, EngineError> {
    e.map_err(|e| invalid(format!("build step panicked: {e}")))?
}

struct Builder<'a> {
    engine: &'a Engine,
    opts: &'a BuildOptions,
    ctx: Arc<Context>,
    out: &'a UnboundedSender<BuildEvent>,
    escape: char,
    global_args: BTreeMap<String, Option<String>>,
    used_args: BTreeSet<String>,
    done: Vec<Stage>,
    step: usize,
    total: usize,
}

impl Engine {
    /// Builds the Dockerfile in the tar `context`; returns the image's ID. Errors before the
    /// first step (a bad context or Dockerfile) come before any event.
    pub async fn build(
        &self,
        context: File,
        opts: BuildOptions,
        out: UnboundedSender<BuildEvent>,
    ) -> Result<String, EngineError> {
        let scratch = self.root().join("tmp");
        std::fs::create_dir_all(&scratch).map_err(io_ctx("creating the scratch dir"))?;
        let name = if opts.dockerfile.is_empty() { "Dockerfile".to_owned() } else { opts.dockerfile.clone() };
        let (ctx, text) = joined(
            tokio::task::spawn_blocking(move || {
                let reader = std::io::BufReader::new(context);
                let ctx = Context::unpack(reader, &scratch).map_err(EngineError::InvalidArgument)?;
                let text = ctx
                    .read(&name)
                    .map_err(EngineError::InvalidArgument)?
                    .ok_or_else(|| invalid(format!("Cannot locate specified Dockerfile: {name}")))?;
                Ok((ctx, text))
            })
            .await,
        )?;
        let df = dockerfile::parse(&String::from_utf8_lossy(&text)).map_err(|e| invalid(e.to_string()))?;
        let mut builder = Builder {
            engine: self,
            opts: &opts,
            ctx: Arc::new(ctx),
            out: &out,
            escape: df.escape,
            global_args: BTreeMap::new(),
            used_args: BTreeSet::new(),
            done: Vec::new(),
            step: 0,
            total: 0,
        };
        let result = builder.run(df.instructions).await;
        let ctx = builder.ctx.clone();
        drop(builder);
        // The unpacked context goes off the async threads.
        let _ = tokio::task::spawn_blocking(move || drop(ctx)).await;
        let id = result?;
        self.inner.events.emit("image", "build", &id, &[]);
        Ok(id)
    }

    /// `POST /build/prune`: drops the cache and the images only it kept (untagged, without
    /// children, unused by containers). Returns the images removed and the bytes freed.
    pub fn prune_build_cache(&self) -> Result<(Vec<String>, u64), EngineError> {
        let entries: Vec<String> = self
            .inner
            .build_cache
            .lock()
            .expect("cache lock")
            .remove_where(|_| true)
            .into_iter()
            .map(|e| e.image)
            .collect();
        let in_use: BTreeSet<String> = self.containers().into_iter().map(|c| c.image_id).collect();
        let mut removed = Vec::new();
        let mut freed = 0;
        // Children first: an image whose child goes may go next.
        loop {
            let mut images = self.inner.stores.images.lock().expect("image store lock");
            let parents: BTreeSet<String> = images.all().map(|i| i.parent.clone()).collect();
            let victim = entries
                .iter()
                .filter_map(|id| images.get(id))
                .find(|i| i.repo_tags.is_empty() && !parents.contains(&i.id) && !in_use.contains(&i.id))
                .cloned();
            let Some(v) = victim else { break };
            freed += images.own_size(&v);
            images.remove(&v.id)?;
            removed.push(v.id);
        }
        self.collect_garbage();
        Ok((removed, freed))
    }

    /// The cache's entries for `system df`: (entry, layer bytes, in use by a container).
    pub fn build_cache_usage(&self) -> Vec<(cache::CacheEntry, u64, bool)> {
        let entries: Vec<cache::CacheEntry> =
            self.inner.build_cache.lock().expect("cache lock").entries().map(|(_, e)| e.clone()).collect();
        let images = self.inner.stores.images.lock().expect("image store lock");
        let in_use: BTreeSet<String> = self.containers().into_iter().map(|c| c.image_id).collect();
        entries
            .into_iter()
            .filter_map(|e| {
                // A tagged image is the user's, listed with the images; the rest is cache.
                let img = images.get(&e.image).filter(|i| i.repo_tags.is_empty())?;
                Some((e, images.own_size(img), in_use.contains(&img.id)))
            })
            .collect()
    }
}

impl Builder<'_> {
    fn say(&self, text: impl Into<String>) {
        if !self.opts.quiet {
            let _ = self.out.send(BuildEvent::Stream(text.into()));
        }
    }

    async fn run(&mut self, instructions: Vec<Instruction>) -> Result<String, EngineError> {
        // Stages: the global ARGs, then each FROM with what follows it.
        let mut globals = Vec::new();
        let mut stages: Vec<Vec<Instruction>> = Vec::new();
        for ins in instructions {
            if ins.keyword == "FROM" {
                stages.push(vec![ins]);
            } else if let Some(s) = stages.last_mut() {
                s.push(ins);
            } else if ins.keyword == "ARG" {
                globals.push(ins);
            } else {
                return Err(invalid(format!(
                    "dockerfile parse error line {}: no build stage in current context",
                    ins.line
                )));
            }
        }
        if stages.is_empty() {
            return Err(invalid("the Dockerfile has no FROM: no build stage in current context"));
        }
        let last = match &self.opts.target {
            Some(t) if !t.is_empty() => stages
                .iter()
                .position(|s| stage_name(&s[0]).is_some_and(|n| n.eq_ignore_ascii_case(t)))
                .ok_or_else(|| invalid(format!("failed to reach build target {t} in Dockerfile")))?,
            _ => stages.len() - 1,
        };
        stages.truncate(last + 1);
        if !self.opts.labels.is_empty() {
            // dockerd adds `--label`s as a last LABEL step.
            let text = self.opts.labels.iter().map(|(k, v)| format!("{}={}", quote(k), quote(v))).collect::<Vec<_>>();
            let ins =
                dockerfile::instruction(&format!("LABEL {}", text.join(" ")), 0).map_err(|e| invalid(e.to_string()))?;
            stages.last_mut().expect("one").push(ins);
        }
        self.total = globals.len() + stages.iter().map(Vec::len).sum::<usize>();
        for ins in &globals {
            self.header(ins);
            let (name, default) = self.arg_decl(ins, &|_| None)?;
            let value = self.opts.build_args.get(&name).cloned().unwrap_or(default);
            if self.opts.build_args.contains_key(&name) {
                self.used_args.insert(name.clone());
            }
            self.global_args.insert(name, value);
        }
        let mut final_id = String::new();
        for stage in stages {
            let mut it = stage.into_iter();
            let from = it.next().expect("a stage starts with FROM");
            self.header(&from);
            let mut st = self.from(&from).await?;
            self.onbuild(&mut st).await?;
            for ins in it {
                self.header(&ins);
                self.instruction(&mut st, &ins).await?;
            }
            final_id = match &st.image {
                Some(i) => i.id.clone(),
                None => self.meta_image(&mut st, "").await?,
            };
            self.done.push(st);
        }
        let unused: Vec<&String> = self
            .opts
            .build_args
            .keys()
            .filter(|k| !self.used_args.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
            .collect();
        if !unused.is_empty() {
            let names: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            self.say(format!("[Warning] One or more build-args [{}] were not consumed\n", names.join(" ")));
        }
        let mut tags = Vec::new();
        for t in &self.opts.tags {
            tags.push(tagged(&parse_reference(t)?));
        }
        {
            let mut images = self.engine.inner.stores.images.lock().expect("image store lock");
            for t in &tags {
                images.set_tag(&final_id, t)?;
            }
        }
        for t in &tags {
            self.engine.image_event(&final_id, "tag", &familiar(t));
        }
        let _ = self.out.send(BuildEvent::Aux(final_id.clone()));
        if self.opts.quiet {
            let _ = self.out.send(BuildEvent::Stream(format!("{final_id}\n")));
        }
        self.say(format!("Successfully built {}\n", short(&final_id)));
        for t in &tags {
            self.say(format!("Successfully tagged {}\n", familiar(t)));
        }
        Ok(final_id)
    }

    fn header(&mut self, ins: &Instruction) {
        self.step += 1;
        self.say(format!("Step {}/{} : {}", self.step, self.total, ins.original));
        self.say("\n");
    }

    /// Values of variables in `st`: its environment first (ENV beats ARG), then its ARGs.
    fn lookup(st: &Stage) -> impl Fn(&str) -> Option<String> + 'static {
        let (env, args) = (st.config.config.env.clone(), st.args.clone());
        move |name: &str| {
            let prefix = format!("{name}=");
            env.iter()
                .rev()
                .find_map(|e| e.strip_prefix(&prefix).map(str::to_owned))
                .or_else(|| args.get(name).cloned().flatten())
        }
    }

    fn text_args(&self, ins: &Instruction, st: &Stage) -> Result<Vec<String>, EngineError> {
        match &ins.args {
            Args::Json(v) => Ok(v.clone()),
            Args::Text(t) => words::words(t, &Self::lookup(st), self.escape).map_err(invalid),
        }
    }

    fn arg_decl(&self, ins: &Instruction, vars: words::Lookup<'_>) -> Result<(String, Option<String>), EngineError> {
        let Args::Text(t) = &ins.args else { return Err(invalid("ARG requires exactly one argument")) };
        let w = words::words(t, vars, self.escape).map_err(invalid)?;
        if w.len() != 1 {
            return Err(invalid("ARG requires exactly one argument"));
        }
        Ok(match w[0].split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (w[0].clone(), None),
        })
    }

    async fn from(&mut self, ins: &Instruction) -> Result<Stage, EngineError> {
        let globals = self.global_args.clone();
        let vars = move |n: &str| globals.get(n).cloned().flatten();
        let Args::Text(t) = &ins.args else { return Err(invalid("FROM requires either one or three arguments")) };
        let w = words::words(t, &vars, self.escape).map_err(invalid)?;
        let (image, name) = match w.as_slice() {
            [image] => (image.clone(), None),
            [image, as_, name] if as_.eq_ignore_ascii_case("as") => (image.clone(), Some(name.to_ascii_lowercase())),
            _ => return Err(invalid("FROM requires either one or three arguments")),
        };
        let mut stage =
            Stage { name, image: None, config: ImageConfig::default(), args: BTreeMap::new(), cmd_set: false };
        if image == "scratch" {
            stage.config.architecture = crate::model::go_arch().into();
            stage.config.os = "linux".into();
            stage.config.rootfs.kind = "layers".into();
            return Ok(stage);
        }
        let rec = match self.done.iter().find(|s| s.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(&image))) {
            Some(s) => s.image.clone().ok_or_else(|| invalid(format!("stage {image} made no image")))?,
            None => self.image(&image, self.opts.pull).await?,
        };
        stage.config = self.engine.image_config(&rec.id)?;
        self.say(format!(" ---> {}\n", short(&rec.id)));
        stage.image = Some(rec);
        Ok(stage)
    }

    /// A base image: this engine's, or pulled (with its progress in the stream).
    async fn image(&self, name: &str, pull: bool) -> Result<ImageRecord, EngineError> {
        if !pull {
            let found = self.engine.inner.stores.images.lock().expect("image store lock").resolve(name).cloned();
            if let Ok(rec) = found {
                return Ok(rec);
            }
        }
        let reference = parse_reference(name)?;
        let creds = self.opts.credentials.get(reference.registry()).cloned().unwrap_or_default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
        let out = self.out.clone();
        let quiet = self.opts.quiet;
        let forward = tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                if !quiet {
                    let _ = out.send(BuildEvent::Pull(p));
                }
            }
        });
        let result = self.engine.pull(name, &creds, None, &tx).await;
        drop(tx);
        let _ = forward.await;
        result
    }

    async fn onbuild(&mut self, st: &mut Stage) -> Result<(), EngineError> {
        let triggers: Vec<String> = st
            .config
            .config
            .extra
            .get("OnBuild")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        if triggers.is_empty() {
            return Ok(());
        }
        st.config.config.extra.remove("OnBuild");
        self.say(format!(
            "# Executing {} build trigger{}\n",
            triggers.len(),
            if triggers.len() == 1 { "" } else { "s" }
        ));
        for t in triggers {
            let ins = dockerfile::instruction(&t, 0).map_err(|e| invalid(e.to_string()))?;
            self.instruction(st, &ins).await?;
        }
        Ok(())
    }

    async fn instruction(&mut self, st: &mut Stage, ins: &Instruction) -> Result<(), EngineError> {
        let kw = ins.keyword.as_str();
        match kw {
            "RUN" => return self.run_step(st, ins).await,
            "COPY" | "ADD" => return self.copy_step(st, ins).await,
            "WORKDIR" => return self.workdir_step(st, ins).await,
            _ => {}
        }
        let mut config = st.config.clone();
        let c = &mut config.config;
        let vars = Self::lookup(st);
        let desc: String = match kw {
            "ARG" => {
                let (name, default) = self.arg_decl(ins, &vars)?;
                let value = match self.opts.build_args.get(&name) {
                    Some(v) => {
                        self.used_args.insert(name.clone());
                        v.clone()
                    }
                    // A global ARG re-declared without a default keeps the global value.
                    None => default.or_else(|| self.global_args.get(&name).cloned().flatten()),
                };
                st.args.insert(name.clone(), value);
                format!("ARG {}", ins_text(ins))
            }
            "ENV" => {
                let Args::Text(t) = &ins.args else { return Err(invalid("ENV requires at least one argument")) };
                let pairs = words::pairs(t, &vars, self.escape, "ENV").map_err(invalid)?;
                for (k, v) in &pairs {
                    c.env.retain(|e| e.split('=').next() != Some(k.as_str()));
                    c.env.push(format!("{k}={v}"));
                }
                let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("ENV {}", shown.join(" "))
            }
            "LABEL" => {
                let Args::Text(t) = &ins.args else { return Err(invalid("LABEL requires at least one argument")) };
                let pairs = words::pairs(t, &vars, self.escape, "LABEL").map_err(invalid)?;
                let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                c.labels.extend(pairs);
                format!("LABEL {}", shown.join(" "))
            }
            "MAINTAINER" => {
                let who = ins_text(ins);
                config.author = Some(who.clone());
                format!("MAINTAINER {who}")
            }
            "CMD" | "ENTRYPOINT" => {
                let argv = match &ins.args {
                    Args::Json(v) => v.clone(),
                    Args::Text(t) => {
                        let mut sh = shell_of(c);
                        sh.push(t.clone());
                        sh
                    }
                };
                let shown = serde_json::to_string(&argv).expect("strings");
                if kw == "CMD" {
                    c.cmd = Some(argv);
                } else {
                    c.entrypoint = Some(argv);
                    // dockerd: a new ENTRYPOINT drops a CMD the stage did not set itself.
                    if !st.cmd_set {
                        c.cmd = None;
                    }
                }

                format!("{kw} {shown}")
            }
            "EXPOSE" => {
                let ports = self.text_args(ins, st)?;
                for p in &ports {
                    let (range, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    let (lo, hi): (u16, u16) = match (lo.parse(), hi.parse()) {
                        (Ok(l), Ok(h)) if l <= h => (l, h),
                        _ => return Err(invalid(format!("Invalid containerPort: {p}"))),
                    };
                    for port in lo..=hi {
                        c.exposed_ports.insert(format!("{port}/{}", proto.to_ascii_lowercase()), serde_json::json!({}));
                    }
                }
                let mut keys: Vec<&String> = c.exposed_ports.keys().collect();
                keys.sort();
                format!("EXPOSE {}", keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" "))
            }
            "VOLUME" => {
                let paths = self.text_args(ins, st)?;
                for p in &paths {
                    if p.trim().is_empty() {
                        return Err(invalid("VOLUME specified can not be an empty string"));
                    }
                    c.volumes.insert(p.clone(), serde_json::json!({}));
                }
                format!("VOLUME {}", serde_json::to_string(&paths).expect("strings"))
            }
            "USER" => {
                let user = words::word(&ins_text(ins), &vars, self.escape).map_err(invalid)?;
                c.user = user.clone();
                format!("USER {user}")
            }
            "STOPSIGNAL" => {
                let sig = words::word(&ins_text(ins), &vars, self.escape).map_err(invalid)?;
                crate::container::parse_signal(&sig).ok_or_else(|| invalid(format!("Invalid signal: {sig}")))?;
                c.stop_signal = Some(sig.clone());
                format!("STOPSIGNAL {sig}")
            }
            "SHELL" => {
                let Args::Json(v) = &ins.args else {
                    return Err(invalid("SHELL requires the arguments to be in JSON form"));
                };
                c.extra.insert("Shell".into(), serde_json::json!(v));
                format!("SHELL {}", serde_json::to_string(v).expect("strings"))
            }
            "HEALTHCHECK" => {
                let check = healthcheck(ins, c)?;
                let shown = serde_json::to_string(&check).expect("json");
                c.extra.insert("Healthcheck".into(), check);
                format!("HEALTHCHECK {shown}")
            }
            "ONBUILD" => {
                let trigger = ins_text(ins);
                let inner = dockerfile::instruction(&trigger, ins.line).map_err(|e| invalid(e.to_string()))?;
                if matches!(inner.keyword.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                    return Err(invalid(format!("{} isn't allowed as an ONBUILD trigger", inner.keyword)));
                }
                let mut list: Vec<String> =
                    c.extra.get("OnBuild").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
                list.push(trigger.clone());
                c.extra.insert("OnBuild".into(), serde_json::json!(list));
                format!("ONBUILD {trigger}")
            }
            other => return Err(invalid(format!("unknown instruction: {other}"))),
        };
        st.config = config;
        st.cmd_set |= kw == "CMD";
        self.meta_image(st, &format!("/bin/sh -c #(nop)  {desc}")).await?;
        Ok(())
    }

    /// The cached image of step `created_by` on `st`'s image, unless caching is off.
    fn cached(&self, st: &Stage, step: &str) -> Option<ImageRecord> {
        if self.opts.no_cache {
            return None;
        }
        let key = cache::key(st.id(), step);
        let mut cache = self.engine.inner.build_cache.lock().expect("cache lock");
        let entry = cache.get(&key)?.clone();
        let rec = self.engine.inner.stores.images.lock().expect("image store lock").get(&entry.image).cloned()?;
        cache.used(&key);
        Some(rec)
    }

    fn remember(&self, parent: &str, step: &str, image: &ImageRecord, description: &str) {
        let key = cache::key(parent, step);
        self.engine.inner.build_cache.lock().expect("cache lock").put(key, &image.id, description);
    }

    /// Moves `st` onto `image` and says so.
    fn advance(&self, st: &mut Stage, image: ImageRecord, hit: bool) -> Result<(), EngineError> {
        if hit {
            self.say(" ---> Using cache\n");
        }
        self.say(format!(" ---> {}\n", short(&image.id)));
        st.config = self.engine.image_config(&image.id)?;
        st.image = Some(image);
        Ok(())
    }

    /// A config-only step: an image with `st`'s config and the same layers. `created_by`
    /// empty: the bare image of a stage that has no step of its own (`FROM scratch` alone).
    async fn meta_image(&self, st: &mut Stage, created_by: &str) -> Result<String, EngineError> {
        if let Some(hit) = self.cached(st, created_by) {
            let id = hit.id.clone();
            self.advance(st, hit, true)?;
            return Ok(id);
        }
        let mut config = st.config.clone();
        config.created = Some(now_rfc3339());
        if !created_by.is_empty() {
            config.history.push(History {
                created: config.created.clone(),
                created_by: Some(created_by.to_owned()),
                empty_layer: true,
                ..Default::default()
            });
        }
        let parent = st.id().to_owned();
        let layers = st.image.as_ref().map(|i| i.layers.clone()).unwrap_or_default();
        let bytes = serde_json::to_vec(&config).expect("config serialises");
        let rec = archive::record_image(&self.engine.inner.stores, &bytes, layers, &[], &parent, "")?;
        self.remember(&parent, created_by, &rec, created_by);
        let id = rec.id.clone();
        self.advance(st, rec, false)?;
        Ok(id)
    }

    /// `st`'s image, made first (config only) when the stage has none yet (`FROM scratch`).
    async fn base(&self, st: &mut Stage) -> Result<ImageRecord, EngineError> {
        if st.image.is_none() {
            // Recorded without a step of its own: a container needs an image to start from.
            let bytes = serde_json::to_vec(&st.config).expect("config serialises");
            st.image = Some(archive::record_image(&self.engine.inner.stores, &bytes, vec![], &[], "", "")?);
        }
        Ok(st.image.clone().expect("set"))
    }

    /// A created container on `image` with `config`'s settings and command `cmd`.
    async fn container(
        &self,
        image: &ImageRecord,
        config: &ContainerConfig,
        cmd: Vec<String>,
        env: Vec<String>,
    ) -> Result<String, EngineError> {
        let req = CreateRequest {
            name: None,
            config: ContainerConfig {
                image: image.id.clone(),
                cmd: Some(cmd),
                entrypoint: Some(vec![String::new()]),
                env,
                user: config.user.clone(),
                working_dir: config.working_dir.clone(),
                ..Default::default()
            },
            host_config: HostConfig { network_mode: self.opts.network_mode.clone(), ..Default::default() },
            endpoints: BTreeMap::new(),
        };
        Ok(self.engine.create(req).await?.0)
    }

    async fn run_step(&mut self, st: &mut Stage, ins: &Instruction) -> Result<(), EngineError> {
        if !ins.flags.is_empty() {
            return Err(invalid(format!(
                "the --{} option requires BuildKit. Refer to https://docs.docker.com/go/buildkit/ to learn how to build images with BuildKit enabled",
                ins.flags[0].0
            )));
        }
        let argv = match &ins.args {
            Args::Json(v) => v.clone(),
            Args::Text(t) => {
                let mut sh = shell_of(&st.config.config);
                sh.push(t.clone());
                sh
            }
        };
        // Build args with values reach the command's environment (ENV wins), and the cache
        // key, as dockerd's `|N K=V ...` prefix; proxies reach the environment only.
        let env_keys: BTreeSet<&str> = st.config.config.env.iter().filter_map(|e| e.split('=').next()).collect();
        let mut keyed: Vec<String> = Vec::new();
        let mut env: Vec<String> = Vec::new();
        for (k, v) in &st.args {
            if let Some(v) = v
                && !env_keys.contains(k.as_str())
            {
                keyed.push(format!("{k}={v}"));
                env.push(format!("{k}={v}"));
            }
        }
        for p in PROXY_ARGS {
            if let Some(Some(v)) = self.opts.build_args.get(*p) {
                env.push(format!("{p}={v}"));
                self.used_args.insert((*p).to_owned());
            }
        }
        let command = argv.join(" ");
        let created_by =
            if keyed.is_empty() { command.clone() } else { format!("|{} {} {command}", keyed.len(), keyed.join(" ")) };
        if let Some(hit) = self.cached(st, &created_by) {
            return self.advance(st, hit, true);
        }
        // The parent the cache was asked about (empty for `FROM scratch`), not the bare image
        // `base` may record for it.
        let parent = st.id().to_owned();
        let base = self.base(st).await?;
        let id = self.container(&base, &st.config.config, argv, env).await?;
        self.say(format!(" ---> Running in {}\n", &id[..12]));
        let exited = self.engine.wait(&id, WaitCondition::NextExit)?;
        if let Err(e) = self.engine.start(&id).await {
            let _ = self.engine.remove(&id, true, true).await;
            return Err(e);
        }
        let mut logs = self.engine.logs(
            &id,
            crate::container::logs::LogQuery { stdout: true, stderr: true, ..Default::default() },
            true,
        )?;
        let out = self.out.clone();
        let quiet = self.opts.quiet;
        let forward = tokio::spawn(async move {
            while let Some(line) = logs.rx.recv().await {
                if !quiet {
                    let _ = out.send(BuildEvent::Stream(line.log));
                }
            }
        });
        let code = exited.await;
        let _ = forward.await;
        if code != 0 {
            if self.opts.force_remove {
                let _ = self.engine.remove(&id, true, true).await;
            }
            return Err(EngineError::CommandFailed {
                message: format!("The command '{command}' returned a non-zero code: {code}"),
                code,
            });
        }
        let image = self.commit_container(st, &id, &base, &created_by).await;
        if self.opts.remove || self.opts.force_remove {
            let _ = self.engine.remove(&id, true, true).await;
            self.say(format!("Removing intermediate container {}\n", &id[..12]));
        }
        let image = image?;
        self.remember(&parent, &created_by, &image, &created_by);
        self.advance(st, image, false)
    }

    /// The step container's changes as the step's image, with `st`'s config.
    async fn commit_container(
        &self,
        st: &Stage,
        id: &str,
        base: &ImageRecord,
        created_by: &str,
    ) -> Result<ImageRecord, EngineError> {
        let rec = self.engine.container(id)?;
        let mut config = st.config.clone();
        config.created = Some(now_rfc3339());
        let history =
            History { created: config.created.clone(), created_by: Some(created_by.to_owned()), ..Default::default() };
        self.engine.commit_layer(&rec, base, config, history, &[], "").await
    }

    /// After the work on a step's created, never started, container (`work`): its changes
    /// committed as the step's image (unless the work failed), the container removed, the
    /// cache told (under `parent`, as it was asked), and the stage moved on.
    #[allow(clippy::too_many_arguments)]
    async fn commit_step(
        &self,
        st: &mut Stage,
        id: &str,
        parent: &str,
        base: &ImageRecord,
        created_by: &str,
        key_step: &str,
        work: Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let committed = match work {
            Ok(()) => self.commit_container(st, id, base, created_by).await,
            Err(e) => Err(e),
        };
        let _ = self.engine.remove(id, true, true).await;
        let image = committed?;
        self.remember(parent, key_step, &image, created_by);
        self.advance(st, image, false)
    }

    async fn workdir_step(&mut self, st: &mut Stage, ins: &Instruction) -> Result<(), EngineError> {
        let dir = words::word(&ins_text(ins), &Self::lookup(st), self.escape).map_err(invalid)?;
        let current = st.config.config.working_dir.clone();
        let absolute = if dir.starts_with('/') {
            PathBuf::from(&dir)
        } else {
            Path::new(if current.is_empty() { "/" } else { &current }).join(&dir)
        };
        let clean = format!("/{}", context::clean(&absolute.to_string_lossy()).unwrap_or_default().display());
        st.config.config.working_dir = clean.clone();
        let created_by = format!("/bin/sh -c #(nop) WORKDIR {clean}");
        let key_step = created_by.clone();
        if let Some(hit) = self.cached(st, &key_step) {
            return self.advance(st, hit, true);
        }
        // The directory is made in a layer when the image lacks it, as dockerd does; when it
        // is there already, the step changes the config only.
        let parent = st.id().to_owned();
        let base = self.base(st).await?;
        let id = self.container(&base, &st.config.config, vec!["WORKDIR".into()], vec![]).await?;
        let made = async {
            let view = self.engine.root_view(&id)?;
            let path = clean.clone();
            joined(
                tokio::task::spawn_blocking(move || -> Result<bool, EngineError> {
                    let root = view.confined().map_err(io_ctx("opening the container's root"))?;
                    if root.lookup_follow(Path::new(&path)).is_ok_and(|i| i.meta.is_dir()) {
                        return Ok(false);
                    }
                    root.dir(Path::new(&path), true).map_err(io_ctx("making the WORKDIR"))?;
                    Ok(true)
                })
                .await,
            )
        }
        .await;
        match made {
            Ok(false) => {
                let _ = self.engine.remove(&id, true, true).await;
                self.meta_image(st, &created_by).await.map(|_| ())
            }
            Ok(true) => self.commit_step(st, &id, &parent, &base, &created_by, &key_step, Ok(())).await,
            Err(e) => self.commit_step(st, &id, &parent, &base, &created_by, &key_step, Err(e)).await,
        }
    }

    async fn copy_step(&mut self, st: &mut Stage, ins: &Instruction) -> Result<(), EngineError> {
        let kw = ins.keyword.as_str();
        for (flag, _) in &ins.flags {
            if !matches!(flag.as_str(), "chown" | "chmod" | "from") || (kw == "ADD" && flag == "from") {
                return Err(invalid(format!("Unknown flag: {flag}")));
            }
        }
        let mut args = self.text_args(ins, st)?;
        if args.len() < 2 {
            return Err(invalid(format!(
                "{kw} requires at least two arguments, but only one was provided. Destination could not be determined."
            )));
        }
        let dest_text = args.pop().expect("two");
        let workdir = st.config.config.working_dir.clone();
        let dest_abs = if dest_text.starts_with('/') {
            dest_text.clone()
        } else {
            format!("{}/{}", if workdir.is_empty() { "" } else { workdir.trim_end_matches('/') }, dest_text)
        };
        let dest = PathBuf::from("/").join(context::clean(&dest_abs).unwrap_or_default());
        let chmod = match ins.flag("chmod") {
            Some(m) => Some(u32::from_str_radix(m, 8).map_err(|_| invalid(format!("invalid chmod parameter: {m}")))?),
            None => None,
        };
        let chown = ins.flag("chown").map(str::to_owned);

        // Where the sources come from: the context, a URL downloaded here, or a stage's or
        // image's root (through a created container).
        let mut from_ctr: Option<String> = None;
        let scratch = ScratchDir::new(&self.engine.root().join("tmp"))?;
        let mut views: Vec<RootView> = Vec::new();
        let mut srcs: Vec<(usize, PathBuf, bool)> = Vec::new(); // (view, path, unpack as archive)
        if let Some(from) = ins.flag("from") {
            let image = match self.done.iter().enumerate().find(|(i, s)| {
                s.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(from)) || from.parse::<usize>() == Ok(*i)
            }) {
                Some((_, s)) => s.image.clone().ok_or_else(|| invalid(format!("stage {from} made no image")))?,
                None => self.image(from, false).await?,
            };
            let id = self.container(&image, &ContainerConfig::default(), vec!["COPY".into()], vec![]).await?;
            views.push(self.engine.root_view(&id)?);
            from_ctr = Some(id);
            for a in &args {
                let rel = context::clean(a).ok_or_else(|| invalid(format!("{kw} failed: forbidden path: {a}")))?;
                srcs.push((0, rel, false));
            }
        } else {
            views.push(RootView::dir(&self.ctx.dir));
            views.push(RootView::dir(scratch.path()));
            for a in &args {
                if kw == "ADD" && (a.starts_with("http://") || a.starts_with("https://")) {
                    let name = download(a, scratch.path()).await?;
                    srcs.push((1, PathBuf::from(name), false));
                    continue;
                }
                for rel in self.ctx.sources(a, kw).map_err(invalid)? {
                    let archive = kw == "ADD" && is_archive(&self.ctx.dir, &rel);
                    srcs.push((0, rel, archive));
                }
            }
        }
        let result = self.copy_into(st, ins, srcs, views, &dest, dest_text.ends_with('/'), chown, chmod).await;
        if let Some(id) = from_ctr {
            let _ = self.engine.remove(&id, true, true).await;
        }
        drop(scratch);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_into(
        &mut self,
        st: &mut Stage,
        ins: &Instruction,
        srcs: Vec<(usize, PathBuf, bool)>,
        views: Vec<RootView>,
        dest: &Path,
        dest_slash: bool,
        chown: Option<String>,
        chmod: Option<u32>,
    ) -> Result<(), EngineError> {
        let kw = ins.keyword.clone();
        let multi = srcs.len() > 1;
        if multi && !dest_slash {
            return Err(invalid(format!(
                "When using {kw} with more than one source file, the destination must be a directory and end with a /"
            )));
        }
        // The content hash, as the cache key takes it (names as the sources have them).
        let ctx = self.ctx.clone();
        let from_context = ins.flag("from").is_none();
        let views = Arc::new(views);
        let (hash, kinds) = {
            let (views, srcs) = (views.clone(), srcs.clone());
            let engine = self.engine.clone();
            joined(
                tokio::task::spawn_blocking(move || -> Result<(String, Vec<bool>), EngineError> {
                    let kinds: Vec<bool> = srcs
                        .iter()
                        .map(|(v, p, _)| views[*v].confined().and_then(|r| r.lookup(p)).is_ok_and(|i| i.meta.is_dir()))
                        .collect();
                    // Hashed as written, into nothing: only the hash is wanted here.
                    let sources = sources_of(&srcs, &kinds, &views, from_context.then_some(&ctx.ignore), |p| {
                        PathBuf::from(p.file_name().unwrap_or_default())
                    });
                    let mut scratch = engine.scratch_file()?;
                    let hash = context::copy_tar(
                        &sources,
                        Rewrite { owner: None, mode: chmod },
                        &mut scratch,
                        std::io::sink(),
                    )
                    .map_err(io_ctx("reading the sources"))?;
                    Ok((hash, kinds))
                })
                .await,
            )?
        };
        let kind = if multi {
            "multi"
        } else if kinds.first() == Some(&true) {
            "dir"
        } else {
            "file"
        };
        let created_by = format!("/bin/sh -c #(nop) {kw} {kind}:{hash} in {} ", dest.display());
        let key_step = format!(
            "{created_by}\nchown={} chmod={chmod:?} from={}",
            chown.as_deref().unwrap_or(""),
            ins.flag("from").unwrap_or("")
        );
        if let Some(hit) = self.cached(st, &key_step) {
            return self.advance(st, hit, true);
        }
        let parent = st.id().to_owned();
        let base = self.base(st).await?;
        let id = self.container(&base, &st.config.config, vec![kw.clone()], vec![]).await?;
        let result = async {
            let view = self.engine.root_view(&id)?;
            let (dest, srcs, views, ctx) = (dest.to_owned(), srcs.clone(), views.clone(), self.ctx.clone());
            let engine = self.engine.clone();
            let view = joined(
                tokio::task::spawn_blocking(move || -> Result<RootView, EngineError> {
                    let root = view.confined().map_err(io_ctx("opening the container's root"))?;
                    let existing_dir = root.lookup_follow(&dest).is_ok_and(|i| i.meta.is_dir());
                    let single_dir = srcs.len() == 1 && kinds[0];
                    let dest_is_dir = dest_slash || multi || existing_dir || single_dir || srcs.iter().any(|s| s.2);
                    let into =
                        if dest_is_dir { dest.clone() } else { dest.parent().unwrap_or(Path::new("/")).to_owned() };
                    let owner = match &chown {
                        Some(spec) => Some(owner_of(&view, spec)?),
                        None => None,
                    };
                    root.dir(&into, true).map_err(io_ctx(format!("making {}", into.display())))?;
                    if let Some((uid, gid)) = owner
                        && !existing_dir
                        && dest_is_dir
                    {
                        let _ = nix::unistd::chown(
                            &root.dir(&into, false).map_err(io_ctx("opening the destination"))?.fd_path(),
                            Some(nix::unistd::Uid::from_raw(uid as u32)),
                            Some(nix::unistd::Gid::from_raw(gid as u32)),
                        );
                    }
                    let into_text = into.to_string_lossy().into_owned();
                    // Archives ADD unpacks go straight in; the rest as one rewritten tar.
                    for (v, p, _) in srcs.iter().filter(|s| s.2) {
                        let file = views[*v]
                            .confined()
                            .and_then(|r| r.lookup(p))
                            .and_then(|i| i.open())
                            .map_err(io_ctx(format!("opening {}", p.display())))?;
                        let mut reader = crate::image::unpack::decompressor(Box::new(std::io::BufReader::new(file)))
                            .map_err(io_ctx(format!("reading {}", p.display())))?;
                        rootfs::untar_into(&view, &into_text, &mut reader)?;
                    }
                    let sources = sources_of(&srcs, &kinds, &views, from_context.then_some(&ctx.ignore), |p| {
                        let named = if dest_is_dir { p } else { dest.as_path() };
                        PathBuf::from(named.file_name().unwrap_or_default())
                    });
                    if !sources.is_empty() {
                        let mut scratch = engine.scratch_file()?;
                        let mut out = engine.scratch_file()?;
                        context::copy_tar(&sources, Rewrite { owner, mode: chmod }, &mut scratch, &mut out)
                            .map_err(io_ctx("reading the sources"))?;
                        out.rewind().map_err(io_ctx("rewinding"))?;
                        rootfs::untar_into(&view, &into_text, &mut out)?;
                    }
                    Ok(view)
                })
                .await,
            )?;
            drop(view);
            Ok(())
        }
        .await;
        self.commit_step(st, &id, &parent, &base, &created_by, &key_step, result).await
    }
}

/// The sources to copy that are not archives to unpack: (view index, path, archive) with
/// whether each is a directory (`kinds`); a directory's contents go in as they are, anything
/// else is named by `name(path)`. `ignore` is the context's ignore file, for sources from the
/// context (view 0), none with `--from`.
fn sources_of<'a>(
    srcs: &[(usize, PathBuf, bool)],
    kinds: &[bool],
    views: &'a [RootView],
    ignore: Option<&'a context::Ignore>,
    name: impl Fn(&Path) -> PathBuf,
) -> Vec<Source<'a>> {
    srcs.iter()
        .zip(kinds)
        .filter(|((_, _, archive), _)| !archive)
        .map(|((v, p, _), dir)| Source {
            view: &views[*v],
            path: p.clone(),
            name: if *dir { PathBuf::new() } else { name(p) },
            ignore: ignore.filter(|_| *v == 0),
        })
        .collect()
}

/// A directory for downloads, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(parent: &Path) -> Result<ScratchDir, EngineError> {
        let dir = parent.join(format!("add-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).map_err(io_ctx("creating a scratch dir"))?;
        Ok(ScratchDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn joined_io(e: Result<std::io::Result<()>, tokio::task::JoinError>, what: &str) -> Result<(), EngineError> {
    e.map_err(|e| invalid(format!("{what}: {e}")))?.map_err(io_ctx(what))
}

fn stage_name(from: &Instruction) -> Option<String> {
    let Args::Text(t) = &from.args else { return None };
    let w: Vec<&str> = t.split_whitespace().collect();
    match w.as_slice() {
        [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
        _ => None,
    }
}

fn ins_text(ins: &Instruction) -> String {
    match &ins.args {
        Args::Text(t) => t.clone(),
        Args::Json(v) => serde_json::to_string(v).expect("strings"),
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The shell of shell-form commands: `SHELL`'s, or `/bin/sh -c`.
fn shell_of(c: &ContainerConfig) -> Vec<String> {
    c.extra
        .get("Shell")
        .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
}

/// `HEALTHCHECK [--interval=..] CMD ...` or `HEALTHCHECK NONE` as the config's `Healthcheck`.
fn healthcheck(ins: &Instruction, c: &ContainerConfig) -> Result<serde_json::Value, EngineError> {
    let text = ins_text(ins);
    let (word, rest) =
        text.trim().split_once(char::is_whitespace).map(|(w, r)| (w, r.trim())).unwrap_or((text.trim(), ""));
    if word.eq_ignore_ascii_case("NONE") {
        if !ins.flags.is_empty() || !rest.is_empty() {
            return Err(invalid("HEALTHCHECK NONE takes no arguments"));
        }
        return Ok(serde_json::json!({"Test": ["NONE"]}));
    }
    if !word.eq_ignore_ascii_case("CMD") {
        return Err(invalid(format!("Unknown type \"{word}\" in HEALTHCHECK (try CMD)")));
    }
    if rest.is_empty() {
        return Err(invalid("Missing command after HEALTHCHECK CMD"));
    }
    let test: Vec<String> = match serde_json::from_str::<Vec<String>>(rest) {
        Ok(v) if rest.starts_with('[') => std::iter::once("CMD".to_owned()).chain(v).collect(),
        _ => {
            let _ = c;
            vec!["CMD-SHELL".into(), rest.to_owned()]
        }
    };
    let mut check = serde_json::json!({"Test": test});
    for (flag, value) in &ins.flags {
        let value = value.as_deref().unwrap_or("");
        let key = match flag.as_str() {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => {
                let n: i64 = value.parse().map_err(|_| invalid(format!("invalid --retries: {value}")))?;
                if n < 1 {
                    return Err(invalid(format!("--retries cannot be less than 1 (got {n})")));
                }
                check["Retries"] = serde_json::json!(n);
                continue;
            }
            other => return Err(invalid(format!("Unknown flag: {other}"))),
        };
        let ns =
            crate::model::go_duration(value).ok_or_else(|| invalid(format!("time: invalid duration \"{value}\"")))?;
        check[key] = serde_json::json!(ns);
    }
    Ok(check)
}

/// `--chown=user[:group]`, names looked up in the image's `/etc/passwd` and `/etc/group`.
fn owner_of(view: &RootView, spec: &str) -> Result<(u64, u64), EngineError> {
    let (user, group) = spec.split_once(':').map(|(u, g)| (u, Some(g))).unwrap_or((spec, None));
    let lookup = |file: &str, name: &str| -> Result<u64, EngineError> {
        if let Ok(n) = name.parse::<u64>() {
            return Ok(n);
        }
        let text = view
            .confined()
            .and_then(|r| r.lookup_follow(Path::new(file)))
            .and_then(|i| i.open())
            .and_then(|mut f| {
                let mut s = String::new();
                f.read_to_string(&mut s)?;
                Ok(s)
            })
            .map_err(|_| invalid(format!("unable to convert uid/gid chown string to host mapping: can't find uid for user {name}: no such user: {name}")))?;
        text.lines()
            .find_map(|l| {
                let mut f = l.split(':');
                (f.next() == Some(name)).then(|| f.nth(1).and_then(|id| id.parse().ok())).flatten()
            })
            .ok_or_else(|| invalid(format!("unable to convert uid/gid chown string to host mapping: can't find uid for user {name}: no such user: {name}")))
    };
    let uid = lookup("/etc/passwd", user)?;
    let gid = match group {
        Some(g) => lookup("/etc/group", g)?,
        None => uid,
    };
    Ok((uid, gid))
}

/// Whether a context file is a tar (plain, gzip, bzip2, xz or zstd), which ADD unpacks.
fn is_archive(dir: &Path, rel: &Path) -> bool {
    let Ok(file) = RootView::dir(dir)
        .confined()
        .and_then(|r| r.lookup(rel))
        .and_then(|i| if i.meta.is_file() { i.open() } else { Err(std::io::Error::other("not a file")) })
    else {
        return false;
    };
    let Ok(mut reader) = crate::image::unpack::decompressor(Box::new(std::io::BufReader::new(file))) else {
        return false;
    };
    let mut head = [0u8; 512];
    if reader.read_exact(&mut head).is_err() {
        return false;
    }
    &head[257..262] == b"ustar"
}

/// Downloads `url` into `dir`, named by its last path segment; returns the name.
async fn download(url: &str, dir: &Path) -> Result<String, EngineError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(format!("invalid URL {url}: {e}")))?;
    let name = parsed
        .path_segments()
        .and_then(|mut s| s.next_back().map(str::to_owned))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "__unnamed__".into());
    let resp = reqwest::get(parsed.clone())
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| invalid(format!("failed to GET {url}: {e}")))?;
    let bytes = resp.bytes().await.map_err(|e| invalid(format!("failed to GET {url}: {e}")))?;
    let path = dir.join(&name);
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&path, &bytes)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
    })
    .await;
    joined_io(written, "saving the download")?;
    Ok(name)
}
