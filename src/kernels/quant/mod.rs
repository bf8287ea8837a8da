//! Weight formats of ggml (llama.cpp's tensor library), with its block layouts byte for byte, so
//! that a GGUF tensor is used exactly as stored: f32, f16, bf16, Q8_0, Q4_0, Q4_K and Q6_K.
//!
//! Here: the formats, the reference quantizers (`quantize_row_*_ref` of ggml-quants.c, operation
//! for operation, so that a file we write equals llama.cpp's) and dequantizers (equal to the `gguf`
//! Python package's). The integer dot products that run the matmuls are in [`dot`].
//!
//! Block layouts (little-endian, no padding):
//! - Q8_0: 32 weights in 34 bytes: `d: f16`, `qs: [i8; 32]`; w = d·q.
//! - Q4_0: 32 weights in 18 bytes: `d: f16`, `qs: [u8; 16]`, weight j in the low nibble of byte j,
//!   weight 16+j in the high nibble; w = d·(q − 8).
//! - Q4_K: 256 weights in 144 bytes: `d, dmin: f16`, `scales: [u8; 12]` (eight 6-bit scales and
//!   mins), `qs: [u8; 128]`; sub-block j of 32: w = d·sc_j·q − dmin·m_j.
//! - Q6_K: 256 weights in 210 bytes: `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16`;
//!   sub-block j of 16: w = d·sc_j·(q − 32), q 6 bits.

pub mod bf16;
pub mod dot;

use anyhow::{bail, Result};

/// Weights per K-quant super-block.
pub const QK_K: usize = 256;

/// A weight format, with ggml's type id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4K,
    Q6K,
}

impl Format {
    pub const ALL: [Format; 7] =
        [Format::F32, Format::F16, Format::BF16, Format::Q8_0, Format::Q4_0, Format::Q4K, Format::Q6K];

    /// ggml's `enum ggml_type` value.
    pub fn ggml_type(self) -> u32 {
        match self {
            Format::F32 => 0,
            Format::F16 => 1,
            Format::Q4_0 => 2,
            Format::Q8_0 => 8,
            Format::Q4K => 12,
            Format::Q6K => 14,
            Format::BF16 => 30,
        }
    }

    pub fn from_ggml_type(t: u32) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.ggml_type() == t)
    }

    /// ggml's name of the type (`q4_K`, …).
    pub fn name(self) -> &'static str {
        match self {
            Format::F32 => "f32",
            Format::F16 => "f16",
            Format::BF16 => "bf16",
            Format::Q8_0 => "q8_0",
            Format::Q4_0 => "q4_0",
            Format::Q4K => "q4_K",
            Format::Q6K => "q6_K",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(s))
    }

    /// Weights per block.
    pub fn block_len(self) -> usize {
        match self {
            Format::F32 | Format::F16 | Format::BF16 => 1,
            Format::Q8_0 | Format::Q4_0 => 32,
            Format::Q4K | Format::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::F32 => 4,
            Format::F16 | Format::BF16 => 2,
            Format::Q8_0 => 34,
            Format::Q4_0 => 18,
            Format::Q4K => 144,
            Format::Q6K => 210,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes of one row of `cols` weights; `cols` must be a multiple of the block length.
    pub fn row_bytes(self, cols: usize) -> Result<usize> {
        if !cols.is_multiple_of(self.block_len()) {
            bail!(
                "a row of {cols} weights is not a whole number of {} blocks ({} weights)",
                self.name(),
                self.block_len()
            );
        }
        Ok(cols / self.block_len() * self.block_bytes())
    }

    /// Decodes one row (`out.len()` weights) from its bytes.
    pub fn dequantize_row(self, bytes: &[u8], out: &mut [f32]) {
        let (bl, bb) = (self.block_len(), self.block_bytes());
        debug_assert_eq!(bytes.len(), out.len() / bl * bb);
        match self {
            Format::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Format::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                }
            }
            Format::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                }
            }
            _ => {
                for (o, b) in out.chunks_exact_mut(bl).zip(bytes.chunks_exact(bb)) {
                    match self {
                        Format::Q8_0 => dequantize_q8_0(b, o),
                        Format::Q4_0 => dequantize_q4_0(b, o),
                        Format::Q4K => dequantize_q4_k(b, o),
                        Format::Q6K => dequantize_q6_k(b, o),
                        _ => unreachable!(),
                    }
                }
            }
        }
    }

    /// Encodes one row with ggml's reference quantizer; `out` is `row_bytes(x.len())` long.
    pub fn quantize_row(self, x: &[f32], out: &mut [u8]) {
        let (bl, bb) = (self.block_len(), self.block_bytes());
        debug_assert_eq!(out.len(), x.len() / bl * bb);
        match self {
            Format::F32 => {
                for (c, v) in out.chunks_exact_mut(4).zip(x) {
                    c.copy_from_slice(&v.to_le_bytes());
                }
            }
            Format::F16 => {
                for (c, v) in out.chunks_exact_mut(2).zip(x) {
                    c.copy_from_slice(&f32_to_f16(*v).to_le_bytes());
                }
            }
            Format::BF16 => {
                for (c, v) in out.chunks_exact_mut(2).zip(x) {
                    c.copy_from_slice(&f32_to_bf16(*v).to_le_bytes());
                }
            }
            _ => {
                for (b, xs) in out.chunks_exact_mut(bb).zip(x.chunks_exact(bl)) {
                    match self {
                        Format::Q8_0 => quantize_q8_0(xs, b),
                        Format::Q4_0 => quantize_q4_0(xs, b),
                        Format::Q4K => quantize_q4_k(xs, b),
                        Format::Q6K => quantize_q6_k(xs, b),
                        _ => unreachable!(),
                    }
                }
            }
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// IEEE half to f32 (exact).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// f32 to IEEE half, round to nearest even (ggml's `GGML_FP32_TO_FP16`, F16C's `vcvtps2ph`).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// ggml's `ggml_compute_fp32_to_bf16`: NaN made quiet, otherwise round to nearest even.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// ggml's `nearest_int`: round half to even by the 1.5·2²³ trick (valid for |x| < 2²²).
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

// ---- Q8_0 -------------------------------------------------------------------------------------

fn quantize_q8_0(x: &[f32], b: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    for (q, v) in b[2..34].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in y.iter_mut().zip(&b[2..34]) {
        *o = q as i8 as f32 * d;
    }
}

// ---- Q4_0 -------------------------------------------------------------------------------------

fn quantize_q4_0(x: &[f32], b: &mut [u8]) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    for j in 0..16 {
        let x0 = x[j] * id;
        let x1 = x[16 + j] * id;
        // C's `(int8_t)(x + 8.5f)` truncates toward zero
        let q0 = ((x0 + 8.5) as i8).min(15) as u8;
        let q1 = ((x1 + 8.5) as i8).min(15) as u8;
        b[2 + j] = q0 | (q1 << 4);
    }
}

fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        y[j] = ((b[2 + j] & 0x0f) as i32 - 8) as f32 * d;
        y[16 + j] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
    }
}

// ---- Q4_K -------------------------------------------------------------------------------------

/// Scale and min (6 bits each) of sub-block `j` from the packed 12 bytes (ggml's `get_scale_min_k4`).
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// ggml's `make_qkx2_quants`: scale and min of one sub-block by a weighted search.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l_out[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

fn quantize_q4_k(x: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let (mut mins, mut scales) = ([0.0f32; 8], [0.0f32; 8]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().fold(0.0, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(15, xs, &weights, &mut l[32 * j..], &mut laux, -1.0, 0.1, 20);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut [0u8; 12];
    for j in 0..8 {
        // C: `uint8_t ls = nearest_int(...)` keeps the low byte, then MIN(63, ls)
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    let d16 = f32_to_f16(max_scale / 63.0);
    let dmin16 = f32_to_f16(max_min / 63.0);
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, sc);
        let d = f16_to_f32(d16) * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = f16_to_f32(dmin16) * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, 15) as u8;
        }
    }
    b[0..2].copy_from_slice(&d16.to_le_bytes());
    b[2..4].copy_from_slice(&dmin16.to_le_bytes());
    b[4..16].copy_from_slice(sc);
    let q = &mut b[16..144];
    for (c, j) in (0..QK_K).step_by(64).enumerate() {
        for i in 0..32 {
            q[32 * c + i] = l[j + i] | (l[j + i + 32] << 4);
        }
    }
}

fn dequantize_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let sc = &b[4..16];
    let q = &b[16..144];
    for c in 0..4 {
        let (s1, m1) = scale_min_k4(2 * c, sc);
        let (s2, m2) = scale_min_k4(2 * c + 1, sc);
        let (d1, m1) = (d * s1 as f32, min * m1 as f32);
        let (d2, m2) = (d * s2 as f32, min * m2 as f32);
        for l in 0..32 {
            y[64 * c + l] = d1 * (q[32 * c + l] & 0xf) as f32 - m1;
            y[64 * c + 32 + l] = d2 * (q[32 * c + l] >> 4) as f32 - m2;
        }
    }
}

// ---- Q6_K -------------------------------------------------------------------------------------

/// ggml's `make_qx_quants` with `rmse_type` 1 and no importance weights (the path Q6_K takes).
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        // GROUP_MAX_EPS
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
                l_out[i] = (nmax + l) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

fn quantize_q6_k(x: &[f32], b: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..16 {
        let s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..]);
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    b.fill(0);
    if max_abs_scale < 1e-15 {
        return;
    }
    let iscale = -128.0 / max_scale;
    let d16 = f32_to_f16(1.0 / iscale);
    b[208..210].copy_from_slice(&d16.to_le_bytes());
    let mut sc = [0i8; 16];
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        b[192 + ib] = sc[ib] as u8;
    }
    for j in 0..16 {
        let d = f16_to_f32(d16) * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    let l = l.map(|v| v as u8);
    let (ql, rest) = b.split_at_mut(128);
    let qh = &mut rest[..64];
    for (h, j) in (0..QK_K).step_by(128).enumerate() {
        for i in 0..32 {
            let q1 = l[j + i] & 0xf;
            let q2 = l[j + i + 32] & 0xf;
            let q3 = l[j + i + 64] & 0xf;
            let q4 = l[j + i + 96] & 0xf;
            ql[64 * h + i] = q1 | (q3 << 4);
            ql[64 * h + i + 32] = q2 | (q4 << 4);
            qh[32 * h + i] = (l[j + i] >> 4)
                | ((l[j + i + 32] >> 4) << 2)
                | ((l[j + i + 64] >> 4) << 4)
                | ((l[j + i + 96] >> 4) << 6);
        }
    }
}

fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for h in 0..2 {
        let ql = &b[64 * h..];
        let qh = &b[128 + 32 * h..];
        let sc = &b[192 + 8 * h..];
        let y = &mut y[128 * h..];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * sc[is] as i8 as f32 * q1 as f32;
            y[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
            y[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
            y[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        // heavy-ish tails and an outlier per 64, as real weights have
        (0..n).map(|i| r.normal() as f32 * 0.02 * if i % 64 == 7 { 8.0 } else { 1.0 }).collect()
    }

    /// Round trip error is within the format's resolution: half a quantization step per weight.
    #[test]
    fn round_trip_within_half_a_step() {
        let x = data(4 * QK_K, 1);
        for f in Format::ALL {
            let mut b = vec![0u8; f.row_bytes(x.len()).unwrap()];
            f.quantize_row(&x, &mut b);
            let mut y = vec![0.0f32; x.len()];
            f.dequantize_row(&b, &mut y);
            for (blk, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                // bits of the weight itself: 8 (Q8_0), 4 (Q4_0, Q4_K), 6 (Q6_K); the K-quants' 6-bit
                // scales and mins add their own rounding
                let tol = match f {
                    Format::F32 => 0.0,
                    Format::F16 => amax * 1e-3,
                    Format::BF16 => amax * 4e-3,
                    Format::Q8_0 => amax / 127.0 * 0.51,
                    // the extreme of the other sign is clipped from +8 to +7 steps
                    Format::Q4_0 => amax / 8.0 * 1.01,
                    Format::Q4K => amax / 15.0 * 2.0,
                    Format::Q6K => amax / 31.0 * 1.0,
                };
                for (a, b) in xs.iter().zip(ys) {
                    assert!((a - b).abs() <= tol, "{f} block {blk}: {a} → {b} (tolerance {tol})");
                }
            }
        }
    }

    #[test]
    fn hand_made_blocks_decode_as_ggml_defines_them() {
        // Q4_0: d = 0.5, byte j = (lo j%16, hi 15-j%16)
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
        for j in 0..16 {
            b[2 + j] = (j as u8) | ((15 - j as u8) << 4);
        }
        let mut y = [0.0f32; 32];
        Format::Q4_0.dequantize_row(&b, &mut y);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[16 + j], (7.0 - j as f32) * 0.5);
        }
        // Q4_K: sub-block 5's scale and min live in the high bits of bytes 1 and 5 and in byte 9
        let mut sc = [0u8; 12];
        sc[1] = 0b11_000000;
        sc[5] = 0b10_000000;
        sc[9] = 0x3a;
        assert_eq!(scale_min_k4(5, &sc), (0x0a | (3 << 4), 0x03 | (2 << 4)));
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80, "ties to even");
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
    }

    #[test]
    fn rows_that_are_not_whole_blocks_are_refused() {
        assert!(Format::Q4K.row_bytes(176).is_err());
        assert!(Format::Q8_0.row_bytes(48).is_err());
        assert_eq!(Format::Q6K.row_bytes(512).unwrap(), 420);
        assert_eq!(Format::F16.row_bytes(3).unwrap(), 6);
    }
}
