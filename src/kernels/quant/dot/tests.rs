use super::*;
use crate::rng::Rng;

fn row(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() as f32).collect()
}

/// Every instruction set gives the same bits, for every tile size, one row at a time or in a
/// group of rows (quantized: interleaved; float: chunk by chunk of columns), and a token's
/// result does not depend on the tokens beside it in the tile.
#[test]
fn same_bits_on_every_instruction_set_and_tile() {
    for cols in [512usize, 2 * super::super::QK_K, 96, 40, 1064] {
        // tokens: more than a tile of twelve (grouped float rows)
        const NT: usize = 14;
        let x: Vec<f32> = (0..NT as u64).flat_map(|t| row(cols, 10 + t)).collect();
        for fmt in Format::ALL {
            if cols % fmt.block_len() != 0 {
                continue;
            }
            let rb = fmt.row_bytes(cols).unwrap();
            // two groups of rows
            let mut wb = vec![0u8; 2 * GROUP * rb];
            for (r, b) in wb.chunks_exact_mut(rb).enumerate() {
                fmt.quantize_row(&row(cols, 3 + r as u64), b);
            }
            let mut acts = Activations::default();
            acts.prepare(&x, NT, cols, fmt);
            let mut want = [[0.0f32; NT]; 2 * GROUP];
            for (r, b) in wb.chunks_exact(rb).enumerate() {
                for t in 0..NT {
                    dot_row(Isa::Scalar, fmt, b, &acts, &[t], &mut want[r][t..]);
                }
            }
            for isa in Isa::all_supported() {
                let grouped = uses_groups(isa, fmt)
                    .then(|| wb.chunks_exact(GROUP * rb).flat_map(|g| to_groups(fmt, g)).collect::<Vec<u8>>());
                if let Some(g) = &grouped {
                    for (g, w) in g.chunks_exact(GROUP * rb).zip(wb.chunks_exact(GROUP * rb)) {
                        assert_eq!(from_groups(fmt, g), w, "grouped layout round trip");
                    }
                }
                let float_tiles = [vec![0usize, 1, 2, 3, 4, 5], vec![8, 1, 5, 0, 2, 7], vec![6, 2, 4, 8, 1]];
                for tile in [vec![0usize, 1, 2, 3], vec![4, 2], vec![3, 0, 4], vec![1]]
                    .into_iter()
                    .chain(float_tiles.into_iter().filter(|t| !fmt.is_quantized() && t.len() <= float_tile(isa, fmt)))
                {
                    for (r, b) in wb.chunks_exact(rb).enumerate().filter(|_| tile.len() <= MAX_TILE) {
                        let mut out = [0.0f32; 4];
                        dot_row(isa, fmt, b, &acts, &tile, &mut out);
                        for (k, &t) in tile.iter().enumerate() {
                            let msg = format!("{fmt} {isa:?} cols {cols} row {r} token {t}");
                            assert_eq!(out[k].to_bits(), want[r][t].to_bits(), "{msg}");
                        }
                    }
                    for n in [GROUP, 5] {
                        if fmt.is_quantized() {
                            break;
                        }
                        let mut out = [[0.0f32; GROUP]; FLOAT_TILE];
                        dot_float_rows(isa, fmt, &wb[..n * rb], n, &acts, &tile, &mut out);
                        for (k, &t) in tile.iter().enumerate() {
                            for r in 0..n {
                                let msg = format!("{fmt} {isa:?} {n} rows, cols {cols} row {r} token {t}");
                                assert_eq!(out[k][r].to_bits(), want[r][t].to_bits(), "{msg}");
                            }
                        }
                    }
                    if let Some(g) = grouped.as_ref().filter(|_| tile.len() <= MAX_TILE && fmt.is_quantized()) {
                        let mut seen = 0;
                        // prefetching or not, the same bits
                        let prefetch = tile.len() % 2 == 1;
                        dot_groups(isa, fmt, g, &acts, &tile, prefetch, &mut |i, out| {
                            seen += 1;
                            for (k, &t) in tile.iter().enumerate() {
                                for r in 0..GROUP {
                                    let msg = format!("{fmt} {isa:?} group {i}, cols {cols} row {r} token {t}");
                                    let want = want[i * GROUP + r][t];
                                    assert_eq!(out[k][r].to_bits(), want.to_bits(), "{msg}");
                                }
                            }
                        });
                        assert_eq!(seen, g.len() / (GROUP * rb), "{fmt} {isa:?}: every group");
                    }
                }
                // grouped float rows: every tile length of the packing, each group of one
                // group, two and three (a pair, then one alone)
                if let Some(g) = grouped.as_ref().filter(|_| !fmt.is_quantized()) {
                    let gb = GROUP * rb;
                    let three: Vec<u8> = g.iter().chain(&g[..gb]).copied().collect();
                    for n in 1..=NT {
                        let mut acts = Activations::default();
                        acts.prepare_isa(isa, &x, n, cols, fmt);
                        let toks: Vec<usize> = (0..n).collect();
                        for tile in toks.chunks(float_tile(isa, fmt)) {
                            for groups in [&g[..gb], &g[..], &three[..]] {
                                let mut seen = 0;
                                let plain = fmt != Format::BF16 || bf16::all_plain(groups);
                                dot_float_groups(isa, fmt, groups, &acts, tile, plain, &mut |i, out| {
                                    seen += 1;
                                    for (k, &t) in tile.iter().enumerate() {
                                        for r in 0..GROUP {
                                            let msg = format!(
                                                "{fmt} {isa:?} {n} tokens, group {i}, cols {cols} row {r} token {t}"
                                            );
                                            let want = want[(i % 2) * GROUP + r][t];
                                            assert_eq!(out[k][r].to_bits(), want.to_bits(), "{msg}");
                                        }
                                    }
                                });
                                assert_eq!(seen, groups.len() / gb, "{fmt} {isa:?}: every group");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// bf16 groups give the canonical chain's bits on every instruction set (AVX-512 BF16's
/// `vdpbf16ps` where the CPU has it, fused multiply-adds or the flushing scalar chain
/// elsewhere): values of every exponent — zeros, numbers below f32's normal range, products
/// that overflow — and values at the edges of the plain range.
#[test]
fn bf16_groups_equal_the_chain_on_any_values() {
    let cols = 96;
    let mut r = Rng::new(11);
    // a bf16 of a random sign and mantissa, biased exponent in `e`
    let mut value = |e: std::ops::RangeInclusive<u32>| {
        let bits = r.next_u64();
        let exp = e.start() + (bits >> 20) as u32 % (e.end() - e.start() + 1);
        ((bits & 0x8000) as u32 | exp << 7 | (bits >> 8) as u32 & 0x7f) as u16
    };
    // (weights' exponents, activations' exponents): anything finite; the plain range's edges;
    // products below the normal range (the sums' flush); weights below it (read as zero)
    let cases = [
        (0..=254, 0..=254),
        (71..=189, 71..=189),
        (71..=80, 71..=75),
        (180..=189, 180..=189),
        (50..=66, 50..=66),
        (0..=2, 120..=135),
    ];
    for (we, xe) in cases {
        let w: Vec<u8> = (0..2 * GROUP * cols).flat_map(|_| value(we.clone()).to_le_bytes()).collect();
        let x: Vec<f32> = (0..9 * cols).map(|_| f32::from_bits((value(xe.clone()) as u32) << 16)).collect();
        let g = to_groups(Format::BF16, &w[..GROUP * 2 * cols])
            .into_iter()
            .chain(to_groups(Format::BF16, &w[GROUP * 2 * cols..]))
            .collect::<Vec<u8>>();
        let plain = bf16::all_plain(&w);
        for isa in Isa::all_supported() {
            let mut acts = Activations::default();
            acts.prepare_isa(isa, &x, 9, cols, Format::BF16);
            let toks: Vec<usize> = (0..9).collect();
            for tile in toks.chunks(float_tile(isa, Format::BF16)) {
                let check = |i: usize, out: &[[f32; GROUP]]| {
                    for (k, &t) in tile.iter().enumerate() {
                        for row in 0..GROUP {
                            let r = i * GROUP + row;
                            let want = bf16::chain(&w[r * 2 * cols..][..2 * cols], acts.bf16_row(t));
                            let got = out[k][row];
                            let msg = format!("{isa:?} exponents {we:?}/{xe:?} row {r} token {t}: {got:e} vs {want:e}");
                            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{msg}");
                        }
                    }
                };
                if uses_groups(isa, Format::BF16) {
                    dot_float_groups(isa, Format::BF16, &g, &acts, tile, plain, &mut |i, out| check(i, out));
                }
                let mut out = [[0.0f32; GROUP]; FLOAT_TILE];
                dot_float_rows(isa, Format::BF16, &w[..GROUP * 2 * cols], GROUP, &acts, tile, &mut out);
                check(0, &out);
            }
        }
    }
}

/// A batch large enough to be quantized in parallel gives each token the bits it gets alone
/// (one token is quantized on the calling thread).
#[test]
fn parallel_activation_quantizing_equals_one_token_at_a_time() {
    let (n, cols) = (72, 2048);
    assert!(n * cols >= PARALLEL_VALUES);
    let x: Vec<f32> = (0..n).flat_map(|t| row(cols, 50 + t as u64)).collect();
    for fmt in [Format::Q4_0, Format::Q8_0, Format::Q4K] {
        let mut all = Activations::default();
        all.prepare(&x, n, cols, fmt);
        let (nb, ns) = (cols / all.kind.block(), cols / all.kind.sum_block());
        for t in 0..n {
            let mut one = Activations::default();
            one.prepare(&x[t * cols..(t + 1) * cols], 1, cols, fmt);
            assert_eq!(one.q, all.q[t * cols..(t + 1) * cols], "{fmt} token {t}");
            let bits = |v: &[f32]| v.iter().map(|d| d.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&one.d), bits(&all.d[t * nb..(t + 1) * nb]), "{fmt} token {t}");
            assert_eq!(one.sum, all.sum[t * ns..(t + 1) * ns], "{fmt} token {t}");
        }
    }
}

/// The activation quantizer rounds as `round_ties_even` does, ties and all.
#[test]
fn activation_rounding_is_ties_to_even() {
    let mut xs = row(4096, 7);
    // blocks whose largest value is 127 (multiplier 1), the rest every tie ±0.5 … ±126.5
    let ties: Vec<f32> = (-127..127).map(|i| i as f32 + 0.5).collect();
    for c in ties.chunks(31) {
        xs.push(127.0);
        xs.extend_from_slice(c);
        xs.extend(std::iter::repeat_n(0.0, 31 - c.len()));
    }
    // NaNs ignored by the scale and quantized to 0, infinities, a block of NaNs, one of zeros
    let odd = |f: &dyn Fn(usize) -> f32| (0..32).map(f).collect::<Vec<f32>>();
    xs.extend(odd(&|i| if i % 5 == 2 { f32::NAN } else { i as f32 - 9.5 }));
    xs.extend(odd(&|i| if i == 7 { f32::NEG_INFINITY } else { i as f32 }));
    xs.extend(odd(&|_| f32::NAN));
    xs.extend(odd(&|_| 0.0));
    for block in xs.chunks(32) {
        let mut q = [0i8; 32];
        let d = quantize_q8_0(block, &mut q[..block.len()]);
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let want_d = f16_to_f32(super::super::f32_to_f16(amax / 127.0));
        assert_eq!(d.to_bits(), want_d.to_bits(), "scale of {block:?}");
        for (v, &q) in block.iter().zip(&q) {
            assert_eq!(q, (v * id).round_ties_even() as i8, "{v} (scale {d})");
        }
    }
}

/// The integer products equal the dot product of the dequantized weights with the dequantized
/// activations, up to f32 rounding.
#[test]
fn dot_equals_dequantized_product() {
    let cols = 2 * super::super::QK_K;
    let x = row(cols, 1);
    let w = row(cols, 2);
    for fmt in Format::ALL {
        let mut wb = vec![0u8; fmt.row_bytes(cols).unwrap()];
        fmt.quantize_row(&w, &mut wb);
        let mut wd = vec![0.0f32; cols];
        fmt.dequantize_row(&wb, &mut wd);
        let mut acts = Activations::default();
        acts.prepare(&x, 1, cols, fmt);
        let xd: Vec<f64> = if fmt.is_quantized() {
            (0..cols).map(|i| acts.q[i] as f64 * acts.d[i / acts.kind.block()] as f64).collect()
        } else if fmt == Format::BF16 {
            // the activations as rounded for bf16 weights
            acts.bf16_row(0)[..cols].iter().map(|&h| super::super::bf16_to_f32(h) as f64).collect()
        } else {
            x.iter().map(|&v| v as f64).collect()
        };
        let want: f64 = wd.iter().zip(&xd).map(|(a, b)| *a as f64 * b).sum();
        let mut out = [0.0f32];
        let isa = Isa::detect();
        dot_row(isa, fmt, &wb, &acts, &[0], &mut out);
        let scale: f64 = wd.iter().zip(&xd).map(|(a, b)| (*a as f64 * b).abs()).sum();
        assert!((out[0] as f64 - want).abs() <= 1e-5 * scale, "{fmt}: {} vs {want}", out[0]);
    }
}
