//! Packed token shards in TinyLlama's (lit-gpt's `PackedDatasetBuilder`) format, so that shards
//! written by either tool load in the other: a 24-byte header (`LITPKDS`, u64 version 1, u8 dtype
//! code, u64 chunk size, little-endian), then the tokens. The dtype is uint16 when the vocabulary
//! fits (code 8), else int32 (code 4). Unlike TinyLlama, the last shard of a run is not padded
//! with BOS to the chunk size: its header records the tokens it holds.

use crate::files::write_atomically;
use anyhow::{bail, ensure, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 7] = b"LITPKDS";
pub const VERSION: u64 = 1;
pub const HEADER_LEN: usize = 24;

/// lit-gpt's dtype codes (`packed_dataset.py`); we read the integer ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenDtype {
    U16,
    I32,
    I64,
}

impl TokenDtype {
    pub fn code(self) -> u8 {
        match self {
            TokenDtype::U16 => 8,
            TokenDtype::I32 => 4,
            TokenDtype::I64 => 5,
        }
    }
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            8 => Some(TokenDtype::U16),
            4 => Some(TokenDtype::I32),
            5 => Some(TokenDtype::I64),
            _ => None,
        }
    }
    pub fn size(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::I32 => 4,
            TokenDtype::I64 => 8,
        }
    }
    /// TinyLlama's rule: uint16 below 65500 tokens of vocabulary, else int32.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size < 65500 {
            TokenDtype::U16
        } else {
            TokenDtype::I32
        }
    }
}

/// Writes one shard file atomically.
pub fn write_shard(path: &Path, tokens: &[u32], dtype: TokenDtype) -> Result<()> {
    let max = match dtype {
        TokenDtype::U16 => u16::MAX as u32,
        _ => i32::MAX as u32,
    };
    if let Some(pos) = tokens.iter().position(|&t| t > max) {
        bail!("{}: token id {} at position {pos} does not fit {:?}", path.display(), tokens[pos], dtype);
    }
    write_atomically(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&[dtype.code()])?;
        w.write_all(&(tokens.len() as u64).to_le_bytes())?;
        let mut buf = Vec::with_capacity(tokens.len() * dtype.size());
        for &t in tokens {
            match dtype {
                TokenDtype::U16 => buf.extend_from_slice(&(t as u16).to_le_bytes()),
                TokenDtype::I32 => buf.extend_from_slice(&(t as i32).to_le_bytes()),
                TokenDtype::I64 => buf.extend_from_slice(&(t as i64).to_le_bytes()),
            }
        }
        w.write_all(&buf)?;
        Ok(())
    })
}

/// Accumulates a stream of tokens and writes it as shards of `chunk_size` tokens, named
/// `{prefix}_{counter:010}.bin` like TinyLlama's builder; [`PackedShardWriter::finish`] writes the
/// remainder unpadded.
pub struct PackedShardWriter {
    dir: PathBuf,
    prefix: String,
    chunk_size: usize,
    dtype: TokenDtype,
    buf: Vec<u32>,
    counter: usize,
    pub files: Vec<PathBuf>,
    pub tokens_written: u64,
}

impl PackedShardWriter {
    pub fn new(dir: &Path, prefix: &str, chunk_size: usize, dtype: TokenDtype) -> Result<Self> {
        ensure!(chunk_size > 0, "chunk size must be positive");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(PackedShardWriter {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            chunk_size,
            dtype,
            buf: Vec::with_capacity(chunk_size),
            counter: 0,
            files: vec![],
            tokens_written: 0,
        })
    }

    pub fn push(&mut self, mut tokens: &[u32]) -> Result<()> {
        while !tokens.is_empty() {
            let take = (self.chunk_size - self.buf.len()).min(tokens.len());
            self.buf.extend_from_slice(&tokens[..take]);
            tokens = &tokens[take..];
            if self.buf.len() == self.chunk_size {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let path = self.dir.join(format!("{}_{:010}.bin", self.prefix, self.counter));
        write_shard(&path, &self.buf, self.dtype)?;
        self.tokens_written += self.buf.len() as u64;
        self.files.push(path);
        self.counter += 1;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is left (fewer than a chunk, not padded); returns the files written.
    pub fn finish(mut self) -> Result<(Vec<PathBuf>, u64)> {
        if !self.buf.is_empty() {
            self.flush()?;
        }
        Ok((self.files, self.tokens_written))
    }
}

/// A shard opened for reading, its header checked against its size. Blocks are read with
/// positioned reads (not a memory map), so that a file truncated under a run is an error naming
/// it, never a SIGBUS.
pub struct Shard {
    pub path: PathBuf,
    file: std::fs::File,
    /// The file's size when it was opened.
    bytes: u64,
    pub dtype: TokenDtype,
    pub len: usize,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(path).with_context(|| format!("cannot open shard {}", path.display()))?;
        let bytes = f.metadata().with_context(|| format!("cannot read {}", path.display()))?.len();
        ensure!(bytes >= HEADER_LEN as u64, "{}: {bytes} bytes, shorter than the 24-byte header", path.display());
        let mut map = [0u8; HEADER_LEN];
        f.read_exact_at(&mut map, 0).with_context(|| format!("cannot read {}", path.display()))?;
        ensure!(&map[..7] == MAGIC, "{}: bad magic (not a LITPKDS token shard)", path.display());
        let version = u64::from_le_bytes(map[7..15].try_into().unwrap());
        ensure!(version == VERSION, "{}: shard format version {version}, expected {VERSION}", path.display());
        let dtype = TokenDtype::from_code(map[15]).with_context(|| {
            format!("{}: dtype code {} is not an integer token type (4, 5 or 8)", path.display(), map[15])
        })?;
        let chunk = u64::from_le_bytes(map[16..24].try_into().unwrap()) as usize;
        let data = bytes as usize - HEADER_LEN;
        ensure!(
            data.is_multiple_of(dtype.size()),
            "{}: {data} data bytes are not a whole number of {}-byte tokens",
            path.display(),
            dtype.size()
        );
        ensure!(
            data / dtype.size() == chunk,
            "{}: header says {chunk} tokens but the file holds {} (truncated or corrupt)",
            path.display(),
            data / dtype.size()
        );
        Ok(Shard { path: path.to_path_buf(), file: f, bytes, dtype, len: chunk })
    }

    /// Tokens `start..start + out.len()` into `out`.
    pub fn read(&self, start: usize, out: &mut [u32]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let size = self.dtype.size();
        let mut d = vec![0u8; out.len() * size];
        self.file.read_exact_at(&mut d, (HEADER_LEN + start * size) as u64).with_context(|| {
            format!("shard {} changed while it was being read: tokens {start}.. cannot be read", self.path.display())
        })?;
        match self.dtype {
            TokenDtype::U16 => {
                for (o, c) in out.iter_mut().zip(d.chunks_exact(2)) {
                    *o = u16::from_le_bytes([c[0], c[1]]) as u32;
                }
            }
            TokenDtype::I32 => {
                for (o, c) in out.iter_mut().zip(d.chunks_exact(4)) {
                    *o = i32::from_le_bytes(c.try_into().unwrap()) as u32;
                }
            }
            TokenDtype::I64 => {
                for (o, c) in out.iter_mut().zip(d.chunks_exact(8)) {
                    *o = i64::from_le_bytes(c.try_into().unwrap()) as u32;
                }
            }
        }
        Ok(())
    }

    /// Errs, naming the file, when the shard was removed, replaced or resized since it was opened:
    /// (a truncation between this check and a read is caught by the read itself).
    pub fn check_unchanged(&self) -> Result<()> {
        let meta = std::fs::metadata(&self.path)
            .with_context(|| format!("shard {} was removed while it was being read", self.path.display()))?;
        ensure!(
            meta.len() == self.bytes,
            "shard {} changed while it was being read: {} bytes, {} when it was opened (truncated or rewritten)",
            self.path.display(),
            meta.len(),
            self.bytes
        );
        Ok(())
    }

    pub fn tokens(&self) -> Result<Vec<u32>> {
        let mut v = vec![0; self.len];
        self.read(0, &mut v)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tinyllama-shard-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writer_round_trip_and_header_fields() {
        let d = tmpdir("rt");
        let mut w = PackedShardWriter::new(&d, "train_x", 10, TokenDtype::U16).unwrap();
        let toks: Vec<u32> = (0..25).map(|i| i * 2000).collect();
        w.push(&toks[..7]).unwrap();
        w.push(&toks[7..]).unwrap();
        let (files, n) = w.finish().unwrap();
        assert_eq!(n, 25);
        let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["train_x_0000000000.bin", "train_x_0000000001.bin", "train_x_0000000002.bin"]);
        let bytes = std::fs::read(&files[2]).unwrap();
        assert_eq!(&bytes[..7], b"LITPKDS");
        assert_eq!(u64::from_le_bytes(bytes[7..15].try_into().unwrap()), 1);
        assert_eq!(bytes[15], 8);
        assert_eq!(u64::from_le_bytes(bytes[16..24].try_into().unwrap()), 5); // unpadded remainder
        let back: Vec<u32> = files.iter().flat_map(|f| Shard::open(f).unwrap().tokens().unwrap()).collect();
        assert_eq!(back, toks);
        std::fs::remove_dir_all(d).unwrap();
    }

    /// Bytes laid out as TinyLlama's Python `PackedDatasetBuilder._write_chunk` writes them:
    /// `HDR_MAGIC`, `struct.pack("<Q", 1)`, `struct.pack("<B", code)`, `struct.pack("<Q",
    /// chunk_size)`, then `arr.tobytes(order="C")`, the tail padded with the separator (BOS).
    #[test]
    fn reads_a_shard_built_by_tinyllama() {
        let d = tmpdir("py");
        let chunk = 8u64;
        let tokens = [1u16, 450, 4996, 2, 1, 1, 1, 1];
        let mut b = b"LITPKDS".to_vec();
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(8);
        b.extend_from_slice(&chunk.to_le_bytes());
        tokens.iter().for_each(|t| b.extend_from_slice(&t.to_le_bytes()));
        let p = d.join("train_slim_0_0000000000.bin");
        std::fs::write(&p, &b).unwrap();
        let s = Shard::open(&p).unwrap();
        assert_eq!(s.tokens().unwrap(), tokens.iter().map(|&t| t as u32).collect::<Vec<_>>());
        // int32 (code 4), as TinyLlama writes for large vocabularies
        let mut b = b"LITPKDS".to_vec();
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(4);
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&100_000i32.to_le_bytes());
        b.extend_from_slice(&7i32.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        assert_eq!(Shard::open(&p).unwrap().tokens().unwrap(), vec![100_000, 7]);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn corrupt_shards_are_named_errors() {
        let d = tmpdir("bad");
        let p = d.join("s.bin");
        write_shard(&p, &[1, 2, 3, 4], TokenDtype::U16).unwrap();
        let good = std::fs::read(&p).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"NOTPKDS".iter().chain(&good[7..]).cloned().collect(), "bad magic"),
            ([&good[..15], &[6u8], &good[16..]].concat(), "dtype code 6"),
            (good[..good.len() - 1].to_vec(), "whole number"),
            (good[..good.len() - 2].to_vec(), "truncated"),
            (good[..10].to_vec(), "shorter than"),
        ];
        for (bytes, want) in cases {
            std::fs::write(&p, &bytes).unwrap();
            let err = format!("{:#}", Shard::open(&p).err().unwrap());
            assert!(err.contains(want) && err.contains("s.bin"), "{err}");
        }
        let err = write_shard(&p, &[70_000], TokenDtype::U16).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
