//! What a `--data` string names: local patterns (left whole for the caller, which knows
//! folders, manifests and globs), `pipe:` commands, http(s) URLs and s3/gs/az objects, with
//! brace patterns expanded and several specs joined by `::` (open_clip's separator).
//!
//! Remote names are never listed: a pattern names exactly the shards it expands to, and a
//! `*` in a URL is a character of the URL.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::{expand_braces, Result, ShardError};

/// The object stores reached through `object_store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// Amazon S3 and S3-compatible stores (`s3://bucket/key`).
    S3,
    /// Google Cloud Storage (`gs://bucket/key`).
    Gcs,
    /// Azure Blob Storage (`az://container/key`; the account from `AZURE_STORAGE_ACCOUNT_NAME`).
    Azure,
}

impl StoreKind {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            StoreKind::S3 => "s3",
            StoreKind::Gcs => "gs",
            StoreKind::Azure => "az",
        }
    }
}

/// Where one shard is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ShardUrl {
    /// A file on this machine.
    Local(PathBuf),
    /// A shell command whose stdout is the shard (webdataset's `pipe:`).
    Pipe(String),
    /// An http or https URL.
    Http(String),
    /// An object in a store.
    Store {
        /// Which store.
        kind: StoreKind,
        /// The bucket (container for Azure).
        bucket: String,
        /// The object's key inside it.
        key: String,
    },
}

impl fmt::Display for ShardUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardUrl::Local(p) => write!(f, "{}", p.display()),
            ShardUrl::Pipe(cmd) => write!(f, "pipe:{cmd}"),
            ShardUrl::Http(u) => f.write_str(u),
            ShardUrl::Store { kind, bucket, key } => {
                write!(f, "{}://{bucket}/{key}", kind.scheme())
            }
        }
    }
}

const SUPPORTED: &str = "pipe:, http://, https://, s3://, gs://, az://, file:// or a local path";

/// The scheme of `s` when it starts like a URL (`name://`).
fn scheme(s: &str) -> Option<&str> {
    let (head, _) = s.split_once("://")?;
    let mut chars = head.chars();
    let first_ok = chars.next()?.is_ascii_alphabetic();
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    (first_ok && rest_ok).then_some(head)
}

impl ShardUrl {
    /// One shard's location (no braces, no `::`); the error says what is wrong.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        if let Some(cmd) = s.strip_prefix("pipe:") {
            if cmd.trim().is_empty() {
                return Err("`pipe:` needs a command".into());
            }
            return Ok(ShardUrl::Pipe(cmd.to_string()));
        }
        let Some(scheme) = scheme(s) else {
            return Ok(ShardUrl::Local(PathBuf::from(s)));
        };
        let rest = &s[scheme.len() + 3..];
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "file" => return Ok(ShardUrl::Local(PathBuf::from(rest))),
            "http" | "https" => {
                let url = url::Url::parse(s).map_err(|e| format!("not a valid URL: {e}"))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err("the URL has no host".into());
                }
                return Ok(ShardUrl::Http(url.to_string()));
            }
            "s3" => StoreKind::S3,
            "gs" => StoreKind::Gcs,
            "az" => StoreKind::Azure,
            other => return Err(format!("unsupported scheme `{other}` (use {SUPPORTED})")),
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("no bucket in `{s}`"));
        }
        if key.is_empty() || key.ends_with('/') {
            return Err(format!("no object key in `{s}` (a prefix is not listed)"));
        }
        object_store::path::Path::parse(key).map_err(|e| format!("bad object key: {e}"))?;
        Ok(ShardUrl::Store {
            kind,
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// The shard's file name (`00012.tar`), the key of `sizes.json` and the stem of
    /// img2dataset's `00012_stats.json`; `None` for a command.
    pub fn name(&self) -> Option<&str> {
        match self {
            ShardUrl::Local(p) => p.file_name()?.to_str(),
            ShardUrl::Pipe(_) => None,
            ShardUrl::Http(u) => {
                let path = u.split(['?', '#']).next()?;
                path.rsplit('/').next().filter(|n| !n.is_empty())
            }
            ShardUrl::Store { key, .. } => key.rsplit('/').next(),
        }
    }

    /// The file `name` in the same folder (prefix) as this shard: where sidecar files are
    /// looked for. `None` for a command, which has no folder.
    pub fn sibling(&self, name: &str) -> Option<ShardUrl> {
        match self {
            ShardUrl::Local(p) => Some(ShardUrl::Local(
                p.parent().unwrap_or(Path::new("")).join(name),
            )),
            ShardUrl::Pipe(_) => None,
            ShardUrl::Http(u) => {
                let joined = url::Url::parse(u).ok()?.join(name).ok()?;
                Some(ShardUrl::Http(joined.to_string()))
            }
            ShardUrl::Store { kind, bucket, key } => {
                let key = match key.rsplit_once('/') {
                    Some((dir, _)) => format!("{dir}/{name}"),
                    None => name.to_string(),
                };
                Some(ShardUrl::Store {
                    kind: *kind,
                    bucket: bucket.clone(),
                    key,
                })
            }
        }
    }
}

/// One `::`-separated part of a `--data` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataPart {
    /// A local pattern, untouched: the caller expands it (an existing path as it is, else
    /// braces and globs), since only it knows folders, manifests and shard folders.
    Local(String),
    /// Remote shards (`pipe:`, http(s), s3/gs/az), braces expanded, in pattern order.
    Remote(Vec<ShardUrl>),
}

/// Splits a `--data` string at `::` (open_clip's separator for mixtures), except inside
/// `[…]`, where an IPv6 host such as `http://[::1]:8000/` keeps its colons.
pub fn split_mixture(arg: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start, mut i) = (0usize, 0, 0);
    let b = arg.as_bytes();
    while i < b.len() {
        match b[i] {
            b'[' => depth += 1,
            b']' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && b.get(i + 1) == Some(&b':') => {
                parts.push(&arg[start..i]);
                i += 2;
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&arg[start..]);
    parts
}

/// Whether a part names remote shards (anything but a local path or `file://`).
fn is_remote(part: &str) -> bool {
    part.starts_with("pipe:") || scheme(part).is_some_and(|s| !s.eq_ignore_ascii_case("file"))
}

/// The parts a `--data` string names, in order; errors name the part and what is wrong.
pub fn parse_data_arg(arg: &str) -> Result<Vec<DataPart>> {
    let mut out = Vec::new();
    for part in split_mixture(arg) {
        let bad = |reason: String| ShardError::Spec {
            spec: part.to_string(),
            reason,
        };
        if part.trim().is_empty() {
            return Err(bad(
                "empty part (two `::` in a row, or one at an end)".into()
            ));
        }
        if !is_remote(part) {
            let local = part.strip_prefix("file://").unwrap_or(part);
            out.push(DataPart::Local(local.to_string()));
            continue;
        }
        let shards = expand_braces(part)
            .map_err(bad)?
            .iter()
            .map(|s| ShardUrl::parse(s))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(bad)?;
        out.push(DataPart::Remote(shards));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(arg: &str) -> Vec<String> {
        match &parse_data_arg(arg).unwrap()[..] {
            [DataPart::Remote(v)] => v.iter().map(ToString::to_string).collect(),
            other => panic!("{other:?}"),
        }
    }

    fn err(arg: &str) -> String {
        parse_data_arg(arg).unwrap_err().to_string()
    }

    #[test]
    fn remote_specs_expand_braces() {
        assert_eq!(
            remote("https://h.org/d/{000..002}.tar"),
            [
                "https://h.org/d/000.tar",
                "https://h.org/d/001.tar",
                "https://h.org/d/002.tar"
            ]
        );
        assert_eq!(
            remote("pipe:aws s3 cp s3://b/{0..1}.tar -"),
            [
                "pipe:aws s3 cp s3://b/0.tar -",
                "pipe:aws s3 cp s3://b/1.tar -"
            ]
        );
        assert_eq!(
            remote("s3://b/p/{a,b}.tar"),
            ["s3://b/p/a.tar", "s3://b/p/b.tar"]
        );
        let gs = parse_data_arg("gs://bk/x/0.tar").unwrap();
        assert_eq!(
            gs,
            [DataPart::Remote(vec![ShardUrl::Store {
                kind: StoreKind::Gcs,
                bucket: "bk".into(),
                key: "x/0.tar".into()
            }])]
        );
        assert_eq!(remote("az://c/0.tar"), ["az://c/0.tar"]);
    }

    #[test]
    fn mixtures_split_at_double_colons_and_keep_local_parts_whole() {
        let parts = parse_data_arg("a/{0..1}.tar::http://[::1]:8080/s/{0..1}.tar::file:///d/x.tsv")
            .unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], DataPart::Local("a/{0..1}.tar".into()));
        let DataPart::Remote(h) = &parts[1] else {
            panic!("{parts:?}")
        };
        assert_eq!(h[1].to_string(), "http://[::1]:8080/s/1.tar");
        assert_eq!(parts[2], DataPart::Local("/d/x.tsv".into()));
    }

    #[test]
    fn bad_specs_name_the_part_and_the_fault() {
        let e = err("data/a.tar::ftp://h/x.tar");
        assert!(
            e.contains("ftp://h/x.tar") && e.contains("unsupported scheme `ftp`"),
            "{e}"
        );
        let e = err("s3:///k.tar");
        assert!(e.contains("no bucket"), "{e}");
        let e = err("s3://bucket");
        assert!(e.contains("no object key"), "{e}");
        let e = err("s3://bucket/prefix/");
        assert!(e.contains("not listed"), "{e}");
        let e = err("pipe:  ");
        assert!(e.contains("needs a command"), "{e}");
        let e = err("a.tar::https://");
        assert!(e.contains("data https://: not a valid URL"), "{e}");
        let e = err("pipe:cat {3..1}.tar");
        assert!(
            e.contains("pipe:cat {3..1}.tar") && e.contains("backwards"),
            "{e}"
        );
        let e = err("a.tar::::b.tar");
        assert!(e.contains("empty part"), "{e}");
    }

    #[test]
    fn names_and_siblings_find_sidecar_files() {
        let h = ShardUrl::parse("https://h.org/d/00012.tar?dl=1").unwrap();
        assert_eq!(h.name(), Some("00012.tar"));
        assert_eq!(
            h.sibling("sizes.json").unwrap().to_string(),
            "https://h.org/d/sizes.json"
        );
        let s = ShardUrl::parse("s3://b/x/y/3.tar").unwrap();
        assert_eq!(
            s.sibling("_info.json").unwrap().to_string(),
            "s3://b/x/y/_info.json"
        );
        let top = ShardUrl::parse("s3://b/3.tar").unwrap();
        assert_eq!(
            top.sibling("sizes.json").unwrap().to_string(),
            "s3://b/sizes.json"
        );
        let l = ShardUrl::parse("d/7.tar").unwrap();
        assert_eq!(l.name(), Some("7.tar"));
        assert_eq!(
            l.sibling("sizes.json"),
            Some(ShardUrl::Local("d/sizes.json".into()))
        );
        assert_eq!(ShardUrl::parse("pipe:cat x").unwrap().sibling("s"), None);
    }
}
