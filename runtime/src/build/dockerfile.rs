//! Dockerfile syntax as the classic builder reads it: parser directives (`# escape=`), line
//! continuations, comments, instructions with their `--flags`, and the JSON (exec) or shell
//! form of their arguments.
//!
//! Written here rather than taken from a crate: the one Rust parser (`dockerfile-parser` 0.9)
//! has had no release since 2021, leaves most instructions as raw text, and knows neither the
//! escape directive nor the variable expansion the builder needs (see [`super::words`]).

use std::fmt;

/// Instructions the builder knows.
const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Instructions whose arguments may be a JSON array (the exec form).
const JSON_FORM: &[&str] = &["ADD", "CMD", "COPY", "ENTRYPOINT", "RUN", "SHELL", "VOLUME"];

/// Instructions that take `--name=value` flags before their arguments.
const FLAGGED: &[&str] = &["ADD", "COPY", "FROM", "HEALTHCHECK", "RUN"];

/// An instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// `["a", "b"]`: exactly these strings.
    Json(Vec<String>),
    /// Anything else: the text after the keyword (and flags), trimmed.
    Text(String),
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Upper case: `RUN`.
    pub keyword: String,
    /// `--chown=1:1` is `("chown", Some("1:1"))`; a bare `--flag` has no value.
    pub flags: Vec<(String, Option<String>)>,
    pub args: Args,
    /// The instruction as written (continuations joined), for `Step N/M : ...`.
    pub original: String,
    /// Its first line, counting from 1.
    pub line: usize,
}

impl Instruction {
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_deref().unwrap_or("true"))
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// The escape character (`\` unless `# escape=` says otherwise).
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

/// What is wrong with a Dockerfile, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dockerfile parse error line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses a whole Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut first = 0;
    // Parser directives: `# key=value` lines at the very top, before anything else.
    for line in &lines {
        let Some(rest) = line.trim().strip_prefix('#') else { break };
        let Some((key, value)) = rest.split_once('=') else { break };
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
        if key.is_empty() || key.contains(char::is_whitespace) {
            break;
        }
        match key.as_str() {
            "escape" => {
                escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(ParseError {
                            line: first + 1,
                            message: format!("invalid escape token '{other}' does not match ` or \\"),
                        });
                    }
                };
            }
            // `# syntax=` names a BuildKit frontend; the classic builder reads past it.
            "syntax" | "check" => {}
            _ => break,
        }
        first += 1;
    }
    let mut instructions = Vec::new();
    let mut logical = String::new();
    let mut start = 0;
    for (i, raw) in lines.iter().enumerate().skip(first) {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            // Blank lines and comments vanish, even inside a continued instruction.
            continue;
        }
        if logical.is_empty() {
            start = i + 1;
        }
        let body = raw.trim_end();
        match body.strip_suffix(escape) {
            Some(head) => logical.push_str(head),
            None => {
                logical.push_str(body);
                instructions.push(instruction(&logical, start)?);
                logical.clear();
            }
        }
    }
    if !logical.trim().is_empty() {
        instructions.push(instruction(&logical, start)?);
    }
    Ok(Dockerfile { escape, instructions })
}

/// Parses one logical line (an instruction; also an `ONBUILD` trigger).
pub fn instruction(text: &str, line: usize) -> Result<Instruction, ParseError> {
    let text = text.trim();
    let (word, mut rest) = text.split_once(char::is_whitespace).map(|(w, r)| (w, r.trim_start())).unwrap_or((text, ""));
    let keyword = word.to_ascii_uppercase();
    if !KEYWORDS.contains(&keyword.as_str()) {
        return Err(ParseError { line, message: format!("unknown instruction: {keyword}") });
    }
    let mut flags = Vec::new();
    if FLAGGED.contains(&keyword.as_str()) {
        while let Some(flag) = rest.strip_prefix("--") {
            let (word, after) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
            if word.is_empty() {
                break;
            }
            let (name, value) = match word.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (word.to_owned(), None),
            };
            flags.push((name, value));
            rest = after.trim_start();
        }
    }
    let rest = rest.trim();
    let args = if JSON_FORM.contains(&keyword.as_str()) && rest.starts_with('[') {
        match serde_json::from_str::<Vec<String>>(rest) {
            Ok(v) => Args::Json(v),
            Err(_) => Args::Text(rest.to_owned()),
        }
    } else {
        Args::Text(rest.to_owned())
    };
    if rest.is_empty() && keyword != "HEALTHCHECK" {
        return Err(ParseError { line, message: format!("{keyword} requires at least one argument") });
    }
    Ok(Instruction { keyword, flags, args, original: text.to_owned(), line })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_comments_flags_and_forms() {
        let df = parse(
            "# syntax=docker/dockerfile:1\nFROM busybox AS base\n\n# a comment\nRUN echo a \\\n  # inside\n  && echo b\n\
             COPY --chown=1:2 --from=base a b /d/\nCMD [\"sh\", \"-c\", \"x\"]\nCMD [not json\nexpose 80",
        )
        .unwrap();
        let i = &df.instructions;
        assert_eq!(i.len(), 6);
        assert_eq!((i[0].keyword.as_str(), i[0].line), ("FROM", 2));
        assert_eq!(i[1].args, Args::Text("echo a   && echo b".into()));
        assert_eq!(i[1].line, 5);
        assert_eq!(i[2].flag("chown"), Some("1:2"));
        assert_eq!(i[2].flag("from"), Some("base"));
        assert_eq!(i[2].args, Args::Text("a b /d/".into()));
        assert_eq!(i[3].args, Args::Json(vec!["sh".into(), "-c".into(), "x".into()]));
        assert_eq!(i[4].args, Args::Text("[not json".into()));
        assert_eq!(i[5].keyword, "EXPOSE");
    }

    #[test]
    fn the_escape_directive_and_errors_name_their_line() {
        let df = parse("# escape=`\nFROM scratch\nCOPY a `\n  c:\\dir\\\n").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(df.instructions[1].args, Args::Text("a   c:\\dir\\".into()));
        let e = parse("FROM busybox\nFOO bar\n").unwrap_err();
        assert_eq!(e.to_string(), "dockerfile parse error line 2: unknown instruction: FOO");
        assert_eq!(parse("FROM busybox\nRUN\n").unwrap_err().line, 2);
        // A directive after an instruction is a comment.
        assert_eq!(parse("FROM x\n# escape=`\nRUN a \\\n b").unwrap().instructions[1].args, Args::Text("a  b".into()));
    }
}
