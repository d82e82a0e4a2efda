//! Shared by the integration tests: the loopback server and test data.

#![allow(dead_code)]

pub mod server;

use std::io::Read;

use shard_source::{Opener, ShardError, ShardUrl};

/// Reads the whole shard; returns the bytes and the reconnections made.
pub fn read_all(o: &Opener, url: &ShardUrl) -> Result<(Vec<u8>, u32), ShardError> {
    let mut r = o.open(url)?;
    let mut got = Vec::new();
    match r.read_to_end(&mut got) {
        Ok(_) => Ok((got, r.retries())),
        Err(e) => Err(ShardError::from_read(e, r.url(), r.position())),
    }
}

/// `n` bytes that differ at every offset from a shifted copy (so a byte read at the wrong
/// offset shows), seeded by `seed`.
pub fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// An error and its sources on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}
