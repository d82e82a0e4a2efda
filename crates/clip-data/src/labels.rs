//! Class labels for images, read from a `filepath<TAB>label` table (the layout of the
//! bundled `labels.tsv` files), for linear probes and label-aware experiments.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::io_err;
use crate::{DataError, Result};

/// Images and their class names, with the classes numbered in order of first appearance.
#[derive(Debug, Clone)]
pub struct LabelTable {
    /// The table's own path (for error messages).
    pub path: PathBuf,
    /// Class names; a label id indexes this list.
    pub classes: Vec<String>,
    /// `(canonical image path, label id, 1-based line)` per row.
    pub rows: Vec<(PathBuf, usize, usize)>,
}

impl LabelTable {
    /// Reads a tab-separated table with a header naming `image_key` and `label_key`; image
    /// paths are relative to the table's folder and must exist (an error names the line).
    pub fn read(path: &Path, image_key: &str, label_key: &str) -> Result<Self> {
        let text = std::fs::read(path).map_err(io_err(path))?;
        let text = String::from_utf8(text).map_err(|_| DataError::BadRecord {
            path: path.to_path_buf(),
            line: 1,
            message: "not valid UTF-8".into(),
        })?;
        let bad = |line: usize, message: String| DataError::BadRecord {
            path: path.to_path_buf(),
            line,
            message,
        };
        let mut lines = text.lines().enumerate();
        let header: Vec<&str> = lines
            .next()
            .map(|(_, h)| h.split('\t').collect())
            .unwrap_or_default();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h.trim() == name)
                .ok_or_else(|| DataError::MissingColumn {
                    path: path.to_path_buf(),
                    column: name.to_string(),
                    found: header.join(", "),
                })
        };
        let (ic, lc) = (col(image_key)?, col(label_key)?);
        let base = path.parent().unwrap_or(Path::new("."));
        let mut classes: Vec<String> = Vec::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut rows = Vec::new();
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let (Some(img), Some(label)) = (fields.get(ic), fields.get(lc)) else {
                return Err(bad(i + 1, format!("expected {} fields", header.len())));
            };
            let label = label.trim();
            if label.is_empty() {
                return Err(bad(i + 1, format!("empty label for {img}")));
            }
            let file = base.join(img.trim());
            let canon = file.canonicalize().map_err(|e| {
                bad(
                    i + 1,
                    format!("image {} cannot be read: {e}", file.display()),
                )
            })?;
            let id = *ids.entry(label.to_string()).or_insert_with(|| {
                classes.push(label.to_string());
                classes.len() - 1
            });
            rows.push((canon, id, i + 1));
        }
        if rows.is_empty() {
            return Err(bad(1, "no labelled images".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            classes,
            rows,
        })
    }

    /// Label id per canonical image path.
    pub fn by_path(&self) -> HashMap<PathBuf, usize> {
        self.rows
            .iter()
            .map(|(p, id, _)| (p.clone(), *id))
            .collect()
    }

    /// Label ids for images named by path (as `Item::name` holds them); an image the table
    /// does not list is an error naming it.
    pub fn lookup<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Result<Vec<usize>> {
        let map = self.by_path();
        names
            .into_iter()
            .map(|name| {
                Path::new(name)
                    .canonicalize()
                    .ok()
                    .and_then(|p| map.get(&p).copied())
                    .ok_or_else(|| DataError::BadRecord {
                        path: self.path.clone(),
                        line: 0,
                        message: format!("no label for image {name}"),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels_and_names_bad_rows() {
        let d = tempfile::tempdir().unwrap();
        for n in ["a.png", "b.png", "c.png"] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        let p = d.path().join("labels.tsv");
        std::fs::write(&p, "filepath\tlabel\na.png\tcat\nb.png\tdog\nc.png\tcat\n").unwrap();
        let t = LabelTable::read(&p, "filepath", "label").unwrap();
        assert_eq!(t.classes, ["cat", "dog"]);
        let a = d.path().join("a.png").display().to_string();
        let c = d.path().join("c.png").display().to_string();
        assert_eq!(t.lookup([a.as_str(), c.as_str()]).unwrap(), [0, 0]);
        let err = t.lookup(["elsewhere.png"]).unwrap_err().to_string();
        assert!(err.contains("elsewhere.png"), "{err}");

        for (text, want) in [
            (
                "filepath\tlabel\na.png\tcat\nmissing.png\tdog\n",
                ["labels.tsv:3", "missing.png"],
            ),
            ("path\tclass\na.png\tcat\n", ["`filepath`", "path, class"]),
        ] {
            std::fs::write(&p, text).unwrap();
            let err = LabelTable::read(&p, "filepath", "label")
                .unwrap_err()
                .to_string();
            assert!(want.iter().all(|w| err.contains(w)), "{err}");
        }
    }
}
