//! The replicator: every kanban the router handles is recorded in an embedded SQLite database
//! (upstream recorded them in MongoDB, doc §5.2). Writes go through one writer thread that
//! batches rows into transactions (WAL, `synchronous=NORMAL`: a row survives a crash of the
//! process; the last batch may be lost on power loss). Size is bounded: the oldest rows beyond
//! `max_rows` are deleted.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ReplicatorError {
    #[error("kanban log {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("kanban log {path}: cannot create its directory: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One routed (or rejected) kanban.
/// The time format of [`Record::at`], shared by the router and the client library's records so
/// both sort and compare alike in the log.
pub fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// [`timestamp`] of a time given in microseconds since the Unix epoch (as clients send it).
pub fn timestamp_of_micros(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// What the router did with a kanban. Stored and shown as its kebab-case name (`routed`,
/// `terminate`, `no-route`, `dead-lettered`, `forwarded-in`), as before it was typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Sent on to its next service(s) or device(s).
    Routed,
    /// The end of its path (`nextService` names none for its key).
    Terminate,
    /// No route for its connection key: dead-lettered.
    NoRoute,
    /// Undecodable or refused: dead-lettered.
    DeadLettered,
    /// Received from another device.
    ForwardedIn,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Routed,
        Outcome::Terminate,
        Outcome::NoRoute,
        Outcome::DeadLettered,
        Outcome::ForwardedIn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Routed => "routed",
            Outcome::Terminate => "terminate",
            Outcome::NoRoute => "no-route",
            Outcome::DeadLettered => "dead-lettered",
            Outcome::ForwardedIn => "forwarded-in",
        }
    }

    /// Whether the kanban went nowhere (it is in the dead-letter queue).
    pub fn dead(self) -> bool {
        matches!(self, Outcome::NoRoute | Outcome::DeadLettered)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`Outcome::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an outcome ({names})", names = Outcome::ALL.map(Outcome::as_str).join(", "))]
pub struct UnknownOutcome(pub String);

impl std::str::FromStr for Outcome {
    type Err = UnknownOutcome;
    fn from_str(s: &str) -> Result<Outcome, UnknownOutcome> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownOutcome(s.to_owned()))
    }
}

impl rusqlite::types::ToSql for Outcome {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for Outcome {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        v.as_str()?
            .parse()
            .map_err(|e: UnknownOutcome| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339 UTC time the router handled it.
    pub at: String,
    /// The queue it was consumed from.
    pub source_queue: String,
    /// `microservice#number` it came from (or `device:<name>` for forwarded kanbans).
    pub source: String,
    pub connection_key: String,
    pub process_number: i64,
    /// What happened.
    pub outcome: Outcome,
    /// Where it went (queues / devices), or the dead-letter reason.
    pub detail: String,
    /// The kanban as JSON (or the undecodable body, lossily as text).
    pub kanban: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kanban (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  at TEXT NOT NULL,
  source_queue TEXT NOT NULL,
  source TEXT NOT NULL,
  connection_key TEXT NOT NULL,
  process_number INTEGER NOT NULL,
  outcome TEXT NOT NULL,
  detail TEXT NOT NULL,
  kanban TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS kanban_source ON kanban(source);
";

fn open_db(path: &Path) -> Result<Connection, ReplicatorError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ReplicatorError::Dir {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let db = |source| ReplicatorError::Db {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(db)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(db)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db)?;
    conn.execute_batch(SCHEMA).map_err(db)?;
    Ok(conn)
}

enum Msg {
    Row(Record),
    Flush(mpsc::Sender<()>),
}

/// Handle to the writer thread. Cloneable; dropping the last clone stops the thread after it
/// wrote everything queued.
#[derive(Clone)]
pub struct Replicator {
    tx: mpsc::SyncSender<Msg>,
}

pub struct WriterThread(Option<JoinHandle<()>>);

impl WriterThread {
    /// Wait for the writer to finish (after all `Replicator` clones are dropped).
    pub fn join(mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

impl Replicator {
    pub fn open(path: &Path, max_rows: u64) -> Result<(Replicator, WriterThread), ReplicatorError> {
        let mut conn = open_db(path)?;
        let (tx, rx) = mpsc::sync_channel::<Msg>(65_536);
        let path = path.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("kanban-replicator".into())
            .spawn(move || {
                let mut since_prune = 0u64;
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < 1024 {
                        match rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    let mut flushes = Vec::new();
                    let rows: Vec<Record> = batch
                        .into_iter()
                        .filter_map(|m| match m {
                            Msg::Row(r) => Some(r),
                            Msg::Flush(done) => {
                                flushes.push(done);
                                None
                            }
                        })
                        .collect();
                    since_prune += rows.len() as u64;
                    if let Err(e) = write_rows(&mut conn, &rows) {
                        tracing::error!("kanban log {}: {e}", path.display());
                    }
                    if since_prune >= 1000 || !flushes.is_empty() {
                        since_prune = 0;
                        if let Err(e) = prune(&conn, max_rows) {
                            tracing::error!("kanban log {}: pruning: {e}", path.display());
                        }
                    }
                    for f in flushes {
                        let _ = f.send(());
                    }
                }
            })
            .map_err(|source| ReplicatorError::Dir {
                path: PathBuf::from("<thread>"),
                source,
            })?;
        Ok((Replicator { tx }, WriterThread(Some(handle))))
    }

    /// Queue a record (blocks only when the writer is 65,536 rows behind).
    pub fn record(&self, r: Record) {
        if self.tx.send(Msg::Row(r)).is_err() {
            tracing::error!("kanban log writer has stopped; record lost");
        }
    }

    /// Wait until everything queued so far is written.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

fn write_rows(conn: &mut Connection, rows: &[Record]) -> rusqlite::Result<()> {
    let txn = conn.transaction()?;
    {
        let mut st = txn.prepare_cached(
            "INSERT INTO kanban (at, source_queue, source, connection_key, process_number, outcome, detail, kanban)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for r in rows {
            st.execute(params![
                r.at,
                r.source_queue,
                r.source,
                r.connection_key,
                r.process_number,
                r.outcome,
                r.detail,
                r.kanban
            ])?;
        }
    }
    txn.commit()
}

fn prune(conn: &Connection, max_rows: u64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM kanban WHERE id <= (SELECT MAX(id) FROM kanban) - ?1",
        params![max_rows as i64],
    )
}

/// Filter for [`query`].
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub source: Option<String>,
    pub connection_key: Option<String>,
    pub outcome: Option<Outcome>,
    pub limit: u32,
}

/// Most recent records first.
pub fn query(path: &Path, q: &Query) -> Result<Vec<(i64, Record)>, ReplicatorError> {
    let db = |source| ReplicatorError::Db {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(db)?;
    let mut st = conn
        .prepare(
            "SELECT id, at, source_queue, source, connection_key, process_number, outcome, detail, kanban
             FROM kanban
             WHERE (?1 IS NULL OR source LIKE ?1 || '%')
               AND (?2 IS NULL OR connection_key = ?2)
               AND (?3 IS NULL OR outcome = ?3)
             ORDER BY id DESC LIMIT ?4",
        )
        .map_err(db)?;
    let rows = st
        .query_map(
            params![q.source, q.connection_key, q.outcome, q.limit.max(1)],
            |r| {
                Ok((
                    r.get(0)?,
                    Record {
                        at: r.get(1)?,
                        source_queue: r.get(2)?,
                        source: r.get(3)?,
                        connection_key: r.get(4)?,
                        process_number: r.get(5)?,
                        outcome: r.get(6)?,
                        detail: r.get(7)?,
                        kanban: r.get(8)?,
                    },
                ))
            },
        )
        .map_err(db)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: i64) -> Record {
        Record {
            at: "2026-01-01T00:00:00Z".into(),
            source_queue: "a-001.out".into(),
            source: format!("a#{}", i % 2 + 1),
            connection_key: "default".into(),
            process_number: i,
            outcome: Outcome::Routed,
            detail: "b-001.in".into(),
            kanban: "{}".into(),
        }
    }

    #[test]
    fn records_queries_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/kanban.db");
        let (r, w) = Replicator::open(&path, 50).unwrap();
        for i in 0..120 {
            r.record(rec(i));
        }
        r.flush();
        let all = query(
            &path,
            &Query {
                limit: 1000,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(all.len(), 50, "bounded to max_rows");
        assert_eq!(all[0].1.process_number, 119, "newest first");
        let a1 = query(
            &path,
            &Query {
                source: Some("a#1".into()),
                limit: 1000,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!a1.is_empty() && a1.iter().all(|(_, r)| r.source == "a#1"));
        drop(r);
        w.join();
    }
}
