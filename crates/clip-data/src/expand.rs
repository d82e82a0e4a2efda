//! `--data` patterns as webdataset and open_clip write them: brace ranges and lists
//! (`shards/{00000..00999}.tar`, `{train,extra}.tsv`) and shell globs (`shards/*.tar`).

use std::path::{Path, PathBuf};

use crate::{DataError, Result};

/// Brace expansion is `shard-source`'s (one expander for local paths, URLs and `pipe:`
/// commands alike).
pub use shard_source::expand_braces;

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The paths a `--data` argument names: an existing path as it is, else its brace expansion,
/// each part globbed where it has `*`, `?` or `[`. A pattern that matches nothing is an error
/// naming it, so a typo never trains on less data than asked for.
pub fn expand_data_arg(arg: &Path) -> Result<Vec<PathBuf>> {
    if arg.exists() {
        return Ok(vec![arg.to_path_buf()]);
    }
    let text = arg.to_string_lossy();
    let bad = |reason: String| DataError::Pattern {
        pattern: text.to_string(),
        reason,
    };
    let mut out = Vec::new();
    for part in expand_braces(&text).map_err(bad)? {
        if has_glob(&part) {
            let matches = glob::glob(&part).map_err(|e| bad(e.to_string()))?;
            let mut found: Vec<PathBuf> = matches
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if found.is_empty() {
                return Err(bad(format!("`{part}` matches no file")));
            }
            found.sort();
            out.extend(found);
        } else {
            let p = PathBuf::from(&part);
            if !p.exists() {
                return Err(DataError::Io {
                    path: p,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no such file or folder (from the pattern {text})"),
                    ),
                });
            }
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_args_glob_and_name_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        for n in ["a-000.tar", "a-001.tar", "b.tar"] {
            std::fs::write(d.path().join(n), b"").unwrap();
        }
        let root = d.path().display();
        let got = expand_data_arg(Path::new(&format!("{root}/a-*.tar"))).unwrap();
        assert_eq!(got.len(), 2);
        let got = expand_data_arg(Path::new(&format!("{root}/a-{{000..001}}.tar"))).unwrap();
        assert_eq!(got[1], d.path().join("a-001.tar"));
        let err = expand_data_arg(Path::new(&format!("{root}/a-{{000..002}}.tar")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a-002.tar"), "{err}");
        let err = expand_data_arg(Path::new(&format!("{root}/z*.tar")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("matches no file"), "{err}");
    }
}
