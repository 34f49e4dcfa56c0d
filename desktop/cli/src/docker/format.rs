//! Output shaped like the docker CLI's: aligned tables (columns three spaces apart, as Go's
//! tabwriter pads them), sizes in decimal units with three significant digits, times as
//! "2 minutes ago", and one JSON object per line for `--format json`.

use std::io::Write;

/// How a list is printed: `--format json` (one object a line), `-q` (IDs), a table, or a Go
/// template (`--format '{{.Names}}'`, `table {{.ID}}\t{{.Image}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Table,
    Json,
    Quiet,
    Template(String),
}

impl Shape {
    /// From `-q` and `--format` (`-q` wins, as with the docker CLI). A template is parsed
    /// here, so a bad one is refused before anything is asked of the engine.
    pub fn of(quiet: bool, format: Option<&str>) -> anyhow::Result<Shape> {
        match (quiet, format) {
            (true, _) => Ok(Shape::Quiet),
            (false, None | Some("" | "table")) => Ok(Shape::Table),
            (false, Some("json")) => Ok(Shape::Json),
            (false, Some(text)) => {
                Template::parse(text)?;
                Ok(Shape::Template(text.to_owned()))
            }
        }
    }

    /// Prints `items` (objects with the docker CLI's field names) as JSON lines or through
    /// the template; `headers` names the columns of a `table` template whose header is not
    /// the field's name in capitals.
    pub fn print_objects(&self, items: &[serde_json::Value], headers: &[(&str, &str)]) -> anyhow::Result<()> {
        match self {
            Shape::Template(text) => {
                let out = Template::parse(text)?.render(items, headers)?;
                std::io::stdout().lock().write_all(out.as_bytes())?;
                Ok(())
            }
            _ => {
                json_lines(items);
                Ok(())
            }
        }
    }
}

/// A `--format` Go template, as the docker CLI reads it: `table ` before it prints a header
/// and aligns the tab-separated columns; `\t` and `\n` in it are a tab and a new line;
/// `json`, `join`, `split`, `lower`, `upper`, `title`, `pad` and `truncate` are there besides
/// text/template's own functions. Parsing and running templates is the `gtmpl` crate's
/// (Go's text/template for Rust); what is here is the docker CLI's part around it.
pub struct Template {
    table: bool,
    body: gtmpl::Template,
    header: gtmpl::Template,
}

impl Template {
    pub fn parse(text: &str) -> anyhow::Result<Template> {
        let (table, text) = match text.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => (true, rest.trim_start()),
            _ => (false, text),
        };
        let text = text.replace(r"\t", "\t").replace(r"\n", "\n");
        let make = |funcs: &[(&str, gtmpl::Func)]| -> anyhow::Result<gtmpl::Template> {
            let mut t = gtmpl::Template::default();
            t.add_funcs(funcs);
            t.parse(text.as_str()).map_err(|e| anyhow::anyhow!("template parsing error: {e}"))?;
            Ok(t)
        };
        Ok(Template { table, body: make(&funcs::BODY)?, header: make(&funcs::HEADER)? })
    }

    /// Each item through the template, one a line; under a header, in aligned columns, for a
    /// `table` template.
    pub fn render(&self, items: &[serde_json::Value], headers: &[(&str, &str)]) -> anyhow::Result<String> {
        let run = |t: &gtmpl::Template, v: &serde_json::Value| {
            t.render(&gtmpl::Context::from(to_gtmpl(v))).map_err(|e| anyhow::anyhow!("template: {e}"))
        };
        let mut lines = Vec::new();
        if self.table {
            // The header is the template run over each field's header instead of its value.
            let mut names = serde_json::Map::new();
            let fields = items.first().and_then(|i| i.as_object()).map(|o| o.keys().cloned().collect::<Vec<_>>());
            for field in fields.unwrap_or_default().iter().map(String::as_str).chain(headers.iter().map(|h| h.0)) {
                let name =
                    headers.iter().find(|h| h.0 == field).map(|h| h.1.to_owned()).unwrap_or_else(|| header_of(field));
                names.insert(field.to_owned(), serde_json::Value::String(name));
            }
            lines.push(run(&self.header, &serde_json::Value::Object(names))?);
        }
        for item in items {
            lines.push(run(&self.body, item)?);
        }
        let mut out = if self.table { columns(&lines) } else { lines.join("\n") };
        if !lines.is_empty() {
            out.push('\n');
        }
        Ok(out)
    }
}

/// `CreatedAt` as a header: `CREATED AT` (a capital after a small letter begins a word).
fn header_of(field: &str) -> String {
    let mut out = String::new();
    let mut after_small = false;
    for c in field.chars() {
        if after_small && c.is_uppercase() {
            out.push(' ');
        }
        after_small = c.is_lowercase();
        out.extend(c.to_uppercase());
    }
    out
}

/// Lines of tab-separated cells in columns, as Go's tabwriter writes them for the docker CLI
/// (a column as wide as its widest cell plus three spaces, ten at least; the last cell of a
/// line is not padded).
fn columns(lines: &[String]) -> String {
    let rows: Vec<Vec<&str>> = lines.iter().flat_map(|l| l.split('\n')).map(|l| l.split('\t').collect()).collect();
    let mut widths: Vec<usize> = Vec::new();
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            let w = (cell.chars().count() + 3).max(10);
            match widths.get_mut(i) {
                Some(x) => *x = (*x).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = Vec::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count()));
            }
        }
        out.push(line);
    }
    out.join("\n")
}

fn to_gtmpl(v: &serde_json::Value) -> gtmpl::Value {
    use serde_json::Value as J;
    match v {
        J::Null => gtmpl::Value::Nil,
        J::Bool(b) => gtmpl::Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => gtmpl::Value::from(i),
            (None, Some(u)) => gtmpl::Value::from(u),
            _ => gtmpl::Value::from(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => gtmpl::Value::String(s.clone()),
        J::Array(a) => gtmpl::Value::Array(a.iter().map(to_gtmpl).collect()),
        J::Object(o) => gtmpl::Value::Object(o.iter().map(|(k, v)| (k.clone(), to_gtmpl(v))).collect()),
    }
}

fn from_gtmpl(v: &gtmpl::Value) -> serde_json::Value {
    use gtmpl::Value as G;
    match v {
        G::NoValue | G::Nil | G::Function(_) => serde_json::Value::Null,
        G::Bool(b) => serde_json::Value::Bool(*b),
        G::String(s) => serde_json::Value::String(s.clone()),
        G::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.into(),
            (None, Some(u), _) => u.into(),
            (None, None, Some(f)) => serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into),
            _ => serde_json::Value::Null,
        },
        G::Array(a) => serde_json::Value::Array(a.iter().map(from_gtmpl).collect()),
        G::Object(o) | G::Map(o) => {
            serde_json::Value::Object(o.iter().map(|(k, v)| (k.clone(), from_gtmpl(v))).collect())
        }
    }
}

/// The docker CLI's template functions (its `templates` package), and the header's, which
/// give their first argument back.
mod funcs {
    use gtmpl::{Func, FuncError, Value};

    fn text(v: Option<&Value>) -> String {
        match v {
            Some(Value::String(s)) => s.clone(),
            Some(Value::NoValue | Value::Nil) | None => String::new(),
            Some(other) => super::from_gtmpl(other).to_string(),
        }
    }

    fn number(v: Option<&Value>) -> Result<usize, FuncError> {
        match v {
            Some(Value::Number(n)) => n.as_u64().map(|n| n as usize).ok_or(FuncError::UnableToConvertFromValue),
            _ => Err(FuncError::UnableToConvertFromValue),
        }
    }

    fn json(args: &[Value]) -> Result<Value, FuncError> {
        let v = args.first().map(super::from_gtmpl).unwrap_or(serde_json::Value::Null);
        Ok(Value::String(serde_json::to_string(&v).map_err(|e| FuncError::Generic(e.to_string()))?))
    }

    fn upper(args: &[Value]) -> Result<Value, FuncError> {
        Ok(Value::String(text(args.first()).to_uppercase()))
    }

    fn lower(args: &[Value]) -> Result<Value, FuncError> {
        Ok(Value::String(text(args.first()).to_lowercase()))
    }

    fn title(args: &[Value]) -> Result<Value, FuncError> {
        let words: Vec<String> = text(args.first())
            .split(' ')
            .map(|w| {
                let mut c = w.chars();
                c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
            })
            .collect();
        Ok(Value::String(words.join(" ")))
    }

    fn split(args: &[Value]) -> Result<Value, FuncError> {
        let (s, sep) = (text(args.first()), text(args.get(1)));
        Ok(Value::Array(s.split(sep.as_str()).map(|p| Value::String(p.to_owned())).collect()))
    }

    fn join(args: &[Value]) -> Result<Value, FuncError> {
        let sep = text(args.get(1));
        match args.first() {
            Some(Value::Array(a)) => Ok(Value::String(a.iter().map(|v| text(Some(v))).collect::<Vec<_>>().join(&sep))),
            other => Ok(Value::String(text(other))),
        }
    }

    fn truncate(args: &[Value]) -> Result<Value, FuncError> {
        let (s, n) = (text(args.first()), number(args.get(1))?);
        Ok(Value::String(s.chars().take(n).collect()))
    }

    fn pad(args: &[Value]) -> Result<Value, FuncError> {
        let (s, left, right) = (text(args.first()), number(args.get(1))?, number(args.get(2))?);
        Ok(Value::String(format!("{}{s}{}", " ".repeat(left), " ".repeat(right))))
    }

    fn same(args: &[Value]) -> Result<Value, FuncError> {
        Ok(Value::String(text(args.first())))
    }

    pub const BODY: [(&str, Func); 8] = [
        ("json", json),
        ("upper", upper),
        ("lower", lower),
        ("title", title),
        ("split", split),
        ("join", join),
        ("truncate", truncate),
        ("pad", pad),
    ];

    pub const HEADER: [(&str, Func); 8] = [
        ("json", same),
        ("upper", same),
        ("lower", same),
        ("title", same),
        ("split", same),
        ("join", same),
        ("truncate", same),
        ("pad", same),
    ];
}

/// Prints rows under `headers`, each column as wide as its widest cell plus three spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>, out: &mut std::io::StdoutLock| {
        let mut text = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            text.push_str(cell);
            if i < last {
                text.push_str(&" ".repeat(w - cell.chars().count() + 3));
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
}

/// One JSON object per line.
pub fn json_lines(items: &[serde_json::Value]) {
    let mut out = std::io::stdout().lock();
    for item in items {
        let _ = writeln!(out, "{item}");
    }
}

/// Bytes as docker shows them: decimal units, three significant digits (`4.26MB`, `720kB`).
pub fn size(bytes: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes.max(0) as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let text = if value >= 100.0 || unit == 0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text };
    format!("{text}{}", units[unit])
}

/// A Unix time as the docker CLI's templates show `CreatedAt` (Go's `time.Time` printed, in
/// UTC here: `2026-12-07 08:19:47 +0000 UTC`).
pub fn created_at(unix: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] +0000 UTC");
    time::OffsetDateTime::from_unix_timestamp(unix).ok().and_then(|t| t.format(&format).ok()).unwrap_or_default()
}

/// How long ago a Unix time was, as docker says it ("About a minute ago", "3 hours ago").
pub fn ago(unix: i64) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    format!("{} ago", duration(now - unix))
}

/// Go's `units.HumanDuration`, which the docker CLI uses.
pub fn duration(secs: i64) -> String {
    match secs {
        s if s < 1 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s if s < 7 * 24 * 3600 * 2 => format!("{} days", s / 86400),
        s if s < 30 * 24 * 3600 * 2 => format!("{} weeks", s / (7 * 86400)),
        s if s < 365 * 24 * 3600 * 2 => format!("{} months", s / (30 * 86400)),
        s => format!("{} years", s / (365 * 86400)),
    }
}

/// `text` cut to `max` characters with an ellipsis, as `docker ps` cuts commands.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max - 1).collect();
        cut.push('…');
        cut
    }
}

/// The first 12 hex digits of an ID (without `sha256:`).
pub fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_dockers() {
        assert_eq!(size(0), "0B");
        assert_eq!(size(999), "999B");
        assert_eq!(size(4_261_000), "4.26MB");
        assert_eq!(size(720_000), "720kB");
        assert_eq!(size(12_300_000), "12.3MB");
        assert_eq!(size(1_000_000), "1MB");
        assert_eq!(duration(0), "Less than a second");
        assert_eq!(duration(90), "About a minute");
        assert_eq!(duration(5 * 60), "5 minutes");
        assert_eq!(duration(3 * 3600), "3 hours");
        assert_eq!(duration(3 * 86400), "3 days");
        assert_eq!(truncate("sh -c 'while true; do sleep 1; done'", 20), "sh -c 'while true; …");
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(created_at(1_796_631_587), "2026-12-07 08:19:47 +0000 UTC");
        assert_eq!(header_of("CreatedAt"), "CREATED AT");
        assert_eq!(header_of("ID"), "ID");
        assert_eq!(Shape::of(false, Some("{{.ID}}")).unwrap(), Shape::Template("{{.ID}}".into()));
        assert!(Shape::of(false, Some("{{.ID")).unwrap_err().to_string().contains("template parsing error"));
    }
}
