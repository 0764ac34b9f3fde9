//! Which key each request of `kv bench` addresses: key names, and the uniform and zipfian
//! choices over key numbers. The zipfian generator is the rejection-free method of Gray et al.,
//! "Quickly generating billion-record synthetic databases" (SIGMOD 1994), the one YCSB uses.

use rand::Rng;

/// Bytes of every key name: `bench-` and ten digits (the 16-byte keys of issue 10).
pub const KEY_BYTES: usize = 16;
/// Key numbers up to this are summed exactly for the zipfian constant; past it the sum's tail
/// is its integral, so that a billion keys take milliseconds, not seconds, to set up.
const ZETA_EXACT_TERMS: u64 = 1_000_000;

/// The name of key number `i` (below 10^10).
pub fn key_name(i: u64) -> [u8; KEY_BYTES] {
    let mut key = *b"bench-0000000000";
    let mut n = i;
    for slot in key[6..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    key
}

/// Chooses key numbers in `0..n`.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    /// Every key equally likely.
    Uniform {
        /// Number of keys.
        n: u64,
    },
    /// Key `r` with probability proportional to 1/(r+1)^theta: key 0 is the hottest.
    Zipfian(Zipf),
}

impl KeyChooser {
    /// The next key number.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform { n } => rng.gen_range(0..*n),
            KeyChooser::Zipfian(z) => z.sample(rng.gen::<f64>()),
        }
    }
}

/// Zipfian distribution over `0..n` with skew `theta` in (0, 1); constants computed once.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipf {
    /// The distribution over `0..n` (n ≥ 1) with skew `theta` (0 < theta < 1).
    pub fn new(n: u64, theta: f64) -> Result<Zipf, String> {
        if n == 0 {
            return Err("the zipfian distribution needs at least one key".into());
        }
        if !(theta > 0.0 && theta < 1.0) {
            return Err(format!(
                "--zipf-theta {theta}: must be between 0 and 1 (exclusive)"
            ));
        }
        let zeta_n = zeta(n, theta);
        let zeta_2 = zeta(2.min(n), theta);
        let eta = if n <= 2 {
            // Two keys or fewer: the first two branches of `sample` cover every draw.
            0.0
        } else {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n)
        };
        Ok(Zipf {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta,
        })
    }

    /// The key number for `u`, a number drawn uniformly from [0, 1).
    pub fn sample(&self, u: f64) -> u64 {
        let uz = u * self.zeta_n;
        if uz < 1.0 || self.n == 1 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let r = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n - 1)
    }
}

/// Sum over i in 1..=n of 1/i^theta: exact for the first terms, the integral for the rest.
fn zeta(n: u64, theta: f64) -> f64 {
    let exact = n.min(ZETA_EXACT_TERMS);
    let mut sum: f64 = (1..=exact).map(|i| (i as f64).powf(-theta)).sum();
    if n > exact {
        // ∫ x^-θ dx over [exact + ½, n + ½], the midpoint rule's error being negligible here.
        let f = |x: f64| x.powf(1.0 - theta) / (1.0 - theta);
        sum += f(n as f64 + 0.5) - f(exact as f64 + 0.5);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn key_names_are_sixteen_bytes_with_the_number_in_ten_digits() {
        assert_eq!(&key_name(0), b"bench-0000000000");
        assert_eq!(&key_name(42), b"bench-0000000042");
        assert_eq!(&key_name(9_999_999_999), b"bench-9999999999");
    }

    #[test]
    fn zipfian_frequencies_follow_the_power_law() {
        let (n, theta, draws) = (1000u64, 0.99, 200_000u32);
        let z = Zipf::new(n, theta).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0u32; n as usize];
        for _ in 0..draws {
            counts[z.sample(rng.gen()) as usize] += 1;
        }
        let expected = |r: u64| draws as f64 / ((r + 1) as f64).powf(theta) / zeta(n, theta);
        // The exact branches (ranks 0 and 1) and a rank from the approximated tail.
        for r in [0u64, 1, 9] {
            let got = f64::from(counts[r as usize]);
            let want = expected(r);
            assert!(
                (got - want).abs() < want * 0.1,
                "rank {r}: {got} draws, expected about {want:.0}"
            );
        }
        // Hot keys dominate: the first 10% of keys get well over half of the draws.
        let head: u32 = counts[..100].iter().sum();
        assert!(head > draws / 2, "first 100 keys drew {head} of {draws}");
        assert!(counts.iter().all(|c| *c < draws), "every draw in range");
    }

    #[test]
    fn zipfian_stays_in_range_at_the_edges() {
        let z = Zipf::new(1, 0.5).unwrap();
        assert_eq!(z.sample(0.0), 0);
        assert_eq!(z.sample(0.999_999), 0);
        let z = Zipf::new(2, 0.99).unwrap();
        assert!([0.0, 0.5, 0.999_999].iter().all(|u| z.sample(*u) < 2));
        let z = Zipf::new(10_000_000_000, 0.99).unwrap();
        assert!(z.sample(0.999_999_999) < 10_000_000_000);
        assert!(Zipf::new(0, 0.5).is_err());
        assert!(Zipf::new(10, 1.0).is_err());
        assert!(Zipf::new(10, 0.0).is_err());
    }

    #[test]
    fn the_zeta_tail_integral_is_close_to_the_exact_sum() {
        let n = ZETA_EXACT_TERMS * 3;
        let exact: f64 = (1..=n).map(|i| (i as f64).powf(-0.99)).sum();
        let approx = zeta(n, 0.99);
        assert!((exact - approx).abs() / exact < 1e-6, "{exact} vs {approx}");
    }

    #[test]
    fn uniform_choices_cover_the_keys() {
        let chooser = KeyChooser::Uniform { n: 10 };
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[chooser.next(&mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
