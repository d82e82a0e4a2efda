//! Limited-memory BFGS, the optimiser behind the logistic probe.

use std::collections::VecDeque;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// How a minimisation ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Minimum {
    /// The parameters reached.
    pub x: Vec<f64>,
    /// Iterations taken.
    pub iterations: usize,
    /// Whether the gradient tolerance was met.
    pub converged: bool,
}

/// Minimises `f` (which returns the value and writes the gradient) over `n` parameters from
/// zero by L-BFGS (Nocedal and Wright, algorithm 7.4) with Armijo backtracking from a unit
/// step. Stops when the largest gradient entry is below `tolerance × max(1, initial largest)`,
/// after `max_iter` iterations, or when no representable step decreases `f` any more.
pub(crate) fn lbfgs(
    mut f: impl FnMut(&[f64], &mut [f64]) -> f64,
    n: usize,
    max_iter: usize,
    tolerance: f64,
) -> Minimum {
    const MEMORY: usize = 10;
    const ARMIJO: f64 = 1e-4;
    let mut x = vec![0.0; n];
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    let stop = tolerance * max_abs(&g).max(1.0);
    let mut history: VecDeque<(Vec<f64>, Vec<f64>, f64)> = VecDeque::new();
    let (mut x_new, mut g_new) = (vec![0.0; n], vec![0.0; n]);
    let done = |x, iterations, g: &[f64]| Minimum {
        x,
        iterations,
        converged: max_abs(g) <= stop,
    };
    for it in 0..max_iter {
        if max_abs(&g) <= stop {
            return done(x, it, &g);
        }
        // Two-loop recursion: dir = −H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = match history.back() {
            Some((s, y, _)) => dot(s, y) / dot(y, y),
            // No curvature yet: a first step of length at most 1 in parameter space.
            None => 1.0 / max_abs(&g).max(1.0),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let bcoef = rho * dot(y, &q);
            q.iter_mut()
                .zip(s)
                .for_each(|(qi, si)| *qi += (a - bcoef) * si);
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        if slope >= 0.0 || !slope.is_finite() {
            // Lost the descent property (rounding): restart from steepest descent.
            history.clear();
            dir = g.iter().map(|v| -v / max_abs(&g).max(1.0)).collect();
            slope = dot(&g, &dir);
        }
        let mut step = 1.0;
        let mut accepted = false;
        for _ in 0..60 {
            for ((xn, xi), di) in x_new.iter_mut().zip(&x).zip(&dir) {
                *xn = xi + step * di;
            }
            let f_new = f(&x_new, &mut g_new);
            if f_new.is_finite() && f_new <= fx + ARMIJO * step * slope {
                fx = f_new;
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            // No representable step decreases the loss: as converged as f64 allows.
            return done(x, it, &g);
        }
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 * dot(&y, &y).sqrt() * dot(&s, &s).sqrt() && sy > 0.0 {
            if history.len() == MEMORY {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        std::mem::swap(&mut x, &mut x_new);
        std::mem::swap(&mut g, &mut g_new);
    }
    done(x, max_iter, &g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_rosenbrock_minimum_and_reports_the_cap() {
        // (1 − a)² + 100 (b − a²)², minimum 0 at (1, 1), a curved valley from the start (0, 0).
        let rosenbrock = |t: &[f64], g: &mut [f64]| {
            let (a, b) = (t[0], t[1]);
            g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            g[1] = 200.0 * (b - a * a);
            (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
        };
        let m = lbfgs(rosenbrock, 2, 500, 1e-10);
        assert!(m.converged && m.iterations > 5, "{m:?}");
        assert!(
            (m.x[0] - 1.0).abs() < 1e-8 && (m.x[1] - 1.0).abs() < 1e-8,
            "{m:?}"
        );
        let capped = lbfgs(rosenbrock, 2, 3, 1e-10);
        assert_eq!((capped.iterations, capped.converged), (3, false));
    }
}
