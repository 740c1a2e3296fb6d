//! What nat.rs and nftables.rs share: testbed's ctr -- host -- out topology with a
//! lock directory and a backend, and ve-nat run in its host namespace. Each test file
//! adds its own backend's helpers in an `impl Topo` of its own.

use std::process::{Command, Output};

use testbed::{nat::NatNet, TempDir};

use super::{run_nat, BIN};

/// The shared topology plus ve-nat run in its host namespace with one backend.
pub struct Topo {
    pub net: NatNet,
    /// Holds ve-nat's lock directory (see `lock_dir`).
    pub lockdir: TempDir,
    pub backend: &'static str,
}

impl std::ops::Deref for Topo {
    type Target = NatNet;
    fn deref(&self) -> &NatNet {
        &self.net
    }
}

impl std::ops::DerefMut for Topo {
    fn deref_mut(&mut self) -> &mut NatNet {
        &mut self.net
    }
}

impl Topo {
    /// host (up0 192.0.2.1) -- out (up1 192.0.2.2, routes back to the containers),
    /// plus `n` containers.
    pub fn new(backend: &'static str, n: usize, v6: bool) -> Topo {
        Topo {
            net: NatNet::new(n, v6),
            lockdir: TempDir::new("ve-nat-lock"),
            backend,
        }
    }

    /// VE_NAT_LOCK_DIR: a directory ve-nat creates itself (so its mode does not
    /// depend on the test's umask), never the machine's /run/ve-nat.
    pub fn lock_dir(&self) -> std::path::PathBuf {
        self.lockdir.path().join("ve-nat")
    }

    /// VE_NAT_STATE_DIR: never the machine's /var/lib/ve-nat.
    pub fn state_dir(&self) -> std::path::PathBuf {
        self.lockdir.path().join("state")
    }

    /// Point `c` at this topology's lock and state directories and at a bus address
    /// that leads nowhere (never the machine's system bus), as support's `nat_cmd`.
    pub fn scratch_env<'c>(&self, c: &'c mut Command) -> &'c mut Command {
        c.env("VE_NAT_LOCK_DIR", self.lock_dir())
            .env("VE_NAT_STATE_DIR", self.state_dir())
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                format!("unix:path={}/no-bus", self.lockdir.path().display()),
            )
    }

    /// `ve-nat ARGS --backend B` in the host namespace, not run yet.
    pub fn nat_cmd(&self, args: &[&str]) -> Command {
        self.nat_cmd_with(self.backend, args)
    }

    /// `ve-nat ARGS --backend BACKEND` in the host namespace, not run yet.
    pub fn nat_cmd_with(&self, backend: &str, args: &[&str]) -> Command {
        let mut c = self.host.command(BIN);
        c.args(args)
            .args(["--backend", backend])
            .env_remove("RUST_LOG");
        self.scratch_env(&mut c);
        c
    }

    /// `ve-nat ARGS --backend B` in the host namespace.
    pub fn nat(&self, args: &[&str]) -> Output {
        run_nat(self.nat_cmd(args), args)
    }

    /// The same; must succeed: its stdout.
    pub fn nat_ok(&self, args: &[&str]) -> String {
        let out = self.nat(args);
        assert!(out.status.success(), "ve-nat {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }
}
