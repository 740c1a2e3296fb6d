//! What a write costs on disk, counted with `strace`: every write syncs the log once
//! (header and frames together) and the database file once, and a lease is synced
//! before it is printed even when the fold cannot run.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use testbed::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_ve-alloc");

/// A scratch store and trace file for test `test`, or None (skipped) without strace or
/// root; the directory goes with the returned guard.
fn scratch(test: &str, prefix: &str) -> Option<(TempDir, PathBuf, PathBuf)> {
    if !testbed::privileged(test, &["strace"]) {
        return None;
    }
    let dir = TempDir::new(prefix);
    let (store, trace) = (dir.path().join("store"), dir.path().join("trace"));
    Some((dir, store, trace))
}

/// The files `args` synced (fsync or fdatasync), by path, in order, and its output.
fn synced(store: &Path, trace: &Path, args: &[&str]) -> (Vec<String>, Output) {
    synced_with(store, trace, args, &[])
}

/// [`synced`] with more environment variables.
fn synced_with(
    store: &Path,
    trace: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Vec<String>, Output) {
    let (events, o) = traced(store, trace, args, env);
    (events.into_iter().filter(|e| e != PRINT).collect(), o)
}

/// What `traced` lists for a write to stdout.
const PRINT: &str = "(stdout)";

/// The files `args` synced, by path, and [`PRINT`] for each write to stdout, in order.
fn traced(
    store: &Path,
    trace: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Vec<String>, Output) {
    let o = Command::new("strace")
        .args(["-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,write", "-o"])
        .arg(trace)
        .arg(BIN)
        .args(args)
        .env("VE_ALLOC_STORE", store)
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .env_remove("VE_ALLOC_POOL")
        .env_remove("VE_ALLOC_POOL6")
        .env_remove("VE_ALLOC_DURABILITY")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(trace).unwrap();
    let events = text
        .lines()
        .filter_map(|l| {
            if l.contains("write(1<") {
                return Some(PRINT.to_string());
            }
            if !(l.contains("fsync(") || l.contains("fdatasync(")) {
                return None;
            }
            Some(l.split_once('<')?.1.split_once('>')?.0.to_string())
        })
        .collect();
    (events, o)
}

fn count(paths: &[String]) -> HashMap<&str, usize> {
    let mut n = HashMap::new();
    for p in paths {
        let kind = if p.ends_with("leases.db-wal") {
            "log"
        } else if p.ends_with("leases.db") {
            "db"
        } else {
            "other"
        };
        *n.entry(kind).or_default() += 1;
    }
    n
}

#[test]
fn a_write_syncs_the_log_once_and_the_database_once() {
    let Some((_dir, store, trace)) = scratch(
        "a_write_syncs_the_log_once_and_the_database_once",
        "va-syncs",
    ) else {
        return;
    };
    let (_, o) = synced(&store, &trace, &["alloc", "first"]);
    assert!(!o.stdout.is_empty());
    for args in [
        &["alloc", "b"][..],
        &["release", "b"],
        &["alloc", "c", "d", "--json"],
    ] {
        let (paths, _) = synced(&store, &trace, args);
        let n = count(&paths);
        // Before: the log's new header was synced on its own, then the log again by
        // the fold (2 log syncs per write).
        assert_eq!(n.get("log"), Some(&1), "{args:?} synced {paths:?}");
        assert_eq!(n.get("db"), Some(&1), "{args:?} synced {paths:?}");
        let log = paths.iter().position(|p| p.ends_with("-wal"));
        let db = paths.iter().position(|p| p.ends_with("leases.db"));
        assert!(
            log < db,
            "{args:?}: the log is synced before the fold writes the database: {paths:?}"
        );
    }
}

#[test]
fn a_write_the_fold_cannot_finish_still_syncs_its_log_before_printing() {
    let Some((_dir, store, trace)) = scratch(
        "a_write_the_fold_cannot_finish_still_syncs_its_log_before_printing",
        "va-syncs-busy",
    ) else {
        return;
    };
    synced(&store, &trace, &["alloc", "a"]);
    // A reader in a transaction keeps the fold from emptying the log.
    let conn = rusqlite::Connection::open(store.join("leases.db")).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM leases", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    // Into an empty log (its header not synced on its own), then into a full one.
    for name in ["b", "c"] {
        let (paths, o) = synced(&store, &trace, &["alloc", name]);
        assert!(!o.stdout.is_empty());
        let n = count(&paths);
        assert!(
            n.get("log").is_some_and(|&k| k >= 1),
            "{name}: the log holding the lease was never synced: {paths:?}"
        );
        assert!(
            std::fs::metadata(store.join("leases.db-wal"))
                .unwrap()
                .len()
                > 0
        );
    }
    conn.execute_batch("COMMIT").unwrap();
    drop(conn);
    let (paths, _) = synced(&store, &trace, &["alloc", "d"]);
    assert_eq!(count(&paths).get("log"), Some(&1), "{paths:?}");
    assert_eq!(
        std::fs::metadata(store.join("leases.db-wal"))
            .unwrap()
            .len(),
        0
    );
}

/// The log a reader recreated after the last connection deleted it (as `sqlite3` does
/// on close) is a new directory entry: a write the fold cannot finish syncs the
/// directory too, and the log, before it prints the lease.
#[test]
fn a_write_into_a_new_log_the_fold_cannot_finish_syncs_the_directory_before_printing() {
    let Some((_dir, store, trace)) = scratch(
        "a_write_into_a_new_log_the_fold_cannot_finish_syncs_the_directory_before_printing",
        "va-syncs-dir",
    ) else {
        return;
    };
    synced(&store, &trace, &["alloc", "a"]);
    let wal = store.join("leases.db-wal");
    // The last connection to close folds and deletes the log.
    let last = rusqlite::Connection::open(store.join("leases.db")).unwrap();
    last.execute_batch("SELECT count(*) FROM leases").unwrap();
    drop(last);
    assert!(!wal.exists());
    let conn = rusqlite::Connection::open(store.join("leases.db")).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM leases", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    let (events, o) = traced(&store, &trace, &["alloc", "b"], &[]);
    assert!(!o.stdout.is_empty());
    assert!(std::fs::metadata(&wal).unwrap().len() > 0, "unfolded");
    let printed = events.iter().position(|e| e == PRINT).unwrap();
    let before = &events[..printed];
    let store_dir = std::fs::canonicalize(&store).unwrap();
    assert!(
        before.iter().any(|p| Path::new(p) == store_dir),
        "the directory of the new log was not synced before printing: {events:?}"
    );
    assert!(
        before.iter().any(|p| p.ends_with("leases.db-wal")),
        "the log was not synced before printing: {events:?}"
    );
    conn.execute_batch("COMMIT").unwrap();
}

#[test]
fn durability_normal_syncs_nothing_until_the_log_is_large_and_full_folds_it() {
    let Some((_dir, store, trace)) = scratch(
        "durability_normal_syncs_nothing_until_the_log_is_large_and_full_folds_it",
        "va-syncs-normal",
    ) else {
        return;
    };
    synced(&store, &trace, &["alloc", "first"]);
    let wal = store.join("leases.db-wal");
    for i in 0..5 {
        let name = format!("n{i}");
        let (paths, o) = synced(&store, &trace, &["alloc", &name, "--durability", "normal"]);
        assert!(!o.stdout.is_empty());
        assert_eq!(paths, Vec::<String>::new(), "{name}");
    }
    assert!(std::fs::metadata(&wal).unwrap().len() > 0, "unfolded");
    // The env var says the same; the default folds what the log holds.
    let (paths, o) = synced_with(
        &store,
        &trace,
        &["alloc", "e"],
        &[("VE_ALLOC_DURABILITY", "normal")],
    );
    assert!(!o.stdout.is_empty());
    assert_eq!(paths, Vec::<String>::new(), "VE_ALLOC_DURABILITY=normal");
    let o = Command::new(BIN)
        .args(["list", "--json"])
        .env("VE_ALLOC_STORE", &store)
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 7);
    let (paths, _) = synced(&store, &trace, &["release", "n0"]);
    assert_eq!(count(&paths).get("db"), Some(&1), "{paths:?}");
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0, "folded");
    // A bad level is refused before anything is written.
    let o = Command::new(BIN)
        .args(["alloc", "x", "--durability", "fast"])
        .env("VE_ALLOC_STORE", &store)
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);
}
