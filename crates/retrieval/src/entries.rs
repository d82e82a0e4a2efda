//! [`IndexEntries`]: what each row of an index stands for, read one row at a time.

use std::path::PathBuf;

use crate::error::invalid;
use crate::manifest::{Entries, EntriesKind, ImageEntry, SampleEntry};
use crate::rows::MappedRows;
use crate::Result;

/// Where the rows are.
enum Source {
    /// In memory: an index built in this process, or a version-1 manifest.
    Inline(Entries),
    /// A memory-mapped rows file (version 2), read row by row.
    Mapped(MappedRows),
}

/// What the rows of an [`crate::Index`] stand for: image files, captions, ids or shard
/// samples.
///
/// Rows of an opened index are read from its memory-mapped rows file when asked for, so
/// labelling ten hits of a ten-million-row index reads ten rows. A row damaged on disk is an
/// error naming the file (opening with the checksum on catches damage before any row is read).
pub struct IndexEntries {
    kind: EntriesKind,
    count: usize,
    source: Source,
}

impl std::fmt::Debug for IndexEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexEntries")
            .field("kind", &self.kind)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl IndexEntries {
    /// `entries` held in memory, describing `count` rows (checked by the caller).
    pub(crate) fn inline(entries: Entries, count: usize) -> Self {
        Self {
            kind: EntriesKind::of(&entries),
            count,
            source: Source::Inline(entries),
        }
    }

    /// The rows of a validated rows file.
    pub(crate) fn mapped(kind: EntriesKind, count: usize, rows: MappedRows) -> Self {
        Self {
            kind,
            count,
            source: Source::Mapped(rows),
        }
    }

    /// What the rows are (and the root of image files).
    pub fn kind(&self) -> &EntriesKind {
        &self.kind
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the rows are ids that are just row numbers (nothing is stored for them).
    pub fn is_numbered(&self) -> bool {
        matches!(&self.source, Source::Inline(Entries::Ids { ids }) if ids.is_empty())
    }

    /// The file the rows are read from, if any.
    pub fn rows_file(&self) -> Option<&std::path::Path> {
        match &self.source {
            Source::Mapped(m) => Some(m.path()),
            Source::Inline(_) => None,
        }
    }

    /// `Ok` unless the rows file was truncated under its mapping (see [`crate::Index::check_intact`]).
    pub(crate) fn check_intact(&self) -> Result<()> {
        match &self.source {
            Source::Mapped(m) => m.check(),
            Source::Inline(_) => Ok(()),
        }
    }

    /// The rows file and its identity when opened, if any.
    pub(crate) fn rows_file_id(&self) -> Option<(&std::path::Path, &crate::guard::FileId)> {
        match &self.source {
            Source::Mapped(m) => Some((m.path(), m.id())),
            Source::Inline(_) => None,
        }
    }

    fn check_row(&self, i: usize) -> Result<()> {
        if i >= self.count {
            return Err(invalid(
                "row",
                i,
                format!("the index has {} rows", self.count),
            ));
        }
        Ok(())
    }

    /// The stored text of row `i`: image path, caption or id (`None` for row numbers; a
    /// sample's shard).
    fn text(&self, i: usize) -> Result<Option<&str>> {
        self.check_row(i)?;
        Ok(match &self.source {
            Source::Mapped(m) => Some(m.text(i)?),
            Source::Inline(Entries::Images { files, .. }) => files[i].path.to_str(),
            Source::Inline(Entries::Captions { captions }) => Some(&captions[i]),
            Source::Inline(Entries::Ids { ids }) => ids.get(i).map(String::as_str),
            Source::Inline(Entries::Samples { samples, .. }) => Some(&samples[i].shard),
        })
    }

    /// A human-readable name of row `i`: the full image path, the caption, the id (the row
    /// number when there are none), or a sample's `SHARD#KEY`.
    pub fn try_label(&self, i: usize) -> Result<String> {
        if let Some(p) = self.image_path(i)? {
            return Ok(p.display().to_string());
        }
        if let Some(s) = self.sample(i)? {
            return Ok(s.name());
        }
        Ok(match self.text(i)? {
            Some(t) => t.to_string(),
            None => i.to_string(),
        })
    }

    /// [`IndexEntries::try_label`], with the error's message in place of a label that cannot
    /// be read (a row out of range, or damaged on disk).
    pub fn label(&self, i: usize) -> String {
        self.try_label(i)
            .unwrap_or_else(|e| format!("<row {i} unreadable: {e}>"))
    }

    /// Row `i` of an image index; `None` for other kinds.
    pub fn image(&self, i: usize) -> Result<Option<ImageEntry>> {
        self.check_row(i)?;
        Ok(match &self.source {
            Source::Inline(Entries::Images { files, .. }) => Some(files[i].clone()),
            Source::Mapped(m) if matches!(self.kind, EntriesKind::Images { .. }) => {
                Some(m.image(i)?)
            }
            _ => None,
        })
    }

    /// The path on disk of row `i` of an image index (its root joined with its path); `None`
    /// for other kinds.
    pub fn image_path(&self, i: usize) -> Result<Option<PathBuf>> {
        let EntriesKind::Images { root } = &self.kind else {
            self.check_row(i)?;
            return Ok(None);
        };
        Ok(self.image(i)?.map(|e| root.join(e.path)))
    }

    /// Row `i` of a samples index; `None` for other kinds.
    pub fn sample(&self, i: usize) -> Result<Option<SampleEntry>> {
        self.check_row(i)?;
        Ok(match &self.source {
            Source::Inline(Entries::Samples { samples, .. }) => Some(samples[i].clone()),
            Source::Mapped(m) if matches!(self.kind, EntriesKind::Samples { .. }) => {
                Some(m.sample(i)?)
            }
            _ => None,
        })
    }

    /// The caption of row `i` of a caption index; `None` for other kinds. For a samples
    /// index see [`IndexEntries::sample`].
    pub fn caption(&self, i: usize) -> Result<Option<&str>> {
        match self.kind {
            EntriesKind::Captions => self.text(i),
            _ => self.check_row(i).map(|()| None),
        }
    }

    /// The id of row `i` of an ids index; `None` for other kinds and for row numbers.
    pub fn id(&self, i: usize) -> Result<Option<&str>> {
        match self.kind {
            EntriesKind::Ids => self.text(i),
            _ => self.check_row(i).map(|()| None),
        }
    }

    /// Every row of an image index in order (nothing for other kinds).
    pub fn images(&self) -> impl Iterator<Item = Result<ImageEntry>> + '_ {
        let n = match self.kind {
            EntriesKind::Images { .. } => self.count,
            _ => 0,
        };
        (0..n).filter_map(|i| self.image(i).transpose())
    }

    /// All rows in memory, e.g. to write them to a new index.
    pub fn to_entries(&self) -> Result<Entries> {
        let texts = || -> Result<Vec<String>> {
            (0..self.count)
                .map(|i| Ok(self.text(i)?.unwrap_or_default().to_string()))
                .collect()
        };
        Ok(match (&self.source, &self.kind) {
            (Source::Inline(e), _) => e.clone(),
            (Source::Mapped(_), EntriesKind::Images { root }) => Entries::Images {
                root: root.clone(),
                files: self.images().collect::<Result<_>>()?,
            },
            (Source::Mapped(_), EntriesKind::Captions) => Entries::Captions { captions: texts()? },
            (Source::Mapped(_), EntriesKind::Ids) => Entries::Ids { ids: texts()? },
            (Source::Mapped(_), EntriesKind::Samples { endpoint }) => Entries::Samples {
                endpoint: endpoint.clone(),
                samples: (0..self.count)
                    .filter_map(|i| self.sample(i).transpose())
                    .collect::<Result<_>>()?,
            },
        })
    }
}
