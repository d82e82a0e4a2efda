//! Writing directories so that a crash never leaves a half-written one in place.

use std::path::Path;

use crate::error::io_err;
use crate::Result;

/// Fills a fresh sibling directory with `fill`, then swaps it in for `dest`.
///
/// A kill at any instant leaves either the old `dest` or the new one, never a mixture: the
/// new content is complete before the rename, and an old `dest` is moved aside only after.
/// Both the new content and the old copy live in `tempfile` directories next to `dest`, so
/// either is removed on every error path.
pub fn replace_dir_atomically(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err("cannot create directory", parent))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = sibling_dir(parent, &format!(".{name}.tmp-"))?;
    fill(tmp.path())?;
    // Moved aside into a temporary directory that is deleted when this function returns.
    let aside = if dest.exists() {
        let aside = sibling_dir(parent, &format!(".{name}.old-"))?;
        std::fs::rename(dest, aside.path().join(&name))
            .map_err(io_err("cannot move aside", dest))?;
        Some(aside)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(tmp.path(), dest) {
        if let Some(aside) = &aside {
            // Put the old copy back rather than delete it with `aside`.
            let _ = std::fs::rename(aside.path().join(&name), dest);
        }
        return Err(io_err("cannot rename into place", dest)(e));
    }
    // The rename emptied `tmp`'s path; forget it rather than delete whatever is there now.
    let _ = tmp.keep();
    drop(aside);
    Ok(())
}

/// A new directory in `parent` named `prefix` + random characters, with the permissions a
/// plain `create_dir` would give (`tempfile` defaults to owner-only).
fn sibling_dir(parent: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    #[cfg(unix)]
    b.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o777));
    b.tempdir_in(parent)
        .map_err(io_err("cannot create directory in", parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_fill_keeps_the_old_directory() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("model");
        replace_dir_atomically(&dest, |d| {
            std::fs::write(d.join("a"), "old").map_err(io_err("w", d))
        })
        .unwrap();
        let err = replace_dir_atomically(&dest, |d| {
            std::fs::write(d.join("a"), "new").unwrap();
            Err(crate::ModelError::UnknownLayout {
                path: d.to_path_buf(),
            })
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_to_string(dest.join("a")).unwrap(), "old");
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            1,
            "temp dirs cleaned up"
        );
        replace_dir_atomically(&dest, |d| {
            std::fs::write(d.join("a"), "new").map_err(io_err("w", d))
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("a")).unwrap(), "new");
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            1,
            "old copy removed"
        );
        #[cfg(unix)]
        {
            // Same mode as a directory made the ordinary way, not tempfile's owner-only 0700.
            use std::os::unix::fs::PermissionsExt;
            let plain = root.path().join("plain");
            std::fs::create_dir(&plain).unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode(&dest), mode(&plain));
        }
    }
}
