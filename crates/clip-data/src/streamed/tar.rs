//! A tar stream read in order into samples: webdataset's members grouped by key, undecoded
//! ([`RawSample`]), and an evaluation set read whole from shards ([`read_shards`]).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use shard_source::{Opener, ShardError, ShardUrl};

use crate::limits::{self, MAX_CAPTION_BYTES, MAX_IMAGE_BYTES};
use crate::samples::{caption_text, decode_downscaled};
use crate::source::{split_key, IMAGE_EXTS};
use crate::{
    error_chain, summarize_skips, DataError, Item, Result, Sample, SampleSet, Skip, SkipReason,
};

/// One sample as its shard holds it, not yet decoded.
#[derive(Debug, Clone)]
pub struct RawSample {
    /// `shard:key`.
    pub name: String,
    /// The image's extension and bytes.
    image: Option<(String, Vec<u8>)>,
    caption: Option<Vec<u8>>,
    /// Why it cannot be used, found while reading (a member over its size cap).
    bad: Option<SkipReason>,
    /// The key (webdataset's: the member name up to its first dot).
    key: String,
    /// Where the image member's bytes lie in the shard: offset and length.
    image_at: Option<(u64, u64)>,
}

impl RawSample {
    fn new(name: String, key: &str) -> Self {
        Self {
            name,
            image: None,
            caption: None,
            bad: None,
            key: key.to_string(),
            image_at: None,
        }
    }

    /// The sample's key in its shard.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The image member's extension (`jpg`, `x.png`), and where its bytes lie in the shard
    /// (offset, length), so that they can be read again alone, e.g. for a thumbnail.
    pub fn image_member(&self) -> Option<(&str, u64, u64)> {
        let (ext, _) = self.image.as_ref()?;
        let (offset, len) = self.image_at?;
        Some((ext, offset, len))
    }

    /// The caption, trimmed; `None` when there is none, or it is empty or not UTF-8.
    pub fn caption(&self) -> Option<String> {
        let c = self.caption.clone()?;
        caption_text(c).ok()?.into_iter().next()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.image.as_ref().map_or(0, |(_, b)| b.len()) + self.caption.as_ref().map_or(0, Vec::len)
    }

    /// Decodes the image (downscaled to `max_short_side`, as [`crate::SampleSet::load`]) and
    /// reads the caption when `need_captions`; an error is the reason to skip it.
    pub fn decode(
        &self,
        max_short_side: u32,
        need_captions: bool,
    ) -> std::result::Result<Sample, SkipReason> {
        if let Some(why) = &self.bad {
            return Err(why.clone());
        }
        let Some((ext, bytes)) = &self.image else {
            return Err(SkipReason::NoImage);
        };
        let captions = match (&self.caption, need_captions) {
            (_, false) => Vec::new(),
            (None, true) => return Err(SkipReason::NoCaption),
            (Some(c), true) => caption_text(c.clone()).map_err(SkipReason::Caption)?,
        };
        let name = format!("{}.{ext}", self.name);
        let image = decode_downscaled(bytes, Path::new(&name), max_short_side)?;
        Ok(Sample { image, captions })
    }
}

/// Reads a tar stream's samples in order: members sharing a key (webdataset's convention:
/// the file name up to its first dot) make one sample, which ends where the next key begins.
/// `emit` returns false to stop early. An error is why the rest of the shard is lost (the
/// sample being read when it struck is dropped).
pub fn tar_samples(
    reader: impl Read,
    shard: &str,
    mut emit: impl FnMut(RawSample) -> bool,
) -> std::result::Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| lost(&e))?;
    let mut current: Option<(String, RawSample)> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| lost(&e))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Ok(path) = entry.path().map(|p| p.to_string_lossy().into_owned()) else {
            continue;
        };
        let Some((key, ext)) = split_key(&path) else {
            continue;
        };
        let ext = ext.to_ascii_lowercase();
        // `b.x.png`'s extension is `x.png` (webdataset's key rule); its last suffix says
        // what it is.
        let kind = ext.rsplit('.').next().unwrap_or_default();
        let max = match kind {
            "txt" => MAX_CAPTION_BYTES,
            k if IMAGE_EXTS.contains(&k) => MAX_IMAGE_BYTES,
            _ => continue,
        };
        if current.as_ref().is_some_and(|(k, _)| k != key) {
            let (_, done) = current.take().expect("checked");
            if !emit(done) {
                return Ok(());
            }
        }
        let (_, sample) = current.get_or_insert_with(|| {
            (
                key.to_string(),
                RawSample::new(format!("{shard}:{key}"), key),
            )
        });
        if entry.size() > max {
            // Not read: the archive skips over it.
            let why = format!("member {path} is {}", limits::too_big(entry.size(), max));
            sample.bad = Some(SkipReason::Image(why));
            continue;
        }
        let at = (entry.raw_file_position(), entry.size());
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(|e| lost(&e))?;
        if bytes.len() as u64 != entry.size() {
            return Err(format!("shard is cut off in the middle of member {path}"));
        }
        match kind {
            "txt" => sample.caption = Some(bytes),
            _ => {
                sample.image = Some((ext, bytes));
                sample.image_at = Some(at);
            }
        }
    }
    if let Some((_, last)) = current {
        emit(last);
    }
    Ok(())
}

/// Why the rest of a shard is lost, from a read error: the byte layer's own error (URL,
/// offset, retries, cause) when it has one.
fn lost(e: &std::io::Error) -> String {
    match ShardError::from_io(e) {
        Some(shard) => error_chain(shard),
        None => format!("shard is cut off or damaged: {e}"),
    }
}

/// Every sample of `shards`, each shard read once in the order given and decoded whole (an
/// evaluation set: it is held in memory); what cannot be used is listed, not fatal, unless
/// nothing is left.
pub fn read_shards(shards: &[ShardUrl], opener: &Opener, need_captions: bool) -> Result<SampleSet> {
    let (mut items, mut skips) = (Vec::new(), Vec::new());
    for url in shards {
        let name = url.to_string();
        let read = match opener.open(url) {
            Ok(reader) => tar_samples(std::io::BufReader::new(reader), &name, |raw| {
                match raw.decode(u32::MAX, need_captions) {
                    Ok(s) => items.push(Item {
                        name: raw.name,
                        image: Arc::unwrap_or_clone(s.image),
                        captions: s.captions,
                    }),
                    Err(why) => skips.push(Skip::new(&raw.name, why)),
                }
                true
            }),
            Err(e) => Err(error_chain(&e)),
        };
        if let Err(why) = read {
            skips.push(Skip::new(&name, SkipReason::Shard(why)));
        }
    }
    if items.is_empty() {
        let names: Vec<String> = shards.iter().map(ToString::to_string).collect();
        return Err(DataError::Empty {
            sources: names.join(", "),
            detail: format!(
                " (skipped: {})",
                summarize_skips(&skips).replace('\n', "; ")
            ),
        });
    }
    Ok(SampleSet::from_items(items).with_skips(skips))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn members_group_by_key_in_order() {
        let t = tar_of(&[
            ("a.jpg", b"A"),
            ("a.txt", b"cap a"),
            ("a.json", b"{}"),
            ("dir/b.x.png", b"B"),
            ("dir/b.x.txt", b"cap b"),
            ("c.txt", b"orphan"),
        ]);
        let mut got = Vec::new();
        tar_samples(&t[..], "s.tar", |s| {
            got.push(s);
            true
        })
        .unwrap();
        let names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s.tar:a", "s.tar:dir/b", "s.tar:c"]);
        assert_eq!(got[0].image.as_ref().unwrap().1, b"A");
        assert_eq!(got[0].caption.as_deref(), Some(&b"cap a"[..]));
        assert_eq!(got[1].image.as_ref().unwrap().0, "x.png");
        assert_eq!(got[2].decode(8, true).unwrap_err(), SkipReason::NoImage);
        // Each image member can be read again alone, from where it lies in the shard.
        for s in &got[..2] {
            let (_, offset, len) = s.image_member().unwrap();
            let bytes = &t[offset as usize..(offset + len) as usize];
            assert_eq!(bytes, s.image.as_ref().unwrap().1, "{}", s.name);
        }
        assert_eq!(
            (got[1].key(), got[1].caption().as_deref()),
            ("dir/b", Some("cap b"))
        );
        assert_eq!(
            (got[2].image_member(), got[2].caption().as_deref()),
            (None, Some("orphan"))
        );
    }

    #[test]
    fn a_cut_stream_keeps_whole_samples_and_says_why() {
        let t = tar_of(&[("a.jpg", &[1; 700]), ("a.txt", b"x"), ("b.jpg", &[2; 700])]);
        let cut = &t[..t.len() - 1500];
        let mut got = Vec::new();
        let err = tar_samples(cut, "s.tar", |s| {
            got.push(s.name);
            true
        })
        .unwrap_err();
        assert_eq!(got, ["s.tar:a"]);
        assert!(err.contains("cut off"), "{err}");
    }
}
