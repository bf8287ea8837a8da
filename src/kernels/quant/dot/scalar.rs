use super::*;

fn idot(w: &[i8], a: &[i8]) -> i32 {
    w.iter().zip(a).map(|(&x, &y)| x as i32 * y as i32).sum()
}

pub(super) fn quant<const T: usize>(fmt: Format, w: &[u8], a: &QActs<T>, r: &mut [f32; T]) {
    let mut wb = [0i8; 32];
    match fmt {
        Format::Q8_0 | Format::Q4_0 => {
            let mut acc = [[0.0f32; 2]; T];
            for (b, blk) in w.chunks_exact(fmt.block_bytes()).enumerate() {
                let dw = f16le(blk, 0);
                if fmt == Format::Q8_0 {
                    wb.iter_mut().zip(&blk[2..34]).for_each(|(o, &q)| *o = q as i8);
                } else {
                    for j in 0..16 {
                        wb[j] = (blk[2 + j] & 0xf) as i8 - 8;
                        wb[16 + j] = (blk[2 + j] >> 4) as i8 - 8;
                    }
                }
                for t in 0..T {
                    let sum = idot(&wb, &a.q[t][b * QA..][..QA]);
                    acc[t][b % 2] = (sum as f32).mul_add(dw * a.d[t][b], acc[t][b % 2]);
                }
            }
            for t in 0..T {
                r[t] = acc[t][0] + acc[t][1];
            }
        }
        Format::Q4K => {
            let (mut sum, mut mins) = ([0.0f32; T], [0.0f32; T]);
            for (sb, blk) in w.chunks_exact(144).enumerate() {
                let (d, dmin) = (f16le(blk, 0), f16le(blk, 2));
                let (sc, qs) = (&blk[4..16], &blk[16..144]);
                let (mut isum, mut msum) = ([0i32; T], [0i32; T]);
                for j in 0..8 {
                    let (s, m) = scale_min_k4(j, sc);
                    let c = &qs[32 * (j / 2)..][..32];
                    for i in 0..32 {
                        wb[i] = if j % 2 == 0 { c[i] & 0xf } else { c[i] >> 4 } as i8;
                    }
                    for t in 0..T {
                        isum[t] += s as i32 * idot(&wb, &a.q[t][sb * 256 + 32 * j..][..32]);
                        msum[t] += m as i32 * (a.s[t][16 * sb + 2 * j] + a.s[t][16 * sb + 2 * j + 1]);
                    }
                }
                for t in 0..T {
                    sum[t] = (isum[t] as f32).mul_add(d * a.d[t][sb], sum[t]);
                    mins[t] = (msum[t] as f32).mul_add(dmin * a.d[t][sb], mins[t]);
                }
            }
            for t in 0..T {
                r[t] = sum[t] - mins[t];
            }
        }
        Format::Q6K => {
            let mut sum = [0.0f32; T];
            for (sb, blk) in w.chunks_exact(210).enumerate() {
                let d = f16le(blk, 208);
                let mut isum = [0i32; T];
                for k in 0..8 {
                    let (h, g) = (k / 4, k % 4);
                    let ql = &blk[64 * h..];
                    let qh = &blk[128 + 32 * h..];
                    for l in 0..32 {
                        let byte = ql[l + 32 * (g % 2)];
                        let lo = if g < 2 { byte & 0xf } else { byte >> 4 };
                        let hi = (qh[l] >> (2 * g)) & 3;
                        wb[l] = (lo | (hi << 4)) as i8 - 32;
                    }
                    for (half, wq) in wb.chunks_exact(16).enumerate() {
                        let sc = blk[192 + 2 * k + half] as i8 as i32;
                        for t in 0..T {
                            isum[t] += sc * idot(wq, &a.q[t][sb * 256 + 32 * k + 16 * half..][..16]);
                        }
                    }
                }
                for t in 0..T {
                    sum[t] = (isum[t] as f32).mul_add(d * a.d[t][sb], sum[t]);
                }
            }
            *r = sum;
        }
        _ => unreachable!("float formats take f32 activations"),
    }
}

/// f16: one fused multiply-add after the other, column by column.
pub(super) fn float_chain(w: &[u8], x: &[f32]) -> f32 {
    let value = |v: &[u8]| f16_to_f32(u16::from_le_bytes([v[0], v[1]]));
    w.chunks_exact(2).zip(x).fold(0.0f32, |acc, (v, &x)| value(v).mul_add(x, acc))
}

/// f32: the 16-lane chain of the canonical order.
pub(super) fn float<const T: usize>(w: &[u8], x: &[&[f32]; T], r: &mut [f32; T]) {
    let cols = x[0].len();
    let wv = |i: usize| f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]);
    for t in 0..T {
        let mut acc = [0.0f32; 16];
        let main = cols / 16 * 16;
        for c in (0..main).step_by(16) {
            for (l, v) in acc.iter_mut().enumerate() {
                *v = wv(c + l).mul_add(x[t][c + l], *v);
            }
        }
        let mut c: [f32; 8] = std::array::from_fn(|l| acc[l] + acc[l + 8]);
        let mut i = main;
        while i + 8 <= cols {
            for (l, v) in c.iter_mut().enumerate() {
                *v = wv(i + l).mul_add(x[t][i + l], *v);
            }
            i += 8;
        }
        let mut s = hsum8(c);
        for j in i..cols {
            s = wv(j).mul_add(x[t][j], s);
        }
        r[t] = s;
    }
}
