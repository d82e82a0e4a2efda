//! Linear, embedding and normalisation layers built on [`Params`](crate::Params).

use std::sync::Arc;

use candle_core::{DType, Module, Tensor};

use crate::quant::{PackedLinear, Precision};
use crate::{ops, BadConfig, Init, NnError, Params, Result};

/// `y = x·Wᵀ + b` with `W` of shape `[out, in]` (PyTorch's layout, so checkpoints load as is).
#[derive(Debug, Clone)]
pub struct Linear {
    pub(crate) weight: LinearWeight,
    pub(crate) bias: Option<Tensor>,
}

/// How a [`Linear`] holds its weight.
#[derive(Debug, Clone)]
pub(crate) enum LinearWeight {
    /// `[out, in]` on any device and dtype: trainable, and the reference.
    Dense(Tensor),
    /// Packed for int8 or bf16 inference on the CPU ([`Linear::pack`]); the dense copy is
    /// gone, which is where a packed model's memory saving comes from.
    Packed(Arc<PackedLinear>),
}

impl LinearWeight {
    /// The dense weight, or the error that says the layer was packed.
    pub(crate) fn dense(&self) -> Result<&Tensor> {
        match self {
            Self::Dense(w) => Ok(w),
            Self::Packed(p) => Err(NnError::Packed(p.precision())),
        }
    }
}

impl Linear {
    /// Loads `weight` (and `bias` when `bias` is true) under `p`.
    ///
    /// Fresh weights are drawn with standard deviation `std`.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, std: f64, p: &Params) -> Result<Self> {
        let weight = p.get((out_dim, in_dim), "weight", Init::Normal(std))?;
        let bias = if bias {
            Some(p.get(out_dim, "bias", Init::Zeros)?)
        } else {
            None
        };
        Ok(Self {
            weight: LinearWeight::Dense(weight),
            bias,
        })
    }

    /// A layer that may run packed: as [`Linear::new`], except that a weight the source
    /// holds as int8 (a quantized checkpoint) is packed straight from it, with no f32 copy.
    /// The transformer blocks' projections are built this way ([`crate::Encoder::pack`]
    /// packs the same layers of an f32 checkpoint).
    pub fn packable(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        std: f64,
        p: &Params,
    ) -> Result<Self> {
        let Some(q) = p.int8((out_dim, in_dim), "weight")? else {
            return Self::new(in_dim, out_dim, bias, std, p);
        };
        let bias = if bias {
            Some(p.get(out_dim, "bias", Init::Zeros)?)
        } else {
            None
        };
        let bias_values = match &bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let packed = PackedLinear::from_int8(q, bias_values.as_deref());
        Ok(Self {
            weight: LinearWeight::Packed(Arc::new(packed)),
            bias,
        })
    }

    /// The `[out, in]` weight; an error once the layer is packed ([`Linear::pack`]).
    pub fn weight(&self) -> Result<&Tensor> {
        self.weight.dense()
    }

    /// Weight, then bias when there is one (only the bias once packed).
    pub fn params(&self) -> Vec<&Tensor> {
        let weight = match &self.weight {
            LinearWeight::Dense(w) => Some(w),
            LinearWeight::Packed(_) => None,
        };
        weight.into_iter().chain(&self.bias).collect()
    }

    /// Replaces the weight by a copy packed for `precision` (nothing for f32). Inference
    /// only: a packed layer has no gradient and runs on the CPU.
    pub fn pack(&mut self, precision: Precision) -> Result<()> {
        let LinearWeight::Dense(w) = &self.weight else {
            return Ok(());
        };
        if precision == Precision::F32 {
            return Ok(());
        }
        let (n, k) = w.dims2()?;
        let dense = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bias = match &self.bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        if let Some(packed) = PackedLinear::new(&dense, bias.as_deref(), n, k, precision) {
            self.weight = LinearWeight::Packed(Arc::new(packed));
        }
        Ok(())
    }

    /// Output width.
    fn out_dim(&self) -> candle_core::Result<usize> {
        match &self.weight {
            LinearWeight::Dense(w) => w.dim(0),
            LinearWeight::Packed(p) => Ok(p.out_dim()),
        }
    }
}

impl Module for Linear {
    /// `[.., in] → [.., out]`; leading dimensions are flattened into one matmul.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        let x2 = x.reshape((rows, in_dim))?;
        let y = match &self.weight {
            LinearWeight::Dense(w) => crate::linear_op::linear(&x2, w, self.bias.as_ref())?,
            LinearWeight::Packed(p) => crate::linear_op::packed(&x2, p)?,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.out_dim()?;
        y.reshape(out_dims)
    }
}

/// Layer normalisation with gain and bias, differentiable when training.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of size `dim` under `p`.
    pub fn new(dim: usize, eps: f64, p: &Params) -> Result<Self> {
        Ok(Self {
            weight: p.get(dim, "weight", Init::Ones)?,
            bias: p.get(dim, "bias", Init::Zeros)?,
            eps,
        })
    }

    /// Gain, then bias.
    pub fn params(&self) -> Vec<&Tensor> {
        vec![&self.weight, &self.bias]
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps).map_err(|e| match e {
            crate::NnError::Candle(c) => c,
            other => candle_core::Error::Msg(other.to_string()),
        })
    }
}

/// A lookup table `[n, dim]`; rows are gathered with a differentiable `index_select`.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Tensor,
}

impl Embedding {
    /// Loads `weight` of shape `[n, dim]` under `p`.
    pub fn new(n: usize, dim: usize, std: f64, p: &Params) -> Result<Self> {
        Ok(Self {
            table: p.get((n, dim), "weight", Init::Normal(std))?,
        })
    }

    /// The whole `[n, dim]` table (e.g. learned positions used in full).
    pub fn table(&self) -> &Tensor {
        &self.table
    }
}

impl Module for Embedding {
    /// Integer ids `[..]` → `[.., dim]`.
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        let flat = ids.flatten_all()?;
        let rows = self.table.index_select(&flat, 0)?;
        dims.push(self.table.dim(1)?);
        rows.reshape(dims)
    }
}

/// The MLP non-linearity, named as in Hugging Face configs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// `x·σ(1.702x)`, OpenAI CLIP's choice.
    #[default]
    QuickGelu,
    /// Exact GELU, `x·Φ(x)` (PyTorch `nn.GELU()`).
    Gelu,
    /// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
}

impl Activation {
    /// Parses a Hugging Face `hidden_act` name.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            _ => None,
        }
    }

    /// As [`Activation::from_hf_name`], rejecting an unknown name as a config error.
    pub fn from_hidden_act(name: &str) -> std::result::Result<Self, BadConfig> {
        Self::from_hf_name(name).ok_or_else(|| {
            BadConfig::new("hidden_act", name, "expected quick_gelu, gelu or gelu_new")
        })
    }

    /// The Hugging Face `hidden_act` name.
    pub fn hf_name(&self) -> &'static str {
        match self {
            Self::QuickGelu => "quick_gelu",
            Self::Gelu => "gelu",
            Self::GeluTanh => "gelu_new",
        }
    }
}
