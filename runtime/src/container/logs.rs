//! Container logs in dockerd's json-file format: one JSON object per line, `{"log": ...,
//! "stream": "stdout"|"stderr", "time": RFC 3339 with nanoseconds}`, a line cut at each
//! newline (or at 16 KiB), so `docker logs` with `--since`, `--tail` and `-t` reads them back.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Which standard stream a chunk came from (the numbers are dockerd's frame stream types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

/// One stored log line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub log: String,
    pub stream: Stream,
    pub time: String,
}

const MAX_LINE: usize = 16 * 1024;

/// Appends lines to a container's log file, cutting the byte stream at newlines.
#[derive(Debug)]
pub struct LogWriter {
    /// `None` for the `none` driver: nothing is kept.
    file: Option<File>,
    partial: [Vec<u8>; 2],
    path: std::path::PathBuf,
    rotation: Rotation,
    size: u64,
}

/// `max-size` and `max-file` of json-file and local: past `max_size` bytes the file becomes
/// `<name>.1` (older ones `.2`, ...), keeping `max_files` files in all, as dockerd rotates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation {
    pub max_size: Option<u64>,
    pub max_files: u32,
}

/// A size as the log options write it: `10m`, `512k`, `1g`, or bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.trim_end_matches('b').chars().last()? {
        'k' => (&s[..s.trim_end_matches('b').len() - 1], 1u64 << 10),
        'm' => (&s[..s.trim_end_matches('b').len() - 1], 1 << 20),
        'g' => (&s[..s.trim_end_matches('b').len() - 1], 1 << 30),
        _ => (s.as_str(), 1),
    };
    let n: f64 = num.parse().ok()?;
    (n > 0.0).then_some((n * mult as f64) as u64)
}

impl Rotation {
    /// From a container's log options; errors name the bad option.
    pub fn of(opts: &std::collections::BTreeMap<String, String>) -> Result<Rotation, String> {
        let max_size = match opts.get("max-size") {
            Some(v) if v != "-1" => Some(parse_size(v).ok_or_else(|| format!("invalid max-size: {v}"))?),
            _ => None,
        };
        let max_files = match opts.get("max-file") {
            Some(v) => {
                v.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| format!("invalid value for max-file: {v}"))?
            }
            None => 1,
        };
        // Without max-size nothing rotates, whatever max-file says (dockerd takes it too).
        Ok(Rotation { max_size, max_files })
    }
}

/// The files of a log, oldest first (the rotated ones, then the live one).
pub fn files_of(path: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<std::path::PathBuf> = (1..100)
        .map(|i| std::path::PathBuf::from(format!("{}.{i}", path.display())))
        .take_while(|p| p.exists())
        .collect();
    out.reverse();
    out.push(path.to_owned());
    out
}

/// The log drivers this engine has; `local` keeps json-file's format here.
pub const DRIVERS: &[&str] = &["json-file", "local", "none"];

/// Drivers dockerd has that need services outside the VM.
const ELSEWHERE: &[&str] =
    &["syslog", "journald", "gelf", "fluentd", "awslogs", "splunk", "etwlogs", "gcplogs", "logentries"];

/// Options json-file and local take.
const FILE_OPTS: &[&str] = &[
    "max-size",
    "max-file",
    "compress",
    "labels",
    "labels-regex",
    "env",
    "env-regex",
    "tag",
    "mode",
    "max-buffer-size",
];

/// The log driver a container was created with (`json-file` for records older than drivers).
pub fn driver_of(hc: &crate::model::HostConfig) -> String {
    hc.extra
        .get("LogConfig")
        .and_then(|c| c.get("Type"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .unwrap_or("json-file")
        .to_owned()
}

/// Checks a `LogConfig` (`Type` and `Config`) as dockerd does at create, and gives the type
/// (`json-file` when none is named).
pub fn check_config(kind: &str, opts: &std::collections::BTreeMap<String, String>) -> Result<String, String> {
    let kind = if kind.is_empty() { "json-file" } else { kind };
    if ELSEWHERE.contains(&kind) {
        return Err(format!(
            "logger: the {kind} log driver is not available in Berth's VM: use json-file, local or none"
        ));
    }
    if !DRIVERS.contains(&kind) {
        return Err(format!("logger: no log driver named '{kind}' is registered"));
    }
    for key in opts.keys() {
        if kind == "none" || !FILE_OPTS.contains(&key.as_str()) {
            return Err(format!("unknown log opt '{key}' for {kind} log driver"));
        }
    }
    Ok(kind.to_owned())
}

impl LogWriter {
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_rotating(path, Rotation::default())
    }

    pub fn open_rotating(path: &Path, rotation: Rotation) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter { file: Some(file), partial: [Vec::new(), Vec::new()], path: path.to_owned(), rotation, size })
    }

    /// A writer that keeps nothing (the `none` driver).
    pub fn discard() -> Self {
        LogWriter {
            file: None,
            partial: [Vec::new(), Vec::new()],
            path: Default::default(),
            rotation: Rotation::default(),
            size: 0,
        }
    }

    /// Moves the full file aside (`.1`, older ones up by one, the oldest dropped) and starts
    /// an empty one; with one file allowed, the file is emptied.
    fn rotate(&mut self) -> io::Result<()> {
        let name = |i: u32| std::path::PathBuf::from(format!("{}.{i}", self.path.display()));
        let keep = self.rotation.max_files;
        if keep > 1 {
            let _ = std::fs::remove_file(name(keep - 1));
            for i in (1..keep - 1).rev() {
                let _ = std::fs::rename(name(i), name(i + 1));
            }
            std::fs::rename(&self.path, name(1))?;
            self.file = Some(OpenOptions::new().create(true).append(true).open(&self.path)?);
        } else if let Some(f) = &self.file {
            f.set_len(0)?;
        }
        self.size = 0;
        Ok(())
    }

    fn emit(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        let line =
            LogLine { log: String::from_utf8_lossy(bytes).into_owned(), stream, time: crate::model::now_rfc3339() };
        let mut json = serde_json::to_vec(&line).map_err(io::Error::other)?;
        json.push(b'\n');
        file.write_all(&json)?;
        self.size += json.len() as u64;
        if self.rotation.max_size.is_some_and(|m| self.size >= m) {
            self.rotate()?;
        }
        Ok(())
    }

    /// Records a chunk of output.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let idx = stream as usize - 1;
        while let Some(pos) = data.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut self.partial[idx]);
            line.extend_from_slice(&data[..=pos]);
            self.emit(stream, &line)?;
            data = &data[pos + 1..];
        }
        self.partial[idx].extend_from_slice(data);
        if self.partial[idx].len() >= MAX_LINE {
            let line = std::mem::take(&mut self.partial[idx]);
            self.emit(stream, &line)?;
        }
        Ok(())
    }

    /// Writes out what is left without a newline (the stream ended).
    pub fn flush_partial(&mut self) -> io::Result<()> {
        for (idx, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            if !self.partial[idx].is_empty() {
                let line = std::mem::take(&mut self.partial[idx]);
                self.emit(stream, &line)?;
            }
        }
        Ok(())
    }
}

/// Which lines to read back.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub stdout: bool,
    pub stderr: bool,
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Only lines at or after this Unix time (seconds, fractional).
    pub since: Option<f64>,
    pub until: Option<f64>,
}

fn unix_time(s: &str) -> f64 {
    crate::model::parse_time(s).map(|t| t.unix_timestamp_nanos() as f64 / 1e9).unwrap_or(0.0)
}

impl LogQuery {
    pub fn wants(&self, l: &LogLine) -> bool {
        let stream_ok = match l.stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        };
        stream_ok
            && self.since.is_none_or(|s| unix_time(&l.time) >= s)
            && self.until.is_none_or(|u| unix_time(&l.time) <= u)
    }
}

/// Reads the lines of `path` that `q` wants, and the byte offset where reading stopped.
pub fn read(path: &Path, q: &LogQuery) -> io::Result<(Vec<LogLine>, u64)> {
    let mut out = Vec::new();
    for old in files_of(path).iter().filter(|p| p.as_path() != path) {
        if let Ok((lines, _)) = read_from(old, 0, q) {
            out.extend(lines);
        }
    }
    let (live, offset) = match read_from(path, 0, q) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => (vec![], 0),
        r => r?,
    };
    out.extend(live);
    if let Some(t) = q.tail {
        let skip = out.len().saturating_sub(t);
        out.drain(..skip);
    }
    Ok((out, offset))
}

/// Reads whole lines appended after `offset`; returns them and the new offset.
pub fn read_from(path: &Path, offset: u64, q: &LogQuery) -> io::Result<(Vec<LogLine>, u64)> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let mut pos = offset;
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf)?;
        if n == 0 || !buf.ends_with('\n') {
            break;
        }
        pos += n as u64;
        if let Ok(line) = serde_json::from_str::<LogLine>(&buf)
            && q.wants(&line)
        {
            out.push(line);
        }
    }
    Ok((out, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_at_newlines_and_tail_works() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut w = LogWriter::open(&p).unwrap();
        w.write(Stream::Stdout, b"one\ntw").unwrap();
        w.write(Stream::Stderr, b"err\n").unwrap();
        w.write(Stream::Stdout, b"o\nthree").unwrap();
        w.flush_partial().unwrap();
        let all = LogQuery { stdout: true, stderr: true, ..Default::default() };
        let (lines, _) = read(&p, &all).unwrap();
        let text: Vec<&str> = lines.iter().map(|l| l.log.as_str()).collect();
        assert_eq!(text, ["one\n", "err\n", "two\n", "three"]);
        let (lines, _) = read(&p, &LogQuery { tail: Some(1), stdout: true, ..Default::default() }).unwrap();
        assert_eq!(lines[0].log, "three");
        let (lines, _) = read(&p, &LogQuery { stderr: true, ..Default::default() }).unwrap();
        assert_eq!(lines.len(), 1);
    }
}
