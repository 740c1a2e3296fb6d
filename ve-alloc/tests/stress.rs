//! Many `ve-alloc` processes at once, and processes killed with SIGKILL at random
//! moments: no address is ever leased twice and no printed lease is ever lost.

use std::{
    collections::{HashMap, HashSet},
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use serde_json::Value;
use testbed::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_ve-alloc");

fn va(store: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("VE_ALLOC_STORE", store)
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .env_remove("VE_ALLOC_POOL")
        .env_remove("VE_ALLOC_POOL6");
    c
}

fn leases(store: &Path) -> Vec<Value> {
    let o = va(store).args(["list", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // JSON Lines: one lease per line.
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every address in the store is held once.
fn assert_unique(leases: &[Value]) {
    let mut seen = HashMap::new();
    for l in leases {
        for k in [
            "host_address",
            "local_address",
            "host_address6",
            "local_address6",
        ] {
            if let Some(a) = l[k].as_str() {
                let name = l["name"].as_str().unwrap();
                if let Some(other) = seen.insert(a.to_string(), name.to_string()) {
                    panic!("{a} leased to both {other} and {name}");
                }
            }
        }
    }
}

#[test]
fn sixty_four_at_once_get_distinct_pairs_and_sixteen_same_name_get_one() {
    let dir = TempDir::new("va-conc");
    let store = dir.path().join("store");
    let children: Vec<_> = (0..64)
        .map(|i| {
            va(&store)
                .args(["--pool6", "fd42:ee::/64", "alloc", &format!("c{i}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut pairs = HashSet::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            pairs.insert(o.stdout),
            "two processes printed the same pair"
        );
    }
    let all = leases(&store);
    assert_eq!(all.len(), 64);
    assert_unique(&all);

    let children: Vec<_> = (0..16)
        .map(|_| {
            va(&store)
                .args(["alloc", "same"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: HashSet<Vec<u8>> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            o.stdout
        })
        .collect();
    assert_eq!(outs.len(), 1, "same name, different leases: {outs:?}");
    let all = leases(&store);
    assert_eq!(all.len(), 65);
    assert_unique(&all);
}

/// A small xorshift generator: random kill moments without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_printed_and_duplicates_nothing() {
    let dir = TempDir::new("va-crash");
    let store = dir.path().join("store");
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let mut printed: Vec<Value> = Vec::new();
    let rounds = 40;
    // Kill moments spread over a few allocations' time, measured here: on a loaded
    // machine one allocation can take ten times as long as on an idle one.
    let t = std::time::Instant::now();
    let o = va(&store).args(["alloc", "calibrate"]).output().unwrap();
    assert!(o.status.success());
    let span = (t.elapsed().as_micros() as u64 * 12).max(60_000);
    for round in 0..rounds {
        let out = dir.path().join(format!("out{round}"));
        let file = std::fs::File::create(&out).unwrap();
        // A loop of allocations, the way an init script calls ve-alloc; its own process
        // group so one kill takes the shell and whichever ve-alloc is running.
        let script = format!(
            "i=0; while [ $i -lt 2000 ]; do \"$VA\" --pool6 fd42:ee::/64 alloc r{round}-$i --json || exit 1; i=$((i+1)); done"
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .env("VE_ALLOC_STORE", &store)
            .env("VE_ALLOC_CONFIG", "/dev/null")
            .env("VA", BIN)
            .stdout(file)
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(2_000 + rng.below(span)));
        // SAFETY: signalling the process group we just created.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let status = child.wait().unwrap();
        assert!(
            status.code().is_none(),
            "loop ended before the kill: {status}"
        );
        let text = std::fs::read_to_string(&out).unwrap();
        // Only complete lines were printed; a torn last line was not.
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            printed.push(serde_json::from_str(line).unwrap());
        }
    }
    assert!(
        printed.len() >= rounds / 2,
        "too few allocations ran: {}",
        printed.len()
    );

    // The store opens cleanly and is intact.
    let conn = rusqlite::Connection::open(store.join("leases.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let all = leases(&store);
    assert_unique(&all);
    let by_name: HashMap<&str, &Value> = all
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), l))
        .collect();
    for p in &printed {
        let name = p["name"].as_str().unwrap();
        assert_eq!(
            by_name.get(name),
            Some(&p),
            "printed lease of {name} lost or changed"
        );
    }
    eprintln!(
        "{rounds} kills, {} printed leases all present, {} leases in store",
        printed.len(),
        all.len()
    );
}

#[test]
fn the_log_stays_small_across_many_processes() {
    // Each call is its own process; without trimming, the write-ahead log would grow
    // forever and every process would pay for reading it.
    let dir = TempDir::new("va-log");
    let store = dir.path().join("store");
    for i in 0..200 {
        let o = va(&store)
            .args(["alloc", &format!("c{i}")])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let wal = std::fs::metadata(store.join("leases.db-wal")).map_or(0, |m| m.len());
    assert!(wal < 3 << 19, "log is {wal} bytes after 200 allocations");
    assert_eq!(leases(&store).len(), 200);
}

#[test]
fn a_damaged_log_loses_no_printed_lease() {
    // SQLite reads its write-ahead log up to the first damaged frame and silently drops
    // every commit after it. A printed lease must not depend on the log: each write
    // folds it into the database file.
    let dir = TempDir::new("va-wal");
    let store = dir.path().join("store");
    let mut printed = Vec::new();
    for i in 0..20 {
        let o = va(&store)
            .args(["alloc", &format!("c{i}"), "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        printed.push(serde_json::from_slice::<Value>(&o.stdout).unwrap());
    }
    let wal = store.join("leases.db-wal");
    let len = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(
        len, 0,
        "the log still holds {len} bytes after the last write"
    );
    // Damage whatever the log holds anyway: a byte in the page of every frame.
    let mut bytes = std::fs::read(&wal).unwrap_or_default();
    let frame = 24 + 4096;
    let mut off = 32 + 24 + 100;
    while off < bytes.len() {
        bytes[off] ^= 0xff;
        off += frame;
    }
    if !bytes.is_empty() {
        std::fs::write(&wal, &bytes).unwrap();
    }
    let all = leases(&store);
    for p in &printed {
        assert!(all.contains(p), "printed lease {p} vanished");
    }
    // New leases get new addresses.
    for i in 0..5 {
        let o = va(&store)
            .args(["alloc", &format!("n{i}")])
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    let all = leases(&store);
    assert_eq!(all.len(), 25);
    assert_unique(&all);
}

#[test]
fn a_reader_holding_the_store_delays_the_fold_and_the_next_write_does_it() {
    let dir = TempDir::new("va-fold");
    let store = dir.path().join("store");
    let ok = |args: &[&str]| {
        let o = va(&store).args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    ok(&["alloc", "a"]);
    // A reader in the middle of a transaction: the fold cannot empty the log under it.
    let conn = rusqlite::Connection::open(store.join("leases.db")).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM leases", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    ok(&["alloc", "b"]);
    let wal = store.join("leases.db-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "b is in the log"
    );
    conn.execute_batch("COMMIT").unwrap();
    drop(conn);
    ok(&["alloc", "c"]);
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0, "folded");
    let names: Vec<String> = leases(&store)
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
}
