//! The training data stream: a weighted mixture of named components (TinyLlama's default:
//! `slim` 0.693584, `star` 0.306416), each a set of packed shards, yielding blocks of
//! `seq_len + 1` tokens.
//!
//! Order, for each component: every epoch the component's files are shuffled with a seed shared
//! by all ranks (so ranks split them disjointly: rank r takes files r, r + world, …; TinyLlama's
//! #67 seeded this per rank and ranks overlapped), then taken `buffer_files` at a time and the
//! blocks of those files shuffled with a per-rank seed. The whole position is
//! [`LoaderState`]: (epoch, group, index) per component plus the mixture's RNG. Restoring it
//! continues with exactly the next block, at the cost of re-shuffling one group — no replay
//! (TinyLlama's #162, #164).

use super::shard::Shard;
use crate::rng::Rng;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// TinyLlama's pretraining mixture.
pub const TINYLLAMA_MIX: &[(&str, f64)] = &[("slim", 0.693584), ("star", 0.306416)];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentPosition {
    pub epoch: u64,
    pub group: u64,
    pub index: u64,
}

/// Everything needed to continue the stream exactly where it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub mix_rng: Rng,
    pub components: Vec<ComponentPosition>,
}

#[derive(Clone, Debug)]
pub struct LoaderOptions {
    pub split: String,
    pub mix: Vec<(String, f64)>,
    /// Tokens per block: `seq_len + 1`.
    pub block_size: usize,
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    /// Files whose blocks are shuffled together (TinyLlama's `n_chunks`).
    pub buffer_files: usize,
    pub shuffle: bool,
    /// The model's vocabulary: a token id at or above it is an error naming its shard (not a
    /// panic in the embedding lookup).
    pub vocab_size: Option<usize>,
}

struct Component {
    name: String,
    files: Vec<Shard>,
    /// Blocks in each file.
    blocks: Vec<usize>,
    pos: ComponentPosition,
    /// The current group's block order, `(file, block)`, for `cached`'s (epoch, group).
    order: Vec<(u32, u32)>,
    cached: Option<(u64, u64)>,
}

pub struct MixtureLoader {
    opts: LoaderOptions,
    comps: Vec<Component>,
    cum_weights: Vec<f64>,
    mix_rng: Rng,
}

fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// The shard files of component `name` in `dir` for `split`: `{split}_{name}_*.bin`, sorted.
pub fn component_files(dir: &Path, split: &str, name: &str) -> Result<Vec<std::path::PathBuf>> {
    let want = format!("{split}_{name}_");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list data directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.starts_with(&want) && n.ends_with(".bin")
        })
        .collect();
    files.sort();
    Ok(files)
}

impl MixtureLoader {
    pub fn open(dir: &Path, opts: LoaderOptions) -> Result<Self> {
        ensure!(opts.world >= 1 && opts.rank < opts.world, "rank {} of world {}", opts.rank, opts.world);
        ensure!(opts.block_size >= 2, "block size must be at least 2");
        ensure!(!opts.mix.is_empty(), "the data mixture is empty");
        let mut comps = vec![];
        let mut cum = vec![];
        let mut total = 0.0;
        for (name, w) in &opts.mix {
            ensure!(w.is_finite() && *w > 0.0, "mixture weight of `{name}` is {w}: weights must be positive");
            let paths = component_files(dir, &opts.split, name)?;
            if paths.is_empty() {
                bail!(
                    "no shards for component `{name}` in {} (expected {}_{name}_*.bin; run `tinyllama prepare --prefix {name}`)",
                    dir.display(),
                    opts.split
                );
            }
            ensure!(
                paths.len() >= opts.world,
                "component `{name}` has {} shard files but is read as {} streams (ranks × micro-batches per step), each needing at least one file: prepare it with a smaller --chunk-size",
                paths.len(),
                opts.world
            );
            let files = paths.iter().map(|p| Shard::open(p)).collect::<Result<Vec<_>>>()?;
            let blocks: Vec<usize> = files.iter().map(|f| f.len / opts.block_size).collect();
            ensure!(
                blocks.iter().sum::<usize>() > 0,
                "component `{name}`: no shard holds a whole block of {} tokens",
                opts.block_size
            );
            total += w;
            cum.push(total);
            comps.push(Component {
                name: name.clone(),
                files,
                blocks,
                pos: ComponentPosition { epoch: 0, group: 0, index: 0 },
                order: vec![],
                cached: None,
            });
        }
        let mix_rng = Rng::fork(opts.seed ^ 0x6d69_7874, opts.rank as u64);
        Ok(MixtureLoader { opts, comps, cum_weights: cum, mix_rng })
    }

    pub fn state(&self) -> LoaderState {
        LoaderState { mix_rng: self.mix_rng.clone(), components: self.comps.iter().map(|c| c.pos.clone()).collect() }
    }

    pub fn restore(&mut self, st: &LoaderState) -> Result<()> {
        ensure!(
            st.components.len() == self.comps.len(),
            "data state has {} components, the mixture {}",
            st.components.len(),
            self.comps.len()
        );
        self.mix_rng = st.mix_rng.clone();
        for (c, p) in self.comps.iter_mut().zip(&st.components) {
            c.pos = p.clone();
        }
        Ok(())
    }

    /// Fills `out` (`block_size` tokens) with the next block; returns its component's index.
    pub fn next_block(&mut self, out: &mut [u32]) -> Result<usize> {
        let total = *self.cum_weights.last().unwrap();
        let u = self.mix_rng.uniform() * total;
        let ci = self.cum_weights.iter().position(|&c| u < c).unwrap_or(self.comps.len() - 1);
        let (opts, comp) = (&self.opts, &mut self.comps[ci]);
        comp.next(opts, out)?;
        Ok(ci)
    }

    /// The next `batch` blocks as model inputs and targets (`[batch, block_size - 1]` each).
    pub fn next_batch(&mut self, batch: usize, inputs: &mut Vec<u32>, targets: &mut Vec<u32>) -> Result<()> {
        let t = self.opts.block_size - 1;
        inputs.clear();
        targets.clear();
        let mut block = vec![0u32; self.opts.block_size];
        for _ in 0..batch {
            self.next_block(&mut block)?;
            inputs.extend_from_slice(&block[..t]);
            targets.extend_from_slice(&block[1..]);
        }
        Ok(())
    }
}

impl Component {
    /// This rank's files for `epoch`, in order: a permutation shared by all ranks, strided.
    fn rank_files(&self, o: &LoaderOptions, epoch: u64) -> Vec<usize> {
        let mut perm: Vec<usize> = (0..self.files.len()).collect();
        if o.shuffle {
            shuffle(&mut perm, &mut Rng::fork(o.seed ^ name_seed(&self.name), epoch));
        }
        perm.into_iter().skip(o.rank).step_by(o.world).collect()
    }

    fn next(&mut self, o: &LoaderOptions, out: &mut [u32]) -> Result<()> {
        let mut empty_groups = 0usize;
        loop {
            let key = (self.pos.epoch, self.pos.group);
            if self.cached != Some(key) {
                let files = self.rank_files(o, key.0);
                let groups: Vec<&[usize]> = files.chunks(o.buffer_files.max(1)).collect();
                if key.1 as usize >= groups.len() {
                    self.pos = ComponentPosition { epoch: key.0 + 1, group: 0, index: 0 };
                    continue;
                }
                self.order.clear();
                for &f in groups[key.1 as usize] {
                    self.order.extend((0..self.blocks[f] as u32).map(|b| (f as u32, b)));
                }
                if o.shuffle {
                    let stream = ((o.rank as u64) << 48) ^ (key.0 << 24) ^ key.1;
                    shuffle(&mut self.order, &mut Rng::fork(o.seed ^ name_seed(&self.name) ^ 0xb10c, stream));
                }
                self.cached = Some(key);
            }
            if (self.pos.index as usize) < self.order.len() {
                let (f, b) = self.order[self.pos.index as usize];
                let shard = &self.files[f as usize];
                shard.check_unchanged()?;
                self.pos.index += 1;
                shard.read(b as usize * o.block_size, out)?;
                if let Some(v) = o.vocab_size {
                    if let Some(&t) = out.iter().find(|&&t| t as usize >= v) {
                        bail!(
                            "{}: token id {t} (block {b}) is outside the model's vocabulary of {v}: was the shard \
                             prepared with another tokenizer?",
                            shard.path.display()
                        );
                    }
                }
                return Ok(());
            }
            empty_groups += 1;
            if empty_groups > 2 * self.files.len() + 2 {
                bail!("component `{}`: rank {} has no whole block of {} tokens", self.name, o.rank, o.block_size);
            }
            self.pos.group += 1;
            self.pos.index = 0;
        }
    }
}

fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::{write_shard, TokenDtype};
    use std::path::PathBuf;

    /// Shards whose tokens encode (component, file, position), so every block says where it came from.
    fn corpus(tag: &str, files: &[(&str, usize, usize)]) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tinyllama-loader-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for (ci, &(name, n_files, len)) in files.iter().enumerate() {
            for f in 0..n_files {
                let toks: Vec<u32> = (0..len).map(|i| (ci * 100_000 + f * 1000 + i) as u32).collect();
                write_shard(&d.join(format!("train_{name}_0_{f:010}.bin")), &toks, TokenDtype::I32).unwrap();
            }
        }
        d
    }

    fn opts(mix: &[(&str, f64)], rank: usize, world: usize) -> LoaderOptions {
        LoaderOptions {
            split: "train".into(),
            mix: mix.iter().map(|(n, w)| (n.to_string(), *w)).collect(),
            block_size: 5,
            seed: 7,
            rank,
            world,
            buffer_files: 2,
            shuffle: true,
            vocab_size: None,
        }
    }

    #[test]
    fn token_outside_the_vocabulary_names_its_shard() {
        let d = corpus("oov", &[("slim", 1, 100)]);
        let mut o = opts(&[("slim", 1.0)], 0, 1);
        o.vocab_size = Some(50);
        let mut l = MixtureLoader::open(&d, o).unwrap();
        let mut b = vec![0; 5];
        let err = (0..20).find_map(|_| l.next_block(&mut b).err()).expect("ids ≥ 50 must be refused").to_string();
        assert!(err.contains("train_slim_") && err.contains("outside the model's vocabulary of 50"), "{err}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn mixture_proportions_follow_the_weights() {
        let d = corpus("mix", &[("slim", 3, 100), ("star", 2, 100)]);
        let mut l = MixtureLoader::open(&d, opts(TINYLLAMA_MIX, 0, 1)).unwrap();
        let mut counts = [0usize; 2];
        let mut b = vec![0; 5];
        let n = 20_000;
        for _ in 0..n {
            let ci = l.next_block(&mut b).unwrap();
            assert_eq!(ci, b[0] as usize / 100_000, "block from another component than reported");
            counts[ci] += 1;
        }
        let p = counts[0] as f64 / n as f64;
        // binomial standard deviation ≈ 0.0033; allow 4σ
        assert!((p - 0.693584).abs() < 0.013, "slim share {p}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn ranks_read_disjoint_files_and_cover_them() {
        let d = corpus("ranks", &[("slim", 6, 50)]);
        let mut seen: Vec<std::collections::BTreeSet<u32>> = vec![];
        for rank in 0..3 {
            let mut l = MixtureLoader::open(&d, opts(&[("slim", 1.0)], rank, 3)).unwrap();
            let mut files = std::collections::BTreeSet::new();
            let mut b = vec![0; 5];
            for _ in 0..20 {
                // one epoch on this rank: 2 files × 10 blocks
                l.next_block(&mut b).unwrap();
                files.insert(b[0] / 1000);
            }
            seen.push(files);
        }
        for i in 0..3 {
            assert_eq!(seen[i].len(), 2, "rank {i} files {:?}", seen[i]);
            for j in 0..i {
                assert!(seen[i].is_disjoint(&seen[j]), "ranks {i} and {j} overlap");
            }
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn resume_continues_the_uninterrupted_stream() {
        let d = corpus("resume", &[("slim", 5, 37), ("star", 3, 61)]);
        let o = opts(&[("slim", 0.6), ("star", 0.4)], 0, 1);
        let mut straight = MixtureLoader::open(&d, o.clone()).unwrap();
        let mut b = vec![0; 5];
        let all: Vec<Vec<u32>> = (0..200)
            .map(|_| {
                straight.next_block(&mut b).unwrap();
                b.clone()
            })
            .collect();
        let mut first = MixtureLoader::open(&d, o.clone()).unwrap();
        for _ in 0..83 {
            first.next_block(&mut b).unwrap();
        }
        let state: LoaderState = serde_json::from_str(&serde_json::to_string(&first.state()).unwrap()).unwrap();
        let mut resumed = MixtureLoader::open(&d, o).unwrap();
        resumed.restore(&state).unwrap();
        for want in &all[83..] {
            resumed.next_block(&mut b).unwrap();
            assert_eq!(&b, want);
        }
        // every block of an epoch is seen exactly once
        let mut blocks: Vec<u32> = all.iter().filter(|b| b[0] < 100_000).map(|b| b[0]).collect();
        blocks.truncate(5 * 7);
        blocks.sort();
        blocks.dedup();
        assert_eq!(blocks.len(), 35);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn missing_component_and_bad_weight_are_clear_errors() {
        let d = corpus("missing", &[("slim", 1, 20)]);
        let err = MixtureLoader::open(&d, opts(TINYLLAMA_MIX, 0, 1)).err().unwrap().to_string();
        assert!(err.contains("no shards for component `star`"), "{err}");
        let err = MixtureLoader::open(&d, opts(&[("slim", 0.0)], 0, 1)).err().unwrap().to_string();
        assert!(err.contains("must be positive"), "{err}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
