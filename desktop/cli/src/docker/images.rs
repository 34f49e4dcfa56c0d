//! Image verbs: `images`, `pull`, `push`, `rmi`, `tag`, with pull and push progress drawn
//! per layer on a terminal (each layer's line redrawn in place, as docker draws them) and as
//! plain lines, one per change of a layer's state, when the output is not a terminal.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};

use bollard::Docker;
use bollard::query_parameters as q;
use futures_util::StreamExt;

use super::format::{self, Shape};

pub async fn list(d: &Docker, shape: Shape) -> anyhow::Result<i32> {
    let images = d.list_images(Some(q::ListImagesOptionsBuilder::new().build())).await?;
    // One row per tag (an untagged image is one `<none>` row), newest first.
    let mut rows: Vec<(String, String, &bollard::models::ImageSummary)> = Vec::new();
    for i in &images {
        if i.repo_tags.is_empty() {
            rows.push(("<none>".into(), "<none>".into(), i));
        }
        for t in &i.repo_tags {
            let (repo, tag) = match t.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r.to_owned(), t.to_owned()),
                _ => (t.clone(), "<none>".into()),
            };
            rows.push((repo, tag, i));
        }
    }
    rows.sort_by(|a, b| b.2.created.cmp(&a.2.created).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    match &shape {
        Shape::Quiet => {
            let mut seen = std::collections::HashSet::new();
            for (_, _, i) in &rows {
                if seen.insert(&i.id) {
                    println!("{}", format::short_id(&i.id));
                }
            }
        }
        Shape::Json | Shape::Template(_) => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|(repo, tag, i)| {
                    serde_json::json!({
                        "Repository": repo, "Tag": tag, "ID": format::short_id(&i.id),
                        "CreatedSince": format::ago(i.created), "CreatedAt": format::created_at(i.created),
                        "Size": format::size(i.size),
                        // What the docker CLI shows without `docker system df`'s counting.
                        "Containers": if i.containers < 0 { "N/A".to_owned() } else { i.containers.to_string() },
                        "SharedSize": "N/A", "UniqueSize": "N/A",
                        "Digest": i.repo_digests.first().and_then(|d| d.split_once('@')).map(|(_, d)| d).unwrap_or("<none>"),
                    })
                })
                .collect();
            shape.print_objects(&items, &[("ID", "IMAGE ID"), ("CreatedSince", "CREATED")])?;
        }
        Shape::Table => {
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|(repo, tag, i)| {
                    vec![
                        repo.clone(),
                        tag.clone(),
                        format::short_id(&i.id),
                        format::ago(i.created),
                        format::size(i.size),
                    ]
                })
                .collect();
            format::table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &table);
        }
    }
    Ok(0)
}

/// Draws a pull's or a push's progress: on a terminal, one line per layer redrawn in place;
/// elsewhere a line each time a layer's state changes (no byte counts).
pub struct Progress<'a> {
    out: &'a mut dyn Write,
    terminal: bool,
    /// Layers in the order they first appeared, and each one's last state.
    order: Vec<String>,
    last: HashMap<String, String>,
}

impl<'a> Progress<'a> {
    pub fn new(out: &'a mut dyn Write, terminal: bool) -> Self {
        Progress { out, terminal, order: Vec::new(), last: HashMap::new() }
    }

    /// One message of the stream: a layer's `status` (and bar), or a line of its own.
    pub fn show(&mut self, id: Option<&str>, status: &str, bar: Option<&str>) {
        let Some(id) = id.filter(|i| !i.is_empty()) else {
            let _ = writeln!(self.out, "{status}");
            return;
        };
        let text = match bar.filter(|_| self.terminal) {
            Some(b) => format!("{id}: {status} {b}"),
            None => format!("{id}: {status}"),
        };
        let known = self.last.contains_key(id);
        if !self.terminal {
            if self.last.get(id).map(String::as_str) != Some(status) {
                let _ = writeln!(self.out, "{text}");
                self.last.insert(id.to_owned(), status.to_owned());
            }
            return;
        }
        if !known {
            self.order.push(id.to_owned());
            let _ = writeln!(self.out, "{text}");
        } else {
            // Up to the layer's line, redraw it, and back down.
            let up = self.order.len() - self.order.iter().position(|o| o == id).unwrap_or(0);
            let _ = write!(self.out, "\x1b[{up}A\r\x1b[2K{text}\x1b[{up}B\r");
        }
        self.last.insert(id.to_owned(), status.to_owned());
        let _ = self.out.flush();
    }
}

pub async fn pull(d: &Docker, image: &str, quiet: bool) -> anyhow::Result<()> {
    if quiet {
        pull_to(d, image, &mut std::io::sink()).await?;
        println!("{}", qualified(image));
        Ok(())
    } else {
        let terminal = std::io::stdout().is_terminal();
        let mut out = std::io::stdout();
        pull_to_shown(d, image, &mut Progress::new(&mut out, terminal)).await
    }
}

/// Pulls `image`, its progress to `out` (plain lines unless `out` is this terminal).
pub async fn pull_to(d: &Docker, image: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let terminal = std::io::stderr().is_terminal();
    pull_to_shown(d, image, &mut Progress::new(out, terminal)).await
}

async fn pull_to_shown(d: &Docker, image: &str, progress: &mut Progress<'_>) -> anyhow::Result<()> {
    let (name, tag) = split_tag(image);
    let opts = q::CreateImageOptionsBuilder::new().from_image(name).tag(tag.unwrap_or("latest")).build();
    let mut stream = d.create_image(Some(opts), None, None);
    while let Some(msg) = stream.next().await {
        let m = msg?;
        if let Some(e) = m.error_detail.and_then(|e| e.message).or(m.error) {
            anyhow::bail!("{e}");
        }
        progress.show(m.id.as_deref(), m.status.as_deref().unwrap_or(""), m.progress.as_deref());
    }
    Ok(())
}

/// `name[:tag]` apart, a registry's port not taken for a tag; a digest stays in the name.
pub(super) fn split_tag(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    match image.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (image, None),
    }
}

/// The fully qualified name `docker pull -q` prints (`docker.io/library/busybox:latest`).
fn qualified(image: &str) -> String {
    let (name, tag) = split_tag(image);
    let first = name.split('/').next().unwrap_or("");
    let with_registry = if name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost") {
        name.to_owned()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    if name.contains('@') { with_registry } else { format!("{with_registry}:{}", tag.unwrap_or("latest")) }
}

pub async fn push(d: &Docker, image: &str, all_tags: bool, quiet: bool) -> anyhow::Result<i32> {
    let (name, tag) = split_tag(image);
    let tag = if all_tags { "" } else { tag.unwrap_or("latest") };
    if all_tags && split_tag(image).1.is_some() {
        anyhow::bail!("tag can't be used with --all-tags/-a");
    }
    let opts = q::PushImageOptionsBuilder::new().tag(tag).build();
    let mut stream = d.push_image(name, Some(opts), None);
    let terminal = std::io::stdout().is_terminal();
    let mut out: Box<dyn Write> = if quiet { Box::new(std::io::sink()) } else { Box::new(std::io::stdout()) };
    let mut progress = Progress::new(&mut out, terminal);
    while let Some(msg) = stream.next().await {
        let m = msg?;
        if let Some(e) = m.error_detail.and_then(|e| e.message).or(m.error) {
            anyhow::bail!("{e}");
        }
        if let Some(status) = m.status.as_deref() {
            progress.show(None, status, m.progress.as_deref());
        }
    }
    if quiet {
        println!("{image}");
    }
    Ok(0)
}

pub async fn remove(d: &Docker, images: &[String], force: bool) -> anyhow::Result<i32> {
    let mut failed = false;
    for image in images {
        let opts = q::RemoveImageOptionsBuilder::new().force(force).build();
        match d.remove_image(image, Some(opts), None).await {
            Ok(items) => {
                for i in items {
                    if let Some(t) = i.untagged {
                        println!("Untagged: {t}");
                    }
                    if let Some(id) = i.deleted {
                        println!("Deleted: {id}");
                    }
                }
            }
            Err(e) => {
                failed = true;
                eprintln!("{}", super::explain(e.into()));
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

pub async fn tag(d: &Docker, source: &str, target: &str) -> anyhow::Result<i32> {
    let (repo, tag) = split_tag(target);
    let opts = q::TagImageOptionsBuilder::new().repo(repo).tag(tag.unwrap_or("latest")).build();
    d.tag_image(source, Some(opts)).await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_and_qualify_as_dockers() {
        assert_eq!(split_tag("busybox"), ("busybox", None));
        assert_eq!(split_tag("127.0.0.1:5000/app:1"), ("127.0.0.1:5000/app", Some("1")));
        assert_eq!(split_tag("127.0.0.1:5000/app"), ("127.0.0.1:5000/app", None));
        assert_eq!(qualified("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(qualified("user/app:2"), "docker.io/user/app:2");
        assert_eq!(qualified("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
    }

    #[test]
    fn progress_off_a_terminal_is_a_line_per_change() {
        let mut buf = Vec::new();
        {
            let mut p = Progress::new(&mut buf, false);
            p.show(Some("latest"), "Pulling from library/busybox", None);
            p.show(Some("abc"), "Pulling fs layer", None);
            p.show(Some("abc"), "Downloading", Some("[=>   ] 1kB/2kB"));
            p.show(Some("abc"), "Downloading", Some("[==>  ] 2kB/2kB"));
            p.show(Some("abc"), "Pull complete", None);
            p.show(None, "Status: Downloaded newer image for busybox:latest", None);
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "latest: Pulling from library/busybox\nabc: Pulling fs layer\nabc: Downloading\nabc: Pull complete\nStatus: Downloaded newer image for busybox:latest\n"
        );
    }
}
