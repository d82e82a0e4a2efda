//! [`Embeddings`]: rows of one dimension in one flat buffer, the shape search and
//! classification take.

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// `len` vectors of `dim` floats, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    data: Vec<f32>,
    dim: usize,
}

impl Embeddings {
    /// Rows from a flat buffer; its length must be a multiple of `dim`.
    pub fn new(data: Vec<f32>, dim: usize) -> Result<Self> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(Error::Input(format!(
                "{} floats are not rows of dimension {dim}",
                data.len()
            )));
        }
        Ok(Self { data, dim })
    }

    /// The rows of a `[n, dim]` tensor (on any device).
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let (_, dim) = t.dims2()?;
        let data = t
            .to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        Self::new(data, dim)
    }

    /// The same rows scaled to unit length; a zero or non-finite row is an error naming it.
    pub fn normalized(mut self) -> Result<Self> {
        retrieval::normalize_rows(&mut self.data, self.dim)?;
        Ok(self)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Floats per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows in order.
    pub fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.data.chunks_exact(self.dim)
    }

    /// All rows, flat.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// All rows, flat, by value.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

/// `Σ a[i]·b[i]`: the cosine similarity of two unit rows.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_shapes_and_normalisation() {
        assert!(Embeddings::new(vec![1.0; 5], 2).is_err());
        assert!(Embeddings::new(vec![], 0).is_err());
        let e = Embeddings::new(vec![3.0, 4.0, 0.0, 2.0], 2).unwrap();
        assert_eq!((e.len(), e.dim(), e.row(1)), (2, 2, &[0.0, 2.0][..]));
        let u = e.normalized().unwrap();
        assert_eq!(u.as_slice(), &[0.6, 0.8, 0.0, 1.0]);
        assert!((dot(u.row(0), u.row(1)) - 0.8).abs() < 1e-7);
        assert!(Embeddings::new(vec![0.0, 0.0], 2)
            .unwrap()
            .normalized()
            .is_err());
    }
}
