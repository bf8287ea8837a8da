//! Log-probabilities of chosen tokens and their most likely alternatives (OpenAI's `logprobs`).

#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Log-probability of `id` and the `top` most likely tokens (ties: the lower id first), from one
/// row of logits.
pub fn logprobs(row: &[f32], id: u32, top: usize) -> TokenLogprob {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    let lp = |i: usize| (row[i] as f64 - lse) as f32;
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &x) in row.iter().enumerate() {
            if best.len() < top || x > row[best[best.len() - 1].0 as usize] {
                let at = best.iter().position(|&(j, _)| x > row[j as usize]).unwrap_or(best.len());
                best.insert(at, (i as u32, 0.0));
                best.truncate(top);
            }
        }
    }
    TokenLogprob { logprob: lp(id as usize), top: best.into_iter().map(|(i, _)| (i, lp(i as usize))).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_top_tokens_in_order() {
        let row = [1.0f32, 3.0, 2.0, -1.0, 3.0];
        let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        let lp = logprobs(&row, 2, 3);
        assert!((lp.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        let ids: Vec<u32> = lp.top.iter().map(|x| x.0).collect();
        assert_eq!(ids, [1, 4, 2]); // ties keep the lower id first
        assert!((lp.top[0].1 as f64 - (3.0 - z.ln())).abs() < 1e-6);
        assert!(logprobs(&row, 0, 0).top.is_empty());
    }
}
