//! Linear, embedding and normalisation layers built on [`Params`](crate::Params).

use candle_core::{Module, Tensor};

use crate::{ops, BadConfig, Init, Params, Result};

/// `y = x·Wᵀ + b` with `W` of shape `[out, in]` (PyTorch's layout, so checkpoints load as is).
#[derive(Debug, Clone)]
pub struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
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
        Ok(Self { weight, bias })
    }

    /// The `[out, in]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Weight, then bias when there is one.
    pub fn params(&self) -> Vec<&Tensor> {
        std::iter::once(&self.weight).chain(&self.bias).collect()
    }
}

impl Module for Linear {
    /// `[.., in] → [.., out]`; leading dimensions are flattened into one matmul.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        let x2 = x.reshape((rows, in_dim))?;
        let y = crate::linear_op::linear(&x2, &self.weight, self.bias.as_ref())?;
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.weight.dim(0)?;
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

impl Module for Activation {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::activation_op::apply(*self, x)
    }
}
