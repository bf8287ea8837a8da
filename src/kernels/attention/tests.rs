use super::*;
use crate::kernels::gradcheck::{check, probe_loss, randn};

/// Plain softmax attention, in f64, with an explicit repeat of K/V.
fn reference(qkv: &[f32], s: AttnShape) -> Vec<f64> {
    let (t, hd, qs) = (s.seq_len, s.head_dim, s.qkv_stride());
    let rep = s.n_heads / s.n_kv_heads;
    let mut out = vec![0.0f64; s.batch * t * s.out_stride()];
    for b in 0..s.batch {
        for h in 0..s.n_heads {
            for i in 0..t {
                let q = &qkv[(b * t + i) * qs + h * hd..][..hd];
                let sc: Vec<f64> = (0..=i)
                    .map(|j| {
                        let k = &qkv[(b * t + j) * qs + s.k_off(h / rep)..][..hd];
                        q.iter().zip(k).map(|(a, c)| *a as f64 * *c as f64).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                for (j, x) in sc.iter().enumerate() {
                    let v = &qkv[(b * t + j) * qs + s.v_off(h / rep)..][..hd];
                    for e in 0..hd {
                        out[(b * t + i) * s.out_stride() + h * hd + e] += (x - m).exp() / z * v[e] as f64;
                    }
                }
            }
        }
    }
    out
}

fn shapes() -> Vec<AttnShape> {
    // GQA ratios 1, 2, 4 and multi-query; odd lengths; one sequence longer than a key tile.
    vec![
        AttnShape { batch: 2, seq_len: 5, n_heads: 2, n_kv_heads: 2, head_dim: 4 },
        AttnShape { batch: 1, seq_len: 7, n_heads: 4, n_kv_heads: 2, head_dim: 6 },
        AttnShape { batch: 2, seq_len: 3, n_heads: 4, n_kv_heads: 1, head_dim: 8 },
        AttnShape { batch: 1, seq_len: 9, n_heads: 8, n_kv_heads: 2, head_dim: 2 },
        AttnShape { batch: 1, seq_len: 70, n_heads: 2, n_kv_heads: 1, head_dim: 4 },
    ]
}

fn forward(qkv: &[f32], s: AttnShape) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![0.0; s.batch * s.seq_len * s.out_stride()];
    let mut lse = vec![0.0; s.batch * s.n_heads * s.seq_len];
    let mut scratch = vec![f32::NAN; attention_scratch_len(s)];
    attention_forward(&mut out, &mut lse, qkv, &mut scratch, s);
    (out, lse)
}

#[test]
fn attention_forward_matches_plain_softmax() {
    for s in shapes() {
        let qkv = randn(s.batch * s.seq_len * s.qkv_stride(), 1, 1.5);
        let (out, _) = forward(&qkv, s);
        for (a, b) in out.iter().zip(reference(&qkv, s)) {
            assert!((*a as f64 - b).abs() < 1e-5, "{s:?}: {a} vs {b}");
        }
    }
}

/// Scores of a tile of transposed keys are `dot`'s bits, key by key, tails included, one head at
/// a time, three or four.
#[test]
fn key_lane_scores_are_dot_bits() {
    for hd in [8, 20, 64, 100] {
        let q = randn(hd, 11, 1.0);
        let keys = randn(KEY_LANES * hd, 12, 1.0); // row j: key j
        let mut kt = vec![0.0; hd * KEY_LANES];
        for j in 0..KEY_LANES {
            for e in 0..hd {
                kt[e * KEY_LANES + j] = keys[j * hd + e];
            }
        }
        let qs: Vec<Vec<f32>> = (0..4).map(|h| randn(hd, 20 + h, 1.0)).collect();
        for isa in Isa::all_supported() {
            for (j, d) in dot_keys(isa, &q, &kt, 0.125).iter().enumerate() {
                let want = dot(&q, &keys[j * hd..][..hd]) * 0.125;
                assert_eq!(d.to_bits(), want.to_bits(), "{isa:?}, hd {hd}, key {j}");
            }
            // four or three heads on each key vector: each head's bits alone
            let four = dot_keys_heads::<4>(isa, std::array::from_fn(|h| &qs[h][..]), &kt, 0.125);
            let three = dot_keys_heads::<3>(isa, std::array::from_fn(|h| &qs[h][..]), &kt, 0.125);
            for (h, d) in four.iter().chain(&three).enumerate().map(|(i, d)| (i % 4, d)) {
                for (j, d) in d.iter().enumerate() {
                    let want = dot(&qs[h], &keys[j * hd..][..hd]) * 0.125;
                    assert_eq!(d.to_bits(), want.to_bits(), "{isa:?}, hd {hd}, head {h}, key {j}");
                }
            }
        }
    }
}

/// Four heads' value rows at once give each head the bits of `accumulate_rows` alone.
#[test]
fn value_rows_for_four_heads_are_each_heads_bits() {
    let (hd, nk) = (72, 37);
    let data = randn(nk * hd, 13, 1.0);
    let start = randn(4 * hd, 14, 1.0);
    let c = randn(4 * KEY_TILE, 15, 1.0);
    let coef: Vec<[f32; KEY_TILE]> = c.chunks_exact(KEY_TILE).map(|c| c.try_into().unwrap()).collect();
    let mut together = start.clone();
    accumulate_rows_heads::<4>(&mut together, &coef, nk, &data, 0, hd);
    for h in 0..4 {
        let mut alone = start[h * hd..(h + 1) * hd].to_vec();
        accumulate_rows(&mut alone, &coef[h][..nk], &data, 0, hd);
        for (a, b) in alone.iter().zip(&together[h * hd..]) {
            assert_eq!(a.to_bits(), b.to_bits(), "head {h}");
        }
    }
}

/// Two query rows' value rows at once (the second one row further) give each row the bits of
/// `accumulate_rows` alone.
#[test]
fn value_rows_for_two_queries_are_each_rows_bits() {
    let (hd, stride, nk) = (72, 80, 37);
    let data = randn(nk * stride, 16, 1.0);
    let start = randn(2 * hd, 17, 1.0);
    let coef = randn(2 * nk, 18, 1.0);
    for (n0, n1) in [(nk, nk), (nk - 1, nk), (0, 1)] {
        let (c0, c1) = (&coef[..n0], &coef[nk..nk + n1]);
        let (mut a0, mut a1) = (start[..hd].to_vec(), start[hd..].to_vec());
        accumulate_rows2(&mut a0, &mut a1, c0, c1, &data, 3, stride);
        for (alone_start, c, together) in [(&start[..hd], c0, &a0), (&start[hd..], c1, &a1)] {
            let mut alone = alone_start.to_vec();
            accumulate_rows(&mut alone, c, &data, 3, stride);
            for (a, b) in alone.iter().zip(together) {
                assert_eq!(a.to_bits(), b.to_bits(), "rows {n0}/{n1}");
            }
        }
    }
}

/// GQA 2 (heads one or two a task) and GQA 8 with a head size that is not a multiple of 64
/// (four heads' value rows at once, and the tail of each row).
fn cached_shapes() -> [AttnShape; 2] {
    [
        AttnShape { batch: 1, seq_len: 70, n_heads: 4, n_kv_heads: 2, head_dim: 8 },
        AttnShape { batch: 1, seq_len: 70, n_heads: 16, n_kv_heads: 2, head_dim: 72 },
    ]
}

/// The keys and values of `qkv` laid out as a cache: keys [n_kv][cap / 16][hd][16], values
/// [n_kv][cap][hd]; unfilled positions NaN (spare lanes score them, and must drop them).
fn cache_of(qkv: &[f32], s: AttnShape) -> (Vec<f32>, Vec<f32>, usize) {
    let (hd, cap, qs) = (s.head_dim, s.seq_len.next_multiple_of(KEY_LANES), s.qkv_stride());
    let mut kc = vec![f32::NAN; s.n_kv_heads * cap * hd];
    let mut vc = vec![f32::NAN; s.n_kv_heads * cap * hd];
    for r in 0..s.seq_len {
        for g in 0..s.n_kv_heads {
            for e in 0..hd {
                kc[(g * cap + r / KEY_LANES * KEY_LANES) * hd + e * KEY_LANES + r % KEY_LANES] =
                    qkv[r * qs + s.k_off(g) + e];
            }
            vc[(g * cap + r) * hd..][..hd].copy_from_slice(&qkv[r * qs + s.v_off(g)..][..hd]);
        }
    }
    (kc, vc, cap)
}

/// Prefill of p0 positions then n more, through the cache, equals one causal pass.
#[test]
fn cached_attention_equals_full_attention() {
    for s in cached_shapes() {
        let qkv = randn(s.seq_len * s.qkv_stride(), 5, 1.0);
        let (full, _) = forward(&qkv, s);
        let (qs, hd) = (s.qkv_stride(), s.head_dim);
        let (kc, vc, cap) = cache_of(&qkv, s);
        let kv = KvSlices::F32 { k: &kc, v: &vc };
        for (p0, n) in [(0, 70), (65, 5), (69, 1)] {
            let mut out = vec![0.0; n * s.out_stride()];
            attention_cached(&mut out, &qkv[p0 * qs..], qs, kv, cap, n, p0, s.n_heads, s.n_kv_heads, hd);
            for (a, b) in out.iter().zip(&full[p0 * s.out_stride()..]) {
                assert!((a - b).abs() < 1e-5, "{s:?}, p0 {p0}: {a} vs {b}");
            }
        }
    }
}

/// A half cache gives the bits of an f32 cache holding its values (rounded to half), and stays
/// close to the unrounded pass.
#[test]
fn half_cache_equals_f32_cache_of_its_values() {
    use crate::kernels::quant::{f16_to_f32, f32_to_f16};
    for s in cached_shapes() {
        let qkv = randn(s.seq_len * s.qkv_stride(), 6, 1.0);
        let (full, _) = forward(&qkv, s);
        let (qs, hd) = (s.qkv_stride(), s.head_dim);
        let (kc, vc, cap) = cache_of(&qkv, s);
        let half = |x: &[f32]| x.iter().map(|&x| f32_to_f16(x)).collect::<Vec<u16>>();
        let (kh, vh) = (half(&kc), half(&vc));
        let wide = |x: &[u16]| x.iter().map(|&h| f16_to_f32(h)).collect::<Vec<f32>>();
        let (kr, vr) = (wide(&kh), wide(&vh));
        for (p0, n) in [(0, 70), (65, 5), (69, 1)] {
            let run = |kv: KvSlices| {
                let mut out = vec![0.0; n * s.out_stride()];
                attention_cached(&mut out, &qkv[p0 * qs..], qs, kv, cap, n, p0, s.n_heads, s.n_kv_heads, hd);
                out
            };
            let from_half = run(KvSlices::F16 { k: &kh, v: &vh });
            let from_rounded = run(KvSlices::F32 { k: &kr, v: &vr });
            for (i, (a, b)) in from_half.iter().zip(&from_rounded).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{s:?}, p0 {p0}, output {i}");
            }
            for (a, b) in from_half.iter().zip(&full[p0 * s.out_stride()..]) {
                assert!((a - b).abs() < 4e-3, "{s:?}, p0 {p0}: {a} vs {b}");
            }
        }
    }
}

/// Widening halves gives IEEE's values on every instruction set: all 65536 bit patterns
/// (subnormals, infinities and NaNs included) against the `half` crate's conversion.
#[test]
fn widened_halves_are_exact_on_every_instruction_set() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    for isa in Isa::all_supported() {
        // an odd length: the vector loops' tails too
        let mut out = vec![0.0f32; all.len() - 3];
        widen_f16(isa, &all[3..], &mut out);
        for (&h, w) in all[3..].iter().zip(&out) {
            let want = half::f16::from_bits(h).to_f32();
            assert_eq!(w.to_bits(), want.to_bits(), "{isa:?}: {h:#06x} widened to {w:e}");
        }
    }
}

#[test]
fn attention_gradients_match_finite_differences() {
    for s in shapes() {
        let qkv = randn(s.batch * s.seq_len * s.qkv_stride(), 2, 1.0);
        let probe = randn(s.batch * s.seq_len * s.out_stride(), 3, 1.0);
        let (out, lse) = forward(&qkv, s);
        let mut dqkv = vec![f32::NAN; qkv.len()];
        let mut scratch = vec![f32::NAN; attention_scratch_len(s)];
        attention_backward(&mut dqkv, &probe, &out, &qkv, &lse, &mut scratch, s);
        check(&format!("attention {s:?}"), &qkv, &dqkv, &mut |x| probe_loss(&forward(x, s).0, &probe));
    }
}
