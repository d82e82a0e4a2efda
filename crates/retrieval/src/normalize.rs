//! Unit-length rows: the one normalisation of `f32` rows, and the check that rows are unit.

use crate::error::rows_of;
use crate::{Result, RetrievalError};

/// Tolerated deviation of a row's norm from 1 (f16 storage alone moves it by ~1e-3).
const UNIT_TOLERANCE: f32 = 1e-2;

/// Rows within this of unit length are left as they are.
const UNIT_EXACT: f32 = 1e-6;

/// Scales every row of `[rows, dim]` to unit length, in place. This is the one normalisation
/// of `f32` rows: embeddings, index vectors, queries and the evaluation math all come here,
/// under one policy:
///
/// - a row holding NaN or infinity is an error naming its index
///   ([`RetrievalError::NonFinite`]);
/// - a zero row is an error naming its index ([`RetrievalError::NotUnitLength`], norm 0): it
///   has no direction, and a search needs one. No epsilon: it would store a zero vector that
///   scores 0 against everything and hide whatever made it. Only the evaluation math
///   ([`crate::retrieval_metrics`], [`crate::zero_shot`], [`crate::class_embeddings`]) keeps
///   a zero row as zero, as `torch.nn.functional.normalize` does in open_clip's evaluation: a
///   class mean of opposite templates or an empty caption's embedding then scores 0 and ranks
///   by index instead of failing a whole report;
/// - a row already of unit length to within 1e-6 is left bit for bit, so an index built from
///   normalised embeddings stores exactly its input;
/// - `data` must be whole rows of `dim` ([`RetrievalError::Shape`]).
pub fn normalize_rows(data: &mut [f32], dim: usize) -> Result<()> {
    normalize_rows_from(data, dim, 0)
}

/// [`normalize_rows`] for a block whose first row is row `first_row` of something larger (the
/// row an error names).
pub fn normalize_rows_from(data: &mut [f32], dim: usize, first_row: usize) -> Result<()> {
    normalize(data, dim, first_row, "vector", ZeroRow::Error)
}

/// What [`normalize`] makes of a row of norm 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroRow {
    /// An error naming the row.
    Error,
    /// Left as zero (the evaluation math only; see [`normalize_rows`]).
    Keep,
}

/// [`normalize_rows_from`] with the rows called `what` in errors and the zero-row rule given.
pub(crate) fn normalize(
    data: &mut [f32],
    dim: usize,
    first_row: usize,
    what: &'static str,
    zero: ZeroRow,
) -> Result<()> {
    rows_of(data.len(), dim, what)?;
    for (i, row) in data.chunks_exact_mut(dim).enumerate() {
        let norm = checked_norm(row, what, first_row + i, |n| {
            n > 0.0 || zero == ZeroRow::Keep
        })?;
        if norm > 0.0 && (norm - 1.0).abs() > UNIT_EXACT {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    Ok(())
}

/// A unit-row copy of `[rows, dim]` for the evaluation math: zero rows stay zero (they score 0
/// against everything).
pub(crate) fn unit_copy(
    x: &[f32],
    dim: usize,
    rows: usize,
    what: &'static str,
) -> Result<Vec<f32>> {
    if dim == 0 || x.len() != rows * dim {
        return Err(RetrievalError::Shape(format!(
            "{what}: {} floats for {rows} rows of dimension {dim}",
            x.len()
        )));
    }
    let mut v = x.to_vec();
    normalize(&mut v, dim, 0, what, ZeroRow::Keep)?;
    Ok(v)
}

/// Checks that every row is finite and of unit length; `first_row` numbers the rows in errors.
pub(crate) fn check_unit_rows(
    data: &[f32],
    dim: usize,
    first_row: usize,
    what: &'static str,
) -> Result<()> {
    for (i, row) in data.chunks_exact(dim).enumerate() {
        checked_norm(row, what, first_row + i, |n| {
            (n - 1.0).abs() <= UNIT_TOLERANCE
        })?;
    }
    Ok(())
}

/// The Euclidean norm of `row`, row `r` of `what`; an error naming the row if it is not finite
/// (the row holds NaN or infinity) or `ok` rejects it.
fn checked_norm(
    row: &[f32],
    what: &'static str,
    r: usize,
    ok: impl Fn(f32) -> bool,
) -> Result<f32> {
    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
    if !norm.is_finite() {
        return Err(RetrievalError::NonFinite { what, row: r });
    }
    if !ok(norm) {
        return Err(RetrievalError::NotUnitLength { what, row: r, norm });
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        let mut v = vec![3.0, 4.0, 1.0, 0.0];
        normalize_rows(&mut v, 2).unwrap();
        assert_eq!(v, [0.6, 0.8, 1.0, 0.0]);
        let err = normalize_rows(&mut [1.0, 0.0, 0.0, 0.0], 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 1"), "{err}");
    }

    #[test]
    fn evaluation_keeps_zero_rows() {
        let v = unit_copy(&[3.0, 4.0, 0.0, -0.0], 2, 2, "rows").unwrap();
        assert_eq!(v, [0.6, 0.8, 0.0, 0.0]);
        let err = unit_copy(&[f32::NAN, 0.0], 2, 1, "rows")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rows row 0"), "{err}");
    }
}
