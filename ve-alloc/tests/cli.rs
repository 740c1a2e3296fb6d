//! The real `ve-alloc` binary against scratch stores: every command, output shapes,
//! exit codes for bad input, idempotency, and "bad input changes nothing".

use std::process::{Command, Output, Stdio};

use serde_json::Value;
use testbed::TempDir;

/// Parse JSON Lines, checking the shape: every line one object.
fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            assert!(v.is_object(), "not an object per line: {l}");
            v
        })
        .collect()
}

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
            .env_remove("VE_ALLOC_DURABILITY")
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
        testbed::output_with_stdin(&mut self.cmd(args), input.as_bytes())
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

    /// A `--json` list: JSON Lines, one object per line and nothing else.
    fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        lines(&self.ok(args))
    }

    fn names(&self) -> Vec<String> {
        self.json_lines(&["list", "--json"])
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect()
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
    va.ok(&["alloc", "bar"]);
    let list = va.json_lines(&["list", "--json"]);
    assert_eq!(list.len(), 2);
    assert_eq!(list[1], v, "ordered by name");
    let gone = va.json_lines(&["gc", "bar", "--json", "--dry-run"]);
    assert_eq!(gone, [v]);
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
    assert_eq!(va.ok(&["list", "--json"]), "", "no lease, no line");
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
    va.fails(&["--layout", "zigzag", "alloc", "x"], 64);
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

/// A bad durability is refused before anything is created: from the flag or the
/// environment 64, from the config file 78. An etcd store refuses the flag (64) and
/// ignores the environment and the config file (the bad name is what fails then).
#[test]
fn durability_is_validated_and_refused_as_a_flag_for_etcd() {
    let va = Va::new();
    let store = va.dir.path().join("store");
    let e = va.fails(&["alloc", "a", "--durability", "fast"], 64);
    assert!(e.contains("durability"), "{e}");
    let o = va
        .cmd(&["alloc", "a"])
        .env("VE_ALLOC_DURABILITY", "fast")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{o:?}");
    let conf = va.dir.path().join("ve-alloc.conf");
    let c = conf.to_str().unwrap();
    std::fs::write(&conf, "DURABILITY=fast\n").unwrap();
    let e = va.fails(&["--config", c, "alloc", "a"], 78);
    assert!(e.contains("config file"), "{e}");
    assert!(!store.exists(), "a refused call created the store");

    // Loopback's port 1, in case a later change opens the store before checking names:
    // nothing leaves the machine.
    let etcd = ["--store", "etcd://127.0.0.1:1", "--node", "n1"];
    let args = |more: &[&'static str]| [&etcd[..], more].concat();
    let e = va.fails(&args(&["--durability", "normal", "alloc", "bad/name"]), 64);
    assert!(e.contains("--durability") && e.contains("etcd"), "{e}");
    let e = va.fails(&args(&["--durability", "full", "alloc", "bad/name"]), 64);
    assert!(e.contains("--durability"), "{e}");
    // Through the environment or the config file (even a bad value): ignored.
    std::fs::write(&conf, "DURABILITY=normal\n").unwrap();
    for (env, config) in [("normal", "/dev/null"), ("fast", "/dev/null"), ("", c)] {
        let o = va
            .cmd(&args(&["alloc", "bad/name"]))
            .env("VE_ALLOC_DURABILITY", env)
            .env("VE_ALLOC_CONFIG", config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(65), "{env} {config}: {err}");
        assert!(!err.contains("durability"), "{err}");
    }
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
    assert_eq!(va.names().len(), 4);
    assert_eq!(va.ok(&["gc", "b"]), "a\nc\n");
    assert_eq!(va.names(), ["b", "s"]);
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

#[test]
fn gc_with_no_live_names_is_refused_unless_all_gone() {
    let va = Va::new();
    for n in ["a", "b"] {
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
    let before = va.list();
    for input in ["", "\n\n  \n"] {
        let o = va.run_stdin(&["gc"], input);
        assert_eq!(o.status.code(), Some(65), "{input:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--all-gone"), "{err}");
        assert!(o.stdout.is_empty());
    }
    assert_eq!(va.run_stdin(&["gc", "-"], "").status.code(), Some(65));
    assert_eq!(
        va.run_stdin(&["gc", "--dry-run"], "").status.code(),
        Some(65)
    );
    // The README's recipe, with the machines directory empty or missing.
    let empty = va.dir.path().join("machines");
    std::fs::create_dir(&empty).unwrap();
    for dir in [empty.clone(), va.dir.path().join("missing")] {
        let o = va
            .cmd(&[])
            .arg0_sh(&format!("ls {} 2>/dev/null | \"$VA\" gc", dir.display()))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(65), "{}", dir.display());
    }
    assert_eq!(va.list(), before, "nothing released");
    // Asked for explicitly: every dynamic lease goes, static ones stay.
    assert_eq!(
        va.run_stdin(&["gc", "--all-gone", "--dry-run"], "").stdout,
        b"a\nb\n"
    );
    let o = va.run_stdin(&["gc", "--all-gone"], "");
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "a\nb\n");
    assert_eq!(va.names(), ["s"]);
    // --all-gone still keeps names it is given.
    va.ok(&["alloc", "c"]);
    assert_eq!(va.run_stdin(&["gc", "--all-gone"], "c\n").stdout, b"");
    assert_eq!(va.names(), ["c", "s"]);
}

/// Run a shell line with `$VA` set to the binary and the test's environment.
trait ShellLine {
    fn arg0_sh(&mut self, line: &str) -> &mut Self;
}

impl ShellLine for Command {
    fn arg0_sh(&mut self, line: &str) -> &mut Self {
        let mut c = Command::new("sh");
        c.args(["-c", line])
            .env("VA", env!("CARGO_BIN_EXE_ve-alloc"));
        for (k, v) in self.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        *self = c;
        self
    }
}

#[test]
fn release_dash_reads_names_from_stdin() {
    let va = Va::new();
    for n in ["a", "b", "c", "d"] {
        va.ok(&["alloc", n]);
    }
    let o = va.run_stdin(&["release", "-"], "a\n\n b \n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(va.names(), ["c", "d"]);
    // Mixed with arguments; an unknown name is no error.
    let o = va.run_stdin(&["release", "c", "-"], "nope\n");
    assert!(o.status.success());
    assert_eq!(va.names(), ["d"]);
    // A bad name anywhere releases nothing.
    let o = va.run_stdin(&["release", "-"], "d\nbad/name\n");
    assert_eq!(o.status.code(), Some(65));
    assert_eq!(va.names(), ["d"]);
    // Nothing on stdin: nothing to do.
    assert!(va.run_stdin(&["release", "-"], "").status.success());
    assert_eq!(va.names(), ["d"]);
}

#[test]
fn store_paths_that_are_not_directories_are_refused_before_anything_is_made() {
    let va = Va::new();
    let root = va.dir.path();
    // The database file instead of its directory.
    let file = root.join("x").join("leases.db");
    let e = va.fails(&["--store", file.to_str().unwrap(), "alloc", "a"], 64);
    assert!(e.contains("did you mean"), "{e}");
    assert!(!root.join("x").exists(), "nothing created");
    // Not a store URL, or a mistyped or incomplete etcd one: never a directory named
    // `etcd:` (in the working directory or anywhere), and nothing contacted.
    for url in [
        "etcd:127.0.0.1:2379",
        "file:///tmp/x",
        "etcd://",
        "etcd://host",
    ] {
        let o = va
            .cmd(&["--store", url, "alloc", "a"])
            .current_dir(root)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(64), "{url}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("URL"));
    }
    let o = va
        .cmd(&["alloc", "a"])
        .env("VE_ALLOC_STORE", "etcd:127.0.0.1:2379")
        .current_dir(root)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64));
    let conf = root.join("c.conf");
    std::fs::write(&conf, "STORE=etcd://127.0.0.1\n").unwrap();
    let o = va
        .cmd(&["--config", conf.to_str().unwrap(), "alloc", "a"])
        .env_remove("VE_ALLOC_STORE")
        .current_dir(root)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78));
    assert!(!root.join("etcd:").exists());
    // An existing directory whose name ends in .db is a directory like any other.
    let dir = root.join("old.db");
    std::fs::create_dir(&dir).unwrap();
    va.ok(&["--store", dir.to_str().unwrap(), "alloc", "a"]);
    assert!(dir.join("leases.db").is_file());
}

#[test]
fn a_regular_file_as_the_store_is_74_for_every_command() {
    let va = Va::new();
    let file = va.dir.path().join("plain");
    std::fs::write(&file, "not a store\n").unwrap();
    let through = file.join("sub");
    for store in [&file, &through] {
        let s = store.to_str().unwrap();
        for cmd in [
            &["list"][..],
            &["list", "--json"],
            &["show", "web"],
            &["show-ip", "web"],
            &["release", "web"],
            &["alloc", "web"],
            &["gc", "--all-gone"],
            &["gc", "other"],
        ] {
            let e = va.fails(&[&["--store", s], cmd].concat(), 74);
            assert!(e.contains("not a directory"), "{cmd:?}: {e}");
        }
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a store\n");
}

#[test]
fn a_store_the_caller_cannot_read_is_77_never_empty() {
    if !testbed::privileged(
        "a_store_the_caller_cannot_read_is_77_never_empty",
        &["setpriv"],
    ) {
        return;
    }
    let va = Va::new();
    va.ok(&["alloc", "web"]);
    let before = va.list();
    // The binary where `nobody` can run it.
    let bin = va.dir.path().join("ve-alloc");
    std::fs::copy(env!("CARGO_BIN_EXE_ve-alloc"), &bin).unwrap();
    let store = va.dir.path().join("store");
    let as_nobody = |args: &[&str]| {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args(args)
            .env("VE_ALLOC_STORE", &store)
            .env("VE_ALLOC_CONFIG", "/dev/null")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            o.stdout,
        )
    };
    let cmds: [&[&str]; 7] = [
        &["list"],
        &["show", "web"],
        &["show-ip", "web"],
        &["release", "web"],
        &["alloc", "other"],
        &["gc", "--all-gone"],
        &["gc", "--dry-run", "other"],
    ];
    use std::os::unix::fs::PermissionsExt;
    // The store as ve-alloc makes it (0750), then a directory nobody may even list.
    for mode in [None, Some(0o700), Some(0o300)] {
        if let Some(m) = mode {
            std::fs::set_permissions(&store, std::fs::Permissions::from_mode(m)).unwrap();
        }
        for cmd in cmds {
            let (code, err, out) = as_nobody(cmd);
            assert_eq!(code, Some(77), "{mode:?} {cmd:?}: {err}");
            assert!(err.contains("permission denied"), "{cmd:?}: {err}");
            assert!(out.is_empty());
        }
    }
    // A database file nobody may open, in a directory anyone may enter.
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = store.join("leases.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    for cmd in cmds {
        let (code, err, _) = as_nobody(cmd);
        assert_eq!(code, Some(77), "{cmd:?}: {err}");
    }
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o750)).unwrap();
    assert_eq!(va.list(), before, "the lease stayed");
}

#[test]
fn store_files_are_0640_in_a_0750_directory() {
    use std::os::unix::fs::PermissionsExt;
    let va = Va::new();
    let store = va.dir.path().join("deep").join("store");
    va.ok(&["--store", store.to_str().unwrap(), "alloc", "a"]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    // The umask may take more away, never add.
    for dir in [&store, &va.dir.path().join("deep")] {
        let m = mode(dir);
        assert_eq!(m & !0o750, 0, "{}: {m:o}", dir.display());
        assert_eq!(m & 0o700, 0o700);
    }
    for f in ["leases.db", "leases.db-wal", "leases.db-shm"] {
        let p = store.join(f);
        if p.exists() {
            let m = mode(&p);
            assert_eq!(m & !0o640, 0, "{f}: {m:o}");
            assert_eq!(m & 0o600, 0o600, "{f}: {m:o}");
        }
    }
}

#[test]
fn empty_settings_mean_the_next_source() {
    let va = Va::new();
    let conf = va.dir.path().join("empty.conf");
    std::fs::write(&conf, "STORE=\nPOOL=\nPOOL6=\nLAYOUT=\n").unwrap();
    let c = conf.to_str().unwrap();
    // POOL= and LAYOUT= are the defaults (before: "invalid pool", "unknown layout").
    assert_eq!(
        va.ok(&["--config", c, "alloc", "a"]),
        "HOST_ADDRESS=10.233.0.2\nLOCAL_ADDRESS=10.233.0.3\n"
    );
    // STORE= is the default store, never the working directory. A store sits in the
    // working directory here; without the fix, `show` would find its lease. (The
    // default store is only read, never created, by `show`.)
    let cwd = va.dir.path().join("cwd");
    let name = format!("ve-test-empty-store-{}", std::process::id());
    va.ok(&["--store", cwd.to_str().unwrap(), "alloc", &name]);
    let o = va
        .cmd(&["-vv", "--config", c, "show", &name])
        .env_remove("VE_ALLOC_STORE")
        .current_dir(&cwd)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("debug: store /var/lib/ve-alloc,"), "{err}");
    assert!(
        o.stdout.is_empty(),
        "read the store in the working directory"
    );
    assert_ne!(o.status.code(), Some(0), "{err}");
    // Empty environment values are no values either: the file decides.
    std::fs::write(&conf, "POOL=198.51.100.0/24\nLAYOUT=pairs\n").unwrap();
    let o = va
        .cmd(&["--config", c, "alloc", "b"])
        .env("VE_ALLOC_POOL", "")
        .env("VE_ALLOC_POOL6", "")
        .env("VE_ALLOC_LAYOUT", "")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "HOST_ADDRESS=198.51.100.2\nLOCAL_ADDRESS=198.51.100.3\n"
    );
    // VE_ALLOC_CONFIG= too: the default file, not a usage error (it was 64).
    let o = va
        .cmd(&["-vv", "show-ip", "b"])
        .env("VE_ALLOC_CONFIG", "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("usage"), "{err}");
}

#[test]
fn unusable_pools_are_refused() {
    let va = Va::new();
    for pool in [
        "0.0.0.0/0",
        "224.0.0.0/29",
        "127.0.0.0/29",
        "169.254.0.0/16",
        "255.255.255.248/29",
    ] {
        let e = va.fails(&["--pool", pool, "alloc", "x"], 65);
        assert!(e.contains("cannot hold container addresses"), "{pool}: {e}");
    }
    for pool6 in ["fe80::/64", "::/0", "ff02::/64", "::ffff:0:0/96"] {
        va.fails(&["--pool6", pool6, "alloc", "x"], 65);
    }
    let conf = va.dir.path().join("bad.conf");
    for line in ["POOL=224.0.0.0/29", "POOL6=fe80::/64"] {
        std::fs::write(&conf, format!("{line}\n")).unwrap();
        va.fails(&["--config", conf.to_str().unwrap(), "alloc", "x"], 78);
    }
    assert_eq!(va.list(), "");
}

#[test]
fn config_errors_never_quote_the_file() {
    let va = Va::new();
    let conf = va.dir.path().join("shadow");
    for text in [
        "root:$y$j9T$s3cr3tS4lt$s3cr3tH4sh:19700:0:99999:7:::\n",
        "TOKEN=s3cr3t value\n",
        "my s3cr3t=1\n",
        "TOKEN=s3cr3t\n",
    ] {
        std::fs::write(&conf, text).unwrap();
        let e = va.fails(&["--config", conf.to_str().unwrap(), "list"], 78);
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(e.contains(conf.to_str().unwrap()), "{e}");
    }
}

#[test]
fn host_equal_to_local_is_bad_input() {
    let va = Va::new();
    va.fails(
        &[
            "reserve",
            "r",
            "--host-address",
            "10.233.0.9",
            "--local-address",
            "10.233.0.9",
        ],
        65,
    );
    va.fails(
        &[
            "--pool6",
            "fd42::/64",
            "reserve",
            "r",
            "--host-address6",
            "fd42::9",
            "--local-address6",
            "fd42::9",
        ],
        65,
    );
    assert_eq!(va.list(), "");
}

#[test]
fn a_name_whose_interface_name_is_leased_is_refused() {
    // These two shorten to the same interface name (common::name pins the pair).
    let (a, b) = ("abc10eeb871e86d1243", "abcf567240c36315443");
    assert_eq!(common::name::host_ifname(a), common::name::host_ifname(b));
    let va = Va::new();
    va.ok(&["alloc", a]);
    let before = va.list();
    let e = va.fails(&["alloc", b], 65);
    assert!(e.contains(&common::name::host_ifname(a)), "{e}");
    assert!(e.contains(a), "{e}");
    va.fails(
        &[
            "reserve",
            b,
            "--host-address",
            "10.233.9.2",
            "--local-address",
            "10.233.9.3",
        ],
        65,
    );
    assert_eq!(va.list(), before);
    // The holder itself is fine, and so is the other name once the first is gone.
    va.ok(&["alloc", a]);
    va.ok(&["release", a]);
    va.ok(&["alloc", b]);
}

#[test]
fn help_describes_every_argument_and_completes_layouts() {
    let cmd = ve_alloc::command();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            assert!(
                arg.get_help().is_some(),
                "{} {}: no help text",
                sub.get_name(),
                arg.get_id()
            );
        }
    }
    let layout = cmd
        .get_arguments()
        .find(|a| a.get_id() == "layout")
        .unwrap();
    let values: Vec<String> = layout
        .get_possible_values()
        .iter()
        .map(|v| v.get_name().to_string())
        .collect();
    assert_eq!(values, ["pairs", "nixos"]);
}

/// Help and version are shown and exit 0 without an error line (cli::main keeps quiet
/// for Kind::Help); a bare `ve-alloc` is one usage error line, exit 64.
#[test]
fn help_and_version_print_no_error_line() {
    let va = Va::new();
    for args in [&["--help"][..], &["--version"], &["alloc", "--help"]] {
        let o = va.run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert!(!o.stdout.is_empty(), "{args:?}");
        assert!(
            o.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = va.run(&[]);
    assert_eq!(o.status.code(), Some(64));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("ve-alloc: error: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn alloc_of_several_names_is_one_transaction_of_json_lines() {
    let va = Va::new();
    // One name keeps its KEY=value output.
    let one = va.ok(&["alloc", "a"]);
    assert!(one.starts_with("HOST_ADDRESS="), "{one}");
    let leases = va.json_lines(&["alloc", "c1", "a", "c2", "c1", "--json"]);
    let names: Vec<&str> = leases.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["c1", "a", "c2"],
        "order given, a repeated name once"
    );
    assert_eq!(
        va.json(&["show", "a", "--json"]),
        leases[1],
        "a kept its lease"
    );
    // Idempotent: the same leases again, nothing new stored.
    let before = va.list();
    assert_eq!(va.json_lines(&["alloc", "c1", "a", "c2", "--json"]), leases);
    assert_eq!(va.list(), before);
    // Several names without --json: refused, nothing stored.
    let e = va.fails(&["alloc", "c3", "c4"], 64);
    assert!(e.contains("--json"), "{e}");
    assert_eq!(va.list(), before);
}

#[test]
fn one_bad_name_among_several_refuses_all() {
    let va = Va::new();
    va.fails(&["alloc", "ok1", "a/b", "ok2", "--json"], 65);
    assert!(
        !va.dir.path().join("store").join("leases.db").exists(),
        "validated before the store is opened"
    );
    va.ok(&["alloc", "keep"]);
    let before = va.list();
    va.fails(&["alloc", "ok1", "a b", "--json"], 65);
    assert_eq!(va.list(), before);
    // A failure inside the transaction (the pool runs out at the third) stores none.
    let pool = ["--pool", "192.0.2.0/29"];
    let va = Va::new();
    let e = va.fails(
        &[&pool[..], &["alloc", "p1", "p2", "p3", "--json"]].concat(),
        73,
    );
    assert!(e.contains("p3") && e.contains("exhausted"), "{e}");
    assert_eq!(va.names(), Vec::<String>::new());
}
