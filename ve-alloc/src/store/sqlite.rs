//! The lease store in SQLite: one file, transactions, crash safety (write-ahead log) and
//! multi-process locking, inspectable with `sqlite3`.
//!
//! Files: the directory is created 0750 and `leases.db` (and with it SQLite's `-wal` and
//! `-shm`, which take the database's mode) 0640, less the umask: leases are no secret,
//! but only root writes them and only root and the directory's group read them.
//!
//! Tables: `leases` (one row per container), `addresses` (one row per leased address,
//! whose primary key makes a duplicate address impossible even if the allocator had a
//! bug) and `meta` (round-robin cursors). `PRAGMA user_version` is the schema version and
//! `PRAGMA application_id` marks the file as ours.

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rusqlite::{
    config::DbConfig, ffi, params, Connection, ErrorCode, OpenFlags, OptionalExtension,
    TransactionBehavior,
};

use common::{Error, Kind, Result};

use super::{Store, Txn};
use crate::lease::Lease;

/// The schema this build reads and writes.
const SCHEMA_VERSION: i64 = 1;
/// "ven1": tells our store apart from any other SQLite file.
const APPLICATION_ID: i64 = 0x7665_6e31;
/// The database file inside the store directory.
pub const DB_FILE: &str = "leases.db";

const SCHEMA: &str = "
CREATE TABLE leases (
    name    TEXT PRIMARY KEY,
    host4   TEXT,
    local4  TEXT,
    host6   TEXT,
    local6  TEXT,
    static  INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL DEFAULT (strftime('%s', 'now'))
) WITHOUT ROWID;
CREATE TABLE addresses (
    addr TEXT PRIMARY KEY,
    name TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX addresses_by_name ON addresses (name);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

pub struct SqliteStore {
    dir: PathBuf,
    db: PathBuf,
    wait: Duration,
    durability: Durability,
    conn: Option<Connection>,
}

/// What a printed lease survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// A kill at any instant and a power cut: every write is synced and folded into
    /// the database file before anything is printed
    #[default]
    Full,
    /// A kill at any instant, not a power cut: writes are not synced, and the log is
    /// folded (and synced) only once it holds more than 256 KiB
    Normal,
}

/// With `Durability::Normal`, the log size above which a write folds it.
const NORMAL_FOLD_AT: u64 = 256 << 10;

impl SqliteStore {
    /// A store in directory `dir`; nothing is opened until first use. Writers wait up to
    /// `wait` for a busy store before giving up with exit 75.
    pub fn new(dir: &Path, wait: Duration) -> Self {
        SqliteStore {
            dir: dir.to_path_buf(),
            db: dir.join(DB_FILE),
            wait,
            durability: Durability::Full,
            conn: None,
        }
    }

    /// The same store with another durability.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        sql_error(&self.db, self.wait, e)
    }

    /// Open (and for writers create) the database, checking that it is ours. None for
    /// a reader when there is no store yet.
    fn open(&mut self, create: bool) -> Result<Option<&mut Connection>> {
        if self.conn.is_none() {
            let exists = self.db_exists()?;
            if !create && !exists {
                return Ok(None);
            }
            if create {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o750)
                    .create(&self.dir)
                    .map_err(|e| io_error(format!("creating store {}", self.dir.display()), e))?;
            }
            // Surface permission problems as such (SQLite only says "unable to open").
            let mut opts = fs::OpenOptions::new();
            opts.read(true);
            if create {
                opts.write(true).create(true).truncate(false).mode(0o640);
            }
            opts.open(&self.db)
                .map_err(|e| io_error(format!("opening store {}", self.db.display()), e))?;
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(&self.db, flags).map_err(|e| self.err(e))?;
            conn.busy_timeout(self.wait).map_err(|e| self.err(e))?;
            self.prepare(&conn)?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut())
    }

    /// Whether the database file exists. A store path that is not a directory, or one
    /// the caller may not look into, is an error: it must never read as an empty store.
    fn db_exists(&self) -> Result<bool> {
        let doing = |p: &Path| format!("store {}", p.display());
        match fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::new(
                    Kind::Io,
                    format!("store {}: not a directory", self.dir.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error(doing(&self.dir), e)),
        }
        match fs::metadata(&self.db) {
            Ok(m) if m.is_file() => Ok(true),
            Ok(_) => Err(Error::new(
                Kind::Io,
                format!("store {}: not a regular file", self.db.display()),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(doing(&self.db), e)),
        }
    }

    /// Write-ahead logging (readers never block the writer; a killed writer's partial
    /// transaction is simply not in the log), how it is synced, and the schema.
    fn prepare(&self, conn: &Connection) -> Result<()> {
        let deadline = Instant::now() + self.wait;
        loop {
            // Switching the journal mode takes a lock the busy handler does not always
            // wait for: retry by hand while another process initialises the file.
            let r = conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0));
            let r = match r {
                Ok(mode) if mode.eq_ignore_ascii_case("wal") => Ok(()),
                Ok(_) => conn
                    .query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => break,
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(self.err(e)),
            }
        }
        // Each ve-alloc process is usually the store's only connection, and SQLite
        // checkpoints and deletes the log when the last connection closes: more fsyncs
        // and a new log file per call, which under disk load cost 10-20 ms. So the log
        // file stays, and `fold_log` empties it after each commit. The commit itself is
        // not synced (synchronous=NORMAL): the fold syncs the log, then the database
        // file, and when it cannot run, syncs the log and its directory itself. Either
        // way a lease is on disk before it is printed and survives a power cut.
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0;")
            .map_err(|e| self.err(e))?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(|e| self.err(e))?;

        if self.schema_ok(conn)? {
            return Ok(());
        }
        // First use: create the schema, once, whoever gets there first.
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(e))?;
        let r = (|| {
            if !self.schema_ok(conn)? {
                let tables: i64 = conn
                    .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                    .map_err(|e| self.err(e))?;
                if tables > 0 {
                    return Err(self.not_ours());
                }
                conn.execute_batch(SCHEMA).map_err(|e| self.err(e))?;
                conn.execute_batch(&format!(
                    "PRAGMA user_version={SCHEMA_VERSION}; PRAGMA application_id={APPLICATION_ID};"
                ))
                .map_err(|e| self.err(e))?;
            }
            Ok(())
        })();
        let end = if r.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let e2 = conn.execute_batch(end).map_err(|e| self.err(e));
        r.and(e2)
    }

    /// True when the file carries our current schema; false when it is brand new; an
    /// error for anything else.
    fn schema_ok(&self, conn: &Connection) -> Result<bool> {
        // One statement, so one read of the header (each PRAGMA is a transaction).
        let (version, app): (i64, i64) = conn
            .query_row(
                "SELECT u.user_version, a.application_id \
                 FROM pragma_user_version u, pragma_application_id a",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        match (version, app) {
            (0, 0) => Ok(false),
            (SCHEMA_VERSION, APPLICATION_ID) => Ok(true),
            (v, APPLICATION_ID) if v > SCHEMA_VERSION => Err(Error::config(format!(
                "store {} was written by a newer ve-alloc (schema {v}; this one knows {SCHEMA_VERSION}); refusing to touch it",
                self.db.display()
            ))),
            _ => Err(self.not_ours()),
        }
    }

    fn not_ours(&self) -> Error {
        Error::config(format!(
            "{} is not a ve-alloc store (unknown schema); refusing to touch it",
            self.db.display()
        ))
    }

    fn run<T>(
        &mut self,
        create: bool,
        behavior: TransactionBehavior,
        f: impl FnOnce(&mut dyn Txn) -> Result<T>,
    ) -> Result<T> {
        let (db, wait) = (self.db.clone(), self.wait);
        let full = self.durability == Durability::Full;
        let fail = |e| sql_error(&db, wait, e);
        let mut scratch;
        let conn = match self.open(create)? {
            Some(c) => c,
            None => {
                // No store yet: read an empty one without creating anything on disk.
                scratch = Connection::open_in_memory().map_err(fail)?;
                scratch.execute_batch(SCHEMA).map_err(fail)?;
                &mut scratch
            }
        };
        let write = matches!(behavior, TransactionBehavior::Immediate);
        // The commit of a write into an empty log need not sync the log's new header:
        // the fold syncs header and frames together before it touches the database
        // file (see `fold_log`). A log that still holds frames keeps SQLite's header
        // sync, which orders a restarted log's header before its frames.
        let fresh = write && log_is_smaller_than(&db, 1);
        if write {
            set_synchronous(conn, if fresh { "OFF" } else { "NORMAL" }).map_err(fail)?;
        }
        let mut tx = conn.transaction_with_behavior(behavior).map_err(fail)?;
        if fresh && !log_is_smaller_than(&db, 1) {
            // Another writer got in between: begin again with the header sync (the level
            // cannot change inside a transaction).
            drop(tx);
            set_synchronous(conn, "NORMAL").map_err(fail)?;
            tx = conn.transaction_with_behavior(behavior).map_err(fail)?;
        }
        let out = f(&mut SqlTxn {
            tx: &tx,
            db: &db,
            wait,
        })?;
        if write {
            tx.commit().map_err(fail)?;
            // The fold's syncs follow this level: never OFF.
            set_synchronous(conn, "NORMAL").map_err(fail)?;
            if full || !log_is_smaller_than(&db, NORMAL_FOLD_AT) {
                fold_log(conn, &db, wait)?;
            }
        }
        Ok(out)
    }
}

impl Store for SqliteStore {
    fn read<T>(&mut self, f: impl FnOnce(&mut dyn Txn) -> Result<T>) -> Result<T> {
        self.run(false, TransactionBehavior::Deferred, f)
    }

    fn write<T>(&mut self, f: impl FnOnce(&mut dyn Txn) -> Result<T>) -> Result<T> {
        self.run(true, TransactionBehavior::Immediate, f)
    }
}

/// The store's log path.
fn log_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// True when the write-ahead log exists and holds fewer than `limit` bytes; false when
/// it is missing or cannot be looked at. (A log about to be created keeps SQLite's own
/// first sync, which syncs the directory that gets the new entry.)
fn log_is_smaller_than(db: &Path, limit: u64) -> bool {
    fs::metadata(log_path(db)).is_ok_and(|m| m.len() < limit)
}

/// `PRAGMA synchronous` (allowed only outside a transaction).
fn set_synchronous(conn: &Connection, level: &str) -> rusqlite::Result<()> {
    conn.execute_batch(&format!("PRAGMA synchronous={level}"))
}

/// How long the fold after a commit waits for other processes using the store.
const FOLD_WAIT: Duration = Duration::from_secs(1);

/// Fold the write-ahead log into the database file and empty it, after every commit,
/// so that a printed lease lives in the main file and not only in the log. (SQLite
/// stops reading a log at its first damaged frame and silently drops every later
/// commit; with an empty log there is nothing to drop. A passive checkpoint would not
/// do: its frames stay in the log, and recovering a damaged log would serve their older
/// page versions instead of the folded ones.) Another process reading or
/// writing the store at that moment is waited for up to [`FOLD_WAIT`]; if it is still
/// busy, the log and its directory are synced to disk here and the log is left for
/// the next writer's fold. (SQLite's
/// automatic checkpoint is off: it would fold only at 1,000 pages.)
fn fold_log(conn: &Connection, db: &Path, wait: Duration) -> Result<()> {
    let r = conn.busy_timeout(wait.min(FOLD_WAIT)).and_then(|()| {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
    });
    let _ = conn.busy_timeout(wait);
    if matches!(r, Ok(0)) {
        return Ok(());
    }
    log::debug!("log not folded (store busy: {r:?}); syncing it instead");
    let wal = log_path(db);
    fs::File::open(&wal)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(format!("syncing store log {}", wal.display()), e))?;
    // The log may be a new directory entry (another connection recreated it after the
    // last one to close deleted it) that nobody synced: without the directory, a power
    // cut could lose the log and the lease in it.
    let dir = db.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(format!("syncing store directory {}", dir.display()), e))
}

/// An I/O error on the store's paths: a path through a regular file is 74 like one that
/// is a regular file, permission problems are 77.
fn io_error(doing: String, e: std::io::Error) -> Error {
    use std::io::ErrorKind::{AlreadyExists, IsADirectory, NotADirectory};
    match e.kind() {
        NotADirectory => Error::new(
            Kind::Io,
            format!("{doing}: part of the path is not a directory"),
        ),
        IsADirectory => Error::new(Kind::Io, format!("{doing}: is a directory")),
        AlreadyExists => Error::new(Kind::Io, format!("{doing}: not a directory")),
        _ => Error::io(doing, e),
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Turn a SQLite error into a one-line message with the right exit code.
fn sql_error(db: &Path, wait: Duration, e: rusqlite::Error) -> Error {
    let db = db.display();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::new(
            Kind::Busy,
            format!(
                "store {db} stayed locked by another process for {:.1} s; try again",
                wait.as_secs_f64()
            ),
        ),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Error::new(
            Kind::Io,
            format!("store {db} is corrupt or not a SQLite database ({e}); it was left as it is"),
        ),
        Some(
            ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::AuthorizationForStatementDenied,
        ) => Error::new(Kind::Permission, format!("store {db}: {e}")),
        Some(ErrorCode::ConstraintViolation) => Error::internal(format!(
            "store {db}: {e} (an address would be leased twice)"
        )),
        _ => Error::new(Kind::Io, format!("store {db}: {e}")),
    }
}

struct SqlTxn<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    db: &'a Path,
    wait: Duration,
}

impl SqlTxn<'_> {
    fn err(&self, e: rusqlite::Error) -> Error {
        sql_error(self.db, self.wait, e)
    }
}

fn addr<T: std::str::FromStr>(v: Option<String>) -> rusqlite::Result<Option<T>> {
    v.map(|s| {
        s.parse().map_err(|_| {
            rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_CORRUPT),
                Some(format!("bad address {s:?} in store")),
            )
        })
    })
    .transpose()
}

fn lease_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        name: r.get(0)?,
        host_address: addr(r.get(1)?)?,
        local_address: addr(r.get(2)?)?,
        host_address6: addr(r.get(3)?)?,
        local_address6: addr(r.get(4)?)?,
        fixed: r.get(5)?,
    })
}

const LEASE_COLUMNS: &str = "name, host4, local4, host6, local6, static";

fn cursor_key(v6: bool) -> &'static str {
    if v6 {
        "cursor6"
    } else {
        "cursor4"
    }
}

impl Txn for SqlTxn<'_> {
    fn get(&mut self, name: &str) -> Result<Option<Lease>> {
        self.tx
            .prepare_cached(&format!(
                "SELECT {LEASE_COLUMNS} FROM leases WHERE name = ?1"
            ))
            .and_then(|mut s| s.query_row([name], lease_row).optional())
            .map_err(|e| self.err(e))
    }

    fn all(&mut self) -> Result<Vec<Lease>> {
        self.tx
            .prepare_cached(&format!("SELECT {LEASE_COLUMNS} FROM leases ORDER BY name"))
            .and_then(|mut s| s.query_map([], lease_row)?.collect())
            .map_err(|e| self.err(e))
    }

    fn names_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>> {
        // A range on the primary key, not a scan: names are ASCII, so the prefix with its
        // last byte raised by one bounds every name that starts with it.
        let mut end = prefix.as_bytes().to_vec();
        match end.last_mut() {
            Some(b) if *b < 0x7f => *b += 1,
            _ => return self.all().map(|v| v.into_iter().map(|l| l.name).collect()),
        }
        let end = String::from_utf8_lossy(&end).into_owned();
        self.tx
            .prepare_cached("SELECT name FROM leases WHERE name >= ?1 AND name < ?2 ORDER BY name")
            .and_then(|mut s| s.query_map([prefix, end.as_str()], |r| r.get(0))?.collect())
            .map_err(|e| self.err(e))
    }

    fn holder(&mut self, addr: IpAddr) -> Result<Option<String>> {
        self.tx
            .prepare_cached("SELECT name FROM addresses WHERE addr = ?1")
            .and_then(|mut s| s.query_row([addr.to_string()], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    fn put(&mut self, l: &Lease) -> Result<()> {
        let r = (|| {
            self.tx
                .prepare_cached("DELETE FROM addresses WHERE name = ?1")?
                .execute([&l.name])?;
            self.tx
                .prepare_cached(
                    "INSERT INTO leases (name, host4, local4, host6, local6, static)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (name) DO UPDATE SET host4 = excluded.host4,
                       local4 = excluded.local4, host6 = excluded.host6,
                       local6 = excluded.local6, static = excluded.static",
                )?
                .execute(params![
                    l.name,
                    l.host_address.map(|a| a.to_string()),
                    l.local_address.map(|a| a.to_string()),
                    l.host_address6.map(|a| a.to_string()),
                    l.local_address6.map(|a| a.to_string()),
                    l.fixed
                ])?;
            let mut ins = self
                .tx
                .prepare_cached("INSERT INTO addresses (addr, name) VALUES (?1, ?2)")?;
            for a in l.addresses() {
                ins.execute(params![a.to_string(), l.name])?;
            }
            Ok(())
        })();
        r.map_err(|e| self.err(e))
    }

    fn remove(&mut self, name: &str) -> Result<bool> {
        let r = (|| {
            self.tx
                .prepare_cached("DELETE FROM addresses WHERE name = ?1")?
                .execute([name])?;
            self.tx
                .prepare_cached("DELETE FROM leases WHERE name = ?1")?
                .execute([name])
        })();
        r.map(|n| n > 0).map_err(|e| self.err(e))
    }

    fn cursor(&mut self, v6: bool) -> Result<Option<IpAddr>> {
        let v: Option<String> = self
            .tx
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .and_then(|mut s| s.query_row([cursor_key(v6)], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))?;
        addr(v).map_err(|e| self.err(e))
    }

    fn set_cursor(&mut self, v6: bool, host: IpAddr) -> Result<()> {
        self.tx
            .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![cursor_key(v6), host.to_string()]))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What SQLite says decides the kind, and with it the exit code: a lock held too
    /// long is retried by a caller (75), never confused with a corrupt store (74).
    #[test]
    fn sqlite_errors_map_to_kinds() {
        let sql = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
        let wait = Duration::from_millis(200);
        for (code, kind, exit) in [
            (ffi::SQLITE_BUSY, Kind::Busy, 75),
            (ffi::SQLITE_LOCKED, Kind::Busy, 75),
            (ffi::SQLITE_CORRUPT, Kind::Io, 74),
            (ffi::SQLITE_NOTADB, Kind::Io, 74),
            (ffi::SQLITE_READONLY, Kind::Permission, 77),
            (ffi::SQLITE_CONSTRAINT, Kind::Internal, 70),
            (ffi::SQLITE_FULL, Kind::Io, 74),
        ] {
            let e = sql_error(Path::new("/s/leases.db"), wait, sql(code));
            assert_eq!((e.kind(), e.code()), (kind, exit), "{code}: {e}");
            assert!(e.to_string().starts_with("store /s/leases.db"), "{e}");
        }
    }
}
