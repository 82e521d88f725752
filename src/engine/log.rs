//! The event log: the single source of truth of a run, both its journal (resume replays it) and
//! its audit (reports render it).
//!
//! One JSON record per line, append-only. Each record carries the SHA-256 of the previous record
//! (`prev`; 64 zeros for the first) and its own `hash` over its canonical JSON without `hash`
//! (keys sorted), as CloudTrail digest files chain their predecessors. Every append is written and
//! `fsync`ed before it returns, so the side effect that follows is never ahead of its record.

use super::event::Event;
use super::signature::{self, Signer};
use crate::secret::Redactor;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One record of the event log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// 0-based position in the log.
    pub seq: u64,
    /// RFC 3339 UTC timestamp with milliseconds.
    pub ts: String,
    /// Event type, e.g. `run_started`, `step_started`, `step_applied`, `rollback_started`.
    #[serde(rename = "type")]
    pub event: String,
    /// Step id, for step events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Event payload (never a secret).
    #[serde(default)]
    pub data: Value,
    /// Hash of the previous record.
    pub prev: String,
    /// SHA-256 (hex) of this record's canonical JSON without `hash`.
    pub hash: String,
}

/// Why a log does not verify.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LogError {
    /// The file cannot be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// A line is not a record.
    #[error("line {line}: not a valid record: {message}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// The JSON error.
        message: String,
    },
    /// A record's content does not match its hash, or its `prev` does not match the previous
    /// record's hash, or its `seq` is out of order.
    #[error("record {seq} (line {line}): {message}")]
    Broken {
        /// The record's `seq` as written.
        seq: u64,
        /// 1-based line.
        line: usize,
        /// What does not match.
        message: String,
    },
}

/// The hash of a record: SHA-256 over the canonical JSON of every field but `hash`.
pub fn record_hash(
    seq: u64,
    ts: &str,
    event: &str,
    step: Option<&str>,
    data: &Value,
    prev: &str,
) -> String {
    let mut m = Map::new();
    m.insert("seq".into(), Value::from(seq));
    m.insert("ts".into(), Value::from(ts));
    m.insert("type".into(), Value::from(event));
    if let Some(s) = step {
        m.insert("step".into(), Value::from(s));
    }
    m.insert("data".into(), data.clone());
    m.insert("prev".into(), Value::from(prev));
    // serde_json's Map is ordered by key (no preserve_order feature): canonical.
    let canonical = serde_json::to_string(&Value::Object(m)).unwrap_or_default();
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// Reads and verifies a log. Returns its records.
///
/// # Errors
/// The first [`LogError`] found, naming the line and record.
pub fn read_verified(path: &Path) -> Result<Vec<Record>, LogError> {
    let file = File::open(path).map_err(|e| LogError::Io {
        path: path.into(),
        message: e.to_string(),
    })?;
    let mut records: Vec<Record> = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| LogError::Malformed {
            line: line_no,
            message: e.to_string(),
        })?;
        let rec: Record = serde_json::from_str(&line).map_err(|e| LogError::Malformed {
            line: line_no,
            message: e.to_string(),
        })?;
        let expected_prev = records.last().map(|r| r.hash.as_str()).unwrap_or(GENESIS);
        if rec.seq != records.len() as u64 {
            return Err(LogError::Broken { seq: rec.seq, line: line_no, message: format!("sequence number {} where {} was expected (record deleted, inserted or reordered)", rec.seq, records.len()) });
        }
        if rec.prev != expected_prev {
            return Err(LogError::Broken { seq: rec.seq, line: line_no, message: "`prev` does not match the previous record's hash (record deleted, inserted or reordered)".into() });
        }
        let actual = record_hash(
            rec.seq,
            &rec.ts,
            &rec.event,
            rec.step.as_deref(),
            &rec.data,
            &rec.prev,
        );
        if actual != rec.hash {
            return Err(LogError::Broken {
                seq: rec.seq,
                line: line_no,
                message: format!(
                    "content does not match its hash (edited): expected {}, computed {actual}",
                    rec.hash
                ),
            });
        }
        records.push(rec);
    }
    Ok(records)
}

/// Fault injection for the crash-at-every-record test (`tests/suite/crash.rs`): the process kills
/// itself with SIGKILL, as a power cut or the OOM killer would, at one chosen append.
///
/// `CUTOVER_CRASH_AT=<when>:<type>[:<step>][#<field>=<value>][@<n>]` with `<when>` `before` (the
/// record is not written: whatever the run did since the previous record is done but
/// unrecorded) or `after` (the record and its mirror are fsynced, nothing after it has
/// happened), `<type>` a record type, `<step>` a step id (any step, or none, when absent),
/// `<field>=<value>` a top-level field of the record's data and its JSON text (`stage=2`: a
/// resumed step that continues from where it stood is matched by what the record is about, not
/// by its count) and `<n>` the 1-based occurrence among this process's matching appends (1 when
/// absent). Several points may be given, separated by `,`: the process dies at the first one
/// it meets, after writing `cutover: crash point <point>` to stderr (the test learns which).
/// Unset, it costs one `OnceLock` read per append. A malformed point is ignored (it never
/// reaches a user: it exists for the test). Compiled only with the `crash-hook` feature, which
/// the README's test command turns on: the shipped binary has no such hook.
#[cfg(feature = "crash-hook")]
pub mod crash {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// Where, relative to the append, the process is killed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum When {
        /// Before the record is written.
        Before,
        /// After the record is fsynced and mirrored.
        After,
    }

    /// A parsed `CUTOVER_CRASH_AT`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Point {
        /// Before or after the append.
        pub when: When,
        /// The record type.
        pub event: String,
        /// The step id, when the point is one step's record.
        pub step: Option<String>,
        /// A data field and the JSON text of its value, when the point names one.
        pub field: Option<(String, String)>,
        /// 1-based occurrence among matching appends.
        pub nth: u64,
    }

    /// Parses `<when>:<type>[:<step>][#<field>=<value>][@<n>]`; `None` when malformed.
    pub fn parse(text: &str) -> Option<Point> {
        let (body, nth) = match text.rsplit_once('@') {
            Some((b, n)) => (b, n.parse().ok().filter(|n| *n > 0)?),
            None => (text, 1),
        };
        let (body, field) = match body.split_once('#') {
            Some((b, f)) => {
                let (k, v) = f.split_once('=')?;
                (b, Some((k.to_string(), v.to_string())))
            }
            None => (body, None),
        };
        let mut parts = body.splitn(3, ':');
        let when = match parts.next()? {
            "before" => When::Before,
            "after" => When::After,
            _ => return None,
        };
        let event = parts.next().filter(|e| !e.is_empty())?.to_string();
        let step = parts.next().map(str::to_string);
        Some(Point {
            when,
            event,
            step,
            field,
            nth,
        })
    }

    /// The configured points, each with its text and how often it matched so far.
    static POINTS: OnceLock<Vec<(Point, String, AtomicU64)>> = OnceLock::new();

    /// Kills the process when `(when, event, step, data)` is the `nth` match of a configured
    /// point.
    pub fn at(when: When, event: &str, step: Option<&str>, data: &serde_json::Value) {
        let points = POINTS.get_or_init(|| {
            std::env::var("CUTOVER_CRASH_AT")
                .unwrap_or_default()
                .split(',')
                .filter_map(|t| parse(t).map(|p| (p, t.to_string(), AtomicU64::new(0))))
                .collect()
        });
        for (p, text, seen) in points {
            if p.when != when || p.event != event {
                continue;
            }
            if p.step.is_some() && p.step.as_deref() != step {
                continue;
            }
            if let Some((k, v)) = &p.field {
                if data.get(k).map(|x| x.to_string()).as_deref() != Some(v.as_str()) {
                    continue;
                }
            }
            if seen.fetch_add(1, Ordering::Relaxed) + 1 == p.nth {
                eprintln!("cutover: crash point {text}");
                // SAFETY: kill(2) on our own pid with a valid signal number has no memory
                // effects.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn points_parse_with_and_without_step_and_occurrence() {
            assert_eq!(
                parse("after:step_applied:flip@2"),
                Some(Point {
                    when: When::After,
                    event: "step_applied".into(),
                    step: Some("flip".into()),
                    field: None,
                    nth: 2
                })
            );
            assert_eq!(
                parse("after:analysis:dns#stage=2").unwrap().field,
                Some(("stage".into(), "2".into()))
            );
            assert_eq!(parse("before:run_finished").unwrap().step, None);
            assert_eq!(parse("before:run_finished").unwrap().nth, 1);
            for bad in [
                "",
                "during:x",
                "after:",
                "after:x@0",
                "after:x@y",
                "after:x#stage",
            ] {
                assert_eq!(parse(bad), None, "{bad}");
            }
        }
    }
}

/// Called after each fsynced append with a file of the run's directory and its whole content:
/// `events.jsonl`, then `signature.json` when the log is signed (the S3 store uploads them). An
/// error stops the append like a failed fsync.
pub type Mirror = Box<dyn Fn(&str, Vec<u8>) -> Result<(), String> + Send + Sync>;

/// The log's file name in its run directory.
pub const FILE_NAME: &str = "events.jsonl";

/// An open log, appended to by one process (the run lock guarantees it).
pub struct EventLog {
    path: PathBuf,
    file: File,
    next_seq: u64,
    head: String,
    redactor: Arc<Redactor>,
    mirror: Option<Mirror>,
    /// Signs the head after every append (see [`super::signature`]), with the run id.
    signer: Option<(Arc<Signer>, String)>,
}

impl EventLog {
    /// Creates a new, empty log at `path` (its directory is created and synced).
    ///
    /// # Errors
    /// [`LogError::Io`] when the file exists or cannot be created.
    pub fn create(path: &Path, redactor: Arc<Redactor>) -> Result<EventLog, LogError> {
        let io = |e: std::io::Error| LogError::Io {
            path: path.into(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if let Some(dir) = path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(EventLog {
            path: path.into(),
            file,
            next_seq: 0,
            head: GENESIS.into(),
            redactor,
            mirror: None,
            signer: None,
        })
    }

    /// Opens an existing log for appending after verifying it; returns it and its records.
    ///
    /// # Errors
    /// Any [`LogError`] of [`read_verified`].
    pub fn open(path: &Path, redactor: Arc<Redactor>) -> Result<(EventLog, Vec<Record>), LogError> {
        let records = read_verified(path)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| LogError::Io {
                path: path.into(),
                message: e.to_string(),
            })?;
        let head = records
            .last()
            .map(|r| r.hash.clone())
            .unwrap_or_else(|| GENESIS.into());
        Ok((
            EventLog {
                path: path.into(),
                file,
                next_seq: records.len() as u64,
                head,
                redactor,
                mirror: None,
                signer: None,
            },
            records,
        ))
    }

    /// Appends `event` (for `step`, when it is a step's record) and fsyncs it. Secrets that
    /// slipped into its fields are redacted first.
    ///
    /// # Errors
    /// [`LogError::Io`]: the run must stop, since a side effect may not proceed unrecorded.
    pub fn append(&mut self, event: &Event, step: Option<&str>) -> Result<Record, LogError> {
        let (kind, data) = event.to_parts();
        self.append_parts(&kind, step, data)
    }

    /// Appends a record of any `(type, data)`: the chain's own tests, and records of a type
    /// this version does not write.
    fn append_parts(
        &mut self,
        event: &str,
        step: Option<&str>,
        data: Value,
    ) -> Result<Record, LogError> {
        #[cfg(feature = "crash-hook")]
        crash::at(crash::When::Before, event, step, &data);
        let text = serde_json::to_string(&data).unwrap_or_default();
        let redacted = self.redactor.redact(&text);
        let data = if redacted == text {
            data
        } else {
            serde_json::from_str(&redacted).unwrap_or(Value::String(redacted))
        };
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let hash = record_hash(self.next_seq, &ts, event, step, &data, &self.head);
        let rec = Record {
            seq: self.next_seq,
            ts,
            event: event.into(),
            step: step.map(str::to_owned),
            data,
            prev: self.head.clone(),
            hash,
        };
        let mut line = serde_json::to_string(&rec).unwrap_or_default();
        line.push('\n');
        let io = |e: std::io::Error| LogError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        };
        self.file.write_all(line.as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.next_seq += 1;
        self.head = rec.hash.clone();
        self.publish()?;
        #[cfg(feature = "crash-hook")]
        crash::at(crash::When::After, event, step, &rec.data);
        Ok(rec)
    }

    /// Signs the current head (when a signer is set) and hands both files to the mirror.
    fn publish(&self) -> Result<(), LogError> {
        let io = |e: std::io::Error| LogError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let signed = match &self.signer {
            Some((signer, run_id)) if self.next_seq > 0 => {
                let file = signer.sign(run_id, self.next_seq, &self.head);
                Some(signature::write(&self.signature_path(), &file).map_err(io)?)
            }
            _ => None,
        };
        if let Some(mirror) = &self.mirror {
            let failed = |message: String| LogError::Io {
                path: self.path.clone(),
                message: format!("mirror: {message}"),
            };
            let bytes = std::fs::read(&self.path).map_err(io)?;
            mirror(FILE_NAME, bytes).map_err(failed)?;
            if let Some(sig) = signed {
                mirror(signature::FILE_NAME, sig).map_err(failed)?;
            }
        }
        Ok(())
    }

    /// `signature.json` beside the log.
    pub fn signature_path(&self) -> PathBuf {
        self.path.with_file_name(signature::FILE_NAME)
    }

    /// Signs the head with `signer` after every append from now on, as run `run_id`, and signs
    /// the current head at once (a reopened log is signed before anything new happens).
    ///
    /// # Errors
    /// [`LogError::Io`] when the signature cannot be written or mirrored.
    pub fn set_signer(&mut self, signer: Arc<Signer>, run_id: &str) -> Result<(), LogError> {
        self.signer = Some((signer, run_id.to_string()));
        self.publish()
    }

    /// Sets the function that receives the whole log after every append, and calls it once now
    /// (so a reopened log is mirrored before anything new happens).
    ///
    /// # Errors
    /// [`LogError::Io`] when the first call fails.
    pub fn set_mirror(&mut self, mirror: Mirror) -> Result<(), LogError> {
        self.mirror = Some(mirror);
        self.publish()
    }

    /// The hash of the last record (the chain head).
    pub fn head(&self) -> &str {
        &self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(dir: &Path) -> PathBuf {
        let p = dir.join("events.jsonl");
        let mut log = EventLog::create(&p, Arc::new(Redactor::default())).unwrap();
        log.append_parts("run_started", None, json!({"a": 1}))
            .unwrap();
        log.append_parts("step_started", Some("x"), json!({"b": "c"}))
            .unwrap();
        log.append_parts("run_finished", None, json!({"status": "succeeded"}))
            .unwrap();
        p
    }

    #[test]
    fn a_written_log_verifies() {
        let d = tempfile::tempdir().unwrap();
        let recs = read_verified(&sample(d.path())).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].prev, GENESIS);
        assert_eq!(recs[1].prev, recs[0].hash);
    }

    #[test]
    fn an_edited_record_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = sample(d.path());
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"c\"", "\"d\"");
        std::fs::write(&p, text).unwrap();
        match read_verified(&p).unwrap_err() {
            LogError::Broken { seq, line, .. } => assert_eq!((seq, line), (1, 2)),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_deleted_record_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let p = sample(d.path());
        let lines: Vec<String> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        std::fs::write(&p, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        assert!(matches!(
            read_verified(&p).unwrap_err(),
            LogError::Broken { line: 2, .. }
        ));
    }

    #[test]
    fn reopened_log_continues_the_chain() {
        let d = tempfile::tempdir().unwrap();
        let p = sample(d.path());
        let (mut log, recs) = EventLog::open(&p, Arc::new(Redactor::default())).unwrap();
        assert_eq!(recs.len(), 3);
        log.append_parts("run_resumed", None, json!({})).unwrap();
        assert_eq!(read_verified(&p).unwrap().len(), 4);
    }

    #[test]
    fn secrets_are_redacted_before_hashing() {
        let d = tempfile::tempdir().unwrap();
        let r = Arc::new(Redactor::default());
        r.add("hunter2-password");
        let p = d.path().join("e.jsonl");
        let mut log = EventLog::create(&p, r).unwrap();
        log.append_parts(
            "x",
            None,
            json!({"err": "auth failed for hunter2-password"}),
        )
        .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains("hunter2"));
        read_verified(&p).unwrap();
    }
}
