//! Where a model's parameters come from: a checkpoint, a trainable store, or a shape recorder.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::SplitMix64;

use crate::quant::Int8Weight;
use crate::{NnError, Result};

/// How a fresh parameter is initialised when no checkpoint provides it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// All zeros (biases).
    Zeros,
    /// All ones (norm gains).
    Ones,
    /// A constant (e.g. `logit_scale = ln(1/0.07)`).
    Const(f64),
    /// Normal with mean 0 and the given standard deviation.
    Normal(f64),
}

/// Anything that can hand out a named parameter of a known shape.
pub trait ParamSource: Sync {
    /// Returns the tensor for `name`, checking it has `shape`.
    fn get(&self, name: &str, shape: &Shape, init: Init) -> Result<Tensor>;
    /// The device tensors live on.
    fn device(&self) -> &Device;
    /// The int8 weight stored for `name` (a quantized checkpoint), checked to be `[n, k]`
    /// = `shape`; `None` where the source holds the weight in floating point. Asked only
    /// for the linear layers that may run packed ([`crate::Linear::packable`]).
    fn int8(&self, name: &str, shape: &Shape) -> Result<Option<&Int8Weight>> {
        let _ = (name, shape);
        Ok(None)
    }
}

/// A prefix-scoped view of a [`ParamSource`]; `pp("encoder")` extends the key path.
#[derive(Clone)]
pub struct Params<'a> {
    source: &'a dyn ParamSource,
    prefix: String,
}

impl<'a> Params<'a> {
    /// The root view of `source`.
    pub fn new(source: &'a dyn ParamSource) -> Self {
        Self {
            source,
            prefix: String::new(),
        }
    }

    /// A view whose keys are further prefixed with `name.`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        Self {
            source: self.source,
            prefix: join(&self.prefix, &name.to_string()),
        }
    }

    /// Fetches `prefix.name` with the given shape.
    pub fn get(&self, shape: impl Into<Shape>, name: &str, init: Init) -> Result<Tensor> {
        self.source
            .get(&join(&self.prefix, name), &shape.into(), init)
    }

    /// The device parameters live on.
    pub fn device(&self) -> &Device {
        self.source.device()
    }

    /// The int8 weight stored for `prefix.name`, if the source holds one
    /// ([`ParamSource::int8`]).
    pub fn int8(&self, shape: impl Into<Shape>, name: &str) -> Result<Option<&'a Int8Weight>> {
        self.source.int8(&join(&self.prefix, name), &shape.into())
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Read-only parameters from a checkpoint, keyed by their (Hugging Face) names.
///
/// Tensors are handed out in f32 whatever their stored type (fp16 checkpoints load as f32),
/// unless [`TensorMap::with_dtype`] asks for another compute type.
#[derive(Debug, Clone)]
pub struct TensorMap {
    tensors: HashMap<String, Tensor>,
    /// Weights a quantized checkpoint stores as int8 (not in `tensors`).
    int8: HashMap<String, Int8Weight>,
    device: Device,
    dtype: DType,
}

impl TensorMap {
    /// Wraps already-loaded tensors.
    pub fn new(tensors: HashMap<String, Tensor>, device: Device) -> Self {
        Self {
            tensors,
            int8: HashMap::new(),
            device,
            dtype: DType::F32,
        }
    }

    /// Adds the weights a quantized checkpoint holds as int8.
    pub fn with_int8(mut self, int8: HashMap<String, Int8Weight>) -> Self {
        self.int8 = int8;
        self
    }

    /// The int8 weights, by name.
    pub fn int8_weights(&self) -> &HashMap<String, Int8Weight> {
        &self.int8
    }

    /// Hands tensors out in `dtype` (e.g. bf16 for mixed-precision forward passes).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The underlying map.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// Takes the underlying map.
    pub fn into_inner(self) -> HashMap<String, Tensor> {
        self.tensors
    }

    /// The stored tensor `name` as it is, checked to be there with `shape`.
    pub fn checked(&self, name: &str, shape: &Shape) -> Result<&Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| NnError::MissingTensor {
                key: name.to_string(),
                expected: shape.clone(),
            })?;
        if t.shape() != shape {
            return Err(NnError::ShapeMismatch {
                key: name.to_string(),
                expected: shape.clone(),
                found: t.shape().clone(),
            });
        }
        Ok(t)
    }
}

impl ParamSource for TensorMap {
    fn get(&self, name: &str, shape: &Shape, _init: Init) -> Result<Tensor> {
        let t = self.checked(name, shape)?;
        Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    fn int8(&self, name: &str, shape: &Shape) -> Result<Option<&Int8Weight>> {
        let Some(w) = self.int8.get(name) else {
            return Ok(None);
        };
        let found = Shape::from((w.n, w.k));
        if &found != shape {
            return Err(NnError::ShapeMismatch {
                key: name.to_string(),
                expected: shape.clone(),
                found,
            });
        }
        Ok(Some(w))
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// Trainable parameters: every tensor handed out is a [`Var`], remembered in creation order.
///
/// Values come from `init_from` when given (fine-tuning), else from the seeded [`Init`].
pub struct VarStore {
    vars: Mutex<Vec<(String, Var)>>,
    rng: Mutex<SplitMix64>,
    init_from: Option<TensorMap>,
    device: Device,
}

impl VarStore {
    /// A store that initialises fresh parameters from `seed`.
    pub fn new(device: Device, seed: u64) -> Self {
        Self {
            vars: Mutex::new(Vec::new()),
            rng: Mutex::new(SplitMix64::seed_from_u64(seed)),
            init_from: None,
            device,
        }
    }

    /// A store whose variables start from the given checkpoint tensors.
    pub fn from_tensors(init_from: TensorMap) -> Self {
        let device = init_from.device.clone();
        Self {
            vars: Mutex::new(Vec::new()),
            rng: Mutex::new(SplitMix64::seed_from_u64(0)),
            init_from: Some(init_from),
            device,
        }
    }

    /// All variables with their names, in creation order.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.vars.lock().expect("var store poisoned").clone()
    }

    /// All variables, in creation order.
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// Current values by name, e.g. to save a checkpoint.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect()
    }

    /// Overwrites every variable present in `values` (used on resume).
    pub fn load(&self, values: &TensorMap) -> Result<()> {
        for (name, var) in self.named_vars() {
            let t = values.get(&name, var.shape(), Init::Zeros)?;
            var.set(&t)?;
        }
        Ok(())
    }

    fn fresh(&self, shape: &Shape, init: Init) -> Result<Tensor> {
        let n = shape.elem_count();
        let t = match init {
            Init::Zeros => Tensor::zeros(shape, DType::F32, &self.device)?,
            Init::Ones => Tensor::ones(shape, DType::F32, &self.device)?,
            Init::Const(c) => (Tensor::ones(shape, DType::F32, &self.device)? * c)?,
            Init::Normal(std) => {
                let mut rng = self.rng.lock().expect("rng poisoned");
                let data: Vec<f32> = (0..n)
                    .map(|_| (Distribution::<f64>::sample(&StandardNormal, &mut *rng) * std) as f32)
                    .collect();
                Tensor::from_vec(data, shape, &self.device)?
            }
        };
        Ok(t)
    }
}

impl ParamSource for VarStore {
    fn get(&self, name: &str, shape: &Shape, init: Init) -> Result<Tensor> {
        let value = match &self.init_from {
            Some(map) => map.get(name, shape, init)?,
            None => self.fresh(shape, init)?,
        };
        let var = Var::from_tensor(&value)?;
        let mut vars = self.vars.lock().expect("var store poisoned");
        if vars.iter().any(|(n, _)| n == name) {
            return Err(NnError::DuplicateParameter(name.to_string()));
        }
        vars.push((name.to_string(), var.clone()));
        Ok(var.as_tensor().clone())
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// Records the name and shape of every parameter a model asks for, without allocating.
///
/// Building a model against a recorder yields its exact parameter list, which checkpoint
/// loading uses to report every missing or misshapen tensor before any real work.
#[derive(Default)]
pub struct ShapeRecorder {
    seen: Mutex<Vec<(String, Shape)>>,
    packable: Mutex<Vec<String>>,
}

impl ShapeRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every parameter requested so far, in order.
    pub fn shapes(&self) -> Vec<(String, Shape)> {
        self.seen.lock().expect("recorder poisoned").clone()
    }

    /// The weights of the linear layers that may run packed ([`crate::Linear::packable`]):
    /// those a quantized checkpoint stores as int8.
    pub fn packable(&self) -> Vec<String> {
        self.packable.lock().expect("recorder poisoned").clone()
    }
}

impl ParamSource for ShapeRecorder {
    fn get(&self, name: &str, shape: &Shape, _init: Init) -> Result<Tensor> {
        self.seen
            .lock()
            .expect("recorder poisoned")
            .push((name.to_string(), shape.clone()));
        Ok(Tensor::zeros((), DType::F32, &Device::Cpu)?.broadcast_as(shape)?)
    }

    fn device(&self) -> &Device {
        &Device::Cpu
    }

    fn int8(&self, name: &str, _shape: &Shape) -> Result<Option<&Int8Weight>> {
        self.packable
            .lock()
            .expect("recorder poisoned")
            .push(name.to_string());
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_map_names_key_and_shapes_on_error() {
        let mut m = HashMap::new();
        m.insert(
            "a.w".to_string(),
            Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
        );
        let map = TensorMap::new(m, Device::Cpu);
        let p = Params::new(&map);
        let a = p.pp("a");
        let err = a.get((3, 2), "w", Init::Zeros).unwrap_err().to_string();
        assert!(
            err.contains("a.w") && err.contains("[3, 2]") && err.contains("[2, 3]"),
            "{err}"
        );
        let err = a.get(4, "b", Init::Zeros).unwrap_err().to_string();
        assert!(
            err.contains("missing tensor `a.b`") && err.contains("[4]"),
            "{err}"
        );
    }

    #[test]
    fn var_store_is_seeded_and_rejects_duplicates() {
        let make = || {
            let s = VarStore::new(Device::Cpu, 3);
            let t = Params::new(&s).get((4, 4), "w", Init::Normal(1.0)).unwrap();
            (s, t)
        };
        let (s, a) = make();
        let (_, b) = make();
        let diff = (a - b).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        assert!(Params::new(&s).get((4, 4), "w", Init::Zeros).is_err());
        assert_eq!(s.named_vars().len(), 1);
    }
}
