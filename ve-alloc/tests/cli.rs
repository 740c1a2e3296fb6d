//! The real `ve-alloc` binary against scratch stores: every command, output shapes,
//! exit codes for bad input, idempotency, and "bad input changes nothing".

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use common::testing::TempDir;
use serde_json::Value;

struct Va {
    dir: TempDir,
}

impl Va {
    fn new() -> Self {
        Va {
            dir: TempDir::new("va"),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ve-alloc"));
        c.args(args)
            .env("VE_ALLOC_STORE", self.dir.path().join("store"))
            .env("VE_ALLOC_CONFIG", self.dir.path().join("none.conf"))
            .env_remove("VE_ALLOC_POOL")
            .env_remove("VE_ALLOC_POOL6")
            .env_remove("VE_ALLOC_LAYOUT")
            .env_remove("RUST_LOG");
        // A config file that does not exist but is named explicitly is an error, so
        // tests that want no config point at an empty one.
        std::fs::write(self.dir.path().join("none.conf"), "").unwrap();
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Run and expect success; return stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// Run and expect exit `code` with a one-line error; return the message.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args);
        assert_eq!(
            o.status.code(),
            Some(code),
            "{args:?}: stderr {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.stdout.is_empty(), "{args:?} printed on failure");
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.starts_with("ve-alloc: error: "), "{err}");
        err
    }

    fn list(&self) -> String {
        self.ok(&["list", "--json"])
    }
}

#[test]
fn alloc_prints_env_lines_and_is_idempotent() {
    let va = Va::new();
    let out = va.ok(&["alloc", "foo"]);
    assert_eq!(out, "HOST_ADDRESS=10.233.0.2\nLOCAL_ADDRESS=10.233.0.3\n");
    assert_eq!(va.ok(&["alloc", "foo"]), out);
    assert_eq!(
        va.ok(&["alloc", "bar"]),
        "HOST_ADDRESS=10.233.0.4\nLOCAL_ADDRESS=10.233.0.5\n"
    );
    // The output is a valid POSIX shell assignment list (and systemd EnvironmentFile).
    let sh = Command::new("sh")
        .args(["-c", &format!("{out}echo \"$HOST_ADDRESS $LOCAL_ADDRESS\"")])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sh.stdout),
        "10.233.0.2 10.233.0.3\n"
    );
}

#[test]
fn json_shapes() {
    let va = Va::new();
    let v = va.json(&["alloc", "foo", "--json", "--pool6", "fd42:ee::/64"]);
    assert_eq!(v["name"], "foo");
    assert_eq!(v["host_address"], "10.233.0.2");
    assert_eq!(v["local_address"], "10.233.0.3");
    assert_eq!(v["host_address6"], "fd42:ee::2");
    assert_eq!(v["local_address6"], "fd42:ee::3");
    assert_eq!(v["static"], false);
    assert_eq!(va.json(&["show", "foo", "--json"]), v);
    let ip = va.json(&["show-ip", "foo", "--json"]);
    assert_eq!(ip["address"], "10.233.0.3");
    let list: Value = serde_json::from_str(&va.list()).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0], v);
}

#[test]
fn ipv6_pool_env_and_show_ip_fallback() {
    let va = Va::new();
    let out = va.ok(&["--pool6", "fd42:ee::/64", "alloc", "a"]);
    assert!(
        out.contains("HOST_ADDRESS6=fd42:ee::2\nLOCAL_ADDRESS6=fd42:ee::3\n"),
        "{out}"
    );
    assert_eq!(va.ok(&["show-ip", "a"]), "10.233.0.3\n");
    va.ok(&[
        "--pool6",
        "fd42:ee::/64",
        "reserve",
        "six",
        "--host-address6",
        "fd42:ee::100",
        "--local-address6",
        "fd42:ee::101",
    ]);
    assert_eq!(va.ok(&["show-ip", "six"]), "fd42:ee::101\n");
}

#[test]
fn show_release_list_and_hosts() {
    let va = Va::new();
    va.ok(&["alloc", "a"]);
    va.ok(&["alloc", "b"]);
    assert_eq!(
        va.ok(&["show", "b"]),
        "HOST_ADDRESS=10.233.0.4\nLOCAL_ADDRESS=10.233.0.5\n"
    );
    let table = va.ok(&["list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME  HOST_ADDRESS  LOCAL_ADDRESS"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("a     10.233.0.2    10.233.0.3 "),
        "{table}"
    );
    assert_eq!(
        va.ok(&["list", "--hosts"]),
        "10.233.0.3 a.containers\n10.233.0.5 b.containers\n"
    );
    let o = va.run(&["release", "a", "nope"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no lease for nope"));
    va.fails(&["show", "a"], 66);
    va.fails(&["show-ip", "a"], 66);
    // Round robin: the released pair is not reused at once.
    assert_eq!(
        va.ok(&["alloc", "c"]),
        "HOST_ADDRESS=10.233.0.6\nLOCAL_ADDRESS=10.233.0.7\n"
    );
}

#[test]
fn read_commands_on_a_missing_store_create_nothing() {
    let va = Va::new();
    assert_eq!(va.ok(&["list", "--json"]), "[]\n");
    va.fails(&["show", "x"], 66);
    va.ok(&["release", "x"]);
    assert!(!va.dir.path().join("store").join("leases.db").exists());
}

#[test]
fn bad_input_is_refused_with_its_code_and_changes_nothing() {
    let va = Va::new();
    va.ok(&["alloc", "keep"]);
    let before = va.list();
    let long = "x".repeat(64);
    for name in ["", "a/b", "a b", "tab\there", "ctl\u{7}", "-rf", &long, "é"] {
        va.fails(&["alloc", "--", name], 65);
    }
    va.fails(&["alloc"], 64);
    va.fails(&["alloc", "a", "b"], 64);
    va.fails(&["frobnicate"], 64);
    va.fails(&["--pool", "10.233.0.1/16", "alloc", "x"], 65);
    va.fails(&["--pool", "10.233.0.0/31", "alloc", "x"], 65);
    va.fails(&["--pool", "fd42::/64", "alloc", "x"], 65);
    va.fails(&["--pool", "banana", "alloc", "x"], 65);
    va.fails(&["--pool6", "10.0.0.0/8", "alloc", "x"], 65);
    va.fails(&["--layout", "zigzag", "alloc", "x"], 65);
    va.fails(&["--wait", "-1", "alloc", "x"], 64);
    va.fails(&["reserve", "r", "--host-address", "10.233.9"], 64);
    va.fails(&["reserve", "r", "--host-address", "10.233.9.2"], 64);
    va.fails(
        &[
            "reserve",
            "r",
            "--host-address",
            "10.234.0.2",
            "--local-address",
            "10.234.0.3",
        ],
        65,
    );
    va.fails(
        &[
            "reserve",
            "r",
            "--host-address",
            "10.233.0.2",
            "--local-address",
            "10.233.9.9",
        ],
        65,
    );
    assert_eq!(va.list(), before);
}

#[test]
fn reserve_is_validated_idempotent_and_avoided() {
    let va = Va::new();
    let args = [
        "reserve",
        "r",
        "--host-address",
        "10.233.0.2",
        "--local-address",
        "10.233.0.3",
    ];
    let out = va.ok(&args);
    assert_eq!(va.ok(&args), out);
    assert_eq!(va.json(&["show", "r", "--json"])["static"], true);
    assert_eq!(
        va.ok(&["alloc", "a"]),
        "HOST_ADDRESS=10.233.0.4\nLOCAL_ADDRESS=10.233.0.5\n"
    );
    let e = va.fails(
        &[
            "reserve",
            "r2",
            "--host-address",
            "10.233.0.5",
            "--local-address",
            "10.233.0.9",
        ],
        65,
    );
    assert!(e.contains("already leased to a"), "{e}");
}

#[test]
fn exhausted_pool_exits_73_and_changes_nothing() {
    let va = Va::new();
    let pool = ["--pool", "192.0.2.0/29"];
    va.ok(&[&pool[..], &["alloc", "a"]].concat());
    va.ok(&[&pool[..], &["alloc", "b"]].concat());
    let before = va.list();
    let e = va.fails(&[&pool[..], &["alloc", "c"]].concat(), 73);
    assert!(e.contains("exhausted"), "{e}");
    assert_eq!(va.list(), before);
}

#[test]
fn nixos_layout() {
    let va = Va::new();
    assert_eq!(
        va.ok(&["--layout", "nixos", "alloc", "foo"]),
        "HOST_ADDRESS=10.233.1.1\nLOCAL_ADDRESS=10.233.1.2\n"
    );
    for n in ["b", "c", "d"] {
        va.ok(&["--layout", "nixos", "alloc", n]);
    }
    assert_eq!(va.ok(&["show-ip", "d"]), "10.233.4.2\n");
}

#[test]
fn config_file_and_environment() {
    let va = Va::new();
    let conf = va.dir.path().join("ve-alloc.conf");
    std::fs::write(&conf, "# test\nPOOL=198.51.100.0/24\nPOOL6=fd00:1::/64\n").unwrap();
    let c = conf.to_str().unwrap();
    let out = va.ok(&["--config", c, "alloc", "a"]);
    assert!(out.starts_with("HOST_ADDRESS=198.51.100.2\n"), "{out}");
    assert!(out.contains("LOCAL_ADDRESS6=fd00:1::3"), "{out}");
    // A flag wins over the file, the environment too.
    let o = va
        .cmd(&["--config", c, "alloc", "b"])
        .env("VE_ALLOC_POOL", "192.0.2.0/24")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("HOST_ADDRESS=192.0.2.2\n"));
    std::fs::write(&conf, "POOL=198.51.100.0/33\n").unwrap();
    va.fails(&["--config", c, "alloc", "c"], 78);
    std::fs::write(&conf, "POOLS=198.51.100.0/24\n").unwrap();
    let e = va.fails(&["--config", c, "alloc", "c"], 78);
    assert!(e.contains("unknown setting POOLS"), "{e}");
    va.fails(
        &["--config", "/nonexistent/ve-alloc.conf", "alloc", "c"],
        66,
    );
}

#[test]
fn gc_releases_the_rest_keeps_static_and_dry_runs() {
    let va = Va::new();
    for n in ["a", "b", "c"] {
        va.ok(&["alloc", n]);
    }
    va.ok(&[
        "reserve",
        "s",
        "--host-address",
        "10.233.9.2",
        "--local-address",
        "10.233.9.3",
    ]);
    let o = va.run_stdin(&["gc", "--dry-run"], "b\n");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "a\nc\n");
    assert_eq!(
        serde_json::from_str::<Value>(&va.list())
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(va.ok(&["gc", "b"]), "a\nc\n");
    let names: Vec<String> = serde_json::from_str::<Value>(&va.list())
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["b", "s"]);
    let o = va.run_stdin(&["gc", "-"], "b\nbad/name\n");
    assert_eq!(o.status.code(), Some(65));
}

#[test]
fn corrupt_and_foreign_stores_are_reported_never_reset() {
    let va = Va::new();
    let store = va.dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let db = store.join("leases.db");
    std::fs::write(&db, b"this is not a database, and it is much longer than a header would be........................................................").unwrap();
    let before = std::fs::read(&db).unwrap();
    va.fails(&["alloc", "a"], 74);
    va.fails(&["list"], 74);
    assert_eq!(std::fs::read(&db).unwrap(), before);

    // A store written by a newer version.
    std::fs::remove_file(&db).unwrap();
    va.ok(&["alloc", "a"]);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA user_version=99").unwrap();
    drop(conn);
    let e = va.fails(&["alloc", "b"], 78);
    assert!(e.contains("newer ve-alloc"), "{e}");

    // Somebody else's SQLite database.
    std::fs::remove_file(&db).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE t (x)").unwrap();
    drop(conn);
    let e = va.fails(&["alloc", "b"], 78);
    assert!(e.contains("not a ve-alloc store"), "{e}");
}

#[test]
fn a_lock_held_too_long_gives_75() {
    let va = Va::new();
    va.ok(&["alloc", "a"]);
    let db = va.dir.path().join("store").join("leases.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let e = va.fails(&["--wait", "0.2", "alloc", "b"], 75);
    assert!(e.contains("locked"), "{e}");
    // Readers are not blocked by a writer.
    assert!(va.ok(&["show", "a"]).contains("10.233.0.2"));
    conn.execute_batch("ROLLBACK").unwrap();
    va.ok(&["--wait", "0.2", "alloc", "b"]);
}

#[test]
fn unwritable_store_is_permission_denied() {
    // Root can write anywhere; only meaningful for a contributor without privileges.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let va = Va::new();
        let o = va
            .cmd(&["alloc", "a"])
            .env("VE_ALLOC_STORE", "/proc/ve-alloc-store")
            .output()
            .unwrap();
        // /proc refuses directory creation even to root.
        assert_ne!(o.status.code(), Some(0));
        return;
    }
    let va = Va::new();
    let o = va
        .cmd(&["alloc", "a"])
        .env("VE_ALLOC_STORE", "/var/lib/ve-alloc-test-no-perm")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(77));
}

#[test]
fn broken_pipe_is_success() {
    let va = Va::new();
    for i in 0..50 {
        va.ok(&["alloc", &format!("c{i}")]);
    }
    // The reader is gone before ve-alloc writes: its write fails with EPIPE.
    let mut child = va
        .cmd(&["list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
}
