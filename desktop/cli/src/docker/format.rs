//! Output shaped like the docker CLI's: aligned tables (columns three spaces apart, as Go's
//! tabwriter pads them), sizes in decimal units with three significant digits, times as
//! "2 minutes ago", and one JSON object per line for `--format json`.

use std::io::Write;

/// How a list is printed: `--format json` (one object a line), `-q` (IDs), or a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Table,
    Json,
    Quiet,
}

impl Shape {
    /// From `-q` and `--format`; a format other than `json` or `table` is refused (Go
    /// templates are the docker CLI's own).
    pub fn of(quiet: bool, format: Option<&str>) -> anyhow::Result<Shape> {
        match (quiet, format) {
            (true, _) => Ok(Shape::Quiet),
            (false, None | Some("table")) => Ok(Shape::Table),
            (false, Some("json")) => Ok(Shape::Json),
            (false, Some(other)) => {
                anyhow::bail!(
                    "unsupported --format {other:?}: `berth` prints `table` or `json` (use `berth docker` for Go templates)"
                )
            }
        }
    }
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
        assert!(Shape::of(false, Some("{{.ID}}")).is_err());
    }
}
