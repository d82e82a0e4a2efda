//! Probe: candle CPU matmul speed for the shapes of a ViT-B/32 block (not a test).
use candle_core::{Device, Tensor};
use std::time::Instant;

fn time(label: &str, flops: f64, f: impl Fn()) {
    f();
    let t = Instant::now();
    let n = 5;
    for _ in 0..n {
        f();
    }
    let s = t.elapsed().as_secs_f64() / n as f64;
    println!("{label}: {:.2} ms, {:.1} GFLOP/s", s * 1e3, flops / s / 1e9);
}

fn main() {
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (800, 768), &d).unwrap();
    let w = Tensor::randn(0f32, 1.0, (3072, 768), &d).unwrap();
    let wt = w.t().unwrap().contiguous().unwrap();
    let fl = 2.0 * 800.0 * 768.0 * 3072.0;
    time("x @ w.t() (strided)", fl, || {
        x.matmul(&w.t().unwrap()).unwrap();
    });
    time("x @ wt (contiguous)", fl, || {
        x.matmul(&wt).unwrap();
    });
    let q = Tensor::randn(0f32, 1.0, (16, 12, 50, 64), &d).unwrap();
    let k = Tensor::randn(0f32, 1.0, (16, 12, 50, 64), &d).unwrap();
    let fl2 = 2.0 * 192.0 * 50.0 * 50.0 * 64.0;
    time("q @ k.t() batched", fl2, || {
        q.matmul(&k.t().unwrap()).unwrap();
    });
    let big = Tensor::randn(0f32, 1.0, (800, 3072), &d).unwrap();
    time("gelu_erf 800x3072", 0.0, || {
        big.gelu_erf().unwrap();
    });
    time("softmax 192x50x50", 0.0, || {
        candle_nn::ops::softmax_last_dim(&q.matmul(&k.t().unwrap()).unwrap()).unwrap();
    });
    let x3 = Tensor::randn(0f32, 1.0, (16, 50, 768), &d).unwrap();
    time("transpose+contiguous 16x50x12x64", 0.0, || {
        x3.reshape((16, 50, 12, 64))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
    });
    let qg = big.clone();
    time("quick_gelu 800x3072", 0.0, || {
        qg.div(&((&qg * -1.702).unwrap().exp().unwrap() + 1.0).unwrap())
            .unwrap();
    });
}
