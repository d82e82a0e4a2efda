//! Precomputed embeddings: a `[N, D]` tensor in a safetensors file, read without a full copy.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

use crate::error::{invalid, io_err};
use crate::guard::GuardedMap;
use crate::{Result, RetrievalError};

/// A memory-mapped `[rows, dim]` tensor of f32, f16, bf16 or f64, read as f32 a block at a time.
pub struct EmbeddingsFile {
    path: PathBuf,
    map: GuardedMap,
    /// Byte range of the tensor's data in `map`.
    data: Range<usize>,
    dtype: Dtype,
    rows: usize,
    dim: usize,
    ids: Option<Vec<String>>,
    metadata: std::collections::HashMap<String, String>,
}

impl std::fmt::Debug for EmbeddingsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingsFile")
            .field("path", &self.path)
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

impl EmbeddingsFile {
    /// Opens tensor `key` of `path`. If the file's metadata has an `ids` entry it must be a JSON
    /// list of strings or numbers with one item per row.
    pub fn open(path: &Path, key: &str) -> Result<Self> {
        let file = File::open(path).map_err(io_err("cannot open", path))?;
        let md = file.metadata().map_err(io_err("cannot stat", path))?;
        if !md.is_file() {
            return Err(io_err("cannot map", path)(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        // A file truncated while mapped reads as zeros and fails `check` (see `GuardedMap`).
        let map = GuardedMap::map(&file, path, false).map_err(io_err("cannot memory-map", path))?;
        let st_err = |source| RetrievalError::Safetensors {
            path: path.to_path_buf(),
            source,
        };
        let st = safetensors::SafeTensors::deserialize(&map).map_err(st_err)?;
        let view = st.tensor(key).map_err(|_| {
            let mut names = st.names();
            names.sort();
            RetrievalError::MissingTensor {
                path: path.to_path_buf(),
                key: key.to_string(),
                available: if names.is_empty() {
                    "none".into()
                } else {
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }
        })?;
        let bad_in = |key: &str, reason: String| RetrievalError::BadTensor {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let bad = |reason| bad_in(key, reason);
        let (rows, dim) = match *view.shape() {
            [r, d] => (r, d),
            ref s => return Err(bad(format!("has shape {s:?}; expected [rows, dimension]"))),
        };
        if dim == 0 {
            return Err(bad("has dimension 0".into()));
        }
        let dtype = view.dtype();
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) {
            return Err(bad(format!(
                "has element type {dtype:?}; expected F32, F16, BF16 or F64"
            )));
        }
        let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
        let data = start..start + view.data().len();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(st_err)?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let ids = metadata.get("ids").map(|json| parse_ids(json, rows));
        let ids = ids.transpose().map_err(|r| bad_in("__metadata__.ids", r))?;
        map.check()?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            data,
            dtype,
            rows,
            dim,
            ids,
            metadata,
        })
    }

    /// A string from the file's `__metadata__` (e.g. `model`, as `clip embed` writes it).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row length.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row ids from the metadata, if present.
    pub fn ids(&self) -> Option<&[String]> {
        self.ids.as_deref()
    }

    /// Reads `rows` (within `0..rows()`) as f32 into `out` (at least `rows.len() · dim`
    /// floats). An error when the range or `out` does not fit, or when the file was truncated
    /// while mapped ([`RetrievalError::ChangedWhileMapped`]).
    pub fn read_rows(&self, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        if rows.start > rows.end || rows.end > self.rows || out.len() < rows.len() * self.dim {
            return Err(invalid(
                "rows",
                format!("{rows:?}"),
                format!(
                    "{} has {} rows; the output holds {} floats of dimension {}",
                    self.path.display(),
                    self.rows,
                    out.len(),
                    self.dim
                ),
            ));
        }
        let size = self.dtype.bitsize() / 8;
        let bytes = &self.map[self.data.start + rows.start * self.dim * size
            ..self.data.start + rows.end * self.dim * size];
        let out = &mut out[..rows.len() * self.dim];
        match self.dtype {
            Dtype::F32 => widen(out, bytes, f32::from_le_bytes),
            Dtype::F16 => widen(out, bytes, |b| half::f16::from_le_bytes(b).to_f32()),
            Dtype::BF16 => widen(out, bytes, |b| half::bf16::from_le_bytes(b).to_f32()),
            Dtype::F64 => widen(out, bytes, |b| f64::from_le_bytes(b) as f32),
            _ => unreachable!("element type checked in open"),
        }
        self.map.check()
    }

    /// All rows as f32.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.rows * self.dim];
        self.read_rows(0..self.rows, &mut v)?;
        Ok(v)
    }
}

/// Decodes little-endian `N`-byte elements of `bytes` into `out` with `f`.
#[inline(always)]
fn widen<const N: usize>(out: &mut [f32], bytes: &[u8], f: impl Fn([u8; N]) -> f32) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(N)) {
        *o = f(b.try_into().expect("N bytes"));
    }
}

fn parse_ids(json: &str, rows: usize) -> std::result::Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("is not JSON: {e}"))?;
    let list = v.as_array().ok_or("is not a JSON list")?;
    if list.len() != rows {
        return Err(format!("lists {} ids for {rows} rows", list.len()));
    }
    list.iter()
        .enumerate()
        .map(|(i, x)| match x {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            other => Err(format!("item {i} is {other}, not a string or number")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn write(
        path: &Path,
        key: &str,
        dtype: Dtype,
        shape: Vec<usize>,
        data: Vec<u8>,
        ids: Option<&str>,
    ) {
        let meta = ids.map(|i| HashMap::from([("ids".to_string(), i.to_string())]));
        let view = safetensors::tensor::TensorView::new(dtype, shape, &data).unwrap();
        safetensors::serialize_to_file([(key, view)], meta, path).unwrap();
    }

    #[test]
    fn reads_f32_f16_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.safetensors");
        let vals = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        write(
            &p,
            "embeddings",
            Dtype::F32,
            vec![3, 2],
            bytemuck::cast_slice(&vals).to_vec(),
            Some(r#"["a", 7, "c"]"#),
        );
        let e = EmbeddingsFile::open(&p, "embeddings").unwrap();
        assert_eq!((e.rows(), e.dim()), (3, 2));
        assert_eq!(e.to_vec().unwrap(), vals);
        assert_eq!(e.ids().unwrap(), ["a", "7", "c"]);
        let mut two = [0f32; 4];
        e.read_rows(1..3, &mut two).unwrap();
        assert_eq!(two, [3.0, 4.0, 5.0, 6.0]);

        let h: Vec<half::f16> = vals.iter().map(|&v| half::f16::from_f32(v)).collect();
        write(
            &p,
            "embeddings",
            Dtype::F16,
            vec![3, 2],
            bytemuck::cast_slice(&h).to_vec(),
            None,
        );
        let e = EmbeddingsFile::open(&p, "embeddings").unwrap();
        assert_eq!(e.to_vec().unwrap(), vals);
        assert!(e.ids().is_none());
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.safetensors");
        let open_err = || {
            EmbeddingsFile::open(&p, "embeddings")
                .unwrap_err()
                .to_string()
        };
        write(&p, "image_embeds", Dtype::F32, vec![1, 2], vec![0; 8], None);
        let err = open_err();
        assert!(
            err.contains("no tensor `embeddings`")
                && err.contains("`image_embeds`")
                && err.contains("e.safetensors"),
            "{err}"
        );

        write(&p, "embeddings", Dtype::F32, vec![2], vec![0; 8], None);
        let err = open_err();
        assert!(err.contains("shape [2]"), "{err}");

        write(&p, "embeddings", Dtype::I64, vec![1, 1], vec![0; 8], None);
        assert!(open_err().contains("I64"));

        write(
            &p,
            "embeddings",
            Dtype::F32,
            vec![2, 1],
            vec![0; 8],
            Some(r#"["only one"]"#),
        );
        let err = open_err();
        assert!(err.contains("1 ids for 2 rows"), "{err}");

        std::fs::write(&p, b"garbage").unwrap();
        assert!(open_err().contains("e.safetensors"));
    }
}
