//! NetworkManager conf.d drop-ins of our own that list the patterns as unmanaged
//! devices: the durable one in /etc (`--persist`), the per-boot one in /run
//! (`--runtime`), and the one a watcher keeps for as long as it runs (`--watch`).
//! Written safely and atomically, removed again by `--remove` (or the watcher). The
//! same writer and checks serve networkd's `.network` file (`networkd.rs`).

use std::{
    fs,
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use common::{Error, Result};

use crate::spec::Pattern;

/// Where NetworkManager reads drop-ins on a stock system.
pub const DEFAULT_CONF_DIR: &str = "/etc/NetworkManager/conf.d";

/// Where NetworkManager reads per-boot drop-ins (NetworkManager.conf(5); confirmed for
/// 1.42 by the tests: its `--print-config` lists the file as `run:`).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/NetworkManager/conf.d";

/// `--persist`'s drop-in. Late in the order, though `+=` makes the order moot.
pub const DROP_IN: &str = "90-nm-unmanage.conf";

/// `--runtime`'s drop-in. Not [`DROP_IN`]: a file in /etc shadows the /run file of the
/// same name, and the two may list different patterns.
pub const RUNTIME_DROP_IN: &str = "90-nm-unmanage-runtime.conf";

/// `--watch`'s drop-in, its own so that a watcher stopping does not take away what
/// `--runtime` wrote.
pub const WATCH_DROP_IN: &str = "90-nm-unmanage-watch.conf";

/// Which of the three drop-ins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Persist,
    Runtime,
    Watch,
}

impl Kind {
    pub fn file_name(self) -> &'static str {
        match self {
            Kind::Persist => DROP_IN,
            Kind::Runtime => RUNTIME_DROP_IN,
            Kind::Watch => WATCH_DROP_IN,
        }
    }
}

/// The drop-in's path in `dir`.
pub fn drop_in_path(dir: &Path, kind: Kind) -> PathBuf {
    dir.join(kind.file_name())
}

/// The drop-in's text. `unmanaged-devices+=` appends to whatever the administrator's
/// own files list (a plain `=` in a later file would replace their list).
///
/// NetworkManager reads /run/NetworkManager/conf.d *before* NetworkManager.conf, so a
/// plain `unmanaged-devices=` in NetworkManager.conf replaces the runtime drop-ins'
/// line (seen with 1.42). They therefore also carry a `[device-...]` section with
/// `managed=0`, which no `[keyfile]` setting overrides.
pub fn render(patterns: &[Pattern], kind: Kind) -> String {
    let specs: Vec<String> = patterns.iter().map(Pattern::nm_spec).collect();
    let specs = specs.join(";");
    let (by, undo) = match kind {
        Kind::Persist => ("--persist", "`nm-unmanage --remove` deletes it"),
        Kind::Runtime => ("--runtime", "`nm-unmanage --remove --runtime` deletes it"),
        Kind::Watch => ("--watch", "the watcher deletes it when it stops"),
    };
    let mut text = format!(
        "# Written by `nm-unmanage {by}`; {undo}.\n\
         # NetworkManager leaves devices matching these specs alone.\n\
         [keyfile]\n\
         unmanaged-devices+={specs}\n"
    );
    if kind != Kind::Persist {
        let section = kind.file_name().trim_start_matches("90-");
        let section = section.trim_end_matches(".conf");
        text.push_str(&format!(
            "# NetworkManager.conf is read after this directory; its own unmanaged-devices=\n\
             # would replace the line above, but not this section.\n\
             [device-{section}]\n\
             match-device={specs}\n\
             managed=0\n"
        ));
    }
    text
}

/// Create `dir` (and its parents, mode 0755) if it is missing: NetworkManager itself
/// only makes /run/NetworkManager, not its conf.d.
pub fn create_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

/// Refuse a directory that others may write to: they could plant or swap files that
/// NetworkManager (running as root) then reads. Exit 78.
fn check_dir(dir: &Path) -> Result<()> {
    let md = fs::metadata(dir).map_err(|e| Error::io(format!("{}", dir.display()), e))?;
    if !md.is_dir() {
        return Err(Error::config(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if md.uid() != 0 && md.uid() != euid {
        return Err(Error::config(format!(
            "refusing to write into {}: it belongs to uid {}, neither root nor this user",
            dir.display(),
            md.uid()
        )));
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Error::config(format!(
            "refusing to write into {}: it is group- or world-writable (mode {mode:04o}); \
             make it writable by its owner only",
            dir.display()
        )));
    }
    Ok(())
}

/// The file's text, not following a symlink; `None` when it cannot be read.
pub(crate) fn read_nofollow(path: &Path) -> Option<String> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut s = String::new();
    f.read_to_string(&mut s).ok()?;
    Some(s)
}

/// Write `text` to `dir/FILE` atomically and safely: `dir` must not be group- or
/// world-writable; a temporary file of our own in the same directory (created with
/// O_CREAT|O_EXCL|O_NOFOLLOW, mode 0644, never a file or symlink that was there; not
/// ending in `.conf` or `.network`, so neither NetworkManager nor networkd ever reads it
/// half-written), fsync, rename
/// over, fsync the directory. Returns whether the file changed. A directory that is
/// missing is exit 66, one we may not write exit 77.
pub fn write(dir: &Path, kind: Kind, text: &str) -> Result<bool> {
    write_file(dir, kind.file_name(), text)
}

/// [`write`] for any file of ours in a directory a daemon running as root reads (the
/// NetworkManager drop-ins, networkd's `.network` file): the same checks, the same
/// atomic replacement. `name` must not start with `.`: the temporary names do.
pub fn write_file(dir: &Path, name: &str, text: &str) -> Result<bool> {
    let path = dir.join(name);
    let fail = |e| Error::io(format!("writing {}", path.display()), e);
    check_dir(dir).map_err(|e| match e.kind() {
        common::Kind::Config => e,
        _ => e.context(format!("writing {}", path.display())),
    })?;
    if read_nofollow(&path).as_deref() == Some(text) {
        return Ok(false);
    }
    let Some((tmp, mut f)) = create_temp(dir, name).map_err(fail)? else {
        return Err(Error::new(
            common::Kind::CantCreate,
            format!(
                "writing {}: every temporary name is taken (.{}.{}.*.tmp)",
                path.display(),
                name,
                std::process::id()
            ),
        ));
    };
    let result = (|| -> io::Result<()> {
        f.write_all(text.as_bytes())?;
        // The umask may have taken bits away; NetworkManager reads it as root anyway,
        // but the administrator expects a normal config file.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(true)
}

/// A new temporary file next to `name`: `.NAME.PID.N.tmp`, the first N that does not
/// exist yet (`None`: all taken). O_EXCL with O_CREAT fails on anything already at that
/// path, a symlink included, so the write never goes through a planted link.
fn create_temp(dir: &Path, name: &str) -> io::Result<Option<(PathBuf, fs::File)>> {
    let pid = std::process::id();
    for n in 0..16 {
        let tmp = dir.join(format!(".{name}.{pid}.{n}.tmp"));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o644)
            .open(&tmp)
        {
            Ok(f) => return Ok(Some((tmp, f))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Delete the drop-in; already gone is success. Returns whether it was there.
pub fn remove(dir: &Path, kind: Kind) -> Result<bool> {
    remove_file(dir, kind.file_name())
}

/// [`remove`] for any file of ours.
pub fn remove_file(dir: &Path, name: &str) -> Result<bool> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A scratch directory, mode 0755, removed on drop (also when the test fails).
    fn scratch(name: &str) -> testbed::TempDir {
        let d = testbed::TempDir::new(&format!("nm-unmanage-{name}"));
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn renders_one_appending_line() {
        let text = render(&Pattern::defaults(), Kind::Persist);
        assert!(text
            .contains("\n[keyfile]\nunmanaged-devices+=interface-name:ve-*;interface-name:vb-*\n"));
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 2);
    }

    #[test]
    fn runtime_drop_ins_also_carry_a_device_section() {
        for (kind, section) in [
            (Kind::Runtime, "[device-nm-unmanage-runtime]"),
            (Kind::Watch, "[device-nm-unmanage-watch]"),
        ] {
            let text = render(&Pattern::defaults(), kind);
            let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
            assert_eq!(
                lines,
                [
                    "[keyfile]",
                    "unmanaged-devices+=interface-name:ve-*;interface-name:vb-*",
                    section,
                    "match-device=interface-name:ve-*;interface-name:vb-*",
                    "managed=0"
                ],
                "{kind:?}"
            );
        }
    }

    #[test]
    fn write_is_idempotent_and_remove_tolerates_absence() {
        let tmp = scratch("write");
        let dir = tmp.path();
        let text = render(&Pattern::defaults(), Kind::Persist);
        assert!(write(dir, Kind::Persist, &text).unwrap());
        assert!(!write(dir, Kind::Persist, &text).unwrap());
        let path = drop_in_path(dir, Kind::Persist);
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        let other = render(&[Pattern::parse("ve-x").unwrap()], Kind::Persist);
        assert!(write(dir, Kind::Persist, &other).unwrap());
        // Nothing else left in the directory (no temporary files).
        assert_eq!(fs::read_dir(dir).unwrap().count(), 1);
        assert!(remove(dir, Kind::Persist).unwrap());
        assert!(!remove(dir, Kind::Persist).unwrap());
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let e = write(
            Path::new("/nonexistent-nm-unmanage/conf.d"),
            Kind::Persist,
            "x",
        )
        .unwrap_err();
        assert_eq!(e.code(), 66);
        assert!(
            e.to_string()
                .contains("/nonexistent-nm-unmanage/conf.d/90-nm-unmanage.conf"),
            "{e}"
        );
    }

    #[test]
    fn a_planted_symlink_at_the_temporary_name_is_never_written_through() {
        let tmp = scratch("symlink");
        let dir = tmp.path();
        let victim = dir.join("victim");
        fs::write(&victim, "precious\n").unwrap();
        // Every temporary name this process would try, and one dangling link.
        let pid = std::process::id();
        for n in 0..15 {
            std::os::unix::fs::symlink(&victim, dir.join(format!(".{DROP_IN}.{pid}.{n}.tmp")))
                .unwrap();
        }
        let text = render(&Pattern::defaults(), Kind::Persist);
        assert!(write(dir, Kind::Persist, &text).unwrap());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        let path = drop_in_path(dir, Kind::Persist);
        assert!(!fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        // All 16 names taken by links: refused, still nothing written through.
        std::os::unix::fs::symlink(&victim, dir.join(format!(".{DROP_IN}.{pid}.15.tmp"))).unwrap();
        let other = render(&[Pattern::parse("ve-x").unwrap()], Kind::Persist);
        let e = write(dir, Kind::Persist, &other).unwrap_err();
        assert_eq!(e.code(), 73, "{e}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        // A symlink as the drop-in itself is replaced, not followed.
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        for n in 0..16 {
            fs::remove_file(dir.join(format!(".{DROP_IN}.{pid}.{n}.tmp"))).unwrap();
        }
        assert!(write(dir, Kind::Persist, &text).unwrap());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(!fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_directory_others_may_write_is_refused_with_nothing_written() {
        for mode in [0o777, 0o1777, 0o775, 0o757] {
            let tmp = scratch(&format!("mode{mode:o}"));
            let dir = tmp.path();
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
            let e = write(dir, Kind::Persist, "x").unwrap_err();
            assert_eq!(e.code(), 78, "{mode:o}: {e}");
            assert!(e.to_string().contains("group- or world-writable"), "{e}");
            assert_eq!(fs::read_dir(dir).unwrap().count(), 0, "{mode:o}");
        }
    }
}
