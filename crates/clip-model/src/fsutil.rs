//! Writing directories so that a crash never leaves a half-written one in place.

use std::path::{Path, PathBuf};

use crate::error::io_err;
use crate::Result;

/// Fills a fresh sibling directory with `fill`, then swaps it in for `dest`.
///
/// A kill at any instant leaves either the old `dest` or the new one, never a mixture: the
/// new content is complete before the rename, and an old `dest` is moved aside only after.
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
    let tmp = unique_sibling(parent, &format!(".{name}.tmp"));
    std::fs::create_dir(&tmp).map_err(io_err("cannot create directory", &tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dest.exists() {
        let old = unique_sibling(parent, &format!(".{name}.old"));
        std::fs::rename(dest, &old).map_err(io_err("cannot move aside", dest))?;
        std::fs::rename(&tmp, dest).map_err(io_err("cannot rename into place", dest))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, dest).map_err(io_err("cannot rename into place", dest))?;
    }
    Ok(())
}

fn unique_sibling(parent: &Path, stem: &str) -> PathBuf {
    let pid = std::process::id();
    (0u32..)
        .map(|i| parent.join(format!("{stem}-{pid}-{i}")))
        .find(|p| !p.exists())
        .expect("some name is free")
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
    }
}
