//! CPython 3's `random` module, the parts InstructEval's DROP shots depend on: `random.seed(int)`
//! (Mersenne Twister MT19937 seeded by `init_by_array` with the integer's 32-bit words),
//! `getrandbits`, `_randbelow` (rejection sampling on `n.bit_length()` bits) and `sample` (a pool
//! for small populations, a set of chosen indices otherwise). Same seed → the same draws as
//! `python3`.

const N: usize = 624;
const M: usize = 397;

pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.seed(seed)` for an integer seed (its absolute value, as CPython takes it).
    pub fn new(seed: i128) -> Self {
        let mut n = seed.unsigned_abs();
        let mut key = vec![];
        while n > 0 {
            key.push(n as u32);
            n >>= 32;
        }
        if key.is_empty() {
            key.push(0);
        }
        let mut r = PyRandom { mt: [0; N], index: N };
        r.init_by_array(&key);
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1812433253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19650218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] =
                (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1664525)).wrapping_add(key[j]).wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1566083941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000;
    }

    fn genrand_u32(&mut self) -> u32 {
        if self.index >= N {
            for k in 0..N {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % N] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(k)` for `k ≤ 64`: 32-bit words, least significant first, the last one
    /// shifted down to the bits still wanted.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits: {k} bits");
        if k <= 32 {
            return if k == 0 { 0 } else { (self.genrand_u32() >> (32 - k)) as u64 };
        }
        let lo = self.genrand_u32() as u64;
        let hi = (self.genrand_u32() >> (64 - k)) as u64;
        lo | (hi << 32)
    }

    /// `_randbelow(n)`: a uniform integer in `0..n`, by rejection on `n.bit_length()` bits.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// The indices `random.sample(range(n), k)` picks, in its order.
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample larger than population");
        let mut setsize = 21usize;
        if k > 5 {
            setsize += 4usize.pow(((k * 3) as f64).log(4.0).ceil() as u32);
        }
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            (0..k)
                .map(|i| {
                    let j = self.randbelow((n - i) as u64) as usize;
                    let x = pool[j];
                    pool[j] = pool[n - i - 1];
                    x
                })
                .collect()
        } else {
            let mut selected = std::collections::HashSet::new();
            (0..k)
                .map(|_| loop {
                    let j = self.randbelow(n as u64) as usize;
                    if selected.insert(j) {
                        break j;
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from Python 3.11.7: `random.seed(s); random.sample(range(n), k)`.
    #[test]
    fn sample_equals_cpython() {
        let cases: &[(i128, usize, usize, &[usize])] = &[
            (0, 10, 3, &[6, 9, 0]),
            (0, 43, 3, &[24, 26, 2]),
            (0, 9536, 3, &[6311, 6890, 663]),
            (1, 21, 5, &[4, 18, 2, 8, 3]),
            (1, 22, 3, &[4, 18, 2]),
            (7, 100, 10, &[41, 19, 50, 83, 6, 9, 68, 12, 46, 74]),
            (12345, 5, 5, &[3, 0, 1, 2, 4]),
            ((1 << 40) + 3, 1000, 7, &[225, 62, 562, 853, 96, 579, 311]),
            (0, 1, 1, &[0]),
            (
                3,
                200,
                60,
                &[
                    60, 151, 139, 33, 94, 154, 121, 160, 148, 16, 155, 3, 120, 66, 141, 59, 49, 187, 138, 140, 193,
                    101, 163, 38, 184, 162, 176, 133, 99, 188, 190, 40, 198, 10, 77, 7, 68, 179, 152, 171, 109, 178,
                    147, 113, 34, 93, 24, 9, 189, 126, 55, 186, 111, 165, 107, 129, 98, 89, 136, 104,
                ],
            ),
        ];
        for &(seed, n, k, want) in cases {
            assert_eq!(PyRandom::new(seed).sample(n, k), want, "seed {seed}, n {n}, k {k}");
        }
    }

    /// `random.seed(0)`: three `getrandbits(32)`, then `getrandbits(5)`, `getrandbits(64)`.
    #[test]
    fn getrandbits_equals_cpython() {
        let mut r = PyRandom::new(0);
        let got: Vec<u64> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(got, [3626764237, 1654615998, 3255389356]);
        assert_eq!(r.getrandbits(5), 28);
        assert_eq!(r.getrandbits(64), 746805015404516437);
    }
}
