//! Whether a one-token matmul's kernels prefetch, decided by measurement while decoding.
//!
//! The group kernels can ask for the lines 9 KiB ahead of their reads (`dot_groups`'s
//! `prefetch`). For the first pass of a batch over a block that pays on every machine measured
//! (16 sequences +6–17%). At one token it depends on the machine and the
//! format: on one AMD EPYC, Q4_K decode ran 52–57 → 65–88 tokens/s with it; on another, in the
//! same process, Q4_0 and Q4_K_M decoded 3–17% faster without it while Q8_0 lost 10–15% without
//! it (the hardware prefetcher keeps up with a kernel that does more arithmetic a byte, and the
//! prefetch instructions then only take issue slots). So decode
//! measures both: during a decision each matrix runs with and without, in turn, and each pair of
//! its times one token apart (the same memory conditions, the same matrix) is compared; the faster
//! way is kept for that format for a while, then measured again. Prefetching changes no result,
//! only the time.

use crate::kernels::quant::Format;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// Pairs of one matrix's times a decision takes at most (a 1.1B model runs ~90 jobs a token: ~3
/// tokens); a format with few matrices (an output head of its own) decides after four pairs a
/// matrix, and at least [`MIN_PAIRS`].
const PAIRS: usize = 256;
const MIN_PAIRS: usize = 16;
/// Jobs of a format run on a decision before it is measured again (~45 tokens of a 1.1B model, a
/// second or two: which way is faster moves with the memory's speed, which moves that often here).
const KEEP: usize = 4096;
/// Prefetching (the default) stays unless going without is at least this much faster.
const MARGIN: f64 = 0.02;

/// The decisions per weight format and, while one is being made, the measurements.
#[derive(Default)]
pub struct PrefetchChoice {
    formats: HashMap<Format, FormatChoice>,
}

#[derive(Default)]
struct FormatChoice {
    /// The way decided and the jobs run on it since; `None` while deciding.
    decided: Option<(bool, usize)>,
    /// While deciding, per matrix (its bytes' address): the way it ran last and its seconds a byte.
    last: HashMap<usize, (bool, f64)>,
    /// Σ bytes · ln(t_without / t_with) over the pairs so far, Σ bytes, and their count.
    log_ratio: f64,
    weight: f64,
    pairs: usize,
}

impl PrefetchChoice {
    /// Whether the next one-token job on `matrix` (an id: the address of its bytes) of `fmt`
    /// prefetches.
    pub fn choose(&mut self, fmt: Format, matrix: usize) -> bool {
        let f = self.formats.entry(fmt).or_default();
        match f.decided {
            Some((prefetch, jobs)) if jobs < KEEP => prefetch,
            Some(_) => {
                // measured again: the machine's memory and its other load change
                *f = FormatChoice::default();
                true
            }
            None => f.last.get(&matrix).is_none_or(|&(prefetch, _)| !prefetch),
        }
    }

    /// The time of a job run as [`choose`](Self::choose) said, over `bytes` of weights.
    pub fn record(&mut self, fmt: Format, matrix: usize, prefetch: bool, secs: f64, bytes: usize) {
        let f = self.formats.entry(fmt).or_default();
        if let Some((_, jobs)) = &mut f.decided {
            *jobs += 1;
            return;
        }
        if bytes == 0 || secs.is_nan() || secs <= 0.0 {
            return;
        }
        let per_byte = secs / bytes as f64;
        if let Some(&(other, t)) = f.last.get(&matrix) {
            if other != prefetch {
                let (with, without) = if prefetch { (per_byte, t) } else { (t, per_byte) };
                f.log_ratio += bytes as f64 * (without / with).ln();
                f.weight += bytes as f64;
                f.pairs += 1;
            }
        }
        f.last.insert(matrix, (prefetch, per_byte));
        if f.pairs >= PAIRS || f.pairs >= MIN_PAIRS.max(4 * f.last.len()) {
            let without_faster = f.log_ratio / f.weight < (1.0 - MARGIN).ln();
            *f = FormatChoice { decided: Some((!without_faster, 0)), ..Default::default() };
        }
    }

    /// The decisions in force, by format name.
    pub fn decisions(&self) -> std::collections::BTreeMap<String, bool> {
        self.formats.iter().filter_map(|(f, c)| Some((f.name().to_string(), c.decided?.0))).collect()
    }

    /// The decision for `fmt`, if one is in force.
    pub fn decided(&self, fmt: Format) -> Option<bool> {
        self.formats.get(&fmt).and_then(|f| f.decided.map(|(prefetch, _)| prefetch))
    }
}

/// The process's decisions (one model's matrices or several: each matrix is paired with itself).
pub static PREFETCH_CHOICE: LazyLock<Mutex<PrefetchChoice>> = LazyLock::new(Mutex::default);

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `jobs` one-token jobs over 89 matrices of 1 MB in turn (a 1.1B model's token), each
    /// taking `with` or `without` seconds a byte, times a factor that drifts by ±30% over
    /// thousands of jobs (as the machine's memory does), and returns the prefetch flags the
    /// chooser gave.
    fn run(c: &mut PrefetchChoice, fmt: Format, jobs: usize, with: f64, without: f64) -> Vec<bool> {
        let mut ways = vec![];
        for j in 0..jobs {
            let (matrix, drift) = (0x1000 * (1 + j % 89), 1.0 + 0.3 * (j as f64 / 2000.0).sin());
            let p = c.choose(fmt, matrix);
            c.record(fmt, matrix, p, if p { with } else { without } * drift * 1e6, 1_000_000);
            ways.push(p);
        }
        ways
    }

    #[test]
    fn the_faster_way_is_kept_then_measured_again() {
        let mut c = PrefetchChoice::default();
        // without prefetching 10% faster: decided for it after both were tried on each matrix
        let ways = run(&mut c, Format::Q4_0, 2 * PAIRS + 89, 1.0, 0.9);
        assert!(ways[..89].iter().all(|&p| p), "a matrix's first run prefetches");
        assert!(ways[89..178].iter().all(|&p| !p), "its second run does not");
        assert_eq!(c.decided(Format::Q4_0), Some(false));
        // the other formats are undecided, their own measurements apart
        assert_eq!(c.decided(Format::Q8_0), None);
        // kept for KEEP jobs (some run above), then measured again: now prefetching is 10% faster
        let ways = run(&mut c, Format::Q4_0, KEEP - PAIRS, 1.0, 1.1);
        assert!(ways.iter().all(|&p| !p));
        let ways = run(&mut c, Format::Q4_0, 3 * PAIRS + 89, 1.0, 1.1);
        assert!(ways.iter().any(|&p| p) && ways.iter().any(|&p| !p), "both measured");
        assert_eq!(c.decided(Format::Q4_0), Some(true));
    }

    #[test]
    fn a_format_of_one_matrix_decides_in_a_few_tokens() {
        let mut c = PrefetchChoice::default();
        let mut tokens = 0;
        while c.decided(Format::Q6K).is_none() {
            let p = c.choose(Format::Q6K, 7);
            c.record(Format::Q6K, 7, p, if p { 1.2 } else { 1.0 }, 1000);
            tokens += 1;
        }
        // every run after the first pairs with the one before it
        assert_eq!((tokens, c.decided(Format::Q6K)), (MIN_PAIRS + 1, Some(false)));
    }

    #[test]
    fn a_difference_inside_the_margin_keeps_prefetching() {
        let mut c = PrefetchChoice::default();
        run(&mut c, Format::Q4K, 2 * PAIRS + 89, 1.0, 0.99);
        assert_eq!(c.decided(Format::Q4K), Some(true));
        // and bad timings (zero, NaN, no bytes) are not counted
        let mut c = PrefetchChoice::default();
        for j in 0..4 * PAIRS {
            let p = c.choose(Format::Q6K, j % 7);
            c.record(Format::Q6K, j % 7, p, if j % 2 == 0 { 0.0 } else { f64::NAN }, 100);
        }
        assert_eq!(c.decided(Format::Q6K), None);
    }
}
