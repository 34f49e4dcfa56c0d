//! `.dockerignore` as dockerd applies it: patterns are Go `filepath.Match` globs with `**`,
//! matched against slash-separated paths relative to the build context; a path is excluded by
//! the last pattern that matches it or one of its parent directories, and `!` patterns take
//! paths back. The engine's builder filters every context it is sent by it, and the `berth`
//! CLI filters the context it sends, as the docker CLI does, so a large ignored directory
//! never leaves the user's machine.

use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

/// The patterns of a `.dockerignore`.
#[derive(Debug, Default)]
pub struct Ignore {
    rules: Vec<(GlobMatcher, bool)>,
}

impl Ignore {
    pub fn parse(text: &str) -> Result<Ignore, String> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exclude, pattern) = match line.strip_prefix('!') {
                Some(p) => (false, p.trim()),
                None => (true, line),
            };
            let cleaned = clean(pattern).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            if cleaned.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(&cleaned)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("syntax error in .dockerignore pattern {pattern:?}: {e}"))?;
            rules.push((glob.compile_matcher(), exclude));
        }
        Ok(Ignore { rules })
    }

    /// Whether `rel` (relative to the context, `/`-separated) is left out.
    pub fn excluded(&self, rel: &str) -> bool {
        let rel = rel.trim_start_matches("./").trim_matches('/');
        if rel.is_empty() {
            return false;
        }
        let mut out = false;
        for (glob, exclude) in &self.rules {
            let mut path = Path::new(rel);
            let hit = loop {
                if glob.is_match(path) {
                    break true;
                }
                match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => path = p,
                    _ => break false,
                }
            };
            if hit {
                out = *exclude;
            }
        }
        out
    }
}

/// `path` made relative and lexically clean (`a/./b/../c` is `a/c`); `None` if it climbs out.
pub fn clean(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_matches_as_dockerd_does() {
        let ig = Ignore::parse("# comment\n*.log\n!keep.log\nbuild/\n**/*.tmp\n/docs/*.md\n!docs/README.md\n").unwrap();
        for (path, out) in [
            ("a.log", true),
            ("keep.log", false),
            ("sub/a.log", false),
            ("build", true),
            ("build/x/y", true),
            ("x.tmp", true),
            ("deep/er/x.tmp", true),
            ("docs/a.md", true),
            ("docs/README.md", false),
            ("docs/sub/a.md", false),
            ("src/main.rs", false),
        ] {
            assert_eq!(ig.excluded(path), out, "{path}");
        }
    }

    #[test]
    fn paths_are_cleaned_and_escapes_refused() {
        assert_eq!(clean("./a/../b/c/"), Some(PathBuf::from("b/c")));
        assert_eq!(clean("/x"), Some(PathBuf::from("x")));
        assert_eq!(clean("."), Some(PathBuf::new()));
        assert_eq!(clean("a/../../etc"), None);
    }
}
