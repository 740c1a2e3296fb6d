//! The durable half: a NetworkManager conf.d drop-in of our own that lists the patterns
//! as `unmanaged-devices`, written atomically, and removed again by `--remove`.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use common::{Error, Result};

use crate::spec::Pattern;

/// Where NetworkManager reads drop-ins on a stock system.
pub const DEFAULT_CONF_DIR: &str = "/etc/NetworkManager/conf.d";

/// Our drop-in's file name. Late in the order, though `+=` makes the order moot.
pub const DROP_IN: &str = "90-nm-unmanage.conf";

/// The drop-in's path in `dir`.
pub fn drop_in_path(dir: &Path) -> PathBuf {
    dir.join(DROP_IN)
}

/// The drop-in's text. `unmanaged-devices+=` appends to whatever the administrator's
/// own files list (a plain `=` in a later file would replace their list).
pub fn render(patterns: &[Pattern]) -> String {
    let specs: Vec<String> = patterns.iter().map(Pattern::nm_spec).collect();
    format!(
        "# Written by `nm-unmanage --persist`; `nm-unmanage --remove` deletes it.\n\
         # NetworkManager leaves devices matching these specs alone.\n\
         [keyfile]\n\
         unmanaged-devices+={}\n",
        specs.join(";")
    )
}

/// Write `text` to `dir/DROP_IN` atomically: a temporary file in the same directory
/// (not ending in `.conf`, so NetworkManager never reads it half-written), fsync,
/// rename over, fsync the directory. Returns whether the file changed.
pub fn write(dir: &Path, text: &str) -> Result<bool> {
    let path = drop_in_path(dir);
    if fs::read_to_string(&path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    let tmp = dir.join(format!(".{DROP_IN}.tmp{}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(format!("writing {}", path.display()), e));
    }
    Ok(true)
}

/// Delete the drop-in; already gone is success. Returns whether it was there.
pub fn remove(dir: &Path) -> Result<bool> {
    let path = drop_in_path(dir);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nm-unmanage-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn renders_one_appending_line() {
        let text = render(&Pattern::defaults());
        assert!(text
            .contains("\n[keyfile]\nunmanaged-devices+=interface-name:ve-*;interface-name:vb-*\n"));
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 2);
    }

    #[test]
    fn write_is_idempotent_and_remove_tolerates_absence() {
        let dir = scratch("write");
        let text = render(&Pattern::defaults());
        assert!(write(&dir, &text).unwrap());
        assert!(!write(&dir, &text).unwrap());
        assert_eq!(fs::read_to_string(drop_in_path(&dir)).unwrap(), text);
        let other = render(&[Pattern::parse("ve-x").unwrap()]);
        assert!(write(&dir, &other).unwrap());
        // Nothing else left in the directory (no temporary files).
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        assert!(remove(&dir).unwrap());
        assert!(!remove(&dir).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let e = write(Path::new("/nonexistent-nm-unmanage/conf.d"), "x").unwrap_err();
        assert_eq!(e.code(), 66);
        assert!(
            e.to_string()
                .contains("/nonexistent-nm-unmanage/conf.d/90-nm-unmanage.conf"),
            "{e}"
        );
    }
}
