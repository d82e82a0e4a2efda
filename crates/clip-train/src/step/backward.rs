//! The parameter gradients of one backward pass, gathered from their three sources, each a
//! named step: what the other ranks' losses sent for this rank's rows (the collective,
//! [`Stepper::received_by_side`]), the towers' backward from their features' gradients (the
//! taped path's hand-written backward or candle's graph, [`Stepper::towers_backward`]), and
//! candle's backward of the loss for the loss's own parameters ([`Stepper::add_up`], which
//! sums all of them into the running gradients).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId, Var};
use clip_nn::taped::Grads;

use super::features::{Carrier, Pending};
use super::Stepper;
use crate::{Objective, Result};

/// The gradients the towers' backward gave the parameters.
struct TowerGrads {
    /// From the taped path's hand-written backward, by parameter.
    taped: HashMap<TensorId, Tensor>,
    /// From candle's backward through the towers' graph.
    graph: Option<GradStore>,
}

impl Stepper<'_> {
    /// Adds the gradients of the backward pass `g` of the loss to `grads`; `pending` holds the
    /// features whose towers still need their backward, `received` the gradients other ranks'
    /// losses sent for these rows.
    pub(super) fn collect(
        &self,
        g: &GradStore,
        pending: Pending,
        received: Option<(Tensor, Tensor)>,
        grads: &mut HashMap<String, Tensor>,
    ) -> Result<()> {
        let received = self.received_by_side(received)?;
        let towers = self.towers_backward(g, pending, received)?;
        self.add_up(g, towers, grads)
    }

    /// The collective's gradients for the image leaf and the text leaf. With two views both
    /// sides are rows of the one image leaf: first views, then second.
    fn received_by_side(
        &self,
        received: Option<(Tensor, Tensor)>,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok(match received {
            Some((a, b)) if self.setup.train.objective == Objective::Images => {
                (Some(Tensor::cat(&[a, b], 0)?), None)
            }
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        })
    }

    /// Runs each tower's backward from the gradient of its features (the loss's, plus what
    /// was received): over its tape on the taped path, or as one candle backward of
    /// `Σ features·gradient` over both towers on the graph path.
    fn towers_backward(
        &self,
        g: &GradStore,
        pending: Pending,
        (image_rx, text_rx): (Option<Tensor>, Option<Tensor>),
    ) -> Result<TowerGrads> {
        let mut ws = self.ws.borrow_mut();
        let mut taped = Grads::default();
        let mut surrogate = Surrogate::default();
        if let Some((v, carrier)) = pending.image {
            match (carrier, feature_gradient(g, &v, image_rx)?) {
                (Carrier::Tape(tape), Some(d)) => self
                    .model
                    .vision()
                    .backward_taped(tape, &d, &mut ws, &mut taped)?,
                (Carrier::Tape(tape), None) => tape.release(&mut ws),
                (Carrier::Graph(f), d) => surrogate.add(f, d)?,
            }
        }
        if let Some((v, carrier)) = pending.text {
            match (carrier, feature_gradient(g, &v, text_rx)?) {
                (Carrier::Tape(tape), Some(d)) => self
                    .model
                    .text()
                    .backward_taped(tape, &d, &mut ws, &mut taped)?,
                (Carrier::Tape(tape), None) => tape.release(&mut ws),
                (Carrier::Graph(f), d) => surrogate.add(f, d)?,
            }
        }
        let taped = taped
            .into_entries()
            .into_iter()
            .map(|(p, g)| (p.id(), g))
            .collect();
        Ok(TowerGrads {
            taped,
            graph: surrogate.backward()?,
        })
    }

    /// Adds each trainable parameter's gradients to its sum over earlier chunks: the loss's
    /// own (candle's backward of the loss: temperature, bias), then the towers'.
    fn add_up(
        &self,
        g: &GradStore,
        mut towers: TowerGrads,
        grads: &mut HashMap<String, Tensor>,
    ) -> Result<()> {
        for (name, var) in &self.vars {
            let from_graph = towers.graph.as_ref().and_then(|t| t.get(var).cloned());
            let mine = [
                g.get(var).cloned(),
                from_graph,
                towers.taped.remove(&var.as_tensor().id()),
            ];
            for t in mine.into_iter().flatten() {
                let t = match grads.remove(name) {
                    Some(prev) => (prev + t)?,
                    None => t,
                };
                grads.insert(name.clone(), t);
            }
        }
        Ok(())
    }
}

/// The gradient of feature leaf `v`: the loss's (from `g`) plus what was `received`.
fn feature_gradient(g: &GradStore, v: &Var, received: Option<Tensor>) -> Result<Option<Tensor>> {
    Ok(match (g.get(v), received) {
        (Some(d), Some(e)) => Some((d + e)?),
        (d, e) => d.cloned().or(e),
    })
}

/// `Σ features·gradient` over the towers on candle's graph, whose backward is theirs.
#[derive(Default)]
struct Surrogate(Option<Tensor>);

impl Surrogate {
    /// Adds the term of features `f` with gradient `d` (none: nothing to add).
    fn add(&mut self, f: Tensor, d: Option<Tensor>) -> Result<()> {
        if let Some(d) = d {
            let term = (f * d.detach())?.sum_all()?;
            self.0 = Some(match self.0.take() {
                Some(s) => (s + term)?,
                None => term,
            });
        }
        Ok(())
    }

    fn backward(self) -> Result<Option<GradStore>> {
        Ok(self.0.map(|s| s.backward()).transpose()?)
    }
}
