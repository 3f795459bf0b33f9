//! Stateless pseudo-random numbers keyed by what they describe.
//!
//! The panel model must give the same value for the same (seed, channel, instant) however often
//! and in whatever order it is asked, so per-sample randomness cannot come from a running RNG
//! stream. Instead each random number is a hash of its key words (splitmix64's finaliser,
//! chained), turned into a uniform or normal variate.

/// splitmix64's output function: a bijective, well-mixing map on u64.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash of `words`, order-sensitive.
pub(crate) fn hash(words: &[u64]) -> u64 {
    words
        .iter()
        .fold(0x243F_6A88_85A3_08D3, |h, &w| mix(h ^ mix(w)))
}

/// A uniform variate in [0, 1) from a hash.
pub(crate) fn uniform(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A standard normal variate from a hash (Box–Muller on two derived uniforms).
pub(crate) fn gaussian(h: u64) -> f64 {
    // 1 - u is in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - uniform(h);
    let u2 = uniform(mix(h ^ 0x5DEE_CE66_D1CE_4E5B));
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_has_unit_moments() {
        let n = 20_000;
        let xs: Vec<f64> = (0..n).map(|i| gaussian(hash(&[7, i]))).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn hash_depends_on_every_word_and_order() {
        assert_ne!(hash(&[1, 2]), hash(&[2, 1]));
        assert_ne!(hash(&[1, 2]), hash(&[1, 3]));
        assert_eq!(hash(&[1, 2]), hash(&[1, 2]));
    }
}
