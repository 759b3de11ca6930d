//! A small seeded RNG (xorshift64*), so that a run that fails can be replayed
//! from the seed it printed. Not for anything but test workloads.

use std::time::Duration;

/// xorshift64*: every random choice of a run comes from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// `d` scaled by a uniform factor in [0.5, 1.5).
    pub fn jitter(&mut self, d: Duration) -> Duration {
        let us = d.as_micros() as u64;
        Duration::from_micros(us / 2 + self.below(us.max(1)))
    }
}
